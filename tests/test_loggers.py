"""TurnLogger: one event per log_metrics call, read back by TensorBoard as the same scalars as
Lightning's TensorBoardLogger writes one event per scalar."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from olm.loggers import TurnLogger


def scalars_of(logger) -> dict[str, list[tuple[int, float]]]:
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_turn_logger_writes_what_tensorboard_logger_writes(tmp_path):
    turns = [
        {"turn/loss": 2.5, "turn/kl": torch.tensor(0.125), "time/turn": 0.03},
        {"turn/loss": 1.5, "stability/ppl": 7},  # a key logged on some turns only
        {"pair": {"a": 1.0, "b": 2.0}},  # dict values take the parent's add_scalars
    ]
    ours, lightning = TurnLogger(tmp_path, name="ours"), TensorBoardLogger(tmp_path, name="lightning")
    for step, metrics in enumerate(turns):
        ours.log_metrics(metrics, step=step)
        lightning.log_metrics(metrics, step=step)
    got = scalars_of(ours)
    assert got == scalars_of(lightning)
    assert got["turn/loss"] == [(0, 2.5), (1, 1.5)] and got["stability/ppl"] == [(1, 7.0)]
    [events_file] = Path(ours.log_dir).glob("events.out.tfevents.*")
    events = [e for e in EventFileLoader(str(events_file)).Load() if e.HasField("summary")]
    assert [len(e.summary.value) for e in events] == [3, 2]  # one event per call (the dict goes apart)


def test_turn_logger_rejects_what_is_not_a_number(tmp_path):
    with pytest.raises(ValueError, match="cannot log turn/x='text'"):
        TurnLogger(tmp_path, name="bad").log_metrics({"turn/x": "text"}, step=0)
