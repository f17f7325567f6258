"""ImportanceWeighter: per-token weights of the task loss, so a fact's tokens count more.

Strategies (each switchable in `WeightingConfig.strategies`; each gives a factor per token,
1.0 where it has nothing to say):

- ``entity``: tokens overlapping an entity get `entity_weight`, tokens overlapping a fact term
  (the fact's subject and object) get `fact_weight` (the larger of the two where both apply).
  Terms are found in the rendered text as whole words (case-sensitive) and mapped to tokens
  through the fast tokenizer's offset mapping: a token is marked if its character span
  overlaps a term's span. Tokens are never decoded, so a name split into several BPE pieces
  ("Xi" "om" "ara") has every piece weighted and its neighbours none.
- ``position``: the first and last `position_tokens` tokens of the masked region (the loss
  targets; the whole sequence without a mask) get `position_weight` — the start of a reply and
  its end-of-turn token carry the form of an answer.
- ``repetition``: tokens whose id (or, without ids, whose text) occurs at least
  `repetition_min_count` times in the sequence get `repetition_weight`. The intent: what the
  reply restates from the user's message ("Zara is my sister." → "Got it. Zara is your
  sister.") is the content of the exchange, even when the detector found no fact. Only tokens
  with at least `repetition_min_chars` letters or digits count, and never the template markup
  in `repetition_skip`, so punctuation, one-letter fragments and ``<|im_start|>`` do not.

The factors combine by ``max`` (default: a fact token weighs `fact_weight`, not more) or by
``product`` (factors multiply; only there does a weight below 1 lower a token). With no
strategies every weight is 1.0.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

Strategy = Literal["entity", "position", "repetition"]
STRATEGIES: tuple[str, ...] = ("entity", "position", "repetition")
COMBINES: tuple[str, ...] = ("max", "product")
_ALNUM = re.compile(r"[^\W_]")


@dataclass
class WeightingConfig:
    """Which token-weighting strategies run and their weights."""

    strategies: list[Strategy] = field(default_factory=lambda: ["entity", "position", "repetition"])
    """Strategies to apply (entity, position, repetition); empty gives all-ones weights."""
    combine: Literal["max", "product"] = "max"
    """How the strategies' factors combine per token."""
    entity_weight: float = 3.0
    """Factor of tokens inside an entity (e.g. a name)."""
    fact_weight: float = 3.0
    """Factor of tokens inside a fact term (the fact's subject or object)."""
    position_tokens: int = 3
    """N: the first and last N tokens of the masked region are weighted (0 disables)."""
    position_weight: float = 1.5
    """Factor of those first / last tokens."""
    repetition_weight: float = 1.5
    """Factor of tokens that repeat in the sequence."""
    repetition_min_count: int = 2
    """Occurrences from which a token counts as repeated."""
    repetition_min_chars: int = 2
    """Letters or digits a token's text needs to count for repetition (skips fragments, punctuation)."""
    repetition_skip: list[str] = field(default_factory=lambda: ["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    """Token texts never counted as repeated: the chat template's markup."""

    def __post_init__(self) -> None:
        problems = []
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            problems.append(f"weighting.strategies has unknown {unknown} (known: {list(STRATEGIES)})")
        if len(set(self.strategies)) != len(self.strategies):
            problems.append(f"weighting.strategies has duplicates: {self.strategies!r}")
        if self.combine not in COMBINES:
            problems.append(f"weighting.combine must be one of {list(COMBINES)}, got {self.combine!r}")
        for name in ("entity_weight", "fact_weight", "position_weight", "repetition_weight"):
            if getattr(self, name) <= 0:
                problems.append(f"weighting.{name} must be > 0, got {getattr(self, name)!r}")
        if self.position_tokens < 0:
            problems.append(f"weighting.position_tokens must be >= 0, got {self.position_tokens!r}")
        if self.repetition_min_chars < 1:
            problems.append(f"weighting.repetition_min_chars must be >= 1, got {self.repetition_min_chars!r}")
        if self.repetition_min_count < 2:
            problems.append(f"weighting.repetition_min_count must be >= 2, got {self.repetition_min_count!r}")
        if problems:
            raise ValueError("invalid weighting config: " + "; ".join(problems))


def term_spans(text: str, terms: Sequence[str], ignore_case: bool = False) -> list[tuple[int, int]]:
    """Character spans of every whole-word occurrence of each term in `text` (case-sensitive unless
    `ignore_case`).

    Args:
        text: the rendered text.
        terms: strings to find; empty ones are ignored.
        ignore_case: match regardless of case.

    Returns:
        (start, end) spans, end exclusive.
    """
    spans = []
    for term in {t.strip() for t in terms if t and t.strip()}:
        pattern = re.compile(rf"(?<!\w){re.escape(term)}(?!\w)", re.IGNORECASE if ignore_case else 0)
        spans += [m.span() for m in pattern.finditer(text)]
    return spans


def tokens_overlapping(offsets: torch.Tensor, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """(T,) bool: tokens whose non-empty char span overlaps any of `spans`.

    Args:
        offsets: (T, 2) long tensor of token (start, end) char offsets.
        spans: (start, end) char spans, end exclusive.

    Returns:
        The (T,) mask.
    """
    starts, ends = offsets[:, 0], offsets[:, 1]
    hit = torch.zeros(offsets.shape[0], dtype=torch.bool)
    for a, b in spans:
        hit |= (starts < b) & (ends > a)
    return hit & (ends > starts)


class ImportanceWeighter:
    """Per-token importance weights aligned through the tokenizer's offset mapping.

    Args:
        config: weighting settings; None uses the defaults.
    """

    def __init__(self, config: WeightingConfig | None = None) -> None:
        self.config = config if config is not None else WeightingConfig()

    def weights(
        self,
        text: str,
        offsets: Sequence[tuple[int, int]],
        entities: Sequence[str],
        fact_terms: Sequence[str] = (),
        mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Weights of each token of a rendered text (base 1.0).

        Args:
            text: the rendered chat text.
            offsets: (T,) (start, end) char spans of the tokens in `text` (``return_offsets_mapping``).
            entities: entity strings (e.g. names) to weight with `entity_weight`.
            fact_terms: fact strings (subject, object) to weight with `fact_weight`.
            mask: (T,) loss-target mask (bool or 0/1); `position` counts within it. None = all tokens.
            input_ids: (T,) token ids for `repetition`; None compares the tokens' text instead.

        Returns:
            (T,) float32 weights.

        Raises:
            ValueError: if `mask` or `input_ids` does not have one entry per token.
        """
        num = len(offsets)
        for name, value in (("mask", mask), ("input_ids", input_ids)):
            if value is not None and len(value) != num:
                raise ValueError(f"{name} must have one entry per token ({num}), got {len(value)}")
        spans = torch.tensor(list(offsets), dtype=torch.long).reshape(num, 2)
        factors = [self._factor(s, text, spans, entities, fact_terms, mask, input_ids) for s in self.config.strategies]
        out = torch.ones(num, dtype=torch.float32)
        for factor in factors:
            out = torch.maximum(out, factor) if self.config.combine == "max" else out * factor
        return out

    def _factor(self, strategy, text, spans, entities, fact_terms, mask, input_ids) -> torch.Tensor:
        if strategy == "entity":
            return self.entity_factor(text, spans, entities, fact_terms)
        if strategy == "position":
            return self.position_factor(spans.shape[0], mask)
        return self.repetition_factor(text, spans, input_ids)

    def entity_factor(
        self, text: str, spans: torch.Tensor, entities: Sequence[str], fact_terms: Sequence[str]
    ) -> torch.Tensor:
        """(T,) factor: entity_weight / fact_weight on overlapping tokens, 1.0 elsewhere."""
        out = torch.ones(spans.shape[0], dtype=torch.float32)
        for terms, weight in ((entities, self.config.entity_weight), (fact_terms, self.config.fact_weight)):
            hit = tokens_overlapping(spans, term_spans(text, terms))
            out = torch.where(hit, torch.clamp(out, min=weight), out)
        return out

    def position_factor(self, num: int, mask: torch.Tensor | None) -> torch.Tensor:
        """(T,) factor: position_weight on the first / last N masked tokens, 1.0 elsewhere."""
        out = torch.ones(num, dtype=torch.float32)
        n = self.config.position_tokens
        index = torch.arange(num) if mask is None else torch.nonzero(torch.as_tensor(mask) > 0).flatten()
        if n == 0 or index.numel() == 0:
            return out
        out[index[:n]] = self.config.position_weight
        out[index[-n:]] = self.config.position_weight
        return out

    def repetition_factor(
        self, text: str, spans: torch.Tensor, input_ids: torch.Tensor | Sequence[int] | None
    ) -> torch.Tensor:
        """(T,) factor: repetition_weight on word tokens occurring >= repetition_min_count times."""
        pieces = [text[s:e] for s, e in spans.tolist()]
        ids = pieces if input_ids is None else [int(i) for i in input_ids]
        skip = set(self.config.repetition_skip)
        eligible = [len(_ALNUM.findall(p)) >= self.config.repetition_min_chars and p not in skip for p in pieces]
        counts = Counter(i for i, ok in zip(ids, eligible) if ok)
        repeated = [ok and counts[i] >= self.config.repetition_min_count for i, ok in zip(ids, eligible)]
        weight = torch.tensor(repeated, dtype=torch.bool).reshape(len(pieces))
        return torch.where(weight, self.config.repetition_weight, 1.0).to(torch.float32)
