"""FactReplay: decides when and what to replay; the module does the learning.

Every `interval` trained turns the callback queues the most important remembered facts
(`FactMemory.replay_candidates`, at most the memory's `replay_limit`). OnlineLM learns them at
the start of its next `training_step` with the replay context, so the steps count in
`global_step`, trigger step-based checkpoints and run under the trainer's precision — which
steps taken inside a callback hook would not (docs/design.md §4).

With per-user learning (`olm.users`) the interval counts the active user's turns and the facts are
that user's: each user's replays come at their own pace, whatever other users say in between.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from olm.turns import crossed, trained_turn


class FactReplay(Callback):
    """Queue remembered facts for replay every `interval` turns.

    Args:
        interval: trained turns between replays.
        limit: facts per replay; None uses the memory's replay_limit.
    """

    def __init__(self, interval: int = 10, limit: int | None = None) -> None:
        problems = []
        if interval < 1:
            problems.append(f"interval must be >= 1, got {interval!r}")
        if limit is not None and limit < 1:
            problems.append(f"limit must be >= 1 or None, got {limit!r}")
        if problems:
            raise ValueError("invalid FactReplay settings: " + "; ".join(problems))
        self.interval, self.limit = interval, limit
        self.replays_queued = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        turn = getattr(pl_module, "memory_clock", pl_module.turns_trained)  # per_user: the active user's turns
        if not trained_turn(outputs) or turn == 0 or not self.due(pl_module) or len(pl_module.memory) == 0:
            return
        facts = pl_module.memory.replay_candidates(turn, self.limit)
        pl_module.queue_replay(facts)
        self.replays_queued += len(facts)

    def due(self, pl_module: L.LightningModule) -> bool:
        """Whether the turn just trained is a replay turn: every `interval` turns (with per-user
        learning, every `interval` turns of the active user: `OnlineLM.memory_clock`)."""
        if getattr(pl_module, "users", None) is not None:
            return pl_module.memory_clock % self.interval == 0
        return crossed(pl_module, self.interval)

    def state_dict(self) -> dict[str, Any]:
        return {"replays_queued": self.replays_queued}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.replays_queued = int(state_dict["replays_queued"])
