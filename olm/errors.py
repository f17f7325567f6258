"""Errors olm explains in words: the command line prints ``olm: <message>`` and exits 1, no traceback.

`RunError` is for what a person can act on (a checkpoint that does not fit, a destroyed adapter, a
run directory in use); a bug still raises its own exception with its traceback.
"""

from __future__ import annotations


class RunError(Exception):
    """A problem stated in one sentence (or one sentence and a list); `cli.main` prints it and exits 1."""


class ResumeError(RunError, ValueError):
    """No usable checkpoint to resume from, or one that does not fit this run's model."""


class AdapterDestroyed(RunError):
    """The adapter's weights are NaN/inf or far beyond their bound (`olm.guards`): the run stops unsaved."""


class RunLocked(RunError):
    """Another olm process holds the run directory's lock (`olm.durable.RunLock`)."""
