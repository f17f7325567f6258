"""Evaluation schedules on the toy world: a teaching stream, unrelated turns and anchor prompts.

`teaching_schedule` builds the fact-learning benchmark's stream: `n_facts` facts about distinct
held-out people (new to the base model), each stated `reps` times (one round per repetition,
facts shuffled within a round, phrasings varied), interleaved with `distractors` small-talk
turns; alongside, per fact, the recall probe (first teaching-side question), the held-out
paraphrases (generalization), the expected object and answer. `unrelated_turns` gives K
distractor turns (retention: recall after them), `anchor_prompts` prompts unrelated to any
taught fact (locality).

Turns are ``{"user": ..., "assistant": ...}`` dicts: the assistant reply is the
acknowledgement of a statement, or the right reply to a distractor.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from olm.world import templates as T
from olm.world.generator import Fact, World, random_fact
from olm.world.smalltalk import distractor

MAX_DRAWS_PER_ANCHOR = 20
"""Draws of small talk per requested anchor before giving up on distinctness."""

Turn = dict[str, str]
"""{"user": ..., "assistant": ...}."""


@dataclass(frozen=True)
class TaughtFact:
    """A fact of the teaching stream and its probes."""

    fact: Fact
    """Subject (a held-out name), kind and object."""
    probe: str
    """Recall question (the first teaching-side phrasing), asked in a fresh context."""
    paraphrases: tuple[str, ...]
    """Held-out question phrasings, never used in teaching (generalization)."""
    expected: str
    """The object a correct answer contains (recall = it appears in the generated answer)."""
    answer: str
    """The full expected answer, e.g. "Zara is your sister."."""
    turns: tuple[int, ...]
    """Indices in `TeachingSchedule.turns` of the turns that state this fact."""


@dataclass(frozen=True)
class TeachingSchedule:
    """A teaching stream and the facts it teaches."""

    turns: tuple[Turn, ...]
    """The stream, in order."""
    fact_of_turn: tuple[int | None, ...]
    """Per turn, the index in `facts` of the fact it states, or None for a distractor."""
    repetition_of_turn: tuple[int, ...]
    """Per turn, 1-based repetition number of its fact (0 for a distractor)."""
    facts: tuple[TaughtFact, ...]
    """The taught facts with their probes."""


def teaching_facts(world: World, n_facts: int, rng: random.Random) -> list[Fact]:
    """`n_facts` facts about distinct held-out people (`world.teaching_names`), kinds cycling
    through every fact kind.

    Raises:
        ValueError: more facts than teaching names.
    """
    if not 1 <= n_facts <= len(world.teaching_names):
        raise ValueError(f"n_facts must be in [1, {len(world.teaching_names)}] (teaching names), got {n_facts!r}")
    names = rng.sample(world.teaching_names, n_facts)
    kinds = [T.KINDS[i % len(T.KINDS)] for i in range(n_facts)]
    rng.shuffle(kinds)
    return [random_fact(rng, name, kind) for name, kind in zip(names, kinds)]


def teaching_order(n_facts: int, reps: int, rng: random.Random) -> list[int]:
    """Fact indices in teaching order: `reps` rounds, each a shuffle of all facts, with no fact
    taught twice in a row across a round boundary (when there are at least two facts)."""
    order: list[int] = []
    for _ in range(reps):
        round_ = list(range(n_facts))
        rng.shuffle(round_)
        if order and n_facts > 1 and round_[0] == order[-1]:
            round_[0], round_[-1] = round_[-1], round_[0]
        order += round_
    return order


def teaching_schedule(
    world: World, n_facts: int = 20, reps: int = 8, distractors: int | None = None, seed: int = 0
) -> TeachingSchedule:
    """The teaching stream of the fact-learning benchmark.

    Args:
        world: the toy world (facts are about its held-out names).
        n_facts: facts taught, each about a different held-out person.
        reps: times each fact is stated.
        distractors: small-talk turns spread at random through the stream; None = as many as
            teaching turns (n_facts × reps).
        seed: seed of names, kinds, objects, phrasings and order.

    Returns:
        The `TeachingSchedule`.

    Raises:
        ValueError: n_facts out of range, reps < 1 or distractors < 0.
    """
    problems = []
    if reps < 1:
        problems.append(f"reps must be >= 1, got {reps!r}")
    if distractors is not None and distractors < 0:
        problems.append(f"distractors must be >= 0 or None, got {distractors!r}")
    if problems:
        raise ValueError("invalid teaching schedule: " + "; ".join(problems))
    rng = random.Random(seed)
    facts = teaching_facts(world, n_facts, rng)
    order = teaching_order(n_facts, reps, rng)
    n_distractors = len(order) if distractors is None else distractors
    total = len(order) + n_distractors
    distractor_at = set(rng.sample(range(total), n_distractors))
    facts_iter = iter(order)
    sequence = [None if i in distractor_at else next(facts_iter) for i in range(total)]  # None: a distractor
    turns, fact_of_turn, repetition_of_turn, seen = [], [], [], [0] * n_facts
    for idx in sequence:
        if idx is None:
            user, assistant = distractor(rng)
            repetition_of_turn.append(0)
        else:
            fact = facts[idx]
            user, assistant = fact.statements[seen[idx] % len(fact.statements)], fact.acknowledgement
            seen[idx] += 1
            repetition_of_turn.append(seen[idx])
        turns.append({"user": user, "assistant": assistant})
        fact_of_turn.append(idx)
    taught = tuple(
        TaughtFact(f, f.probe, f.held_out_questions, f.object, f.answer, tuple(t for t, j in enumerate(fact_of_turn) if j == i))
        for i, f in enumerate(facts)
    )
    return TeachingSchedule(tuple(turns), tuple(fact_of_turn), tuple(repetition_of_turn), taught)


def unrelated_turns(k: int, seed: int = 0) -> list[Turn]:
    """`k` distractor turns (no person mentioned), for retention after learning.

    Raises:
        ValueError: k < 0.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k!r}")
    rng = random.Random(seed)
    return [dict(zip(("user", "assistant"), distractor(rng))) for _ in range(k)]


def anchor_prompts(world: World, n: int = 16, seed: int = 0) -> list[str]:
    """Prompts unrelated to any taught fact, for locality: half small talk, half probes about
    pretraining people (what the base model already knows must not drift).

    Raises:
        ValueError: n < 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    rng = random.Random(seed)
    n_people = n // 2
    probes = [f.probe for f in rng.sample(world.qa_facts, min(n_people, len(world.qa_facts)))]
    smalltalk: list[str] = []
    for _ in range(MAX_DRAWS_PER_ANCHOR * n):  # distinct prompts; the small-talk space is finite
        if len(smalltalk) == n - len(probes):
            break
        prompt = distractor(rng)[0]
        if prompt not in smalltalk:
            smalltalk.append(prompt)
    return smalltalk + probes
