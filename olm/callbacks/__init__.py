"""Callbacks: work around the per-turn step that the step itself does not need."""

from olm.callbacks.checkpoint import AdapterCheckpoint, TurnCheckpoint
from olm.callbacks.replay import FactReplay

__all__ = ["AdapterCheckpoint", "FactReplay", "TurnCheckpoint"]
