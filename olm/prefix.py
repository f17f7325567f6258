"""One forward for the prefix every row of a batch shares.

The rows of a learning step are chats rendered by one template: with smollm2-135m each starts with
the same ~20 tokens (the template's default system prompt and the user header) before its own text,
~40% of a fact's ~47-token examples and ~30% of a locality row. `shared_prefix_forward` runs that
prefix once (one row, with the KV cache), repeats its keys and values over the batch and runs only
the rest of each row on top. The logits are those of the plain padded forward (up to float
rounding), and so is the gradient: the prefix's positions, computed once, receive the sum of what
every row sends them. Pure functions; `OnlineLM.learn` (and the speed benchmark's minimal loop)
call them for the base forward and each step's adapter forwards.
"""

from __future__ import annotations

import torch

MIN_PREFIX = 4
"""Shorter common prefixes are not worth a second forward: the batch goes through one plain forward."""


def common_prefix_length(ids: torch.Tensor, attention: torch.Tensor) -> int:
    """Length of the longest token prefix all rows of a right-padded batch share, leaving every row at
    least one token of its own (so each row keeps a position after the prefix).

    Args:
        ids: (B, T) token ids.
        attention: (B, T) 1 on real tokens, 0 on the right padding.
    """
    if ids.shape[0] < 2:
        return 0
    shortest = int(attention.sum(1).min())
    same = (ids[:, :shortest] == ids[:1, :shortest]).all(0)
    differ = (~same).nonzero()
    length = int(differ[0]) if differ.numel() else shortest
    return max(0, min(length, shortest - 1))


def shared_prefix_forward(
    model, ids: torch.Tensor, attention: torch.Tensor, enabled: bool = True, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, T, V) logits of `model` over a right-padded batch, its rows' common prefix computed once.

    Args:
        model: a causal LM (a peft model included) that takes ``past_key_values`` and ``logits_to_keep``.
        ids: (B, T) token ids.
        attention: (B, T) attention mask.
        enabled: False (or a prefix under `MIN_PREFIX` tokens, or one row) = one plain forward.
        positions: (B, T) bool, optional: return only ``logits[positions]``, (N, V) in row-major order,
            the LM head applied to those positions alone (transformers' ``logits_to_keep`` as a mask).
            The locality term reads the ~24 reply positions of each ~60-token prompt: the head
            (49k × 576 on smollm2, a fifth of a forward's arithmetic) and the full-vocabulary
            tensors are not computed for the rest.
    """
    prefix = common_prefix_length(ids, attention) if enabled else 0
    if positions is not None and bool(positions[:, :prefix].any()):
        prefix = 0  # a read position inside the shared prefix: one plain forward keeps the row order simple
    if prefix < MIN_PREFIX:
        keep = {} if positions is None else {"logits_to_keep": positions}
        return model(input_ids=ids, attention_mask=attention, **keep).logits
    rows = ids.shape[0]
    # with `positions`, the prefix's own logits are not read: keep one (the head still fills the cache)
    head = model(
        input_ids=ids[:1, :prefix], attention_mask=attention[:1, :prefix], use_cache=True,
        **({} if positions is None else {"logits_to_keep": 1}),
    )  # fmt: skip
    cache = head.past_key_values
    cache.batch_repeat_interleave(rows)
    keep = {} if positions is None else {"logits_to_keep": positions[:, prefix:]}
    rest = model(input_ids=ids[:, prefix:], attention_mask=attention, past_key_values=cache, use_cache=True, **keep)
    if positions is not None:
        return rest.logits
    return torch.cat([head.logits.expand(rows, -1, -1), rest.logits], dim=1)
