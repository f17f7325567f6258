"""Base quality of the built-in model, measured on generated answers (fresh context, greedy).

Four rates (issue 3, item 5), each the share of probes whose generated reply equals the
expected reply after `olm.probes.normalize_answer` (case, punctuation, spacing):

- ``known``: every pretraining fact asked in the corpus, with every teaching-side phrasing;
- ``unknown``: one question (random kind and phrasing) per held-out name → "I don't know who X is.";
- ``acknowledgement``: one fact statement (random kind, phrasing and object) per held-out name →
  "Got it. <answer>." (what online learning starts from);
- ``paraphrase``: the held-out phrasings about pretraining people who were never asked that way
  in the corpus (``paraphrase_seen`` reports the other people, who were).

Also reported, without a target: ``from_statements``, the teaching-side questions about the
people whose facts the corpus only states (`World.statement_people`): how well the base answers
from facts it was told, the ability online learning builds on.

Run: ``python -m olm.world.quality [--model DIR] [--limit N]``; the world seed is read from the
model directory's ``world.json``.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from olm.generation import GenerationSettings, generate_replies
from olm.probes import normalize_answer
from olm.render import messages_for
from olm.world import templates as T
from olm.world.generator import World, WorldConfig, make_world, random_fact
from olm.world.names import NameSettings

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "olm-tiny"
WORLD_FILE = "world.json"
TARGETS: dict[str, float] = {"known": 0.95, "unknown": 0.95, "acknowledgement": 0.95, "paraphrase": 0.80}
"""The issue's thresholds per rate."""

Probe = tuple[str, str]
"""(user message, expected reply)."""


@dataclass
class QualityConfig:
    """How the measurement runs."""

    batch_size: int = 64
    """Conversations generated per batch."""
    max_new_tokens: int = 24
    """Generation budget per reply (the longest expected reply is ~15 tokens)."""
    limit: int | None = None
    """Use at most this many probes per rate (a quick check); None = all."""
    seed: int = 0
    """Seed of the random kinds/phrasings/objects of the held-out probes."""
    max_failures: int = 5
    """Failed examples kept per rate in the report."""

    def __post_init__(self) -> None:
        problems = []
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.max_failures < 0:
            problems.append(
                f"need batch_size >= 1, max_new_tokens >= 1, max_failures >= 0, got "
                f"{self.batch_size!r}, {self.max_new_tokens!r}, {self.max_failures!r}"
            )
        if self.limit is not None and self.limit < 1:
            problems.append(f"limit must be >= 1 or None, got {self.limit!r}")
        if problems:
            raise ValueError("invalid quality config: " + "; ".join(problems))


@dataclass
class QualityReport:
    """Rates in [0, 1], probe counts and a few failures (user, expected, got) per rate."""

    rates: dict[str, float]
    counts: dict[str, int]
    failures: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)

    def meets_targets(self) -> bool:
        """Whether every rate reaches the issue's threshold."""
        return all(self.rates[k] >= v for k, v in TARGETS.items())

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        out = []
        for name, rate in self.rates.items():
            target = f" (target >= {TARGETS[name]:.0%})" if name in TARGETS else ""
            out.append(f"{name:16s} {rate:7.2%} of {self.counts[name]}{target}")
        return out


def probe_sets(world: World, seed: int = 0) -> dict[str, list[Probe]]:
    """The probes of each rate (see the module docstring)."""
    rng = random.Random(seed)
    known = [(q, f.answer) for f in world.qa_facts for q in f.teaching_questions]
    told = [(q, f.answer) for f in world.statement_facts for q in f.teaching_questions]
    unknown = []
    for name in world.held_out:
        kind = rng.choice(T.KINDS)
        unknown.append((T.fill(rng.choice(T.all_questions(kind)), name), T.unknown_answer_for(name)))
    acks = []
    for name in world.held_out:
        fact = random_fact(rng, name)
        acks.append((rng.choice(fact.statements), fact.acknowledgement))
    unseen = [
        (q, f.answer) for f in world.qa_facts if f.subject not in world.phrasing_people for q in f.held_out_questions
    ]
    seen = [(q, f.answer) for f in world.qa_facts if f.subject in world.phrasing_people for q in f.held_out_questions]
    return {"known": known, "unknown": unknown, "acknowledgement": acks, "paraphrase": unseen,
            "paraphrase_seen": seen, "from_statements": told}  # fmt: skip


def answer_all(model, tokenizer, prompts: list[str], config: QualityConfig) -> list[str]:
    """Greedy replies to single user messages, each in a fresh context."""
    settings = GenerationSettings(max_new_tokens=config.max_new_tokens)
    replies: list[str] = []
    for i in range(0, len(prompts), config.batch_size):
        batch = [messages_for(p) for p in prompts[i : i + config.batch_size]]
        replies += generate_replies(model, tokenizer, batch, settings)
    return replies


def measure_quality(model, tokenizer, world: World, config: QualityConfig | None = None) -> QualityReport:
    """Generate the replies to every probe set and score them.

    Args:
        model: the base model (eval mode is set during generation).
        tokenizer: its tokenizer.
        world: the world the model was trained on.
        config: measurement settings.

    Returns:
        The `QualityReport`.
    """
    config = config or QualityConfig()
    rates, counts, failures = {}, {}, {}
    for name, probes in probe_sets(world, config.seed).items():
        if config.limit is not None:
            probes = random.Random(config.seed).sample(probes, min(config.limit, len(probes)))
        replies = answer_all(model, tokenizer, [u for u, _ in probes], config)
        ok = [normalize_answer(r) == normalize_answer(e) for (_, e), r in zip(probes, replies)]
        rates[name] = sum(ok) / max(1, len(ok))
        counts[name] = len(ok)
        failures[name] = [(u, e, r) for (u, e), r, good in zip(probes, replies, ok) if not good][: config.max_failures]
    return QualityReport(rates, counts, failures)


def load_world(model_dir: str | Path) -> World:
    """The world a model directory was built from (its ``world.json``: seed and `WorldConfig` sizes)."""
    spec = json.loads((Path(model_dir) / WORLD_FILE).read_text())
    sizes = dict(spec["config"])
    names = NameSettings(**sizes.pop("names"))
    return make_world(spec["seed"], WorldConfig(**sizes, names=names))


def world_spec(world_seed: int, config: WorldConfig) -> dict:
    """The ``world.json`` content for a world."""
    return {"seed": world_seed, "config": asdict(config)}


def main(argv: list[str] | None = None) -> QualityReport:
    """CLI entry: load a model directory, measure, print the rates and failures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="model directory (default: olm-tiny)")
    parser.add_argument("--limit", type=int, default=None, help="probes per rate (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    report = measure_quality(model, tokenizer, load_world(args.model), QualityConfig(limit=args.limit))
    print("\n".join(report.lines()))
    for name, fails in report.failures.items():
        for user, expected, got in fails:
            print(f"  [{name}] {user!r}: expected {expected!r}, got {got!r}")
    return report


if __name__ == "__main__":
    main()
