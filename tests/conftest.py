"""Shared fixtures: a tiny Qwen2 model + tokenizer built in code and saved to a local directory."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from olm.world.tokenizer import train_bpe_tokenizer

TINY_TEXT = [
    "Zara is my sister.",
    "Got it. Zara is your sister.",
    "Who is Zara?",
    "Hello there, how are you today?",
    "Oslo is a city. Nurses work in hospitals.",
    "Xiomara lives in Lisbon.",
]


def build_tiny_model(path, seed: int = 0, hidden: int = 32, layers: int = 2) -> str:
    """Save a tiny random Qwen2 causal LM with a chat tokenizer to `path`; returns the path."""
    torch.manual_seed(seed)
    tok = train_bpe_tokenizer(TINY_TEXT * 10, vocab_size=400)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.2,  # larger than default so a tiny model can express peaked distributions
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))
