"""Checkpoints of the online run: the resume state (TurnCheckpoint) and the portable adapter.

TurnCheckpoint is Lightning's ModelCheckpoint counted in *trained turns* (global_step counts
optimizer steps, which replay and steps_per_fact multiply) that also saves when training ends,
so an exhausted log or a /quit always leaves its final state in ``last.ckpt``. Lightning writes
it through an fsspec transaction (temporary file, then move), so a crash mid-write leaves the
previous checkpoint intact. Its contents: LoRA weights only, optimizer, fact memory, stream position.

AdapterCheckpoint writes the portable artifact — a PEFT adapter directory plus the fact memory.

Writes ``<dirpath>/adapter_config.json`` + ``adapter_model.safetensors`` (loadable as-is with
``PeftModel.from_pretrained(base, dirpath)``) and ``memory.json`` every `every_n_turns` trained
turns and when training ends. The directory is written beside the old one and swapped in by
rename, so a crash mid-write leaves the previous adapter intact. Full resume state (optimizer,
stream position, memory) is Lightning's ``.ckpt`` from ModelCheckpoint; this is what people share.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from olm.adapter_card import complete_adapter_dir
from olm.runs import latest_checkpoints
from olm.turns import trained_turn

log = logging.getLogger(__name__)
PREVIOUS = "previous.ckpt"


def adapter_is_finite(pl_module: L.LightningModule) -> bool:
    """Whether every trainable (LoRA) parameter is finite; logs an error naming the first that is not."""
    for name, param in pl_module.model.named_parameters():
        if "lora_" in name and not torch.isfinite(param).all():
            log.error("not saving: adapter parameter %s holds NaN/inf; the last good save is kept", name)
            return False
    return True


class AdapterCheckpoint(Callback):
    """Save the adapter and fact memory periodically and at the end.

    Args:
        dirpath: output directory; default ``<trainer.log_dir>/adapter``.
        every_n_turns: trained turns between saves (0 = only at the end).
    """

    def __init__(self, dirpath: str | None = None, every_n_turns: int = 100) -> None:
        if every_n_turns < 0:
            raise ValueError(f"every_n_turns must be >= 0, got {every_n_turns!r}")
        self.dirpath, self.every_n_turns = dirpath, every_n_turns
        self.last_saved_turn = -1

    def resolve_dir(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath else Path(trainer.log_dir or trainer.default_root_dir) / "adapter"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        turn = pl_module.turns_trained
        if trained_turn(outputs) and self.every_n_turns and turn % self.every_n_turns == 0 and turn != self.last_saved_turn:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.turns_trained != self.last_saved_turn:
            self.save(trainer, pl_module)

    @rank_zero_only
    def save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path | None:
        """Write the adapter directory atomically; returns its path (None when the adapter is not finite)."""
        if not adapter_is_finite(pl_module):
            return None
        final = self.resolve_dir(trainer)
        tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
        shutil.rmtree(tmp, ignore_errors=True)
        pl_module.model.save_pretrained(tmp)
        pl_module.memory.to_json(tmp / "memory.json")
        complete_adapter_dir(tmp, pl_module)  # tokenizer, portable base name, olm's model card
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        self.last_saved_turn = pl_module.turns_trained
        return final

    def state_dict(self) -> dict[str, Any]:
        return {"last_saved_turn": self.last_saved_turn}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_saved_turn = int(state_dict["last_saved_turn"])


class TurnCheckpoint(ModelCheckpoint):
    """ModelCheckpoint every `every_n_turns` trained turns and at the end of training.

    Args:
        every_n_turns: trained turns between saves (0 = only at the end and on exceptions).
        **kwargs: passed to ModelCheckpoint (dirpath, filename, save_last, save_top_k, ...);
            step / epoch / time intervals are not accepted: turns are the unit here.
    """

    def __init__(self, every_n_turns: int = 50, **kwargs: Any) -> None:
        intervals = ("every_n_train_steps", "every_n_epochs", "train_time_interval")
        clash = sorted(k for k in intervals if kwargs.pop(k, None) is not None)
        if clash:
            raise ValueError(f"TurnCheckpoint counts turns (every_n_turns); do not pass {clash}")
        if every_n_turns < 0:
            raise ValueError(f"every_n_turns must be >= 0, got {every_n_turns!r}")
        if kwargs.get("save_last") is None:
            kwargs["save_last"] = True
        super().__init__(every_n_train_steps=0, every_n_epochs=0, **kwargs)
        self.every_n_turns = every_n_turns
        self._saved_turns = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        turns = pl_module.turns_trained
        if trained_turn(outputs) and self.every_n_turns and turns % self.every_n_turns == 0 and turns != self._saved_turns:
            self.save_now(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.turns_trained != self._saved_turns:
            self.save_now(trainer)

    def save_now(self, trainer: L.Trainer) -> None:
        """Save last.ckpt now (e.g. on /save); the previous one is kept as previous.ckpt. A non-finite
        adapter is never saved."""
        if not adapter_is_finite(trainer.lightning_module):
            return
        # keep the last good checkpoint as previous.ckpt until the new one is complete
        last = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        if last.is_file() and trainer.is_global_zero:
            os.replace(last, last.with_name(PREVIOUS))
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        self._saved_turns = trainer.lightning_module.turns_trained


def last_checkpoints(trainer: L.Trainer) -> list[Path]:
    """What ``--ckpt_path last`` resumes from: ``last.ckpt``, then ``previous.ckpt``, of one run.

    A TurnCheckpoint with a fixed ``dirpath`` is looked in; one without (the configs') writes to
    its run's ``<log_dir>/checkpoints`` and the latest ``version_N`` holding a checkpoint is taken
    (`olm.runs.latest_checkpoints`); with no logger, ``<default_root_dir>/checkpoints``.
    """
    names = (f"{TurnCheckpoint.CHECKPOINT_NAME_LAST}{TurnCheckpoint.FILE_EXTENSION}", PREVIOUS)
    callbacks = [cb for cb in trainer.callbacks if isinstance(cb, TurnCheckpoint)]
    dirs = [Path(cb.dirpath) for cb in callbacks if cb.dirpath]
    if callbacks and not dirs:
        if not trainer.loggers:
            dirs = [Path(trainer.default_root_dir) / "checkpoints"]
        else:  # as ModelCheckpoint resolves its dirpath: <save_dir>/<name>/version_N/checkpoints
            logger = trainer.loggers[0]
            return latest_checkpoints(Path(logger.save_dir or trainer.default_root_dir) / str(logger.name or ""), names)
    return [d / name for name in names for d in dirs if (d / name).is_file()]


def resolve_resume_checkpoint(ckpt_path: str | None, trainer: L.Trainer) -> str | None:
    """The checkpoint to resume from: `ckpt_path` if it loads, else ``previous.ckpt`` beside it.

    ``"last"`` means ``last.ckpt`` of the latest run that saved one (`last_checkpoints`), and
    starting fresh when there is none yet (so one command both starts and continues a run). Each
    candidate is loaded with ``weights_only=True`` and must hold OnlineLM state.

    Raises:
        FileNotFoundError: an explicit path that does not exist (and no previous.ckpt beside it).
        ValueError: every candidate is unreadable; the message names each with its error.
    """
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        candidates = last_checkpoints(trainer)
        if not candidates:
            log.info("no checkpoint under %s yet: starting fresh", trainer.default_root_dir)
            return None
    else:
        path = Path(ckpt_path)
        candidates = [path, path.with_name(PREVIOUS)]
        if not any(c.is_file() for c in candidates):
            raise FileNotFoundError(f"checkpoint {ckpt_path!r} does not exist")
    errors = []
    for candidate in (c for c in candidates if c.is_file()):
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True)
            if "olm" not in state:
                raise KeyError("no 'olm' section: not written by OnlineLM")
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported, then the next tried
            log.error("checkpoint %s is unusable (%s: %s)", candidate, type(err).__name__, err)
            errors.append(f"{candidate}: {type(err).__name__}: {err}")
            continue
        if errors:
            log.warning("resuming from the previous good checkpoint %s", candidate)
        return str(candidate)
    raise ValueError("no usable checkpoint to resume from:\n  " + "\n  ".join(errors))
