"""Known-fact gate: a fact or replay step trains only on facts the adapted model does not know yet.

Every edit moves the adapter a little outside the directions the locality term protects (README, Fact
acquisition: after 60 more fact turns general-knowledge QA kept falls from 0.91 to 0.84). A fact the
model already answers needs no more edits: a repeated statement, or a replay of a fact still
recalled, then costs one forward instead of `steps` forwards and backwards, and moves nothing.

"Already answers" is measured on the fact's *templated* examples (`Example.templated`: the Q/A pairs
and paraphrases `olm.augment` builds, rotated with the statement count, so a repeated statement
brings phrasings the fact was not trained on yet): the fact is known when every task target of
every such example (the answer's tokens and, with `augment.train_end`, its end-of-turn markup) gets
probability >= the threshold under teacher forcing. The exchange itself is not measured: a logged
reply is someone else's text, which no model predicts token by token.

Pure functions on logits; `OnlineLM.learn` applies them before each step (`optim.skip_known`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch


def target_min_p(logits: torch.Tensor, input_ids: torch.Tensor, loss_weights: torch.Tensor) -> torch.Tensor:
    """(B,) the smallest probability each row gives one of its task targets (1.0 for a row without).

    Args:
        logits: (B, T, V) logits over `input_ids` (position t predicts token t + 1).
        input_ids: (B, T) token ids.
        loss_weights: (B, T) weight of each token as a target (0 = not a target).
    """
    log_p = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    targets = loss_weights[:, 1:] > 0
    return log_p.masked_fill(~targets, 0.0).amin(dim=1).exp()


def known_rows(
    min_p: torch.Tensor, templated: Sequence[bool], groups: Sequence[Hashable], threshold: float
) -> torch.Tensor:
    """(B,) bool: rows of facts the model already knows.

    A group (the rows of one fact) is known when it has at least one templated row and every
    templated row's `min_p` is >= `threshold`; all its rows, the exchange included, are then known.

    Args:
        min_p: (B,) `target_min_p` of each row.
        templated: per row, whether it is a templated example (measured) or not (the exchange).
        groups: per row, the fact it belongs to (any hashable key).
        threshold: probability every templated target must reach; <= 0 marks nothing known.
    """
    if not len(min_p) == len(templated) == len(groups):
        raise ValueError(f"min_p, templated and groups differ in length: {len(min_p)}, {len(templated)}, {len(groups)}")
    if threshold <= 0:
        return torch.zeros(len(groups), dtype=torch.bool)
    known: dict[Hashable, bool] = {}
    for p, measured, g in zip(min_p.tolist(), templated, groups):
        if measured:
            known[g] = known.get(g, True) and p >= threshold
    return torch.tensor([known.get(g, False) for g in groups], dtype=torch.bool)
