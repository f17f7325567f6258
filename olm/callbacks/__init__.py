"""Callbacks: work around the per-turn step that the step itself does not need."""

from olm.callbacks.chat import ChatCallback
from olm.callbacks.checkpoint import AdapterCheckpoint, TurnCheckpoint
from olm.callbacks.drift import DriftGuard
from olm.callbacks.monitors import ForgettingMonitor, StabilityMonitor
from olm.callbacks.progress import RunSummary, TurnProgressBar
from olm.callbacks.ranksync import RankSync
from olm.callbacks.recall_report import RecallReport
from olm.callbacks.replay import FactReplay
from olm.callbacks.transcript import Transcript

__all__ = [
    "AdapterCheckpoint",
    "ChatCallback",
    "DriftGuard",
    "FactReplay",
    "RankSync",
    "RecallReport",
    "ForgettingMonitor",
    "RunSummary",
    "StabilityMonitor",
    "Transcript",
    "TurnCheckpoint",
    "TurnProgressBar",
]
