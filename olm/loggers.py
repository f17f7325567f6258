"""TurnLogger: Lightning's TensorBoardLogger, writing each `log_metrics` call as one event.

Lightning's logger writes every scalar as an event of its own (``SummaryWriter.add_scalar``: a
summary, an event, a queue put, a write by the writer thread). olm logs ~30 scalars a turn, so that
was the largest fixed cost of a turn outside ``training_step`` on the tiny model (4.5 ms of a 72 ms
turn on the loaded 2-core machine: ``python -m olm.bench speed``, phase ``logger``). Here the
scalars of one call go into one summary of one event, which TensorBoard reads exactly as the same
scalars logged apart (same tags, steps and values; `olm.report` reads them alike). Dict values
(``add_scalars``) and everything else (hyperparameters, text, graphs) are the parent's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.fabric.utilities.logger import _add_prefix
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor


class TurnLogger(TensorBoardLogger):
    """TensorBoard logger that writes the scalars of one `log_metrics` call as one event (same
    arguments as Lightning's `TensorBoardLogger`)."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        values, nested = [], {}
        for key, value in metrics.items():
            value = value.item() if isinstance(value, Tensor) else value
            if isinstance(value, dict):
                nested[key] = value
                continue
            try:
                values.append(Summary.Value(tag=key, simple_value=float(value)))
            except (TypeError, ValueError) as ex:
                raise ValueError(f"cannot log {key}={value!r}: log a number, a 0-d tensor or a dict") from ex
        if values:
            # the writer add_scalar itself uses (SummaryWriter keeps it private; reopened if closed)
            self.experiment._get_file_writer().add_summary(Summary(value=values), step)
        for key, value in nested.items():
            self.experiment.add_scalars(key, value, step)
