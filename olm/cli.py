"""olm command line: LightningCLI over OnlineLM and the chat-turn stream.

    python cli.py fit --config configs/default.yaml             # learn from the bundled sample log
    python cli.py fit --config configs/default.yaml --data.source my_logs/   # any log file/dir/glob, or -
    python cli.py fit --config configs/default.yaml --print_config           # every knob, with defaults

Resuming (``--ckpt_path last`` or ``--ckpt_path FILE``): the configuration is always this run's —
the command line and config files win for everything that can change (the optimizer's learning
rate, weight decay, betas and eps are set on the restored optimizer, and a change is logged); the
checkpoint brings only state (LoRA weights, optimizer moments, fact memory, stream position, RNG).
What cannot change (base model, LoRA r / alpha / target modules) fails with one sentence. Unlike
plain LightningCLI, the checkpoint's hyperparameters never replace the config, and the file is
only opened by olm's own checks (a corrupt one falls back to ``previous.ckpt``; ``last`` is always
the keyword, whatever files the working directory holds).

A run locks its ``default_root_dir`` (``.olm.lock``, `olm.durable.RunLock`): a second run there
exits 1 with a message; the lock dies with the process. At start, what a killed save left there
is cleared (`olm.durable.remove_orphans`). A `olm.errors.RunError` is printed as ``olm: <message>``
with exit status 1, no traceback.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI

from olm.callbacks.checkpoint import resolve_resume_checkpoint
from olm.callbacks.progress import TurnProgressBar
from olm.data import ChatStreamDataModule, StreamConfig, source_problems
from olm.distributed import OlmTrainer, launcher_rank, pin_log_dir
from olm.durable import RunLock, remove_orphans
from olm.errors import RunError
from olm.module import OnlineLM
from olm.runs import run_logger
from olm.settings import build_problems, config_problems


class OlmCLI(LightningCLI):
    """LightningCLI with olm's defaults: own optimizer setup, one directory per run, thread count,
    no abbreviated flags, a missing log source reported before the model loads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.run_lock: RunLock | None = None
        try:
            super().__init__(*args, **kwargs)  # parses, instantiates and runs the subcommand
        finally:
            if self.run_lock is not None:
                self.run_lock.release()

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--threads", type=int | None, default=None, help="torch intra-op threads (None: torch's default)"
        )
        # per-user learning needs the stream to read user ids: one switch, --model.per_user
        parser.link_arguments("model.per_user", "data.per_user", apply_on="parse")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        problems = config_problems(OnlineLM.__init__, config.get("model"), "model")
        problems += build_problems(StreamConfig, config.get("data"), "data")
        if not problems:  # before the model loads and before a run directory is made
            problems += source_problems(config["data"]["source"], config["data"]["follow"])
        if config["threads"] is not None and config["threads"] < 1:
            problems.append(f"--threads must be >= 1, got {config['threads']!r}")
        if len(problems) == 1:
            raise SystemExit(f"olm: invalid configuration: {problems[0]}")
        if problems:
            raise SystemExit("olm: invalid configuration:\n  - " + "\n  - ".join(problems))
        if config["threads"] is not None:
            torch.set_num_threads(config["threads"])
        if self.subcommand == "fit" and launcher_rank() == 0:  # DDP: the other ranks' processes neither lock nor clear
            root = config["trainer"].get("default_root_dir") or os.getcwd()
            self.run_lock = RunLock(root).acquire()  # before anything is read or written there
            remove_orphans(root)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI would load ``--ckpt_path``'s hyperparameters into the config here (replacing
        what the command line says, raising on a corrupt file, and opening any file named ``last``).
        olm's rule is the other way round (module docstring): the checkpoint is checked and loaded
        by `resolve_resume_checkpoint` and `OnlineLM.on_load_checkpoint` only."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer with olm's defaults where the config leaves Lightning's: the logger
        (``logger: true``) is TensorBoard in ``<default_root_dir>/version_N``, where every output of the
        run goes (`olm.runs`); the progress bar counts turns (`TurnProgressBar`)."""
        config = self._get(self.config_init, "trainer", default={})
        if config.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = run_logger(config.get("default_root_dir") or ".")
        callbacks = config.get("callbacks") or []
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs.setdefault("callbacks", [*callbacks, TurnProgressBar()])
        trainer = super().instantiate_trainer(**kwargs)
        pin_log_dir(trainer)  # DDP: every rank the same version_N (`olm.distributed.OlmTrainer`)
        return trainer

    def before_fit(self) -> None:
        # checkpoints hold only tensors and plain types: never unpickle anything else
        fit_args = self.config_init[self.subcommand]
        fit_args["weights_only"] = True
        fit_args["ckpt_path"] = resolve_resume_checkpoint(fit_args.get("ckpt_path"), self.trainer)


def main(args: list[str] | None = None) -> OlmCLI:
    """Run the command line. A `RunError` (unusable checkpoint, mismatched model, destroyed adapter,
    run directory in use) exits with ``olm: <message>`` and status 1."""
    try:
        return OlmCLI(
            OnlineLM,
            ChatStreamDataModule,
            trainer_class=OlmTrainer,  # DDP-safe log_dir (`olm.distributed`); otherwise Lightning's Trainer
            auto_configure_optimizers=False,  # OnlineLM optimizes only the LoRA parameters
            save_config_kwargs={"overwrite": True},  # a run given an existing logger version reuses its dir
            parser_kwargs={"allow_abbrev": False},  # --model.optim.l is an error, not --model.optim.lr
            args=args,
        )
    except RunError as err:
        raise SystemExit(f"olm: {err}") from None


if __name__ == "__main__":
    main()
