"""Checkpoints of the online run: the resume state (TurnCheckpoint) and the portable adapter.

TurnCheckpoint is Lightning's ModelCheckpoint counted in *trained turns* (global_step counts
optimizer steps, which replay and steps_per_fact multiply) that also saves when training ends,
so an exhausted log or a /quit always leaves its final state in ``last.ckpt``. Its contents: LoRA
weights only, optimizer, fact memory, stream position, RNG states.

How it is written, so that no usable state is ever lost:

- every checkpoint goes through `AtomicCheckpointIO` (installed on the trainer's strategy at
  setup): a temporary file in the checkpoint's own directory, fsynced, renamed over the target,
  the directory fsynced. A crash or a full disk leaves the old file or the new one, whole; never a
  torn ``last.ckpt``, never a temporary file on another filesystem (where a rename is a copy);
- before a save, ``last.ckpt`` becomes ``previous.ckpt`` only if it is known good (written by this
  process, or verified at resume, or verified now: `checkpoint_problem`); a ``last.ckpt`` that does
  not load is quarantined (``last.ckpt.corrupt-<time>``, `olm.durable.quarantine`), never rotated
  over a good ``previous.ckpt``;
- a destroyed adapter (NaN/inf, or past the bound of `olm.guards`) is never saved: the save raises
  `AdapterDestroyed` and the run stops with that one sentence;
- `resolve_resume_checkpoint` tries ``last.ckpt`` then ``previous.ckpt``, each loaded with
  ``weights_only=True`` and checked (an OnlineLM checkpoint, usable LoRA weights); an unusable
  ``last.ckpt`` is quarantined once a good ``previous.ckpt`` is found.

AdapterCheckpoint writes the portable artifact — a PEFT adapter directory plus the fact memory —
as a new *version* each time (`olm.publish.publish_adapter`):

    <dirpath>/v1/ v2/ v3/      each a whole adapter: adapter_config.json + adapter_model.safetensors
                               (loadable as-is with ``PeftModel.from_pretrained(base, <dirpath>/v3)``),
                               memory.json, the adapter card files, olm_state.json (the trained turn)
    <dirpath>/latest -> v3     symlink, swapped atomically; <dirpath>/LATEST holds "v3" the same way

every `every_n_turns` trained turns and when training ends; the newest `keep_versions` are kept. A
version is written as ``v<N>.olm-tmp-<pid>``, fsynced and renamed, then the pointers flip: a crash
mid-write leaves the previous version and pointers intact (`olm.durable.remove_orphans` clears the
temporary one). Readers go through `olm.publish.resolve_adapter_dir` (``--model.adapter <dirpath>``
loads the latest version). A new directory per version is what a server needs: vLLM must load each
under a new name, its in-place reload keeps stale prefix-cache entries (docs/serving.md). It runs after the
TurnCheckpoints (it moves itself behind them at setup), so on a turn both save, the checkpoint is
written first: the adapter is never ahead of the resume state saved with it. Full
resume state (optimizer, stream position, memory) is the ``.ckpt``; the adapter is what people share.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from olm.adapter_card import complete_adapter_dir
from olm.durable import atomic_write, quarantine, remove_orphans, replace
from olm.publish import latest_version, publish_adapter
from olm.errors import AdapterDestroyed, ResumeError
from olm.guards import adapter_problem, lora_problem
from olm.runs import latest_checkpoints
from olm.turns import crossed, trained_turn

log = logging.getLogger(__name__)
LAST = "last.ckpt"
PREVIOUS = "previous.ckpt"
ADAPTER_STATE = "olm_state.json"
"""In each adapter version directory: the trained turn the adapter holds."""


def check_adapter(pl_module: L.LightningModule) -> None:
    """Raise `AdapterDestroyed` when the adapter must not be saved (NaN/inf, or past `olm.guards`' bound)."""
    problem = adapter_problem(pl_module.model)
    if problem is None:
        return
    optim = getattr(pl_module, "optim", None)
    lr = f" (--model.optim.lr is {optim.lr:g})" if optim is not None else ""
    raise AdapterDestroyed(
        f"the adapter is destroyed after turn {getattr(pl_module, 'turns_trained', '?')}: {problem}; it was not "
        f"saved and the last good checkpoint is kept: resume from it with a lower learning rate{lr}"
    )


def checkpoint_problem(path: str | Path) -> str | None:
    """None when `path` is a usable OnlineLM checkpoint, else why not, in words: it does not load
    (``weights_only``), has no OnlineLM state, or its LoRA weights are NaN/inf or past the bound."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported
        first = (str(err).strip().splitlines() or [""])[0][:200]
        return f"{type(err).__name__}: {first}"
    if not isinstance(state, dict) or "olm" not in state:
        return "no 'olm' section: not written by OnlineLM"
    problem = lora_problem((state.get("state_dict") or {}).items())
    return None if problem is None else f"its adapter is unusable: {problem}"


_KNOWN_GOOD: set[tuple[int, int, int, int]] = set()


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def mark_good(path: str | Path) -> None:
    """Remember that the file now at `path` is a good checkpoint (written or verified by this process)."""
    if (key := _identity(Path(path))) is not None:
        _KNOWN_GOOD.add(key)


def known_good(path: str | Path) -> bool:
    """Whether the file at `path` is one `mark_good` saw (same device, inode, size and mtime)."""
    return _identity(Path(path)) in _KNOWN_GOOD


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO writing through `olm.durable.atomic_write`: a temporary file in the
    target's directory, fsync, rename, fsync of the directory (Lightning's own goes through a
    temporary file in the system temp directory, moved by copy when that is another filesystem)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_write(path, lambda fh: torch.save(checkpoint, fh))


class AdapterCheckpoint(Callback):
    """Save the adapter and fact memory periodically and at the end.

    Args:
        dirpath: the version root; default ``<trainer.log_dir>/adapter``. Each save is ``<dirpath>/v<N>/``
            and ``<dirpath>/latest`` points at the newest (`olm.publish`).
        every_n_turns: trained turns between saves (0 = only at the end).
        keep_versions: versions kept (>= 1); older ones are deleted, never the one ``latest`` names.
    """

    def __init__(self, dirpath: str | None = None, every_n_turns: int = 100, keep_versions: int = 3) -> None:
        if every_n_turns < 0:
            raise ValueError(f"every_n_turns must be >= 0, got {every_n_turns!r}")
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {keep_versions!r}")
        self.dirpath, self.every_n_turns, self.keep_versions = dirpath, every_n_turns, keep_versions
        self.last_saved_turn = -1

    def resolve_dir(self, trainer: L.Trainer) -> Path:
        """The version root (``<dirpath>``, default ``<log_dir>/adapter``)."""
        return Path(self.dirpath) if self.dirpath else Path(trainer.log_dir or trainer.default_root_dir) / "adapter"

    def latest_dir(self, trainer: L.Trainer) -> Path | None:
        """The newest version written (``<root>/v<N>``), None before the first save."""
        return latest_version(self.resolve_dir(trainer))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # run after every TurnCheckpoint: on a turn both save, last.ckpt is written first. A new list:
        # Lightning is iterating the current one (to call setup) and goes on over it undisturbed.
        callbacks = list(trainer.callbacks)
        turn_ckpts = [i for i, cb in enumerate(callbacks) if isinstance(cb, TurnCheckpoint)]
        if turn_ckpts and callbacks.index(self) < turn_ckpts[-1]:
            callbacks.remove(self)
            callbacks.insert(turn_ckpts[-1], self)
            trainer.callbacks = callbacks
        if trainer.is_global_zero:  # e.g. a fixed directory outside the run's
            root = self.resolve_dir(trainer)
            remove_orphans(root.parent, depth=1)
            remove_orphans(root, depth=1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        turn = pl_module.turns_trained
        if trained_turn(outputs) and crossed(pl_module, self.every_n_turns) and turn != self.last_saved_turn:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.turns_trained != self.last_saved_turn:
            self.save(trainer, pl_module)

    @rank_zero_only
    def save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path:
        """Write a new adapter version atomically and point ``latest`` at it; returns the version directory.

        Raises:
            AdapterDestroyed: the adapter is NaN/inf or past its bound (`check_adapter`); nothing is written.
        """
        check_adapter(pl_module)
        if getattr(pl_module, "users", None) is not None:
            return self.save_users(trainer, pl_module)

        def write_extra(directory: Path) -> None:
            pl_module.memory.to_json(directory / "memory.json")
            complete_adapter_dir(directory, pl_module)  # tokenizer, portable base name, olm's model card
            (directory / ADAPTER_STATE).write_text(json.dumps({"turns_trained": pl_module.turns_trained}) + "\n")

        version = publish_adapter(pl_module.model, "default", self.resolve_dir(trainer), write_extra, self.keep_versions)
        self.last_saved_turn = pl_module.turns_trained
        return version

    def users_dir(self, trainer: L.Trainer) -> Path:
        """With per-user learning: the directory of the users' version roots (``<dirpath>``, default
        ``<log_dir>/adapters``); user U's adapter is ``<users_dir>/U/v<N>/`` (``latest`` the newest)."""
        return Path(self.dirpath) if self.dirpath else Path(trainer.log_dir or trainer.default_root_dir) / "adapters"

    def save_users(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path:
        """Per-user learning: publish a new version of every user's adapter that learned since its last
        one (loaded or evicted; `olm.users.UserRegistry.publish_changed`), each with that user's own
        ``memory.json``, model card and ``olm_state.json``; returns `users_dir`."""
        root = self.users_dir(trainer)

        def write(state: Any, memory: Any) -> None:
            def write_extra(directory: Path) -> None:
                memory.to_json(directory / "memory.json")
                complete_adapter_dir(directory, pl_module, memory=memory, turns=state.turns)
                record = {"turns_trained": pl_module.turns_trained, "user_id": state.user_id, "user_turns": state.turns}
                (directory / ADAPTER_STATE).write_text(json.dumps(record) + "\n")

            publish_adapter(pl_module.model, state.adapter, root / state.user_id, write_extra, self.keep_versions)

        pl_module.users.publish_changed(write)
        self.last_saved_turn = pl_module.turns_trained
        return root

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

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default, not a chosen one
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if trainer.is_global_zero and self.dirpath:
            remove_orphans(self.dirpath, depth=1)  # a fixed directory outside the run's (cli.py clears that)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        turns = pl_module.turns_trained
        if trained_turn(outputs) and crossed(pl_module, self.every_n_turns) and turns != self._saved_turns:
            self.save_now(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.turns_trained != self._saved_turns:
            self.save_now(trainer)

    def save_now(self, trainer: L.Trainer) -> None:
        """Save last.ckpt now (e.g. on /save); a good previous one is kept as previous.ckpt.

        Raises:
            AdapterDestroyed: the adapter is NaN/inf or past its bound; nothing is written or rotated.
        """
        check_adapter(trainer.lightning_module)
        last = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        if last.is_file() and trainer.is_global_zero:
            self._set_aside(last)
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        self._saved_turns = trainer.lightning_module.turns_trained

    @staticmethod
    def _set_aside(last: Path) -> None:
        """``last.ckpt`` → ``previous.ckpt`` when it is good; a bad one is quarantined, previous kept."""
        problem = None if known_good(last) else checkpoint_problem(last)
        if problem is None:
            replace(last, last.with_name(PREVIOUS))
            return
        moved = quarantine(last)
        log.error("%s is unusable (%s): moved to %s, %s kept", last, problem, moved.name, PREVIOUS)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            mark_good(filepath)


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


class CheckpointNotFound(ResumeError, FileNotFoundError):
    """An explicit --ckpt_path that does not exist (nor a previous.ckpt beside it)."""


def resolve_resume_checkpoint(ckpt_path: str | None, trainer: L.Trainer) -> str | None:
    """The checkpoint to resume from: `ckpt_path` if it is usable, else ``previous.ckpt`` beside it.

    ``"last"`` means ``last.ckpt`` of the latest run that saved one (`last_checkpoints`; a file
    named ``last`` in the working directory plays no part), and starting fresh when there is none
    yet (so one command both starts and continues a run). Each candidate must pass
    `checkpoint_problem` (loads with ``weights_only=True``, holds OnlineLM state, usable LoRA
    weights). When ``previous.ckpt`` is taken because ``last.ckpt`` is unusable, that
    ``last.ckpt`` is quarantined (``last.ckpt.corrupt-<time>``) so that no save rotates it over
    the good one; any other unusable file is left where it is.

    Raises:
        CheckpointNotFound: an explicit path that does not exist (and no previous.ckpt beside it).
        ResumeError: every candidate is unusable; the message names each with its problem.
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
            raise CheckpointNotFound(f"checkpoint {ckpt_path!r} does not exist")
    errors, unusable = [], []
    for candidate in (c for c in candidates if c.is_file()):
        problem = checkpoint_problem(candidate)
        if problem is not None:
            log.error("checkpoint %s is unusable (%s)", candidate, problem)
            errors.append(f"{candidate}: {problem}")
            unusable.append(candidate)
            continue
        if errors:
            log.warning("resuming from the previous good checkpoint %s", candidate)
            for bad in unusable:
                if bad.name == LAST:  # never to be rotated over the good one by the next save
                    log.warning("%s quarantined as %s", bad, quarantine(bad).name)
        mark_good(candidate)
        return str(candidate)
    raise ResumeError(
        "no usable checkpoint to resume from (start fresh with --ckpt_path null):\n  " + "\n  ".join(errors)
    )
