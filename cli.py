"""olm command line: LightningCLI over OnlineLM and the chat-turn stream.

    python cli.py fit --config configs/default.yaml             # learn from the bundled sample log
    python cli.py fit --config configs/default.yaml --data.source my_logs/   # any log file/dir/glob, or -
    python cli.py fit --config configs/default.yaml --print_config           # every knob, with defaults
"""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LightningCLI

from olm.data import ChatStreamDataModule
from olm.module import OnlineLM


class OlmCLI(LightningCLI):
    """LightningCLI with olm's defaults: own optimizer setup, reusable log dirs, thread count."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--threads", type=int | None, default=None, help="torch intra-op threads (None: torch's default)"
        )

    def before_instantiate_classes(self) -> None:
        threads = self.config[self.subcommand]["threads"] if self.subcommand else self.config["threads"]
        if threads is not None:
            if threads < 1:
                raise ValueError(f"--threads must be >= 1, got {threads!r}")
            torch.set_num_threads(threads)


def main(args: list[str] | None = None) -> OlmCLI:
    return OlmCLI(
        OnlineLM,
        ChatStreamDataModule,
        auto_configure_optimizers=False,  # OnlineLM optimizes only the LoRA parameters
        save_config_kwargs={"overwrite": True},  # a resumed run reuses its log dir
        args=args,
    )


if __name__ == "__main__":
    main()
