"""Test-only callback for the DDP tests (tests/test_ddp.py), loaded by the processes they start:

    PYTHONPATH=tests OLM_TURN_RECORD=DIR python cli.py fit ... --trainer.callbacks+=ddp_probe.TurnRecorder

Each rank appends one JSON line per turn it trained to ``DIR/rank<R>.jsonl``: the conversation id,
the stream offset, the global turn count and optimizer step after it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback


class TurnRecorder(Callback):
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any) -> None:
        turn = outputs.get("turn") if isinstance(outputs, dict) else None
        if turn is None:
            return
        out = Path(os.environ["OLM_TURN_RECORD"]) / f"rank{trainer.global_rank}.jsonl"
        row = {"rank": trainer.global_rank, "conversation_id": turn.conversation_id, "offset": turn.offset,
               "turns_trained": pl_module.turns_trained, "global_step": trainer.global_step}  # fmt: skip
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
