"""Speed benchmark: OnlineLM's per-turn cost against a minimal PyTorch loop doing the same arithmetic.

    python -m olm.bench speed --out DIR           # olm-tiny (5,000 turns), smollm2-135m (200), Qwen2.5-0.5B shape
    python -m olm.bench speed --out DIR --models [olm-tiny] --tiny.turns 300     # a quick look
    python -m olm.bench speed --help                                              # every flag

For each model, one run in its own process (so its peak RSS is its own):

- **OnlineLM arm**: ``cli.py fit`` itself (`OlmCLI.main`) on the model's YAML config, with the
  callbacks of that config minus the checkpoint writers (``--checkpoints true`` keeps them;
  ``--drop_callbacks [Name, ...]`` leaves out others) and its TensorBoard logger (``--logger
  false`` drops it), over a JSONL log of `turns` turns with logged replies: chat and question
  turns (*plain* turns) and, a ``fact_share`` of them drawn at random, fact statements about
  made-up people that the default detector finds (*fact* turns: the config's ``steps_per_fact``
  steps, each one padded forward over the exchange + its augmentation Q/A pairs and paraphrases
  (`olm.augment`) + the locality prompts, with KL to the cached base top-k on those). Facts are
  remembered, so `FactReplay` replays them every `interval` turns: a turn that also learned a
  replay is left out of the figures of both arms (the minimal loop does not replay).
  `SpeedProbe`, a callback appended to the config, times every loop iteration.
- **Minimal arm**: `MinimalLoop`, a plain PyTorch loop on the *same* peft model object (so one base
  copy serves both arms) that builds its rows with olm's pure functions (`olm.render`,
  `olm.augment`) and its loss with `olm.losses`, so the arithmetic is the same: render (and on a
  fact turn augment and pad, with the same locality prompts and their cached base outputs), base
  forward with the adapter disabled under no_grad, then per step adapter forward, KL(base ‖
  adapter) + CE (+ λ_loc · top-k KL), backward, clip, AdamW step, and with the config's null-space
  constraint each LoRA A projected back (`olm.nullspace.project_lora_a`). It weights the CE by the
  loss mask; OnlineLM's importance weights are its own cost (``step_other``).
- **Interleaving**: after every `block` OnlineLM turns, the probe runs the same `block` turns
  (same text, same tokens) through the minimal loop, so machine drift hits both arms alike.
- **Generation**: by default neither arm generates (both learn the logged replies);
  ``--generate_tokens N`` makes both generate exactly N tokens per turn (greedy, min = max = N,
  so eos cannot end a reply early) and learn the generated reply.

Figures in ``DIR/speed.json`` (per model; medians over the turns after `warmup`, plain and fact
turns apart):

- ``overhead_ratio`` (plain turns), ``overhead_ratio_fact`` (fact turns) = median OnlineLM turn
  time / median minimal-loop turn time. OnlineLM's turn time is the *whole* Lightning loop
  iteration (data, training_step, logging, callbacks), measured from one ``on_train_batch_end``
  to the next, minus the probe's own work. ``fact_turn_ratio``: median fact-turn time / median
  plain-turn time, per arm. ``meets_targets`` compares both overheads with the run's
  ``overhead_target`` (1.05; olm-tiny 1.10).
- ``rss_ratio`` = peak RSS of the run's process / (base weight bytes + minimal-loop activation
  bytes). *Base weight bytes*: the distinct storages of the base model's (non-LoRA) parameters, a
  tied embedding counted once. *Activation bytes*: the distinct non-parameter tensor storages
  autograd saves for backward during the minimal loop's adapter forward + loss on the longest
  plain turn or on the last fact turn, whichever is larger, plus the base logits held across it
  (its memory just before backward). The peak includes
  model loading (transformers' transient); ``rss_ratio_fit`` takes the peak from train start on
  (Linux VmHWM, reset at train start), and ``rss_ratio_net`` subtracts from that the RSS of the
  process after its imports (Python, torch, Lightning, transformers), which dominates the tiny
  model's figures.
- ``base_copies``: bytes of distinct live tensor storages shaped like a base weight matrix, over
  the base weight matrices' bytes, at train start and end (1.0 = one copy; a second model = 2.0);
  ``base_ptrs_unchanged``: the base parameters still live at the same addresses after the run.
- ``flatness``: median OnlineLM plain-turn time over the last `window` turns / over the `window`
  turns around `early_at` (``turn_time``), and the same for the RSS sampled after each turn
  (``rss``); the minimal loop's own time ratio (``minimal_turn_time``) is the drift control, and
  ``turn_time_vs_minimal`` = turn_time / minimal_turn_time the figure corrected for machine drift.
- ``threads_ms``: median minimal-loop plain-turn time for each of ``--sweep_threads`` torch thread
  counts, alternating blocks over the last `sweep_turns` plain turns after the fit.
- ``phases_ms``: per-phase medians, ``plain`` and ``fact`` turns apart. OnlineLM's own timers
  (detect, generate, render, base_forward, adapter_forward_backward, optimizer_step, turn = its
  training_step from the turn read on) plus ``step_other`` (turn minus its timed phases: token
  weights, memory, bookkeeping), ``callbacks`` (the other callbacks' batch hooks: the metric
  monitors, transcript, replay scheduling; each one also in ``callbacks_ms``, whose means show the
  periodic checks), ``logger`` (the loggers' ``log_metrics``, also when a callback logs: that time
  is not counted in the callback's as well), ``lightning`` (the rest of the loop iteration:
  ``self.log_dict``, the logger connector, the data fetch, Lightning's hooks) and ``loop`` (the
  whole iteration). The minimal loop's ``render`` includes its padding (OnlineLM's padding is in
  its ``step_other``).

Also written: ``DIR/speed.md`` (the tables printed at the end) and ``DIR/<model>/`` with the run
config, the stream and ``raw.json`` (every turn's timings and RSS).
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from array import array
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback
from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from olm import smollm2
from olm.augment import sibling_facts
from olm.backbone import BUILTIN_MODELS
from olm.bench.memory import base_copies, base_weights, current_rss, peak_rss, read_lines, reset_peak_rss
from olm.bench.minimal import MS, FactTurn, MinimalLoop, Sibling, adapter_toggle_ms
from olm.facts import DetectorConfig, FactDetector
from olm.turns import trained_turn
from olm.world.tokenizer import train_bpe_tokenizer

ROOT = Path(__file__).resolve().parents[2]
BUILTIN = "olm-tiny"
ModelName = Literal["olm-tiny", "smollm2-135m", "qwen2.5-0.5b"]
MODEL_NAMES: tuple[str, ...] = ("olm-tiny", "smollm2-135m", "qwen2.5-0.5b")
STEP_PHASES: tuple[str, ...] = (
    "detect", "generate", "render", "base_forward", "adapter_forward_backward", "optimizer_step",
)  # fmt: skip
"""OnlineLM's timed phases inside training_step (`OnlineLM._timings`)."""
ONLINE_FIELDS: tuple[str, ...] = (*STEP_PHASES, "turn", "callbacks", "logger", "loop", "tokens", "fact", "replayed")
"""Per-turn columns recorded for OnlineLM (seconds; tokens; 1 on a fact turn; facts replayed in the turn)."""
ONLINE_PHASES: tuple[str, ...] = (*STEP_PHASES, "step_other", "turn", "callbacks", "logger", "lightning", "loop")
"""OnlineLM phases reported: the recorded ones plus the derived step_other and lightning."""
MINIMAL_FIELDS: tuple[str, ...] = (*STEP_PHASES[1:], "turn", "tokens", "fact")
"""Per-turn columns recorded for the minimal loop."""
MINIMAL_PHASES: tuple[str, ...] = MINIMAL_FIELDS[:-2]
"""Minimal-loop phases reported."""
TURN_KINDS: tuple[str, ...] = ("plain", "fact")
"""The turns the figures are split by: chat and question turns, and fact turns (turns that also
learned a replay are left out of both: the minimal loop does not replay)."""
TARGETS = {"overhead_ratio": "the run's overhead_target (plain and fact turns)", "flatness": 1.05, "base_copies": 1.0}

# The stream's language data: chat and question turns that no default fact pattern matches.
TOPICS = (
    "tea", "rainy weather", "old movies", "board games", "long walks", "jazz", "gardening", "bread baking", "chess",
    "the sea", "night trains", "crossword puzzles",
)  # fmt: skip
ADJECTIVES = ("quiet", "busy", "lovely", "strange", "slow", "bright", "calm", "long")
USER_TEMPLATES = (
    "Hello there, how are you today?",
    "Tell me something nice about {topic}.",
    "What do you think about {topic}?",
    "It was a {adj} day, so maybe some {topic} would help.",
    "Any ideas for a {adj} afternoon with {topic}?",
    "Thanks, that was {adj}. Could we talk about {topic} for a while, if that is fine with you?",
)
FACT_NAMES = (
    "Zara", "Milo", "Ines", "Tomas", "Lena", "Omar", "Priya", "Hugo", "Nadia", "Felix", "Sofia", "Jonas", "Amara",
    "Viktor", "Elif", "Rafael",
)  # fmt: skip
FACT_TEMPLATES = (  # statements the default detector finds, each of a pattern with augmentation templates
    ("{name} is my {relation}.", "Nice, so {name} is your {relation}."),
    ("{name} lives in {city}.", "Good to know that {name} lives in {city}."),
    ("{name} likes {topic}.", "Noted: {name} likes {topic}."),
    ("{name}'s favourite colour is {colour}.", "Got it, {colour} is {name}'s favourite colour."),
)
FACT_SLOTS = {
    "relation": ("sister", "brother", "cousin", "neighbour", "friend", "boss"),
    "city": ("Lisbon", "Oslo", "Kyoto", "Lima", "Dakar", "Quito"),
    "topic": ("chess", "jazz", "gardening", "tea"),
    "colour": ("green", "blue", "amber", "violet"),
}
REPLY_TEMPLATES = (
    "Sure. I find {topic} {adj}, and many people enjoy it.",
    "I think {topic} makes a {adj} choice.",
    "Good question! Some say {topic} feels {adj}, others disagree.",
    "Of course. A {adj} hour of {topic} can do wonders.",
)


# ----------------------------------------------------------------------------- configuration
@dataclass
class Shape:
    """A Qwen2 shape for a base model built in code with random weights."""

    hidden_size: int
    """Width of the residual stream."""
    intermediate_size: int
    """Width of the SwiGLU MLP."""
    num_layers: int
    """Transformer blocks."""
    num_heads: int
    """Attention (query) heads."""
    num_kv_heads: int
    """Key/value heads."""
    vocab_size: int | None = None
    """Embedding rows; None: the tokenizer's size. Must be >= the tokenizer's size."""
    rope_theta: float = 10000.0
    """RoPE base."""
    rms_norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    max_position_embeddings: int = 2048
    """Longest context."""
    tie_word_embeddings: bool = True
    """Share the input embedding and the LM head."""

    def __post_init__(self) -> None:
        problems = [
            f"shape.{k} must be >= 1, got {getattr(self, k)!r}"
            for k in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads")
            if getattr(self, k) < 1
        ]
        if self.vocab_size is not None and self.vocab_size < 1:
            problems.append(f"shape.vocab_size must be >= 1 or None, got {self.vocab_size!r}")
        if not problems and (self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads):
            problems.append(
                f"shape: num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size}) and be a "
                f"multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if problems:
            raise ValueError("invalid model shape: " + "; ".join(problems))


@dataclass
class ModelRun:
    """One model's run: where the base comes from, its config and how many turns."""

    config: str
    """YAML config (``cli.py fit --config``) of the run, relative to the repository root or absolute."""
    base_model: str | None
    """``olm-tiny`` (built in code from `shape` while olm/assets/olm-tiny is not built), a model
    directory, or None for a random-weight Qwen2 of `shape`."""
    shape: Shape
    """Shape of a model built in code."""
    turns: int
    """OnlineLM turns (each also run once by the minimal loop)."""
    block: int = 20
    """Turns per interleaved block (OnlineLM block, then the minimal loop on the same turns)."""
    warmup: int = 20
    """First turns left out of the medians."""
    early_at: int = 100
    """Centre of the early window of the flatness ratios."""
    window: int = 50
    """Turns per flatness window (the early one and the last one)."""
    sweep_turns: int = 100
    """Turns per thread count in the thread sweep (0: no sweep)."""
    overhead_target: float = 1.05
    """Target of overhead_ratio on plain and on fact turns (the issue's: 1.05 on a real model)."""

    def __post_init__(self) -> None:
        values = {k: getattr(self, k) for k in ("turns", "block", "window", "warmup", "early_at", "sweep_turns")}
        lows = (1, 1, 1, 0, 0, 0)
        problems = [f"{k} must be >= {low}, got {v!r}" for (k, v), low in zip(values.items(), lows) if v < low]
        if not problems and self.warmup >= self.turns:
            problems.append(f"warmup ({self.warmup}) must be < turns ({self.turns})")
        if problems:
            raise ValueError("invalid model run: " + "; ".join(problems))


def _tiny_run() -> ModelRun:
    shape = Shape(hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4, num_kv_heads=2)  # olm-tiny's
    return ModelRun(config="configs/tiny.yaml", base_model=BUILTIN, shape=shape, turns=5000, overhead_target=1.10)


def _smollm2_run() -> ModelRun:
    shape = Shape(  # HuggingFaceTB/SmolLM2-135M-Instruct (Llama); the real weights are used, not this shape
        hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3, vocab_size=49152,
        rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=True,
    )  # fmt: skip
    return ModelRun(
        config="configs/default.yaml", base_model="smollm2-135m", shape=shape, turns=200, block=5, warmup=5,
        early_at=30, window=20, sweep_turns=20,
    )  # fmt: skip


def _qwen_run() -> ModelRun:
    shape = Shape(  # Qwen/Qwen2.5-0.5B config.json
        hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2, vocab_size=151936,
        rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=32768, tie_word_embeddings=True,
    )  # fmt: skip
    return ModelRun(
        config="configs/qwen2.5-0.5b.yaml", base_model=None, shape=shape, turns=200, block=5, warmup=5,
        early_at=20, window=10, sweep_turns=10,
    )  # fmt: skip


@dataclass
class SpeedConfig:
    """Everything the speed benchmark measures and how."""

    out: str = "runs/bench/speed"
    """Output directory (speed.json, speed.md, one folder per model)."""
    models: list[ModelName] = field(default_factory=lambda: list(MODEL_NAMES))
    """Models to run."""
    tiny: ModelRun = field(default_factory=_tiny_run)
    """The built-in toy model's run (configs/tiny.yaml)."""
    smollm2: ModelRun = field(default_factory=_smollm2_run)
    """The built-in real model's run (SmolLM2-135M-Instruct weights, configs/default.yaml)."""
    qwen: ModelRun = field(default_factory=_qwen_run)
    """The Qwen2.5-0.5B-shaped model's run (random weights)."""
    threads: int = 1
    """torch intra-op threads of both arms (the default config's ``threads``)."""
    sweep_threads: list[int] = field(default_factory=lambda: [1, 2])
    """Thread counts compared on the minimal loop after the fit (empty: no sweep)."""
    generate_tokens: int = 0
    """0: both arms learn the logged replies; N: both generate exactly N tokens per turn first."""
    logger: bool = True
    """Keep the config's TensorBoard logger (a per-turn cost of ``cli.py fit``)."""
    checkpoints: bool = False
    """Keep the config's checkpoint callbacks (disk writes every 50 turns)."""
    drop_callbacks: list[str] = field(default_factory=list)
    """Class names of further config callbacks to leave out (e.g. [StabilityMonitor]), to measure their cost."""
    seed: int = 0
    """Seed of the stream and of models built in code."""
    reply_sentences: int = 3
    """Logged replies have 1..reply_sentences sentences, so turn lengths vary."""
    fact_share: float = 0.1
    """Share of fact turns in the stream (drawn at random; 0: chat and question turns only)."""
    tokenizer_vocab: int = 2048
    """Vocabulary of the tokenizer trained in code when olm-tiny's is not built."""
    tokenizer_turns: int = 500
    """Stream turns that tokenizer is trained on."""
    isolate: bool = True
    """Run each model in a fresh process (its own peak RSS); false runs in this process (tests)."""
    cache_dir: str | None = None
    """Where models built in code are kept and reused; None: a temporary directory, removed after."""

    def __post_init__(self) -> None:
        problems = []
        if self.threads < 1:
            problems.append(f"threads must be >= 1, got {self.threads!r}")
        if any(t < 1 for t in self.sweep_threads):
            problems.append(f"sweep_threads must all be >= 1, got {self.sweep_threads!r}")
        if self.generate_tokens < 0:
            problems.append(f"generate_tokens must be >= 0, got {self.generate_tokens!r}")
        for name in ("reply_sentences", "tokenizer_turns"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.fact_share <= 1.0:
            problems.append(f"fact_share must be in [0, 1], got {self.fact_share!r}")
        if not self.models or any(m not in MODEL_NAMES for m in self.models):
            problems.append(f"models must be a non-empty subset of {list(MODEL_NAMES)}, got {self.models!r}")
        if problems:
            raise ValueError("invalid speed benchmark settings: " + "; ".join(problems))

    def run_of(self, name: str) -> ModelRun:
        return {"olm-tiny": self.tiny, "smollm2-135m": self.smollm2, "qwen2.5-0.5b": self.qwen}[name]


# ----------------------------------------------------------------------------- stream and base models
def make_turns(n: int, seed: int, reply_sentences: int, fact_share: float = 0.0) -> list[tuple[str, str]]:
    """`n` (user, reply) turns of varying length: a `fact_share` of fact statements the default
    detector finds (`fact_turn`), the rest chat and question turns that are no fact."""
    rng, detector, turns = random.Random(seed), FactDetector(DetectorConfig()), []
    while len(turns) < n:
        if rng.random() < fact_share:
            turns.append(fact_turn(rng))
            continue
        slots = {"topic": rng.choice(TOPICS), "adj": rng.choice(ADJECTIVES)}
        user = rng.choice(USER_TEMPLATES).format(**slots)
        sentences = [rng.choice(REPLY_TEMPLATES) for _ in range(rng.randint(1, reply_sentences))]
        reply = " ".join(t.format(topic=rng.choice(TOPICS), adj=rng.choice(ADJECTIVES)) for t in sentences)
        if detector.detect(user) is None:
            turns.append((user, reply))
    return turns


def fact_turn(rng: random.Random) -> tuple[str, str]:
    """A fact statement about a made-up person and its acknowledgement."""
    user, reply = rng.choice(FACT_TEMPLATES)
    slots = {"name": rng.choice(FACT_NAMES), **{k: rng.choice(v) for k, v in FACT_SLOTS.items()}}
    return user.format(**slots), reply.format(**slots)


def write_stream(path: Path, turns: list[tuple[str, str]]) -> Path:
    """Write `turns` as a ``messages`` JSONL log, one conversation per turn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i, (user, reply) in enumerate(turns):
            msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
            f.write(json.dumps({"id": f"s{i}", "messages": msgs}) + "\n")
    return path


def builtin_dir() -> Path | None:
    """olm-tiny's directory when it has been built, else None."""
    path = BUILTIN_MODELS[BUILTIN]
    return path if (path / "config.json").is_file() else None


def bench_tokenizer(cfg: SpeedConfig):
    """olm-tiny's tokenizer when built, else one trained in code on the stream's sentences."""
    if builtin_dir() is not None:
        return AutoTokenizer.from_pretrained(builtin_dir()), "olm-tiny's tokenizer"
    texts = [t for pair in make_turns(cfg.tokenizer_turns, cfg.seed, cfg.reply_sentences) for t in pair]
    return train_bpe_tokenizer(texts, cfg.tokenizer_vocab), "byte-level BPE trained in code on the stream"


def build_random_base(shape: Shape, tokenizer, path: Path, seed: int) -> int:
    """Save a random-weight Qwen2ForCausalLM of `shape` with `tokenizer` to `path`.

    Returns:
        The number of parameters.

    Raises:
        ValueError: the shape's vocabulary is smaller than the tokenizer's.
    """
    vocab = shape.vocab_size or len(tokenizer)
    if vocab < len(tokenizer):
        raise ValueError(f"shape.vocab_size ({vocab}) is smaller than the tokenizer's vocabulary ({len(tokenizer)})")
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads, max_position_embeddings=shape.max_position_embeddings,
        rope_theta=shape.rope_theta, rms_norm_eps=shape.rms_norm_eps, tie_word_embeddings=shape.tie_word_embeddings,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def prepare_base(name: str, run: ModelRun, cfg: SpeedConfig, cache: Path) -> tuple[str, str]:
    """The ``--model.base_model`` value of a run and a description of where it comes from."""
    if run.base_model == BUILTIN and builtin_dir() is not None:
        return BUILTIN, "built-in olm-tiny (olm/assets/olm-tiny)"
    if run.base_model == smollm2.NAME:  # olm.smollm2 converts the packaged GGUF once into its cache
        return run.base_model, "built-in smollm2-135m (SmolLM2-135M-Instruct weights, olm/smollm2.py)"
    if run.base_model not in (None, BUILTIN):
        return run.base_model, f"model directory {run.base_model}"
    tokenizer, tok_note = bench_tokenizer(cfg)
    path, key = cache / name, {"shape": asdict(run.shape), "tokenizer": tok_note, "seed": cfg.seed}
    stamp = path / "bench_build.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == key):
        shutil.rmtree(path, ignore_errors=True)
        build_random_base(run.shape, tokenizer, path, cfg.seed)
        stamp.write_text(json.dumps(key))
    stand_in = " (stand-in: olm/assets/olm-tiny is not built)" if run.base_model == BUILTIN else ""
    return str(path), f"random-weight Qwen2 {asdict(run.shape)}, {tok_note}{stand_in}"


def run_config(name: str, run: ModelRun, cfg: SpeedConfig, base: str, stream: Path, out: Path) -> Path:
    """Write the ``cli.py fit`` config of a run: the model's YAML with the bench's changes; returns its path."""
    conf = yaml.safe_load(_repo_path(run.config).read_text())
    trainer = conf.setdefault("trainer", {})
    callbacks = [
        c for c in trainer.get("callbacks") or []
        if (cfg.checkpoints or not _is_checkpoint(c)) and _class_name(c) not in cfg.drop_callbacks
    ]  # fmt: skip
    probe = {
        "block": run.block, "sweep_turns": run.sweep_turns, "sweep_threads": list(cfg.sweep_threads),
        "generate_tokens": cfg.generate_tokens,
    }  # fmt: skip
    callbacks.append({"class_path": f"{__name__}.SpeedProbe", "init_args": probe})
    if not cfg.logger:  # else the config's / the CLI's default logger, writing under default_root_dir
        trainer["logger"] = False
    trainer.update(
        callbacks=callbacks, default_root_dir=str(out / "runs" / name),
        enable_progress_bar=False, enable_checkpointing=cfg.checkpoints, max_epochs=-1,
    )  # fmt: skip
    model = conf.setdefault("model", {})
    model["base_model"] = base
    if cfg.generate_tokens:
        model["respond"] = "generate"
        model.setdefault("generation", {}).update(max_new_tokens=cfg.generate_tokens, do_sample=False)
    conf["data"] = {**(conf.get("data") or {}), "source": str(stream), "format": "messages"}
    conf["threads"] = cfg.threads
    path = out / "run.yaml"
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    return path


def _class_name(callback: dict) -> str:
    return str(callback.get("class_path", "")).rsplit(".", 1)[-1]


def _is_checkpoint(callback: dict) -> bool:
    return _class_name(callback).endswith("Checkpoint")


def _repo_path(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


def load_cli():
    """The repository's ``cli.py`` as a module (the code path of ``python cli.py fit``).

    Raises:
        FileNotFoundError: cli.py is not beside the olm package.
    """
    path = ROOT / "cli.py"
    if not path.is_file():
        raise FileNotFoundError(f"the speed benchmark drives cli.py, which is missing at {path}")
    spec = importlib.util.spec_from_file_location("olm_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the probe callback
class SpeedProbe(Callback):
    """Times each loop iteration of ``cli.py fit`` and interleaves the minimal loop on the same turns.

    Added to the run's config by the benchmark. After every `block` OnlineLM turns it runs those
    turns through a `MinimalLoop` on the module's own model; its own work is left out of the
    OnlineLM turn times. Each other callback's batch hooks (``cb:<class>`` columns, summed in
    ``callbacks``) and the loggers' ``log_metrics`` (``logger``) are timed too.

    Args:
        block: turns per interleaved block.
        sweep_turns: turns per thread count of the thread sweep at the end (0: none).
        sweep_threads: thread counts of the sweep.
        generate_tokens: tokens the minimal loop generates per turn (0: it learns the logged reply).
        toggle_reps: repetitions of the adapter on/off timing (`adapter_toggle_ms`) at the end.
    """

    def __init__(
        self,
        block: int = 20,
        sweep_turns: int = 0,
        sweep_threads: list[int] | None = None,
        generate_tokens: int = 0,
        toggle_reps: int = 50,
    ) -> None:
        if block < 1 or sweep_turns < 0 or generate_tokens < 0 or toggle_reps < 1:
            raise ValueError(
                f"need block >= 1, sweep_turns >= 0, generate_tokens >= 0, toggle_reps >= 1; got {block!r}, "
                f"{sweep_turns!r}, {generate_tokens!r}, {toggle_reps!r}"
            )
        self.block, self.sweep_turns, self.generate_tokens = block, sweep_turns, generate_tokens
        self.toggle_reps, self.adapter_toggle_ms = toggle_reps, float("nan")
        self.sweep_threads = list(sweep_threads or [])
        # compact columns, so that the probe's own records hardly show in the RSS it measures
        self.online = {k: array("d") for k in ONLINE_FIELDS}
        self.minimal = {k: array("d") for k in MINIMAL_FIELDS}
        self.rss = array("q")
        self.kinds: Counter = Counter()
        self.memory: dict[str, Any] = {}
        self.threads: dict[str, float] = {}
        self.mismatches = 0
        self._pending: list[tuple[str, str, int, FactTurn | None]] = []
        self._recent: deque = deque(maxlen=max(sweep_turns, 1))  # plain turns, for the thread sweep
        self._longest: tuple[int, str, str] = (-1, "", "")
        self._last_fact: tuple[str, str, FactTurn] | None = None
        self._spent = {"logger": 0.0}  # seconds in the loggers and in each other callback since the last turn
        self._inside: str | None = None  # the timed bucket running now
        self._mark = 0.0
        self.loop: MinimalLoop | None = None  # built at train start, on the module's model

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        m, objective = pl_module, pl_module.objective
        kl = m.policy.kl_lambdas["chat"]  # a plain turn is chat or question (λ only scales the arithmetic)
        self.loop = MinimalLoop(
            m.model, m.tokenizer, m.optim, kl, objective.task_lambda, objective.max_tokens, self.generate_tokens,
            loss_on=objective.loss_on, augment=m.augment,
            locality=m.locality.settings if m.locality.applies("fact") else None,
            null_spaces=m.locality.projectors(m.model),  # {} without the constraint; else read or computed once
        )  # fmt: skip
        if self.generate_tokens:  # OnlineLM's generate() passes eos but no min: force the length here
            m.model.get_base_model().generation_config.min_new_tokens = self.generate_tokens
        for cb in trainer.callbacks:
            if cb is not self:
                name = f"cb:{type(cb).__name__}"
                name += f"#{sum(k.startswith(name) for k in self._spent)}" if name in self._spent else ""
                self._spent[name], self.online[name] = 0.0, array("d")
                for hook in ("on_train_batch_start", "on_train_batch_end"):
                    setattr(cb, hook, self._timed(getattr(cb, hook), name))
        for logger in trainer.loggers:
            logger.log_metrics = self._timed(logger.log_metrics, "logger")
        self._base_ptrs = base_weights(m.model)
        self.memory.update(
            base_bytes=sum(self._base_ptrs.values()), base_copies_start=base_copies(m.model),
            peak_rss_load=peak_rss(), rss_train_start=current_rss(), peak_reset=reset_peak_rss(),
        )  # fmt: skip
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        now = time.perf_counter()
        if not trained_turn(outputs):  # the step that found the stream ended
            return
        last = pl_module.last
        callbacks = sum(v for k, v in self._spent.items() if k.startswith("cb:"))
        rec = {
            **last.timings, **self._spent, "callbacks": callbacks, "loop": now - self._mark, "tokens": last.tokens,
            "fact": float(last.kind == "fact"), "replayed": float(last.replayed),
        }  # fmt: skip
        _append(self.online, rec)
        self.rss.append(current_rss())
        self.kinds[last.kind] += 1
        self.kinds["with_replay"] += bool(last.replayed)
        self._spent = dict.fromkeys(self._spent, 0.0)
        fact = fact_turn_of(pl_module, last.user) if last.kind == "fact" else None
        self._pending.append((last.user, last.reply, last.tokens, fact))
        if fact is None:
            self._recent.append((last.user, last.reply))
            self._longest = max(self._longest, (last.tokens, last.user, last.reply))
        else:
            self._last_fact = (last.user, last.reply, fact)
        if len(self._pending) >= self.block:
            self._run_pending()
        self._mark = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._run_pending()
        model = pl_module.model
        self.memory.update(
            peak_rss_fit=peak_rss(),
            rss_end=current_rss(),
            base_copies_end=base_copies(model),  # before the sweep
            base_ptrs_unchanged=base_weights(model) == self._base_ptrs,
        )
        if self._longest[0] >= 0:
            self.memory["activation_bytes"] = self.loop.activation_bytes(*self._longest[1:])
        if self._last_fact is not None:
            self.memory["activation_bytes_fact"] = self.loop.activation_bytes(*self._last_fact)
        self.adapter_toggle_ms = adapter_toggle_ms(model, self.toggle_reps)
        self.threads = self._thread_sweep()

    def results(self) -> dict[str, Any]:
        """Every turn's timings (seconds) and RSS, turn kinds, memory figures and the thread sweep."""
        return {
            "online": {k: v.tolist() for k, v in self.online.items()},
            "minimal": {k: v.tolist() for k, v in self.minimal.items()},
            "rss": self.rss.tolist(), "kinds": dict(self.kinds), "memory": self.memory, "threads": self.threads,
            "token_mismatches": self.mismatches, "adapter_toggle_ms": self.adapter_toggle_ms,
        }  # fmt: skip

    def _run_pending(self) -> None:
        for user, reply, tokens, fact in self._pending:
            rec = self.loop.step(user, reply, fact)
            _append(self.minimal, {**rec, "fact": float(fact is not None)})
            self.mismatches += int(not self.generate_tokens and rec["tokens"] != tokens)
        self._pending.clear()

    def _thread_sweep(self) -> dict[str, float]:
        if not self.sweep_turns or not self.sweep_threads or not self._recent:
            return {}
        turns, before = list(self._recent), torch.get_num_threads()
        times: dict[int, list[float]] = {t: [] for t in self.sweep_threads}
        try:
            for i in range(0, len(turns), self.block):
                for t in self.sweep_threads:
                    torch.set_num_threads(t)
                    times[t] += [self.loop.step(u, r)["turn"] for u, r in turns[i : i + self.block]]
        finally:
            torch.set_num_threads(before)
        return {str(t): statistics.median(v) * MS for t, v in times.items()}

    def _timed(self, fn, bucket: str):
        def timed(*args: Any, **kwargs: Any) -> Any:
            outer, self._inside = self._inside, bucket
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                self._spent[bucket] += spent
                if outer is not None:  # a callback's own logging counts as the logger's, once
                    self._spent[outer] -= spent
                self._inside = outer

        return timed


def fact_turn_of(module, user: str) -> FactTurn:
    """The fact turn OnlineLM just learned from `user` (after its step): the fact, its pattern, the
    rotation of its augmentation (statement count − 1), the KL λ its steps used (logged as
    turn/kl_lambda) and the locality rows they used (the last `per_step` of the rotation, from the
    module's cache; the rotation is left where it was), and the steps it took (`optim.steps_per_update` on an
    update)."""
    fact = module.detector.detect(user)
    rows = []
    if module.locality.applies("fact"):
        loc = module.locality
        loc.position = (loc.position - min(loc.settings.per_step, len(loc.prompts))) % len(loc.prompts)
        rows = loc.next_rows(module.model)  # cached: no base forward; moves the rotation back to where it was
    rotation = max(module.memory.count(fact) - 1, 0)
    siblings = [
        Sibling(s, module.detector.pattern(s.pattern), rotation + s.count)
        for s in sibling_facts(module.memory, fact, module.augment.siblings, rotation,
                               any_kind=module.augment.sibling_kinds == "any")
    ]  # the ones its step rehearsed: the memory's other subjects of the slot are as they were then
    return FactTurn(
        fact.subject, fact.object, fact.relation, module.detector.pattern(fact.pattern),
        rotation, module.latest_scalars["turn/kl_lambda"], rows, siblings, int(module.latest_scalars["turn/steps"]),
    )  # fmt: skip


def _append(columns: dict[str, array], record: dict[str, float]) -> None:
    for key, column in columns.items():
        column.append(record.get(key, 0.0))  # a phase a turn did not run (generate) took 0 s


# ----------------------------------------------------------------------------- one model's run
def run_worker(run_yaml: str, result_path: str) -> None:
    """Run ``cli.py fit --config run_yaml`` with its SpeedProbe and write the raw results as JSON."""
    rss_imports, start = current_rss(), time.perf_counter()
    cli = load_cli().main(["fit", "--config", run_yaml])
    probe = next(cb for cb in cli.trainer.callbacks if isinstance(cb, SpeedProbe))
    raw = probe.results()
    raw["memory"]["rss_imports"] = rss_imports
    base = cli.model.model.get_base_model()
    raw.update(
        wall_s=time.perf_counter() - start, torch_threads=torch.get_num_threads(), device=str(cli.model.device),
        parameters=sum(p.numel() for n, p in cli.model.model.named_parameters() if "lora_" not in n),
        dtype=str(next(base.parameters()).dtype), loadavg=os.getloadavg(),
    )  # fmt: skip
    Path(result_path).write_text(json.dumps(raw))


def run_model(run_yaml: Path, result: Path, isolate: bool) -> dict[str, Any]:
    """Run one model (in a fresh spawned process when `isolate`) and return its raw results.

    Raises:
        RuntimeError: the worker process failed.
    """
    if isolate:
        proc = multiprocessing.get_context("spawn").Process(target=run_worker, args=(str(run_yaml), str(result)))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"speed run {run_yaml} failed (exit code {proc.exitcode}); its error is printed above")
    else:
        run_worker(str(run_yaml), str(result))
    return json.loads(result.read_text())


# ----------------------------------------------------------------------------- figures
def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def turn_rows(online: dict[str, list[float]], skip: int) -> dict[str, list[int]]:
    """Indices of the plain and the fact turns after the first `skip`, without the turns that also
    learned a replay (OnlineLM replays at the start of a turn; the minimal loop does not)."""
    rows: dict[str, list[int]] = {k: [] for k in TURN_KINDS}
    for i in range(skip, len(online["loop"])):
        if not online["replayed"][i]:
            rows["fact" if online["fact"][i] else "plain"].append(i)
    return rows


def _at(values: list[float], rows: list[int]) -> list[float]:
    return [values[i] for i in rows]


def phase_medians(columns: dict[str, list[float]], phases: tuple[str, ...], rows: list[int]) -> dict[str, float]:
    """Median milliseconds of each phase column over the turns `rows`."""
    return {k: _median(_at(columns[k], rows)) * MS for k in phases}


def callback_ms(online: dict[str, list[float]], skip: int) -> dict[str, dict[str, float]]:
    """Median and mean milliseconds per turn of each other callback (periodic ones show in the mean)."""
    cols = {k.removeprefix("cb:"): v[skip:] for k, v in online.items() if k.startswith("cb:")}
    return {k: {"median": _median(v) * MS, "mean": _mean(v) * MS} for k, v in cols.items()}


def with_derived(online: dict[str, list[float]]) -> dict[str, list[float]]:
    """OnlineLM columns plus ``step_other`` (training_step time outside the named phases) and
    ``lightning`` (loop time outside training_step, other callbacks and the loggers)."""
    rows = range(len(online["loop"]))
    step_other = [online["turn"][i] - sum(online[k][i] for k in STEP_PHASES) for i in rows]
    outside = [online["turn"][i] + online["callbacks"][i] + online["logger"][i] for i in rows]
    return {**online, "step_other": step_other, "lightning": [online["loop"][i] - outside[i] for i in rows]}


def flatness(
    online: list[float], minimal: list[float], rss: list[float], run: ModelRun, plain: list[int]
) -> dict[str, Any]:
    """Late-window / early-window medians of OnlineLM turn time, minimal-loop turn time (both over
    the `plain` turns of each window) and RSS (every turn)."""
    n, start = len(online), run.early_at - run.window // 2
    early = (max(0, min(start, n - 1)), max(1, min(start + run.window, n)))
    late = (max(0, n - run.window), n)

    def ratio(values: list[float], keep: list[int] | None) -> float:
        def window(lo: int, hi: int) -> float:
            idx = [i for i in (keep if keep is not None else range(n)) if lo <= i < max(hi, lo + 1)]
            return _median(_at(values, idx))

        return window(*late) / window(*early)

    time_ratio, minimal_ratio = ratio(online, plain), ratio(minimal, plain)
    return {
        "turn_time": time_ratio, "rss": ratio(rss, None), "minimal_turn_time": minimal_ratio,
        "turn_time_vs_minimal": time_ratio / minimal_ratio, "early_turns": list(early), "late_turns": list(late),
    }  # fmt: skip


def summarize(raw: dict[str, Any], run: ModelRun) -> dict[str, Any]:
    """The figures of one model's run (see the module docstring)."""
    online, minimal, mem, w = with_derived(raw["online"]), raw["minimal"], raw["memory"], run.warmup
    rows = turn_rows(online, w)
    turn_ms = {
        kind: {"onlinelm": _median(_at(online["loop"], idx)) * MS, "minimal": _median(_at(minimal["turn"], idx)) * MS}
        for kind, idx in rows.items()
    }  # fmt: skip
    step_ms = {kind: _median(_at(online["turn"], idx)) * MS for kind, idx in rows.items()}
    denom = mem["base_bytes"] + max(mem["activation_bytes"], mem.get("activation_bytes_fact", 0))
    copies = max(mem["base_copies_start"], mem["base_copies_end"])
    return {
        "overhead_ratio": turn_ms["plain"]["onlinelm"] / turn_ms["plain"]["minimal"],
        "overhead_ratio_fact": turn_ms["fact"]["onlinelm"] / turn_ms["fact"]["minimal"],
        "step_overhead_ratio": step_ms["plain"] / turn_ms["plain"]["minimal"],
        "step_overhead_ratio_fact": step_ms["fact"] / turn_ms["fact"]["minimal"],
        "fact_turn_ratio": {k: turn_ms["fact"][k] / turn_ms["plain"][k] for k in ("onlinelm", "minimal")},
        "rss_ratio": max(mem["peak_rss_load"], mem["peak_rss_fit"]) / denom,
        "rss_ratio_fit": mem["peak_rss_fit"] / denom,
        "rss_ratio_net": (mem["peak_rss_fit"] - mem["rss_imports"]) / denom,
        "base_copies": copies,
        "one_base_copy": copies < 1.5 and bool(mem["base_ptrs_unchanged"]),
        "flatness": flatness(online["loop"], minimal["turn"], raw["rss"], run, rows["plain"]),
        "turn_ms": turn_ms,
        "mean_turn_ms": {
            kind: {"onlinelm": _mean(_at(online["loop"], idx)) * MS, "minimal": _mean(_at(minimal["turn"], idx)) * MS}
            for kind, idx in rows.items()
        },
        "phases_ms": {
            kind: {
                "onlinelm": phase_medians(online, ONLINE_PHASES, idx),
                "minimal": phase_medians(minimal, MINIMAL_PHASES, idx),
            }
            for kind, idx in rows.items()
        },
        "tokens_per_turn": {"median": _median(online["tokens"]), "max": max(online["tokens"])},
        "callbacks_ms": callback_ms(online, w),
        "threads_ms": raw["threads"],
        "adapter_toggle_ms": raw["adapter_toggle_ms"],
        "memory": {**mem, "rss_first_turn": raw["rss"][0]},  # lazily loaded (mmap) weights are resident once used
        "turns": len(online["loop"]), "turns_measured": {k: len(v) for k, v in rows.items()}, "warmup": w,
        "block": run.block, "kinds": raw["kinds"], "token_mismatches": raw["token_mismatches"],
        "parameters": raw["parameters"], "dtype": raw["dtype"], "device": raw["device"],
        "torch_threads": raw["torch_threads"], "wall_s": raw["wall_s"], "loadavg_end": raw["loadavg"],
        "overhead_target": run.overhead_target,
    }  # fmt: skip


def meets_targets(fig: dict[str, Any]) -> dict[str, bool]:
    """Each target of the issue: overhead ≤ the run's target on plain and on fact turns (a run
    without fact turns fails that one), one base copy, flatness (time and RSS) ≤ 1.05."""
    target = fig["overhead_target"]
    return {
        "overhead_ratio": fig["overhead_ratio"] <= target,
        "overhead_ratio_fact": fig["overhead_ratio_fact"] <= target,
        "one_base_copy": fig["one_base_copy"],
        "flatness_turn_time": fig["flatness"]["turn_time"] <= TARGETS["flatness"],
        "flatness_rss": fig["flatness"]["rss"] <= TARGETS["flatness"],
    }


def machine_info() -> dict[str, Any]:
    """CPU, memory, load and library versions of this machine."""
    import peft
    import transformers

    cpuinfo, meminfo = read_lines("/proc/cpuinfo"), read_lines("/proc/meminfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
    mem = next((int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal")), None)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu or platform.processor(), "cpu_count": os.cpu_count(), "cpus_usable": usable, "memory_bytes": mem,
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "lightning": L.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "loadavg_start": os.getloadavg(),
    }  # fmt: skip


SUMMARY_HEADER = (
    "| model | params | tokens/turn | plain ms OnlineLM / minimal | overhead_ratio plain | fact ms OnlineLM / minimal "
    "| overhead_ratio fact | fact/plain time | rss_ratio / fit / net | base copies | flatness time (vs minimal) "
    "| flatness RSS | minimal ms by threads |"
)


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def markdown(report: dict[str, Any]) -> str:
    """The summary table and one phase table per model."""
    m = report["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["loadavg_start"])
    lines = [
        f"Machine: {m['cpu']}, {m['cpus_usable']} usable CPUs, torch {m['torch']}, load average at start {load}; "
        f"`{report['command']}`", "", SUMMARY_HEADER, "|" + "---|" * SUMMARY_HEADER.count(" |"),
    ]  # fmt: skip
    for name, f in report["models"].items():
        flat, threads = f["flatness"], ", ".join(f"{t}: {_ms(v)}" for t, v in f["threads_ms"].items()) or "-"
        plain, fact = f["turn_ms"]["plain"], f["turn_ms"]["fact"]
        cells = [
            name, f"{f['parameters'] / 1e6:.1f} M", f"{f['tokens_per_turn']['median']:.0f}",
            f"{_ms(plain['onlinelm'])} / {_ms(plain['minimal'])}", f"{f['overhead_ratio']:.3f}",
            f"{_ms(fact['onlinelm'])} / {_ms(fact['minimal'])}", f"{f['overhead_ratio_fact']:.3f}",
            f"{f['fact_turn_ratio']['onlinelm']:.2f}",
            f"{f['rss_ratio']:.2f} / {f['rss_ratio_fit']:.2f} / {f['rss_ratio_net']:.2f}", f"{f['base_copies']:.2f}",
            f"{flat['turn_time']:.3f} ({flat['turn_time_vs_minimal']:.3f})", f"{flat['rss']:.3f}", threads,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for name, f in report["models"].items():
        ph, n = f["phases_ms"], f["turns_measured"]
        lines += [
            "", f"Median ms per phase, {name} ({f['turns']} turns, the first {f['warmup']} left out; {n['plain']} "
            f"plain and {n['fact']} fact turns measured, {f['kinds'].get('with_replay', 0)} turns with a replay left "
            "out):",
            "", "| phase | plain OnlineLM | plain minimal | fact OnlineLM | fact minimal |", "|---|---|---|---|---|",
        ]  # fmt: skip
        for k in ph["plain"]["onlinelm"]:
            arms = [ph[kind][arm] for kind in TURN_KINDS for arm in ("onlinelm", "minimal")]
            cells = [f"{arm[k]:.3f}" if k in arm else "" for arm in arms]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines += ["", "| callback | median ms | mean ms |", "|---|---|---|"]
        lines += [f"| {k} | {v['median']:.3f} | {v['mean']:.3f} |" for k, v in f["callbacks_ms"].items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- entry point
def run(cfg: SpeedConfig, command: str) -> dict[str, Any]:
    """Run every selected model and write speed.json and speed.md under ``cfg.out``.

    Returns:
        The report written to speed.json.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else Path(tempfile.mkdtemp(prefix="olm-speed-"))
    report: dict[str, Any] = {
        "command": command, "machine": machine_info(), "config": asdict(cfg), "targets": TARGETS,
        "definitions": DEFINITIONS, "models": {},
    }  # fmt: skip
    try:
        for name in cfg.models:
            spec, mdir = cfg.run_of(name), out / name
            mdir.mkdir(parents=True, exist_ok=True)
            base, source = prepare_base(name, spec, cfg, cache)
            turns = make_turns(spec.turns, cfg.seed, cfg.reply_sentences, cfg.fact_share)
            stream = write_stream(mdir / "stream.jsonl", turns)
            raw = run_model(run_config(name, spec, cfg, base, stream, mdir), mdir / "raw.json", cfg.isolate)
            fig = summarize(raw, spec)
            report["models"][name] = {**fig, "base_source": source, "meets_targets": meets_targets(fig)}
    finally:
        if not cfg.cache_dir:
            shutil.rmtree(cache, ignore_errors=True)
    (out / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "speed.md").write_text(markdown(report))
    return report


DEFINITIONS: dict[str, str] = {
    "overhead_ratio": "plain turns: median OnlineLM loop-iteration time (cli.py fit) / median minimal-loop turn time",
    "overhead_ratio_fact": "the same over the fact turns (augmentation rows + locality prompts, steps_per_fact steps)",
    "fact_turn_ratio": "median fact-turn time / median plain-turn time, per arm",
    "turns measured": "turns after the warmup; a turn that also learned a replay is left out of both kinds",
    "rss_ratio": "peak RSS of the run's process, model loading included / (base weight bytes + activation bytes)",
    "rss_ratio_fit": "peak RSS from train start to train end / (base weight bytes + activation bytes)",
    "rss_ratio_net": "(peak RSS from train start - RSS after imports) / (base weight bytes + activation bytes)",
    "base_bytes": "distinct storages of the base (non-LoRA) parameters; a tied embedding counted once",
    "activation_bytes": (
        "distinct non-parameter storages saved for backward in the minimal loop's adapter forward + loss on the "
        "longest turn, plus the base logits"
    ),
    "base_copies": "bytes of distinct live storages shaped like a base weight matrix / the base matrices' bytes",
    "flatness": (
        "median over the last `window` turns / median over the `window` turns around `early_at` (time: plain turns)"
    ),
}
"""What each figure of speed.json means (written into it)."""


def parse_config(argv: list[str] | None = None) -> SpeedConfig:
    """`SpeedConfig` from command-line flags (nested ones as ``--tiny.turns``)."""
    summary = __doc__.splitlines()[0] + " What each figure means: the docstring of olm/bench/speed.py."
    parser = ArgumentParser(prog="python -m olm.bench speed", description=summary)
    parser.add_class_arguments(SpeedConfig, as_group=False)
    return SpeedConfig(**vars(parser.instantiate(parser.parse_args(argv))))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: run, print the tables, return 0."""
    argv = sys.argv[1:] if argv is None else argv
    report = run(parse_config(argv), "python -m olm.bench speed " + " ".join(argv))
    print(markdown(report))
    print(f"wrote {Path(report['config']['out']) / 'speed.json'}")
    return 0
