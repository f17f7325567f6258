"""Where a run's outputs go: one directory per run, under the trainer's ``default_root_dir``.

    <default_root_dir>/version_N/     one run (a new N per `fit`, as Lightning numbers its logs)
        events.out.tfevents.*          TensorBoard scalars and the transcript (`run_logger`)
        config.yaml, hparams.yaml      the full config of the run, the module's hyperparameters
        checkpoints/last.ckpt          resume state (TurnCheckpoint; previous.ckpt beside it)
        adapter/v<N>/, adapter/latest  the portable PEFT adapter, one version per save (AdapterCheckpoint, olm.publish)
        recall_report.json / .md       RecallReport

One knob moves them all: ``--trainer.default_root_dir DIR``. The callbacks take no directory of
their own by default: they resolve ``trainer.log_dir`` (the logger's ``version_N``) at setup.
``--ckpt_path last`` resumes from the latest run that saved a checkpoint (`latest_checkpoints`);
the resumed run writes to a new ``version_N``, so no run ever overwrites another's outputs.
"""

from __future__ import annotations

import re
from pathlib import Path

from olm.loggers import TurnLogger

CHECKPOINTS = "checkpoints"
_VERSION = re.compile(r"version_(\d+)")


def run_logger(root_dir: str | Path) -> TurnLogger:
    """olm's default logger: TensorBoard events in ``<root_dir>/version_N`` (the next free N), the
    scalars of each logging call in one event (`olm.loggers.TurnLogger`)."""
    return TurnLogger(save_dir=str(root_dir), name="", default_hp_metric=False)


def run_versions(root_dir: str | Path) -> list[Path]:
    """The ``version_N`` run directories under `root_dir`, oldest (lowest N) first."""
    root = Path(root_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _VERSION.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoints(root_dir: str | Path, names: tuple[str, ...]) -> list[Path]:
    """The checkpoint files `names` (in order of preference) of the latest run under `root_dir`
    that holds any of them; [] when no run does. Only one run's files are returned, so a fallback
    from a broken ``last.ckpt`` to ``previous.ckpt`` never crosses into another run."""
    for run in reversed(run_versions(root_dir)):
        files = [run / CHECKPOINTS / name for name in names if (run / CHECKPOINTS / name).is_file()]
        if files:
            return files
    return []
