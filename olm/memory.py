"""FactMemory: the facts a person has stated, with importance, eviction, decay and replay selection.

Facts are keyed by (subject, slot) — the subject compared case-insensitively; the slot is the
detector pattern's (`FactPattern.slot`, e.g. "relation" for every relation to the speaker) — so
"Zara is my sister." stated again raises the count of the stored fact, and "Zara is my cousin."
later is an *update* that replaces it (logged at INFO as such; the fact's next steps teach the new
object, and replays only ever see the new one). The stored relation is the real word ("cousin").
A pattern of many objects per subject (`FactPattern.many`: "I love jazz.", "I like chess.") keys each object
apart (slot "likes=jazz", `StoredFact.key_slot`): a new object is another fact, never an update.

Importance of a fact at turn t, in [0, 1], computed from its count and the turn it was last
stated (``age = t − last_turn``):

    repetition = min(1, count / repetition_saturation)
    recency    = 0.5 ** (age / recency_half_life)
    base       = repetition | recency | weighted mean of both (``importance`` = "hybrid")
    importance = base · (1 − decay_rate) ** max(0, age − decay_after)

so a fact unseen for more than `decay_after` turns decays geometrically, and `decay()` removes
such facts once their importance falls under `min_importance`. Importance depends only on the
turn, not on how often `decay()` is called. Replays and recalls (`touch`) update only the
access time used by LRU eviction, not the recency of the statement.

Replay selection (`replay_candidates`) ranks facts by `replay_order`: "importance" (the most
important first — with recency in the importance, the facts just stated, which need it least) or
"spaced" (importance × turns since the fact was last rehearsed — stated, replayed or recalled — so
every fact comes round in turn, the important ones more often: spaced rehearsal against the
interference of later facts).

Eviction happens when a new key arrives at `max_facts`: the oldest inserted ("fifo"), the
least recently accessed ("lru"), the least important ("importance"), or the lowest mix of
importance and access recency ("hybrid"); ties go to the oldest inserted. The state is plain
dicts, lists, str and numbers, so checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from olm.facts import FactInfo, key_slot

log = logging.getLogger(__name__)

Eviction = Literal["fifo", "lru", "importance", "hybrid"]
ImportanceMode = Literal["repetition", "recency", "hybrid"]
ReplayOrder = Literal["importance", "spaced"]
REPLAY_ORDERS: tuple[str, ...] = ("importance", "spaced")
EVICTIONS: tuple[str, ...] = ("fifo", "lru", "importance", "hybrid")
IMPORTANCE_MODES: tuple[str, ...] = ("repetition", "recency", "hybrid")
STATE_VERSION = 2
"""2 added `StoredFact.slot` (version 1 states load with slot = relation)."""


@dataclass
class MemoryConfig:
    """Capacity, importance, decay and replay settings of the fact memory."""

    max_facts: int = 1000
    """Most facts kept; a new fact beyond this evicts one by `eviction`."""
    eviction: Eviction = "hybrid"
    """Which fact makes room: fifo, lru, importance or hybrid (importance mixed with access recency)."""
    importance: ImportanceMode = "hybrid"
    """How importance is computed: repetition, recency, or their weighted mean (hybrid)."""
    repetition_saturation: int = 5
    """Statements of a fact at which its repetition score reaches 1."""
    recency_half_life: float = 100.0
    """Turns after which the recency score (and hybrid eviction's access recency) halves."""
    repetition_weight: float = 0.5
    """Weight of the repetition score in hybrid importance."""
    recency_weight: float = 0.5
    """Weight of the recency score in hybrid importance."""
    eviction_importance_weight: float = 0.5
    """Hybrid eviction score = this · importance + (1 − this) · access recency, in [0, 1]."""
    decay_after: int = 100
    """Turns a fact may go unstated before it starts to decay."""
    decay_rate: float = 0.01
    """Fraction of importance lost per turn beyond `decay_after`, in [0, 1]."""
    min_importance: float = 0.05
    """Decaying facts whose importance falls below this are removed, in [0, 1]."""
    replay_limit: int = 5
    """Facts per replay (`replay_candidates` without an explicit limit)."""
    replay_order: ReplayOrder = "spaced"
    """Replay ranking: "importance", or "spaced" (importance × turns since last rehearsed)."""

    def __post_init__(self) -> None:
        problems = []
        if self.eviction not in EVICTIONS:
            problems.append(f"memory.eviction must be one of {list(EVICTIONS)}, got {self.eviction!r}")
        if self.replay_order not in REPLAY_ORDERS:
            problems.append(f"memory.replay_order must be one of {list(REPLAY_ORDERS)}, got {self.replay_order!r}")
        if self.importance not in IMPORTANCE_MODES:
            problems.append(f"memory.importance must be one of {list(IMPORTANCE_MODES)}, got {self.importance!r}")
        for name in ("max_facts", "repetition_saturation", "replay_limit"):
            if getattr(self, name) < 1:
                problems.append(f"memory.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.recency_half_life <= 0:
            problems.append(f"memory.recency_half_life must be > 0, got {self.recency_half_life!r}")
        if self.decay_after < 0:
            problems.append(f"memory.decay_after must be >= 0, got {self.decay_after!r}")
        for name in ("repetition_weight", "recency_weight"):
            if getattr(self, name) < 0:
                problems.append(f"memory.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.importance == "hybrid" and self.repetition_weight + self.recency_weight <= 0:
            problems.append("memory.repetition_weight + memory.recency_weight must be > 0 for hybrid importance")
        for name in ("eviction_importance_weight", "decay_rate", "min_importance"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"memory.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if problems:
            raise ValueError("invalid memory config: " + "; ".join(problems))


@dataclass
class StoredFact:
    """A remembered fact (plain types only, so it serialises as is)."""

    subject: str
    """Who the fact is about."""
    relation: str
    """The relation ("sister", "lives_in")."""
    object: str
    """The stated value."""
    text: str
    """The user's latest statement of the fact."""
    reply: str
    """The acknowledgement learned with that statement."""
    entities: list[str]
    """Entities of the statement."""
    question: str
    """Recall probe, e.g. "Who is Zara?"."""
    count: int
    """Times the fact (same object) has been stated."""
    first_turn: int
    """Turn of the first statement with this object."""
    last_turn: int
    """Turn of the latest statement."""
    last_access: int
    """Turn of the latest statement, replay or recall (LRU)."""
    importance: float
    """Importance in [0, 1] as of the latest refresh (store, decay, replay selection)."""
    confidence: float
    """Highest detector confidence seen for the fact."""
    pattern: str = ""
    """Detector pattern of the latest statement."""
    slot: str = ""
    """With the subject, the memory key (empty: the relation)."""
    many: bool = False
    """One of many objects of its subject and slot (`FactPattern.many`): the object is part of the key."""
    forgets: list[list[str]] = field(default_factory=list)
    """The [question, answer] rows of the fact this one contradicted and dropped (`drop_contradicted`: ["What do I
    like?", "You like jazz."] for "I hate jazz." after "I love jazz."; `olm.augment.forget_rows`), which its steps and
    replays compare with the base while no fact of that slot is remembered (`olm.augment.AugmentSettings.forget`);
    empty for most facts."""

    @property
    def key_slot(self) -> str:
        """The slot part of the memory key (`olm.facts.key_slot`: with the object for a fact of many objects)."""
        return key_slot(self.slot or self.relation, self.object, self.many)

    @property
    def key(self) -> tuple[str, str]:
        """The memory key: (casefolded subject, `key_slot`)."""
        return fact_key(self.subject, self.key_slot)


def fact_key(subject: str, slot: str) -> tuple[str, str]:
    """The memory key of a fact: (casefolded subject, slot)."""
    return subject.strip().casefold(), slot


def _same_object(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def importance_score(config: MemoryConfig, count: int, age: int) -> float:
    """Importance in [0, 1] of a fact stated `count` times, last `age` turns ago.

    Args:
        config: memory settings (mode, weights, half-life, decay).
        count: times the fact has been stated.
        age: turns since it was last stated (negative is treated as 0).

    Returns:
        The importance (see the module docstring for the formula).
    """
    age = max(age, 0)
    repetition = min(1.0, count / config.repetition_saturation)
    recency = 0.5 ** (age / config.recency_half_life)
    if config.importance == "repetition":
        base = repetition
    elif config.importance == "recency":
        base = recency
    else:
        total = config.repetition_weight + config.recency_weight
        base = (config.repetition_weight * repetition + config.recency_weight * recency) / total
    decay = (1.0 - config.decay_rate) ** max(0, age - config.decay_after)
    return min(max(base * decay, 0.0), 1.0)


class FactMemory:
    """Facts keyed by (subject, slot), in insertion order.

    Args:
        config: memory settings; None uses the defaults.
    """

    def __init__(self, config: MemoryConfig | None = None) -> None:
        self.config = config if config is not None else MemoryConfig()
        self._facts: dict[tuple[str, str], StoredFact] = {}

    def __len__(self) -> int:
        return len(self._facts)

    def __iter__(self) -> Iterator[StoredFact]:
        return iter(list(self._facts.values()))

    def get(self, subject: str, slot: str) -> StoredFact | None:
        """The stored fact for (subject, slot), or None."""
        return self._facts.get(fact_key(subject, slot))

    def count(self, fact: FactInfo) -> int:
        """Times this fact (same key and object) has been stored so far; 0 if new or changed."""
        stored = self.get(fact.subject, fact.key_slot)
        return stored.count if stored is not None and _same_object(stored.object, fact.object) else 0

    def importance_of(self, fact: FactInfo, turn: int) -> float:
        """Importance in [0, 1] the fact will have once stored at `turn` (for the dynamic KL λ).

        A fact is fresh when stored (age 0), so only its count matters; `turn` is kept so the
        call reads the same as the other turn-dependent queries.
        """
        return importance_score(self.config, self.count(fact) + 1, 0)

    def store(self, fact: FactInfo, text: str, reply: str, turn: int) -> StoredFact:
        """Remember a stated fact: a repeat raises its count, a changed object replaces it, and the fact of the
        opposite slot with the same object (`FactInfo.opposite`: "I love jazz." for "I hate jazz.") is dropped.

        Args:
            fact: the detected fact.
            text: the user's statement.
            reply: the acknowledgement learned with it.
            turn: the current turn.

        Returns:
            The stored fact (the memory's own instance).
        """
        key = fact_key(fact.subject, fact.key_slot)
        self.drop_contradicted(fact)
        stored = self._facts.get(key)
        if stored is not None and _same_object(stored.object, fact.object):
            stored.count += 1
            stored.text, stored.reply, stored.entities = text, reply, list(fact.entities)
            stored.last_turn = stored.last_access = turn
            stored.confidence = max(stored.confidence, fact.confidence)
            stored.pattern = fact.pattern
        else:
            if stored is not None:
                log.info("update: (%s, %s) %r -> %r", fact.subject, fact.key_slot, stored.object, fact.object)
                del self._facts[key]  # an update is new information: it goes to the end (fifo)
            elif len(self._facts) >= self.config.max_facts:
                self._evict(turn)
            stored = self._new(fact, text, reply, turn)
            self._facts[key] = stored
        stored.importance = importance_score(self.config, stored.count, 0)
        return stored

    def superseded(self, fact: FactInfo) -> StoredFact | None:
        """The remembered fact `fact` would replace when stored (same subject and slot, another object: "Zara is my
        cousin." for "Zara is my sister."), or None."""
        stored = self.get(fact.subject, fact.key_slot)
        return stored if stored is not None and not _same_object(stored.object, fact.object) else None

    def drop_contradicted(self, fact: FactInfo) -> StoredFact | None:
        """Forget the fact `fact` contradicts object by object (`FactInfo.opposite`: "I love jazz." for "I hate
        jazz."), if remembered; `store` does it too, `OnlineLM` before the fact's step (its siblings and listed
        objects are then the facts still true).

        Returns:
            The dropped fact, or None.
        """
        if not fact.opposite:
            return None
        key = fact_key(fact.subject, key_slot(fact.opposite, fact.object, fact.many))
        if key not in self._facts or not _same_object(self._facts[key].object, fact.object):
            return None
        log.info("update: (%s, %s) dropped for %s", fact.subject, key[1], fact.key_slot)
        return self._facts.pop(key)

    def touch(self, fact: StoredFact, turn: int) -> None:
        """Record an access (replay or recall) of a stored fact, for LRU eviction.

        Raises:
            KeyError: if the fact is not in the memory.
        """
        stored = self._facts[fact.key]
        stored.last_access = max(stored.last_access, turn)

    def decay(self, turn: int) -> list[StoredFact]:
        """Refresh importances at `turn` and remove decaying facts below `min_importance`.

        Args:
            turn: the current turn.

        Returns:
            The removed facts.
        """
        self._refresh(turn)
        removed = [
            f
            for f in self._facts.values()
            if turn - f.last_turn > self.config.decay_after and f.importance < self.config.min_importance
        ]
        for f in removed:
            del self._facts[f.key]
            log.debug("decayed: (%s, %s) importance %.3f", f.subject, f.relation, f.importance)
        return removed

    def replay_candidates(self, turn: int, limit: int | None = None) -> list[StoredFact]:
        """The facts to replay at `turn`, ranked by `replay_order`, descending; ties keep insertion order.

        Args:
            turn: the current turn.
            limit: most facts to return; None uses `replay_limit`.

        Returns:
            Up to `limit` stored facts.

        Raises:
            ValueError: if `limit` is negative.
        """
        limit = self.config.replay_limit if limit is None else limit
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        self._refresh(turn)
        if self.config.replay_order == "spaced":
            return sorted(self._facts.values(), key=lambda f: -f.importance * max(turn - f.last_access, 0))[:limit]
        return sorted(self._facts.values(), key=lambda f: -f.importance)[:limit]

    def state_dict(self) -> dict[str, Any]:
        """The memory as plain types: {"version": int, "facts": [fact dicts in insertion order]}."""
        return {"version": STATE_VERSION, "facts": [asdict(f) for f in self._facts.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the memory with a `state_dict`; evicts down to `max_facts` if it holds more.

        Raises:
            ValueError: on a state that is not {"version", "facts": [...]}, an unknown version or malformed facts.
        """
        if not isinstance(state, dict) or not isinstance(state.get("facts"), list):
            raise ValueError('memory state must be {"version": ..., "facts": [...]}')
        version = state.get("version")
        if version not in (1, STATE_VERSION):
            raise ValueError(f"memory state version must be 1 or {STATE_VERSION}, got {version!r}")
        names = {f.name for f in fields(StoredFact)}
        facts: dict[tuple[str, str], StoredFact] = {}
        for i, raw in enumerate(state["facts"]):
            unknown = set(raw) - names
            if unknown:
                raise ValueError(f"memory state fact {i} has unknown fields {sorted(unknown)}")
            forgets = raw.get("forgets", [])
            if not isinstance(forgets, list) or not all(
                isinstance(r, list) and len(r) == 2 and all(isinstance(t, str) for t in r) for r in forgets
            ):
                raise ValueError(f"memory state fact {i}: forgets must be [question, answer] pairs, got {forgets!r}")
            try:
                fields_ = {**raw, "entities": list(raw.get("entities", [])), "forgets": [list(r) for r in forgets]}
                fact = StoredFact(**fields_)
            except TypeError as err:
                raise ValueError(f"memory state fact {i} is malformed: {err}") from None
            if version == 1:
                fact.slot = fact.relation
            facts[fact.key] = fact
        self._facts = facts
        turn = max((f.last_turn for f in facts.values()), default=0)
        if len(facts) > self.config.max_facts:
            log.warning("loaded %d facts into a memory of %d: evicting", len(facts), self.config.max_facts)
        while len(self._facts) > self.config.max_facts:
            self._evict(turn)

    def to_json(self, path: str | Path) -> None:
        """Write the `state_dict` as UTF-8 JSON to `path`."""
        Path(path).write_text(json.dumps(self.state_dict(), indent=2, ensure_ascii=False), encoding="utf-8")

    def load_json(self, path: str | Path) -> None:
        """Load a memory written by `to_json`."""
        self.load_state_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def carry_over(self, path: str | Path) -> int:
        """Load a memory written by `to_json` into a run whose turn clock starts again at 0 (a new run that
        continues from a saved adapter): every fact's turn counters move back by the newest one (a statement,
        replay or recall), so the facts' ages (importance, decay, replay spacing) are those they had when it was
        saved. Returns the number of facts loaded.

        Raises:
            ValueError: `path` is not a memory (unreadable, not JSON, unknown version, malformed facts).
        """
        try:
            self.load_json(path)
        except (OSError, ValueError) as err:  # JSON and UTF-8 decode errors are ValueErrors
            raise ValueError(f"{str(path)!r} is not a usable fact memory: {err}") from None
        shift = max((max(f.last_turn, f.last_access) for f in self._facts.values()), default=0)
        for f in self._facts.values():
            f.first_turn, f.last_turn, f.last_access = f.first_turn - shift, f.last_turn - shift, f.last_access - shift
        return len(self._facts)

    # ----------------------------------------------------------------- helpers
    def _new(self, fact: FactInfo, text: str, reply: str, turn: int) -> StoredFact:
        return StoredFact(
            subject=fact.subject, relation=fact.relation, object=fact.object, text=text, reply=reply,
            entities=list(fact.entities), question=fact.question(), count=1, first_turn=turn,
            last_turn=turn, last_access=turn, importance=0.0, confidence=fact.confidence, pattern=fact.pattern,
            slot=fact.slot or fact.relation, many=fact.many,
        )  # fmt: skip

    def _refresh(self, turn: int) -> None:
        for f in self._facts.values():
            f.importance = importance_score(self.config, f.count, turn - f.last_turn)

    def _eviction_score(self, fact: StoredFact, turn: int) -> float:
        """Lower is evicted first (fifo: all equal, so insertion order decides)."""
        policy = self.config.eviction
        if policy == "fifo":
            return 0.0
        if policy == "lru":
            return float(fact.last_access)
        importance = importance_score(self.config, fact.count, turn - fact.last_turn)
        if policy == "importance":
            return importance
        access = 0.5 ** (max(turn - fact.last_access, 0) / self.config.recency_half_life)
        w = self.config.eviction_importance_weight
        return w * importance + (1 - w) * access

    def _evict(self, turn: int) -> StoredFact:
        victim = min(self._facts.values(), key=lambda f: self._eviction_score(f, turn))  # first minimum
        del self._facts[victim.key]
        log.debug("evicted (%s): (%s, %s)", self.config.eviction, victim.subject, victim.slot)
        return victim
