"""olm command line: LightningCLI over OnlineLM and the chat-turn stream.

    python cli.py fit --config configs/default.yaml             # learn from the bundled sample log
    python cli.py fit --config configs/default.yaml --data.source my_logs/   # any log file/dir/glob, or -
    python cli.py fit --config configs/default.yaml --print_config           # every knob, with defaults
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI

from olm.callbacks.checkpoint import resolve_resume_checkpoint
from olm.callbacks.progress import TurnProgressBar
from olm.data import ChatStreamDataModule, StreamConfig, source_problems
from olm.module import OnlineLM
from olm.runs import run_logger
from olm.settings import build_problems, config_problems


class OlmCLI(LightningCLI):
    """LightningCLI with olm's defaults: own optimizer setup, one directory per run, thread count,
    no abbreviated flags, a missing log source reported before the model loads."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--threads", type=int | None, default=None, help="torch intra-op threads (None: torch's default)"
        )

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
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        # checkpoints hold only tensors and plain types: never unpickle anything else
        fit_args = self.config_init[self.subcommand]
        fit_args["weights_only"] = True
        fit_args["ckpt_path"] = resolve_resume_checkpoint(fit_args.get("ckpt_path"), self.trainer)


def main(args: list[str] | None = None) -> OlmCLI:
    return OlmCLI(
        OnlineLM,
        ChatStreamDataModule,
        auto_configure_optimizers=False,  # OnlineLM optimizes only the LoRA parameters
        save_config_kwargs={"overwrite": True},  # a run given an existing logger version reuses its dir
        parser_kwargs={"allow_abbrev": False},  # --model.optim.l is an error, not --model.optim.lr
        args=args,
    )


if __name__ == "__main__":
    main()
