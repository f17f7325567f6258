"""The turn as the unit of the run: which batch-end hooks trained a turn, and logging per turn.

Lightning's step counters count optimizer steps and loop iterations; olm's callbacks reason in
trained turns. These helpers keep that translation in one place.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only


def trained_turn(outputs: Any) -> bool:
    """Whether the training_step whose batch-end hooks run now trained a turn.

    False for the last step of a run, which found the stream ended: Lightning's manual
    optimization swallows its StopIteration and still calls `on_train_batch_end` (outputs {}).
    """
    return bool(outputs)


def crossed(pl_module: L.LightningModule, every: int) -> bool:
    """Whether the last training step brought ``turns_trained`` to a multiple of `every` or past one
    (False for ``every`` 0). One process trains one turn a step, so this is ``turns % every == 0``;
    under DDP one step trains a turn on each rank and the global count may jump over the multiple
    (`OnlineLM.round_start_turns`, set by `olm.distributed.Lockstep`, is the count before the step)."""
    now = int(pl_module.turns_trained)
    before = getattr(pl_module, "round_start_turns", None)
    before = now - 1 if before is None else int(before)
    return bool(every) and now > before and now // every > before // every


def turn_step(pl_module: L.LightningModule) -> int:
    """The logger step of the last trained turn (the module logs turn k at step k − 1)."""
    return max(int(pl_module.turns_trained) - 1, 0)


@rank_zero_only
def log_scalars(trainer: L.Trainer, scalars: dict[str, float], step: int) -> None:
    """Write `scalars` to every logger of `trainer` at `step`.

    For values logged only on some turns: `LightningModule.log` would re-log their cached value,
    stale, on every later step. The values are also kept in the module's ``latest_scalars`` (when
    it has one: `OnlineLM` does), the latest value of every key, which chat's /stats shows.
    """
    for logger in trainer.loggers:
        logger.log_metrics(scalars, step=step)
    latest = getattr(trainer.lightning_module, "latest_scalars", None)
    if isinstance(latest, dict):
        latest.update(scalars)
