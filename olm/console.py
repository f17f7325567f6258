"""Known, harmless library messages kept off olm's console (and out of the test summary).

Each entry is a message olm's use of a library triggers on every run, with why it is harmless:

- Lightning, ``dataloader_iter`` ("Here be dragons", "Found `dataloader_iter` argument"): OnlineLM
  takes the iterator on purpose and reads exactly one turn per step (`olm.module`).
- Lightning's pytree helper builds torch's ``LeafSpec``, deprecated in torch 2.9 (a FutureWarning
  about Lightning's code, not olm's).
- Lightning's info lines "GPU available: False …", "TPU available …", "HPU available …" (the
  accelerator is the config's; "GPU available: True, used: False" still shows) and the litlogger tip.
- Lightning's "The dirpath has changed …" on resume: every run writes to its own ``version_N``
  (`olm.runs`); TurnCheckpoint keeps no best-k paths to carry over.

transformers' ``is_gradient_checkpointing`` FutureWarning (read by peft when it wraps the model) is
silenced where the adapter is attached (`olm.backbone.attach_lora`). Anything else still shows.
"""

from __future__ import annotations

import logging
import re
import warnings

KNOWN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"You are using the `dataloader_iter` step flavor", UserWarning),
    (r"Found `dataloader_iter` argument in the `training_step`", UserWarning),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r"The dirpath has changed from .* won't be reloaded", UserWarning),
)
"""(message regex, category) of the warnings filtered."""

KNOWN_INFO: tuple[str, ...] = (
    r"GPU available: False",
    r"(TPU|HPU) available: False",
    r"💡 Tip: For seamless cloud logging",
)
"""Regexes of Lightning's info lines (logger ``lightning.pytorch.utilities.rank_zero``) dropped."""

LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"


class _DropKnown(logging.Filter):
    pattern = re.compile("|".join(f"(?:{p})" for p in KNOWN_INFO))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_known_messages() -> None:
    """Filter `KNOWN_WARNINGS` and `KNOWN_INFO` (idempotent). `OnlineLM.__init__` calls it: at run
    time, so that a test's or a notebook's own warning filters do not drop it."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    logger = logging.getLogger(LIGHTNING_INFO_LOGGER)
    if not any(isinstance(f, _DropKnown) for f in logger.filters):
        logger.addFilter(_DropKnown())
