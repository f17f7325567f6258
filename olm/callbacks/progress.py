"""The console of a batch run: a progress bar counted in turns, and a summary at the end.

`TurnProgressBar` is Lightning's tqdm bar with olm's unit: ``turns 120/300 [00:40, 3.0it/s, loss=1.234,
facts=4]`` — turns trained in all (a resumed run starts where it left off), the total when the
source is a file (`olm.data.count_turns`), the last turn's loss and the facts remembered; no epoch
(the stream, not the epoch, is the unit of work) and no ``v_num``. `cli.OlmCLI` adds it when
``trainer.enable_progress_bar`` is true and no other progress bar is configured.

`RunSummary` prints, when the run ends, the turns trained, the facts remembered, the input that was
skipped or cut, and where the adapter, the checkpoint and the logs were written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, _update_n
from lightning.pytorch.utilities import rank_zero_only

from olm.callbacks.checkpoint import AdapterCheckpoint, TurnCheckpoint
from olm.data import ChatStreamDataModule, count_turns
from olm.turns import trained_turn

log = logging.getLogger(__name__)

INPUT_SCALARS: dict[str, str] = {
    "data/truncated_tokens": "turns cut to objective.max_tokens",
    "data/no_reply_skipped": "turns without a logged reply skipped",
}
"""Logged counts of input problems the data module does not hold, with their summary wording."""


class TurnProgressBar(TQDMProgressBar):
    """tqdm progress in trained turns with the loss and the facts remembered (no epoch, no v_num)."""

    def __init__(self, refresh_rate: int = 1, process_position: int = 0) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)
        self.total: int | None = None

    @property
    def train_description(self) -> str:
        return "turns"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        datamodule = getattr(trainer, "datamodule", None)
        if isinstance(datamodule, ChatStreamDataModule):
            try:
                self.total = count_turns(datamodule.config)
            except OSError as err:  # the run reports the source's problems itself
                log.debug("no turn total for the progress bar: %s", err)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bar: Tqdm = self.train_progress_bar
        bar.reset(total=self.total)
        bar.initial = bar.n = pl_module.turns_trained  # a resumed run counts on; the rate is this run's
        bar.set_description(self.train_description)
        bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        if trained_turn(outputs) and self._should_update(pl_module.turns_trained, self.train_progress_bar.total):
            _update_n(self.train_progress_bar, pl_module.turns_trained)
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        last = getattr(pl_module, "last", None)
        if last is None:
            return {}
        return {"loss": f"{last.loss:.3f}", "facts": len(pl_module.memory)}


def summary_text(
    turns_run: int, turns_total: int, facts: int, inputs: dict[str, int], outputs: list[tuple[str, str]]
) -> str:
    """The end-of-run summary: turns, facts, input problems (those > 0), then one line per output."""
    problems = ", ".join(f"{n} {what}" for what, n in inputs.items() if n) or "none"
    lines = [
        f"olm: trained {turns_run} turns in this run ({turns_total} in all); {facts} facts remembered",
        f"  input skipped or cut: {problems}",
    ]
    width = max((len(what) for what, _ in outputs), default=0)
    lines += [f"  {what.ljust(width)}  {where}" for what, where in outputs]
    return "\n".join(lines)


class RunSummary(Callback):
    """Print what the run did and where its outputs are, once it has ended (after the final saves)."""

    def __init__(self) -> None:
        self.start_turns = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_turns = pl_module.turns_trained

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        turns = pl_module.turns_trained
        print(summary_text(turns - self.start_turns, turns, len(pl_module.memory), run_inputs(trainer, pl_module),
                           run_outputs(trainer)), flush=True)  # fmt: skip


def run_inputs(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int]:
    """Counts of the input skipped or cut so far (whole stream), by what happened."""
    inputs: dict[str, int] = {}
    datamodule = getattr(trainer, "datamodule", None)
    if isinstance(datamodule, ChatStreamDataModule):
        inputs["records or lines skipped"] = datamodule.skipped
        inputs[f"messages cut to {datamodule.config.max_message_chars} characters"] = datamodule.truncated
    latest = getattr(pl_module, "latest_scalars", {})
    inputs.update({what: int(latest[key]) for key, what in INPUT_SCALARS.items() if key in latest})
    return inputs


def run_outputs(trainer: L.Trainer) -> list[tuple[str, str]]:
    """(what, path) of the outputs written: adapter, checkpoint, recall report, TensorBoard logs."""
    outputs = []
    for cb in trainer.callbacks:
        users = getattr(trainer.lightning_module, "users", None)
        if isinstance(cb, AdapterCheckpoint) and users is not None and cb.last_saved_turn >= 0:
            outputs.append(("adapters", f"{cb.users_dir(trainer)}/<user>/latest  ({len(users.users)} users)"))
        elif isinstance(cb, AdapterCheckpoint) and (latest := cb.latest_dir(trainer)) is not None:
            outputs.append(("adapter", str(latest)))  # the newest version, <root>/latest names it too
        elif isinstance(cb, TurnCheckpoint) and cb.dirpath and (Path(cb.dirpath) / "last.ckpt").is_file():
            outputs.append(("checkpoint", str(Path(cb.dirpath) / "last.ckpt")))
    if trainer.loggers and trainer.log_dir:
        report = Path(trainer.log_dir) / "recall_report.md"
        if report.is_file():
            outputs.append(("recall report", str(report)))
        tensorboard = f"tensorboard --logdir {Path(trainer.log_dir).parent} --samples_per_plugin=text=100000"
        outputs.append(("logs", f"{trainer.log_dir}  ({tensorboard})"))
    return outputs
