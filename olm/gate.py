"""Known-fact gate: a fact or replay step trains only on facts the adapted model does not know yet.

Every edit moves the adapter a little outside the directions the locality term protects (README, Fact
acquisition: after 60 more fact turns general-knowledge QA kept falls from 0.91 to 0.84). A fact the
model already answers needs no more edits: a repeated statement, or a replay of a fact still
recalled, then costs one forward instead of `steps` forwards and backwards, and moves nothing.

"Already answers" is measured where the answer has to come from the weights: on the fact's templated
Q/A pairs (`olm.augment`, rotated with the statement count, so a repeated statement brings phrasings
the fact was not trained on yet) whose question does not contain the answer, at the tokens that spell
the answer (`answer_mask`: "chef" in "Chako works as a chef."). The fact is known when every such
token of every such pair gets probability >= the threshold under teacher forcing. Not measured: the
rest of the answer sentence (its form: "works as a" against "is a"), a paraphrase's
acknowledgement (it copies the object from the statement before it), the exchange (a logged reply is
someone else's text).

Pure functions; `OnlineLM.learn` applies them before each step (`optim.skip_known`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch


def answer_mask(text: str, offsets: Sequence[tuple[int, int]], loss_mask: torch.Tensor, question: str, answer: str) -> torch.Tensor | None:
    """(T,) bool: the target tokens that overlap an occurrence of `answer` in `text`, or None when
    `question` contains the answer (nothing to recall) or no target token spells it.

    Args:
        text: the rendered exchange; `offsets`: each token's (start, end) char span in it.
        loss_mask: (T,) bool; the task targets (the reply).
        question: the user's message; `answer`: the fact's object ("chef").
    """
    needle = answer.strip().lower()
    if not needle or needle in question.lower():
        return None
    low, spans, start = text.lower(), [], 0
    while (i := low.find(needle, start)) >= 0:
        spans.append((i, i + len(needle)))
        start = i + 1
    mask = torch.tensor([any(s < e2 and s2 < e for s2, e2 in spans) for s, e in offsets], dtype=torch.bool)
    mask &= loss_mask.bool()
    return mask if bool(mask.any()) else None


def target_min_p(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) the smallest probability each row gives one of its `mask`ed target tokens (1.0 for a row without).

    Args:
        logits: (B, T, V) logits over `input_ids` (position t predicts token t + 1).
        input_ids: (B, T) token ids.
        mask: (B, T) bool; the tokens, as targets, to measure.
    """
    log_p = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return log_p.masked_fill(~mask[:, 1:].bool(), 0.0).amin(dim=1).exp()


def known_rows(min_p: torch.Tensor, measured: Sequence[bool], groups: Sequence[Hashable], threshold: float) -> torch.Tensor:
    """(B,) bool: rows of facts the model already knows.

    A group (the rows of one fact) is known when it has at least one measured row and every measured
    row's `min_p` is >= `threshold`; all its rows, the exchange included, are then known.

    Args:
        min_p: (B,) `target_min_p` of each row.
        measured: per row, whether it has answer tokens to measure (`Example.answer_mask`).
        groups: per row, the fact it belongs to (any hashable key).
        threshold: probability every measured token must reach; <= 0 marks nothing known.
    """
    if not len(min_p) == len(measured) == len(groups):
        raise ValueError(f"min_p, measured and groups differ in length: {len(min_p)}, {len(measured)}, {len(groups)}")
    if threshold <= 0:
        return torch.zeros(len(groups), dtype=torch.bool)
    known: dict[Hashable, bool] = {}
    for p, m, g in zip(min_p.tolist(), measured, groups):
        if m:
            known[g] = known.get(g, True) and p >= threshold
    return torch.tensor([known.get(g, False) for g in groups], dtype=torch.bool)


def batch_answer_mask(examples: Sequence, width: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, list[bool]]:
    """The `answer_mask`s of a right-padded batch of `olm.render.Example`s: a (B, width) bool mask
    (False where an example has none, and on padding) and, per row, whether it has one."""
    mask = torch.zeros(len(examples), width, dtype=torch.bool)
    for i, e in enumerate(examples):
        if e.answer_mask is not None:
            mask[i, : e.num_tokens] = e.answer_mask
    return mask.to(device), [e.answer_mask is not None for e in examples]
