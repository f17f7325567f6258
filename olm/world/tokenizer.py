"""Byte-level BPE tokenizer with a Qwen-style chat template.

Used for the built-in model (`python -m olm.world.build` trains it on the toy-world corpus)
and by the tests, which train a tiny one on a few sentences in well under a second.
Byte-level means every string, including names never seen in training, still tokenizes.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

IM_START, IM_END, EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END]

# Qwen2.5's template without its default system prompt: every message is
# "<|im_start|>{role}\n{content}<|im_end|>\n"; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# An upper-case letter with its optional leading space, split off the rest of the word: a name
# then tokenizes the same after a space ("Who is Zara?") and at the start of a message ("Zara
# is ..."), except for that first piece, which makes copying names easy to learn.
CAPITAL_PATTERN = r" ?\p{Lu}"


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, split_capitals: bool = False
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with the chat special tokens and template.

    Args:
        texts: training text (an iterator is fine; it is consumed once).
        vocab_size: target vocabulary size including the 256 byte tokens and special tokens.
        split_capitals: pre-split every upper-case letter (with its leading space) from the rest of
            its word (see `CAPITAL_PATTERN`); the built-in model uses this.

    Returns:
        A fast tokenizer with ``eos_token = <|im_end|>``, ``pad_token = <|endoftext|>`` and
        ``chat_template`` set; ``save_pretrained`` writes it as ``tokenizer.json``.
    """
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_capitals:
        capitals = pre_tokenizers.Split(Regex(CAPITAL_PATTERN), behavior="isolated")
        tok.pre_tokenizer = pre_tokenizers.Sequence([capitals, byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=EOT,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[IM_START],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
