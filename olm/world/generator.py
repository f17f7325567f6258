"""The toy world: people, their facts about the speaker's life, and three disjoint name pools.

`make_world(seed)` builds, deterministically from the seed:

- **pretraining people** with a relation to the speaker ("Zara is your sister") and one or two
  attributes (city, job, owned thing, likes, favourite colour, birthday month): the facts the
  base model learns in pretraining; for a share of them (`statement_people`) the corpus only
  *states* the facts, never asks them, so that answering from facts one was told is learned;
- a **held-out pool** of names that never occur in the corpus: what online learning teaches;
- an **unknown pool** of names that occur only in questions answered "I don't know who X is.",
  so that the honest answer generalizes to any name the model has not heard of;
- a **told pool** of names that occur only in fact statements and their acknowledgements
  (never asked about), so that acknowledging "Got it. X is your sister." is learned as copying
  from the statement and generalizes to names never seen.

Sentences about a fact (statements, questions, answers) come from `olm.world.templates`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import cached_property

from olm.world import smalltalk as S
from olm.world import templates as T
from olm.world.names import NameSettings, make_names, split_pools

PET_ATTRIBUTE_KINDS = ("lives_in", "likes", "birthday")
"""Attributes a pet may have (pets have no job, possessions or favourite colour)."""


@dataclass(frozen=True)
class Fact:
    """One fact about a person: `subject` `kind` `object`, e.g. ("Zara", "relation", "sister")."""

    subject: str
    kind: str
    object: str

    @property
    def answer(self) -> str:
        """The second-person answer, e.g. "Zara is your sister."."""
        return T.answer_for(self.kind, self.subject, self.object)

    @property
    def acknowledgement(self) -> str:
        """The reply to a statement of the fact, e.g. "Got it. Zara is your sister."."""
        return T.acknowledgement_for(self.kind, self.subject, self.object)

    @property
    def statements(self) -> tuple[str, ...]:
        """Every canonical phrasing of the fact as the user states it."""
        return tuple(T.fill(t, self.subject, self.object) for t in T.STATEMENTS[self.kind])

    @property
    def probe(self) -> str:
        """The recall probe: the first teaching-side question."""
        return self.teaching_questions[0]

    @property
    def teaching_questions(self) -> tuple[str, ...]:
        """Questions used by the teaching stream and the sample logs."""
        return tuple(T.fill(t, self.subject) for t in T.TEACHING_QUESTIONS[self.kind])

    @property
    def held_out_questions(self) -> tuple[str, ...]:
        """Paraphrased questions never used by the teaching stream (generalization probe)."""
        return tuple(T.fill(t, self.subject) for t in T.HELD_OUT_QUESTIONS[self.kind])


@dataclass(frozen=True)
class Person:
    """A pretraining person: a name and its facts (the relation first)."""

    name: str
    facts: tuple[Fact, ...]


@dataclass
class WorldConfig:
    """Sizes of the world."""

    n_pretrain: int = 200
    """People the base model learns about in pretraining."""
    n_held_out: int = 500
    """Names kept out of the corpus entirely (taught by online learning)."""
    n_unknown: int = 20000
    """Names that only appear in questions answered "I don't know"."""
    n_told: int = 20000
    """Names that only appear in statements and their acknowledgements."""
    min_attributes: int = 1
    """Fewest attributes per pretraining person (besides the relation)."""
    max_attributes: int = 2
    """Most attributes per pretraining person (besides the relation)."""
    phrasing_share: float = 0.5
    """Share of pretraining people whose corpus questions also use the held-out phrasings; the
    others are asked only with teaching-side phrasings, so the held-out phrasings can be probed
    on people the model never saw asked that way."""
    statement_share: float = 0.5
    """Share of pretraining people whose facts occur in the corpus only as statements, never
    asked: the model must answer questions about them from what it was told, which is what
    online learning relies on (a fact stated in chat, recalled when asked)."""
    names: NameSettings = field(default_factory=NameSettings)
    """How names are spelled."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_pretrain", "n_held_out", "n_unknown", "n_told"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 1 <= self.min_attributes <= self.max_attributes <= len(T.ATTRIBUTE_KINDS):
            problems.append(
                f"need 1 <= min_attributes <= max_attributes <= {len(T.ATTRIBUTE_KINDS)}, "
                f"got {self.min_attributes!r}, {self.max_attributes!r}"
            )
        if not 0 <= self.phrasing_share <= 1:
            problems.append(f"phrasing_share must be in [0, 1], got {self.phrasing_share!r}")
        if not 0 <= self.statement_share < 1:
            problems.append(f"statement_share must be in [0, 1), got {self.statement_share!r}")
        if problems:
            raise ValueError("invalid world config: " + "; ".join(problems))


@dataclass(frozen=True)
class World:
    """The whole toy world, built by `make_world`."""

    seed: int
    people: tuple[Person, ...]
    held_out: tuple[str, ...]
    unknown: tuple[str, ...]
    told: tuple[str, ...]
    phrasing_people: frozenset[str]
    """Pretraining people whose corpus questions include the held-out phrasings."""
    statement_people: frozenset[str] = frozenset()
    """Pretraining people whose facts occur only as statements (never asked in the corpus)."""

    @cached_property
    def facts(self) -> tuple[Fact, ...]:
        """All pretraining facts, person by person."""
        return tuple(f for p in self.people for f in p.facts)

    @cached_property
    def teaching_names(self) -> tuple[str, ...]:
        """First half of the held-out pool: the names of the teaching schedules (benchmarks)."""
        return self.held_out[: len(self.held_out) // 2]

    @cached_property
    def log_names(self) -> tuple[str, ...]:
        """Second half of the held-out pool: the names of the sample logs (disjoint from the benchmarks')."""
        return self.held_out[len(self.held_out) // 2 :]

    @cached_property
    def qa_facts(self) -> tuple[Fact, ...]:
        """Pretraining facts asked and answered in the corpus (people not in `statement_people`)."""
        return tuple(f for f in self.facts if f.subject not in self.statement_people)

    @cached_property
    def statement_facts(self) -> tuple[Fact, ...]:
        """Pretraining facts that occur only as statements in the corpus."""
        return tuple(f for f in self.facts if f.subject in self.statement_people)

    @cached_property
    def pretrain_names(self) -> tuple[str, ...]:
        """Names of the pretraining people."""
        return tuple(p.name for p in self.people)


def random_object(rng: random.Random, kind: str) -> str:
    """A random object for a fact of `kind` (a relation word, a city, "red bicycle", ...).

    Raises:
        ValueError: unknown kind.
    """
    choices = {
        "relation": T.RELATIONS,
        "lives_in": T.CITIES,
        "works_as": T.JOBS,
        "likes": T.LIKES,
        "favourite_colour": T.COLOURS,
        "birthday": T.MONTHS,
    }
    if kind == "has":
        return f"{rng.choice(T.THING_ADJECTIVES)} {rng.choice(T.THING_ITEMS)}"
    if kind not in choices:
        raise ValueError(f"kind must be one of {T.KINDS}, got {kind!r}")
    return rng.choice(choices[kind])


def random_fact(rng: random.Random, subject: str, kind: str | None = None) -> Fact:
    """A fact about `subject` of `kind` (random kind when None) with a random object."""
    kind = kind if kind is not None else rng.choice(T.KINDS)
    return Fact(subject, kind, random_object(rng, kind))


def make_person(rng: random.Random, name: str, config: WorldConfig) -> Person:
    """A person with a relation and `min_attributes`..`max_attributes` attributes of distinct kinds."""
    relation = random_fact(rng, name, "relation")
    kinds = PET_ATTRIBUTE_KINDS if relation.object in T.PETS else T.ATTRIBUTE_KINDS
    n = min(rng.randint(config.min_attributes, config.max_attributes), len(kinds))
    attributes = [random_fact(rng, name, k) for k in sorted(rng.sample(kinds, n), key=T.KINDS.index)]
    return Person(name, (relation, *attributes))


def world_words() -> set[str]:
    """Every word the templates and the vocabulary use (names must differ from all of them)."""
    tables = [T.RELATIONS, T.CITIES, T.JOBS, T.THING_ADJECTIVES, T.THING_ITEMS, T.LIKES, T.COLOURS, T.MONTHS]
    texts = [w for table in tables for w in table]
    texts += [t for table in (T.STATEMENTS, T.TEACHING_QUESTIONS, T.HELD_OUT_QUESTIONS) for ts in table.values() for t in ts]
    texts += [*T.ANSWERS.values(), T.ACKNOWLEDGEMENT, T.UNKNOWN_ANSWER]
    texts += [*S.GREETINGS, *S.GREETINGS.values(), *S.WEATHER_QUESTIONS, S.WEATHER_ANSWER, *S.OPINION_QUESTIONS]
    texts += [*S.OPINION_ADJECTIVES, *S.ARITHMETIC_QUESTIONS, *S.ARITHMETIC_OPS]
    return {w.lower() for t in texts for w in re.findall(r"[^\W\d_]+", t)}


def make_world(seed: int = 0, config: WorldConfig | None = None) -> World:
    """Build the toy world deterministically from `seed`.

    Args:
        seed: the world's seed; the same seed gives the same names, pools and facts.
        config: sizes; defaults to `WorldConfig()`.

    Returns:
        The `World`.
    """
    config = config or WorldConfig()
    rng = random.Random(seed)
    words, reserved = world_words(), T.CITIES + T.MONTHS
    pretrain = make_names(config.n_pretrain, rng, config.names, reserved, words, distinct_tails=True)
    sizes = (config.n_held_out, config.n_unknown, config.n_told)
    others = make_names(sum(sizes), rng, config.names, reserved + tuple(pretrain), words, [n[1:] for n in pretrain])
    held_out, unknown, told = split_pools(others, sizes)
    people = tuple(make_person(rng, name, config) for name in pretrain)
    n_phrasing = round(config.phrasing_share * len(pretrain))
    phrasing_people = frozenset(rng.sample(pretrain, n_phrasing))
    statement_people = frozenset(rng.sample(pretrain, round(config.statement_share * len(pretrain))))
    return World(seed, people, tuple(held_out), tuple(unknown), tuple(told), phrasing_people, statement_people)
