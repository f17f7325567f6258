"""Build the built-in base model ``olm-tiny``: world → corpus → tokenizer → Qwen2 pretraining → artifacts.

Run: ``python -m olm.world.build [--out DIR] [--seed N] [--minutes M]`` (every field of
`BuildConfig` is a flag too, e.g. ``--train.lr 1e-3 --corpus.blocks 4``). Deterministic from
the seed for a fixed thread count (``--train.threads``); ``--minutes`` caps the training time
(a capped run stops early and is then not reproducible, which the model card says).

Writes to ``--out`` (default ``olm/assets/olm-tiny``): ``config.json``,
``generation_config.json``, ``model.safetensors``, the tokenizer files, ``world.json`` (the
world's seed and sizes, read by `olm.world.quality`), ``build.json`` (the build record: full
config, corpus and training figures, quality; ``python -m olm.world.card DIR`` re-renders the card from it),
``quality.json`` and ``MODEL_CARD.md``. Quality is measured on the model *reloaded from disk*.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from transformers import AutoModelForCausalLM, AutoTokenizer

from olm.world.card import model_card
from olm.world.corpus import CorpusConfig, make_corpus, tokenizer_texts
from olm.world.generator import WorldConfig, make_world
from olm.world.quality import DEFAULT_MODEL_DIR, WORLD_FILE, QualityConfig, measure_quality, world_spec
from olm.world.tokenizer import train_bpe_tokenizer
from olm.world.train import ModelConfig, TrainConfig, build_model, encode_corpus, train_model

log = logging.getLogger("olm.world.build")


@dataclass
class BuildConfig:
    """Everything that determines the built model."""

    out: str = str(DEFAULT_MODEL_DIR)
    """Output directory."""
    seed: int = 0
    """Seed of the world, the corpus sampling, the initialisation and the data order."""
    minutes: float | None = None
    """Cap on the training time in minutes (None: train all planned steps)."""
    vocab_size: int = 2048
    """Tokenizer vocabulary size (bytes and special tokens included)."""
    tokenizer_conversations: int = 20000
    """Corpus conversations the tokenizer is trained on (the first ones)."""
    split_capitals: bool = True
    """Tokenizer: split capitals off words, so names tokenize alike after a space and at a message start."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """World sizes."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """Corpus composition."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model shape."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""
    quality: QualityConfig = field(default_factory=QualityConfig)
    """Quality measurement after the build."""

    def __post_init__(self) -> None:
        problems = []
        if self.vocab_size < 300:
            problems.append(f"vocab_size must be >= 300 (256 bytes + merges), got {self.vocab_size!r}")
        if self.tokenizer_conversations < 1:
            problems.append(f"tokenizer_conversations must be >= 1, got {self.tokenizer_conversations!r}")
        if self.minutes is not None and self.minutes <= 0:
            problems.append(f"minutes must be > 0 or None, got {self.minutes!r}")
        if problems:
            raise ValueError("invalid build config: " + "; ".join(problems))


def build(config: BuildConfig, command: str = "python -m olm.world.build") -> dict:
    """Build, save and measure the model.

    Args:
        config: the build settings.
        command: the command line, recorded in the model card.

    Returns:
        The build record written to the model card: config, corpus and training figures, quality.
    """
    start, load_at_start = time.perf_counter(), os.getloadavg()[0]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(config.seed, config.world)
    corpus = make_corpus(world, config.corpus, config.seed)
    texts = tokenizer_texts(corpus[: config.tokenizer_conversations])
    tokenizer = train_bpe_tokenizer(texts, config.vocab_size, split_capitals=config.split_capitals)
    encoded = encode_corpus(tokenizer, corpus, config.train.prompt_loss_weight)
    log.info("world: %d people, %d facts; corpus: %d conversations, %d tokens", len(world.people), len(world.facts), len(corpus), sum(len(i) for i, _ in encoded))
    model = build_model(config.model, tokenizer, config.seed)
    train_cfg = config.train if config.minutes is None else _with_cap(config.train, config.minutes)
    stats = train_model(model, encoded, tokenizer.pad_token_id, train_cfg, config.seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / WORLD_FILE).write_text(json.dumps(world_spec(config.seed, config.world), indent=2) + "\n")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    report = measure_quality(reloaded, AutoTokenizer.from_pretrained(out), world, config.quality)
    record = {
        "command": command,
        "config": asdict(config),
        "world": {"people": len(world.people), "facts": len(world.facts), "held_out": len(world.held_out), "unknown": len(world.unknown), "told": len(world.told)},
        "corpus": {"conversations": len(corpus), "exchanges": sum(len(c) // 2 for c in corpus), "tokens": sum(len(i) for i, _ in encoded)},
        "train": asdict(stats),
        "parameters": sum(p.numel() for p in model.parameters()),
        "size_bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file()),
        "quality": asdict(report),
        "meets_targets": report.meets_targets(),
        "total_seconds": time.perf_counter() - start,
        "load_average": [load_at_start, os.getloadavg()[0]],
        "platform": f"{platform.machine()}, torch {torch.__version__}, {config.train.threads} threads",
    }
    (out / "quality.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (out / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(record))
    log.info("quality:\n%s", "\n".join(report.lines()))
    return record


def _with_cap(train: TrainConfig, minutes: float) -> TrainConfig:
    return TrainConfig(**{**asdict(train), "max_minutes": minutes})


def parse_config(argv: list[str] | None = None) -> BuildConfig:
    """`BuildConfig` from command-line flags (every field, nested ones as ``--train.lr``)."""
    parser = ArgumentParser(prog="python -m olm.world.build", description=__doc__)
    parser.add_class_arguments(BuildConfig, as_group=False)
    cfg = parser.parse_args(argv)
    return BuildConfig(**vars(parser.instantiate(cfg)))


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    argv = sys.argv[1:] if argv is None else argv
    record = build(parse_config(argv), " ".join(["python -m olm.world.build", *argv]))
    print(f"built {record['config']['out']} in {record['total_seconds'] / 60:.1f} min; meets targets: {record['meets_targets']}")


if __name__ == "__main__":
    main()
