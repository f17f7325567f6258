"""The sample chat log shipped with olm (``olm/assets/logs/sample.jsonl``), the default config's input.

A few hundred turns in messages-JSONL (one conversation per line:
``{"id": ..., "messages": [{"role", "content"}, ...]}``) in which a user tells facts about
held-out people (new to the base model; some told several times), chats about other things,
and later asks about them. Questions carry no assistant reply, so the model answers itself;
a few ask about pretraining people (it knows them) or about held-out people never mentioned
(it should say it does not know). Only teaching-side question phrasings are used, and only
names of `world.log_names` (disjoint from the teaching schedules' names).

Run: ``python -m olm.world.logs [--out PATH] [--seed N]`` (deterministic from the seed).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from olm.world.generator import Fact, World, make_world, random_fact
from olm.world.smalltalk import distractor

DEFAULT_LOG = Path(__file__).resolve().parents[1] / "assets" / "logs" / "sample.jsonl"

Event = tuple[str, str | None]
"""A user message and the logged assistant reply (None: the model answers itself)."""


@dataclass
class LogConfig:
    """Shape of the sample log."""

    people: int = 12
    """Held-out people the user talks about."""
    max_attributes: int = 1
    """Attributes per person besides the relation (0..max, at random)."""
    max_tellings: int = 3
    """Each fact is told 1..max_tellings times."""
    max_questions: int = 2
    """Each fact is asked about 1..max_questions times, always after it was first told."""
    known_questions: int = 4
    """Questions about pretraining people."""
    unknown_questions: int = 4
    """Questions about held-out people never mentioned."""
    turns: int = 300
    """Total user turns (small talk fills what facts and questions leave)."""
    min_conversation: int = 4
    """Fewest turns per conversation."""
    max_conversation: int = 9
    """Most turns per conversation."""
    telling_share: float = 0.7
    """Facts are told within this first share of the stream, so that questions can follow."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("people", "max_tellings", "max_questions", "turns", "min_conversation"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("max_attributes", "known_questions", "unknown_questions"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 < self.telling_share < 1:
            problems.append(f"telling_share must be in (0, 1), got {self.telling_share!r}")
        if self.max_conversation < self.min_conversation:
            problems.append(f"max_conversation {self.max_conversation!r} < min_conversation {self.min_conversation!r}")
        if problems:
            raise ValueError("invalid log config: " + "; ".join(problems))


def told_facts(world: World, config: LogConfig, rng: random.Random) -> tuple[list[Fact], list[str]]:
    """Facts about `config.people` held-out people, and held-out names never mentioned."""
    names = rng.sample(world.log_names, config.people + config.unknown_questions)
    facts = []
    for name in names[: config.people]:
        facts.append(random_fact(rng, name, "relation"))
        kinds = rng.sample(("lives_in", "works_as", "likes", "favourite_colour", "birthday", "has"), config.max_attributes)
        facts += [random_fact(rng, name, k) for k in kinds[: rng.randint(0, config.max_attributes)]]
    return facts, names[config.people :]


def place_events(world: World, config: LogConfig, rng: random.Random) -> list[Event]:
    """The whole stream of turns: tellings, questions after them, other questions, small talk."""
    facts, strangers = told_facts(world, config, rng)
    slots: list[Event | None] = [None] * config.turns
    free = list(range(config.turns))
    rng.shuffle(free)  # free positions in random order: taking the first k picks k at random
    telling_zone = int(config.telling_share * config.turns)
    for fact in facts:
        positions = [p for p in free if p < telling_zone][: rng.randint(1, config.max_tellings)]
        for n, p in enumerate(positions):
            slots[p] = (fact.statements[n % len(fact.statements)], fact.acknowledgement)
            free.remove(p)
        first = min(positions)
        later = [p for p in free if p > first][: rng.randint(1, config.max_questions)]
        for p in later:
            slots[p] = (rng.choice(fact.teaching_questions), None)
            free.remove(p)
    extra = [(rng.choice(f.teaching_questions), None) for f in rng.sample(world.qa_facts, config.known_questions)]
    extra += [(random_fact(rng, name).probe, None) for name in strangers]
    for event in extra:
        slots[free.pop()] = event
    return [s if s is not None else distractor(rng) for s in slots]


def sample_log(world: World, config: LogConfig | None = None, seed: int = 0) -> list[dict]:
    """Conversation records of the sample log.

    Args:
        world: the toy world.
        config: shape of the log.
        seed: seed of people, facts, phrasings and order.

    Returns:
        Records ``{"id": "sample-000", "messages": [...]}``, in order.

    Raises:
        ValueError: the events do not fit in `config.turns`.
    """
    config = config or LogConfig()
    rng = random.Random(seed)
    events = place_events(world, config, rng)
    records, i = [], 0
    while i < len(events):
        n = rng.randint(config.min_conversation, config.max_conversation)
        messages = []
        for user, assistant in events[i : i + n]:
            messages.append({"role": "user", "content": user})
            if assistant is not None:
                messages.append({"role": "assistant", "content": assistant})
        records.append({"id": f"sample-{len(records):03d}", "messages": messages})
        i += n
    return records


def write_log(records: list[dict], path: str | Path) -> None:
    """Write records as JSONL (UTF-8, one record per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    """CLI entry: write the sample log."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DEFAULT_LOG), help="output JSONL path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the log")
    parser.add_argument("--world-seed", type=int, default=0, help="seed of the world (olm-tiny's: see its world.json)")
    args = parser.parse_args(argv)
    records = sample_log(make_world(args.world_seed), LogConfig(), args.seed)
    write_log(records, args.out)
    print(f"wrote {len(records)} conversations to {args.out}")


if __name__ == "__main__":
    main()
