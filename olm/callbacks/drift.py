"""DriftGuard: roll the adapter back when it drifts too far from the base on the anchor prompts.

Every `every_n_turns` trained turns the guard measures KL(base ‖ adapter) and the perplexity
ratio (adapter / base) on the anchor prompts (`olm.probes.AnchorProbe`, one batched forward;
the base pass is cached). Within bounds, it snapshots the LoRA tensors (and, by default, the
optimizer state); past a bound, it copies the last snapshot back into the adapter, so the
weights are bit-for-bit those of the last in-bounds check, and logs the event:

    stability/guard_kl, stability/guard_ppl_ratio   the values at each check
    stability/guard_rollbacks                       rollbacks so far (a step up marks one)
    time/monitor_drift_guard                        seconds the check took
    drift_guard (TensorBoard text)                  what tripped, and the turn restored

After every trained turn (not only every `every_n_turns`) it also checks, for the price of one
reduction over the LoRA tensors, that the adapter is finite and within the bound of
`olm.guards` (1e4 × the LoRA initial scale): a destroyed adapter (an absurd LR gives weights of
1e20) is rolled back at once, before any save could see it.

The first snapshot is taken when training starts. With per-user learning (`olm.users`) the guard
works on the active user's adapter and optimizer only: each user has its own snapshot (taken at
that user's in-bounds checks; before the first, the user's starting weights and a fresh optimizer
state), and a rollback restores the active user's alone — never another user's weights. The guard shares its anchor probe with a
StabilityMonitor using the same anchors: on a turn both check, one anchor pass serves both. Put
the guard before the monitor in ``trainer.callbacks`` so that the monitor sees the restored
adapter on a turn the guard rolls back::

    - class_path: olm.callbacks.DriftGuard
      init_args: {max_kl: 0.5, max_ppl_ratio: 1.5, every_n_turns: 10}
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from olm.callbacks.monitors import AnchorMetrics, shared_probe, weights_version
from olm.guards import adapter_problem
from olm.probes import AnchorProbe, load_anchors
from olm.turns import log_scalars, trained_turn, turn_step

log = logging.getLogger(__name__)


def _mine(name: str, adapter: str | None) -> bool:
    return "lora_" in name and (adapter is None or f".{adapter}." in name)


def lora_snapshot(model: torch.nn.Module, adapter: str | None = None) -> dict[str, torch.Tensor]:
    """Detached copies of every LoRA tensor of `model` (names containing "lora_"); of the peft
    adapter named `adapter` only, when given (per-user learning: the active user's)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if _mine(name, adapter)}


@torch.no_grad()
def restore_lora(model: torch.nn.Module, snapshot: dict[str, torch.Tensor], adapter: str | None = None) -> None:
    """Copy `snapshot` back into the LoRA tensors of `model` (of adapter `adapter` only, when given), in place.

    Raises:
        KeyError: the model has a LoRA tensor the snapshot lacks (the adapter changed shape).
    """
    for name, p in model.named_parameters():
        if _mine(name, adapter):
            p.copy_(snapshot[name])


def _active_adapter(pl_module: L.LightningModule) -> str | None:
    """With per-user learning, the active user's peft adapter (the guard's scope); else None (every LoRA tensor)."""
    users = getattr(pl_module, "users", None)
    return users.state.adapter if users is not None and users.active is not None else None


class DriftGuard(Callback):
    """Restore the last in-bounds adapter when anchor KL or perplexity ratio passes a bound.

    Args:
        max_kl: bound on KL(base ‖ adapter) on the anchors (nats per position); None: unchecked.
        max_ppl_ratio: bound on anchor perplexity adapter / base; None: unchecked.
        every_n_turns: trained turns between checks.
        anchors: anchor prompts, a file with one per line, or None for the bundled set.
        restore_optimizer: also restore the optimizer state (AdamW moments) of the snapshot, so
            the next steps do not push straight back along the drifting direction.
        cache_base: keep the base model's anchor log-probabilities after the first pass.
    """

    def __init__(
        self,
        max_kl: float | None = 0.5,
        max_ppl_ratio: float | None = 1.5,
        every_n_turns: int = 10,
        anchors: str | list[str] | None = None,
        restore_optimizer: bool = True,
        cache_base: bool = True,
    ) -> None:
        problems = []
        if max_kl is None and max_ppl_ratio is None:
            problems.append("set max_kl or max_ppl_ratio (both are None)")
        if max_kl is not None and max_kl <= 0:
            problems.append(f"max_kl must be > 0 or None, got {max_kl!r}")
        if max_ppl_ratio is not None and max_ppl_ratio <= 1:
            problems.append(f"max_ppl_ratio must be > 1 or None, got {max_ppl_ratio!r}")
        if every_n_turns < 1:
            problems.append(f"every_n_turns must be >= 1, got {every_n_turns!r}")
        if problems:
            raise ValueError("invalid DriftGuard settings: " + "; ".join(problems))
        self.max_kl, self.max_ppl_ratio, self.every_n_turns = max_kl, max_ppl_ratio, every_n_turns
        self.restore_optimizer, self.cache_base = restore_optimizer, cache_base
        self.prompts = load_anchors(anchors)
        self.anchor = AnchorMetrics()
        self.probe: AnchorProbe | None = None
        self.snapshot: dict[str, torch.Tensor] = {}
        self.optimizer_snapshot: dict[str, Any] | None = None
        self.user_snapshots: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any] | None, int]] = {}
        """Per-user learning: adapter name → (LoRA tensors, optimizer state, turn) of its last in-bounds check."""
        self.rollbacks, self.last_good_turn, self.last_check_turn = 0, -1, -1
        self.latest: dict[str, float] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.probe = shared_probe(pl_module, self.prompts, self.cache_base)
        self.probe.invalidate()  # a new trainer restarts global_step: no pass of an earlier fit is reused

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.anchor.to(pl_module.device)
        stats = self.anchor.measure(self.probe, pl_module.model, weights_version(trainer))
        if problems := self.violations(stats):
            log.warning("DriftGuard: the adapter is already out of bounds at the start (%s); it is the "
                        "state rollbacks return to", "; ".join(problems))  # fmt: skip
        self.take_snapshot(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        if not trained_turn(outputs):  # the step that found the stream ended
            return
        if (problem := adapter_problem(pl_module.model)) is not None:
            self.roll_back(trainer, pl_module, [f"adapter destroyed: {problem}"])
            return
        turn = pl_module.turns_trained
        if turn > 0 and turn % self.every_n_turns == 0 and turn != self.last_check_turn:
            self.check(trainer, pl_module)

    def violations(self, stats: dict[str, float]) -> list[str]:
        """Which bounds `stats` (from `AnchorMetrics.measure`) passes, in words; [] within bounds."""
        out = []
        if self.max_kl is not None and not stats["kl"] <= self.max_kl:  # NaN counts as a violation
            out.append(f"anchor KL {stats['kl']:.4g} > max_kl {self.max_kl:g}")
        if self.max_ppl_ratio is not None and not stats["ppl_ratio"] <= self.max_ppl_ratio:
            out.append(f"anchor perplexity ratio {stats['ppl_ratio']:.4g} > max_ppl_ratio {self.max_ppl_ratio:g}")
        return out

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Measure; snapshot when within bounds, roll back otherwise. Returns True when within."""
        assert self.probe is not None, "check() runs after on_fit_start"
        start = time.perf_counter()
        stats = self.anchor.measure(self.probe, pl_module.model, weights_version(trainer))
        self.last_check_turn = pl_module.turns_trained
        problems = self.violations(stats)
        if problems:
            self.roll_back(trainer, pl_module, problems)
        else:
            self.take_snapshot(trainer, pl_module)
        self.latest = {"stability/guard_kl": stats["kl"], "stability/guard_ppl_ratio": stats["ppl_ratio"],
                       "stability/guard_rollbacks": float(self.rollbacks),
                       "time/monitor_drift_guard": time.perf_counter() - start}  # fmt: skip
        log_scalars(trainer, self.latest, turn_step(pl_module))
        return not problems

    def take_snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Remember the current adapter (and optimizer state) as the last in-bounds state."""
        if (adapter := _active_adapter(pl_module)) is not None:
            opt = copy.deepcopy(pl_module.users.optimizer.state_dict()) if self.restore_optimizer else None
            self.user_snapshots[adapter] = (lora_snapshot(pl_module.model, adapter), opt, pl_module.turns_trained)
            self.last_good_turn = pl_module.turns_trained
            return
        self.snapshot = lora_snapshot(pl_module.model)
        if self.restore_optimizer and trainer.optimizers:
            self.optimizer_snapshot = copy.deepcopy(trainer.optimizers[0].state_dict())
        self.last_good_turn = pl_module.turns_trained

    def roll_back(self, trainer: L.Trainer, pl_module: L.LightningModule, problems: list[str]) -> None:
        """Copy the last snapshot back into the adapter and log the event."""
        if (adapter := _active_adapter(pl_module)) is not None:
            self._roll_back_user(pl_module, adapter)
        else:
            restore_lora(pl_module.model, self.snapshot)
        if self.probe is not None:
            self.probe.invalidate()  # same optimizer step, different weights
        if adapter is None and self.restore_optimizer and self.optimizer_snapshot is not None and trainer.optimizers:
            trainer.optimizers[0].load_state_dict(copy.deepcopy(self.optimizer_snapshot))
        self.rollbacks += 1
        message = (f"turn {pl_module.turns_trained}: {'; '.join(problems)}: adapter restored to its state "
                   f"after turn {self.last_good_turn} (rollback {self.rollbacks})")  # fmt: skip
        log.warning("DriftGuard: %s", message)
        self._log_text(trainer, message, turn_step(pl_module))

    def _roll_back_user(self, pl_module: L.LightningModule, adapter: str) -> None:
        """The active user's adapter (and optimizer) back to its last snapshot, else to its start."""
        users = pl_module.users
        saved = self.user_snapshots.get(adapter)
        if saved is None:  # no in-bounds check of this user yet: its starting weights, a fresh optimizer
            start = {n.replace(".default.", f".{adapter}."): t for n, t in users.template.items()}
            saved = (start, None, -1)
            if self.restore_optimizer:
                users.optimizer.state.clear()
        restore_lora(pl_module.model, saved[0], adapter)
        if self.restore_optimizer and saved[1] is not None:
            users.optimizer.load_state_dict(copy.deepcopy(saved[1]))
        self.last_good_turn = saved[2]

    @rank_zero_only
    def _log_text(self, trainer: L.Trainer, message: str, step: int) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("drift_guard", message, global_step=step)

    def state_dict(self) -> dict[str, Any]:
        return {"rollbacks": self.rollbacks, "last_good_turn": self.last_good_turn,
                "last_check_turn": self.last_check_turn}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rollbacks = int(state_dict["rollbacks"])
        self.last_good_turn = int(state_dict["last_good_turn"])
        self.last_check_turn = int(state_dict["last_check_turn"])
