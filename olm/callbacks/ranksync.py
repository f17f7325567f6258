"""RankSync: checks that every DDP rank holds the same adapter (opt-in; `olm.distributed`).

Each `every_n_steps` training steps the ranks all_gather a SHA-256 of their LoRA tensors' bytes
(`olm.distributed.adapter_digest`); ranks that differ stop the run with `RankDiverged`. Summed
gradients and identical optimizer steps keep the adapters bit-identical, so any difference is a bug
(a step one rank skipped, a rank that wrote its own weights). In a single process it does nothing.

    --trainer.callbacks+=olm.callbacks.RankSync
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from olm.distributed import adapter_digest, world
from olm.errors import RunError


class RankDiverged(RunError):
    """DDP ranks hold different adapters."""


class RankSync(Callback):
    """Raise `RankDiverged` when the ranks' adapters differ after a training step.

    Args:
        every_n_steps: training steps (rounds) between checks (1: after every step).
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.steps = 0
        self.checks = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        self.steps += 1
        if self.steps % self.every_n_steps == 0:
            self.check(pl_module, f"training step {self.steps}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(pl_module, "the end of training")

    def check(self, pl_module: L.LightningModule, when: str) -> None:
        """All-gather the adapter digests (every rank must call it); raise when they differ."""
        rank, size = world()
        if size == 1:
            return
        digests: list[Any] = [None] * size
        dist.all_gather_object(digests, adapter_digest(pl_module))
        self.checks += 1
        if len(set(digests)) > 1:
            groups = ", ".join(f"rank {r}: {d[:12]}" for r, d in enumerate(digests))
            raise RankDiverged(f"the DDP ranks' adapters differ after {when} ({groups})")
