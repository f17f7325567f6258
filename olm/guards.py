"""Whether LoRA weights are usable: finite, and within a bound set by their initial scale.

"Finite" alone lets a destroyed adapter through (``--model.optim.lr 1e6`` gives finite weights of
1e20). PEFT initialises ``lora_A`` Kaiming-uniform, ``|w| <= 1/sqrt(fan_in)`` (fan_in: the adapted
layer's input width), and ``lora_B`` at 0. The bound on a LoRA tensor is ``LORA_BOUND_FACTOR /
sqrt(fan_in)`` with fan_in its last dimension (the input width for A, the rank for B): ten thousand
times the largest value A starts with. AdamW moves a weight by about lr × multiplier per step, and
weight decay pulls it back, so training at any LR that learns stays orders of magnitude below it
(olm-tiny after the whole benchmark: below 1), while a diverged run passes it at its first steps.

Used on a loaded checkpoint (`olm.callbacks.checkpoint.checkpoint_problem`: an unusable one is
not resumed, ``previous.ckpt`` is tried), before every save (a destroyed adapter stops the run
instead of being saved) and after every turn by the `DriftGuard` (which rolls back).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

LORA_BOUND_FACTOR = 1e4
"""A LoRA tensor may reach this many times 1/sqrt(its last dimension); beyond, the adapter is destroyed."""


def lora_bound(tensor: torch.Tensor) -> float:
    """The largest |w| a usable LoRA tensor holds (see the module docstring)."""
    fan_in = tensor.shape[-1] if tensor.dim() else 1
    return LORA_BOUND_FACTOR / math.sqrt(max(1, fan_in))


@torch.no_grad()
def lora_problem(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """None when every LoRA tensor (a name containing ``lora_``) is finite and within `lora_bound`,
    else what is wrong with the first that is not, in words. One host sync when all is well."""
    items = [(name, t.detach()) for name, t in named if "lora_" in name and t.numel()]
    if not items:
        return None
    ratios = torch.stack([t.abs().amax().float() / lora_bound(t) for _, t in items])
    worst = float(ratios.max())  # NaN propagates: it fails the test below
    if worst <= 1.0:
        return None
    for (name, t), ratio in zip(items, ratios.tolist()):
        if not torch.isfinite(t).all():
            return f"{name} holds NaN/inf"
        if not ratio <= 1.0:
            return f"{name} reaches |w| = {float(t.abs().amax()):.3g}, over its bound {lora_bound(t):.3g}"
    return None  # pragma: no cover - worst > 1 names one of them


def adapter_problem(module: torch.nn.Module) -> str | None:
    """`lora_problem` of a model's parameters."""
    return lora_problem(module.named_parameters())
