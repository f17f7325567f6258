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


def param_groups(named: Iterable[tuple[str, torch.nn.Parameter]], lr: float, ratio_b: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: one at `lr` when `ratio_b` is 1, else the non-B parameters at `lr`
    and the B ones at `lr` × `ratio_b` (group ``name`` `B_GROUP`), each in the given order."""
    named = list(named)
    if ratio_b == 1.0:
        return [{"params": [p for _, p in named], "lr": lr, "base_lr": lr}]
    rest = [p for n, p in named if not is_lora_b(n)]
    b = [p for n, p in named if is_lora_b(n)]
    return [{"params": rest, "lr": lr, "base_lr": lr, "name": "lora_A"},
            {"params": b, "lr": lr * ratio_b, "base_lr": lr * ratio_b, "name": B_GROUP}]  # fmt: skip


def adamw(named: Iterable[tuple[str, torch.nn.Parameter]], settings: Any) -> torch.optim.AdamW:
    """The AdamW of `settings` (`olm.module.OptimSettings`) over the named trainable parameters."""
    return torch.optim.AdamW(
        param_groups(named, settings.lr, settings.lr_ratio_b),
        lr=settings.lr, betas=settings.betas, eps=settings.eps, weight_decay=settings.weight_decay,
    )  # fmt: skip


def group_lr(group: dict[str, Any], settings: Any) -> float:
    """The base lr `settings` give a parameter group of either layout."""
    return settings.lr * (settings.lr_ratio_b if group.get("name") == B_GROUP else 1.0)


def regroup_state(state: dict[str, Any], b_flags: Sequence[bool], ratio_b: float) -> dict[str, Any]:
    """A saved ``optimizer.state_dict()`` in the layout `param_groups` builds for `ratio_b`.

    Args:
        state: the saved state, one group (λ = 1 when saved) or two (LoRA+); returned as is when it
            already has the wanted layout or is not one of these two.
        b_flags: per trainable parameter, in the order the optimizer is built from, whether it is a
            LoRA B tensor.
        ratio_b: the λ of this run.

    Returns:
        The state (a new dict only when regrouped) with each parameter's moments under its index in
        the new layout; the groups' hyperparameters are copied from the saved first group (the caller
        then sets this run's lr per group, `group_lr`).
    """
    groups = state.get("param_groups") or []
    want_two = ratio_b != 1.0
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
