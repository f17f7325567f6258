"""Transcript: the chat, turn by turn, as TensorBoard text, plus the run's hyperparameters once.

Every `every_n_turns` trained turns the callback writes the last turn (`OnlineLM.last`: user
message, reply, context kind, detected fact, LR, loss, KL, CE) as a small markdown table under the
text tag ``transcript``, at the step of that turn; when training starts it writes the module's and
datamodule's hyperparameters under ``hparams`` (Lightning's HPARAMS tab holds them too, but only
as flat columns). TensorBoard (2.21) shows the last 100 text samples per tag unless started with
``tensorboard --logdir DIR --samples_per_plugin=text=100000``; ``text=0`` shows *none* (0 is
"unlimited" when events are loaded but a sample count of 0 when the text plugin serves them).

Only TensorBoard loggers are written to; with none the callback does nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from olm.turns import trained_turn, turn_step


def markdown_cell(value: Any, max_chars: int) -> str:
    """`value` as one markdown table cell: shortened to `max_chars`, pipes escaped, newlines as <br>."""
    text = str(value)
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def turn_markdown(turn: int, record: Any, max_chars: int) -> str:
    """A two-column markdown table of one turn's record (`OnlineLM.last`)."""
    rows = [
        ("turn", turn), ("user", record.user), ("reply", record.reply), ("kind", record.kind),
        ("fact", record.fact or "—"), ("lr", f"{record.lr:.3g}"), ("loss", f"{record.loss:.4f}"),
        ("kl", f"{record.kl:.4f}"), ("ce", f"{record.ce:.4f}"),
    ]  # fmt: skip
    return "\n".join(["| | |", "|---|---|"] + [f"| **{k}** | {markdown_cell(v, max_chars)} |" for k, v in rows])


def hparams_markdown(hparams: dict[str, Any], max_chars: int) -> str:
    """A markdown table of (possibly nested) hyperparameters, one row per leaf, keys joined by '.'."""
    rows = [f"| {k} | {markdown_cell(json.dumps(v, default=str), max_chars)} |" for k, v in _flatten(hparams)]
    return "\n".join(["| hyperparameter | value |", "|---|---|"] + rows)


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict) and value:
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, value)]


class Transcript(Callback):
    """Write the chat as TensorBoard text every `every_n_turns` turns and the hparams once.

    Args:
        every_n_turns: trained turns between transcript entries (1: every turn).
        max_chars: longer messages are shortened to this many characters.
        hparams: write the hyperparameters as text when training starts.
    """

    def __init__(self, every_n_turns: int = 1, max_chars: int = 2000, hparams: bool = True) -> None:
        problems = []
        if every_n_turns < 1:
            problems.append(f"every_n_turns must be >= 1, got {every_n_turns!r}")
        if max_chars < 16:
            problems.append(f"max_chars must be >= 16, got {max_chars!r}")
        if problems:
            raise ValueError("invalid Transcript settings: " + "; ".join(problems))
        self.every_n_turns, self.max_chars, self.hparams = every_n_turns, max_chars, hparams

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.hparams:
            return
        params: dict[str, Any] = {"model": dict(pl_module.hparams)}
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "hparams", None):
            params["data"] = dict(datamodule.hparams)
        params["trainer"] = {"max_epochs": trainer.max_epochs, "max_steps": trainer.max_steps,
                             "precision": str(trainer.precision)}  # fmt: skip
        self._write(trainer, "hparams", hparams_markdown(params, self.max_chars), pl_module.turns_trained)

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        if not trained_turn(outputs):  # the step that found the stream ended
            return
        turn = pl_module.turns_trained
        if pl_module.last is None or turn % self.every_n_turns != 0:
            return
        self._write(trainer, "transcript", turn_markdown(turn, pl_module.last, self.max_chars), turn_step(pl_module))

    @staticmethod
    def _write(trainer: L.Trainer, tag: str, text: str, step: int) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(tag, text, global_step=step)
