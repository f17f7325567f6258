"""The AdamW that `OnlineLM.learn` steps, with LoRA+ learning rates, and its saved state across settings.

LoRA+ (Hayou, Ghosh & Yu, 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models"): PEFT starts
``lora_B`` at zero, so the first steps of a fresh adapter change its output only as fast as B grows;
training B with a larger learning rate than A (their ratio λ, 16 in the paper) learns faster at the
same A step. With ``optim.lr_ratio_b`` = λ ≠ 1 the optimizer has two parameter groups: every
trainable parameter but B at ``lr`` and the ``lora_B`` tensors at ``lr × λ`` (each group's
``base_lr``; a turn's lr is base_lr × its context multiplier, `OnlineLM._set_lr`). With λ = 1 it is
one group, as before LoRA+ existed, so checkpoints of either shape stay loadable:
`regroup_state` moves a saved optimizer state (moments and all) between the one-group and two-group
layouts when the setting changed between runs.

A fresh adapter is where B's zero start costs most: its output moves only as fast as B·A grows from
nothing, while an adapter that already holds facts has a B that every A step acts through at once.
``optim.fresh_ratio_b`` = λ₀ gives B a larger ratio while the adapter's fact memory is nearly empty,
falling linearly to ``lr_ratio_b`` = λ as it fills (`b_ratio`):

    ratio(n) = λ + (λ₀ − λ) · max(0, 1 − n / fresh_facts)      n = facts in the (active user's) memory

so a person's first facts are learned at LoRA+ speed, and a memory of many facts, where a fast B
overwrites the facts it already holds, at λ. The step's B group then runs at base_lr × ratio(n) / λ
(`b_factor`). Two groups whenever λ ≠ 1 or λ₀ ≠ λ (`two_groups`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch

B_GROUP = "lora_B"
"""``name`` of the parameter group holding the LoRA B tensors (two-group layout only)."""


def is_lora_b(name: str) -> bool:
    """Whether the parameter called `name` is a LoRA B matrix (PEFT's ``...lora_B.<adapter>.weight``)."""
    return ".lora_B." in name or name.startswith("lora_B.")


def fresh_ratio(settings: Any) -> float:
    """λ₀ of `settings` (`olm.module.OptimSettings`): ``fresh_ratio_b``, or λ when it is unset."""
    return settings.lr_ratio_b if settings.fresh_ratio_b is None else settings.fresh_ratio_b


def two_groups(settings: Any) -> bool:
    """Whether `settings` give B a learning rate of its own."""
    return settings.lr_ratio_b != 1.0 or fresh_ratio(settings) != settings.lr_ratio_b


def b_ratio(settings: Any, n_facts: int) -> float:
    """B's lr ratio for an adapter whose memory holds `n_facts` facts (module docstring)."""
    fill = max(0.0, 1.0 - n_facts / settings.fresh_facts)
    return settings.lr_ratio_b + (fresh_ratio(settings) - settings.lr_ratio_b) * fill


def b_factor(settings: Any, n_facts: int) -> float:
    """The factor on the B group's base lr (lr × `lr_ratio_b`) for a step at `n_facts` facts."""
    return b_ratio(settings, n_facts) / settings.lr_ratio_b


def param_groups(
    named: Iterable[tuple[str, torch.nn.Parameter]], lr: float, ratio_b: float, split: bool | None = None
) -> list[dict[str, Any]]:
    """AdamW parameter groups: one at `lr` when not `split` (default: `ratio_b` ≠ 1), else the non-B
    parameters at `lr` and the B ones at `lr` × `ratio_b` (group ``name`` `B_GROUP`), each in the given order."""
    named = list(named)
    if split is None:
        split = ratio_b != 1.0
    if not split:
        return [{"params": [p for _, p in named], "lr": lr, "base_lr": lr}]
    rest = [p for n, p in named if not is_lora_b(n)]
    b = [p for n, p in named if is_lora_b(n)]
    return [{"params": rest, "lr": lr, "base_lr": lr, "name": "lora_A"},
            {"params": b, "lr": lr * ratio_b, "base_lr": lr * ratio_b, "name": B_GROUP}]  # fmt: skip


def adamw(named: Iterable[tuple[str, torch.nn.Parameter]], settings: Any) -> torch.optim.AdamW:
    """The AdamW of `settings` (`olm.module.OptimSettings`) over the named trainable parameters."""
    return torch.optim.AdamW(
        param_groups(named, settings.lr, settings.lr_ratio_b, two_groups(settings)),
        lr=settings.lr, betas=settings.betas, eps=settings.eps, weight_decay=settings.weight_decay,
    )  # fmt: skip


def group_lr(group: dict[str, Any], settings: Any) -> float:
    """The base lr `settings` give a parameter group of either layout."""
    return settings.lr * (settings.lr_ratio_b if group.get("name") == B_GROUP else 1.0)


def regroup_state(state: dict[str, Any], b_flags: Sequence[bool], want_two: bool) -> dict[str, Any]:
    """A saved ``optimizer.state_dict()`` in the layout `param_groups` builds: two groups when `want_two`.

    Args:
        state: the saved state, one group (λ = 1 when saved) or two (LoRA+); returned as is when it
            already has the wanted layout or is not one of these two.
        b_flags: per trainable parameter, in the order the optimizer is built from, whether it is a
            LoRA B tensor.
        want_two: this run's layout (`two_groups`).

    Returns:
        The state (a new dict only when regrouped) with each parameter's moments under its index in
        the new layout; the groups' hyperparameters are copied from the saved first group (the caller
        then sets this run's lr per group, `group_lr`).
    """
    groups = state.get("param_groups") or []
    if len(groups) == (2 if want_two else 1) or len(groups) not in (1, 2):
        return state
    n = len(b_flags)
    if sum(len(g["params"]) for g in groups) != n:
        return state  # not this model's optimizer: loading it raises the usual mismatch error
    rest = [i for i in range(n) if not b_flags[i]]
    b = [i for i in range(n) if b_flags[i]]
    # the parameter (position in b_flags) each saved index stands for
    if len(groups) == 1:
        position = dict(zip(groups[0]["params"], range(n)))
    else:
        position = {**dict(zip(groups[0]["params"], rest)), **dict(zip(groups[1]["params"], b))}
    layout = [rest, b] if want_two else [list(range(n))]
    new_index = {p: i for i, p in enumerate(q for group in layout for q in group)}
    out = copy.copy(state)
    out["state"] = {new_index[position[k]]: v for k, v in state.get("state", {}).items()}
    base = {k: v for k, v in groups[0].items() if k not in ("params", "name")}
    new_groups, start = [], 0
    for j, members in enumerate(layout):
        group = {**base, "params": list(range(start, start + len(members)))}
        if want_two:
            group["name"] = B_GROUP if j == 1 else "lora_A"
        new_groups.append(group)
        start += len(members)
    out["param_groups"] = new_groups
    return out
