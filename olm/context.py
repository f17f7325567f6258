"""Turn context and the policies that read it: learning-rate multiplier and dynamic KL λ.

A turn is one of four kinds: ``chat``, ``question``, ``fact`` (a stated fact) or ``replay``
(a remembered fact relearned). The policies are pure, table-driven functions of a `Context`
and a `ContextPolicy` whose values come from the config:

    lr multiplier = table[kind] · (1 + (count − 1) · boost_factor · repetition_multiplier),
                    clamped to [min_multiplier, max_multiplier]   (the boost only for facts)
    KL λ          = table[kind] for chat / question;
                    fact_λ · (1 − importance · importance_factor), clamped to [min_kl, max_kl]
                    for kinds that carry a fact (fact, replay)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["chat", "question", "fact", "replay"]
KINDS: tuple[str, ...] = ("chat", "question", "fact", "replay")
FACT_KINDS: tuple[str, ...] = ("fact", "replay")


@dataclass(frozen=True)
class Context:
    """What the policies know about a turn.

    Attributes:
        kind: chat, question, fact or replay.
        fact: the detected or remembered fact (`olm.facts.FactInfo` / `olm.memory.StoredFact`), if any.
        repetition: how many times this fact has been stated, this turn included (1 = first time).
        importance: the fact's importance in [0, 1] from the fact memory.
        more: the other facts stated in the same message (`detector.max_facts`), each as a fact context of
            its own, learned in fact steps of its own after this one's (`OnlineLM.training_step`).
        update: the fact replaces a remembered object of its subject and slot ("I moved to Berlin." after "I live
            in Porto.", `olm.memory.FactMemory.superseded`).
    """

    kind: Kind
    fact: Any = None
    repetition: int = 1
    importance: float = 0.0
    more: tuple[Context, ...] = ()
    update: bool = False


def _default_lr_table() -> dict[str, float]:
    return {"chat": 1.0, "question": 2.0, "fact": 5.0, "replay": 0.5}


def _default_kl_table() -> dict[str, float]:
    return {"chat": 0.1, "question": 0.1, "fact": 0.01, "replay": 0.01}


@dataclass
class ContextPolicy:
    """Learning-rate multipliers and KL weights per turn kind."""

    lr_multipliers: dict[str, float] = field(default_factory=_default_lr_table)
    """LR multiplier per kind (chat, question, fact, replay)."""
    boost_factor: float = 0.2
    """Repetition boost per extra statement of the same fact."""
    repetition_multiplier: float = 1.5
    """Scales the repetition boost."""
    min_multiplier: float = 0.1
    """Lower clamp of the LR multiplier."""
    max_multiplier: float = 10.0
    """Upper clamp of the LR multiplier."""
    kl_lambdas: dict[str, float] = field(default_factory=_default_kl_table)
    """KL λ per kind; for fact and replay it is the starting value fact_λ of the dynamic rule."""
    importance_factor: float = 0.5
    """How much a fact's importance lowers its KL λ."""
    min_kl: float = 0.001
    """Lower clamp of the dynamic KL λ."""
    max_kl: float = 0.1
    """Upper clamp of the dynamic KL λ."""

    def __post_init__(self) -> None:
        problems = []
        for name, table in (("lr_multipliers", self.lr_multipliers), ("kl_lambdas", self.kl_lambdas)):
            missing = [k for k in KINDS if k not in table]
            unknown = [k for k in table if k not in KINDS]
            negative = {k: v for k, v in table.items() if v < 0}
            if missing:
                problems.append(f"policy.{name} lacks kinds {missing}")
            if unknown:
                problems.append(f"policy.{name} has unknown kinds {unknown} (known: {list(KINDS)})")
            if negative:
                problems.append(f"policy.{name} must be >= 0, got {negative}")
        if not 0 < self.min_multiplier <= self.max_multiplier:
            problems.append(
                f"policy needs 0 < min_multiplier <= max_multiplier, got {self.min_multiplier!r}, {self.max_multiplier!r}"
            )
        if not 0 <= self.min_kl <= self.max_kl:
            problems.append(f"policy needs 0 <= min_kl <= max_kl, got {self.min_kl!r}, {self.max_kl!r}")
        for name in ("boost_factor", "repetition_multiplier", "importance_factor"):
            if getattr(self, name) < 0:
                problems.append(f"policy.{name} must be >= 0, got {getattr(self, name)!r}")
        if problems:
            raise ValueError("invalid context policy: " + "; ".join(problems))


def lr_multiplier(ctx: Context, policy: ContextPolicy) -> float:
    """The factor applied to the base learning rate for this turn's steps."""
    mult = policy.lr_multipliers[ctx.kind]
    if ctx.kind == "fact":
        mult *= 1 + (max(ctx.repetition, 1) - 1) * policy.boost_factor * policy.repetition_multiplier
    return min(max(mult, policy.min_multiplier), policy.max_multiplier)


def kl_lambda(ctx: Context, policy: ContextPolicy) -> float:
    """The KL(base ‖ adapter) weight for this turn."""
    lam = policy.kl_lambdas[ctx.kind]
    if ctx.kind in FACT_KINDS:
        lam *= 1 - ctx.importance * policy.importance_factor
        return min(max(lam, policy.min_kl), policy.max_kl)
    return lam
