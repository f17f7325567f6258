"""Crash safety: `kill -9` a real `cli.py fit` mid-log, rerun with --ckpt_path last, and check that
training continues at the first untrained turn — none trained twice, none skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import ROOT, local_config, write_log

from olm.runs import run_versions

TURNS = 60
EVERY = {"every_n_turns: 50\n        save_top_k": "every_n_turns: 5\n        save_top_k"}


def fit_cmd(config: Path, model_dir: str, log: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(config), "--model.base_model", model_dir,
            "--data.source", str(log), "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip


def trained_offsets(run_dir: Path) -> list[int]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [int(e.value) for e in acc.Scalars("data/offset")]


def turns_saved(ckpt: Path) -> int | None:
    """turns_trained in `ckpt`, None while there is none (a save renames it aside before writing anew)."""
    try:
        return torch.load(ckpt, weights_only=True)["olm"]["turns_trained"]
    except FileNotFoundError:
        return None


def test_kill_9_then_resume_trains_every_turn_exactly_once(tmp_path, tiny_model_dir):
    config = local_config(ROOT / "configs" / "tiny.yaml", tmp_path, EVERY)
    log = write_log(tmp_path / "log.jsonl", TURNS)
    ckpt = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(fit_cmd(config, tiny_model_dir, log), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while (turns_saved(ckpt) or 0) < 10:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # A save sets last.ckpt aside as previous.ckpt before writing the new one: a kill in between leaves
    # previous.ckpt alone, and --ckpt_path last resumes from it (`last_checkpoints`)
    saved = torch.load(ckpt if ckpt.is_file() else ckpt.with_name("previous.ckpt"), weights_only=True)
    resume_at = saved["ChatStreamDataModule"]["next_offset"]
    assert saved["olm"]["turns_trained"] == resume_at < TURNS

    subprocess.run(fit_cmd(config, tiny_model_dir, log, "--ckpt_path", "last"), cwd=tmp_path, env=env,
                   check=True, capture_output=True)  # fmt: skip
    versions = run_versions(tmp_path / "runs" / "tiny")
    assert [v.name for v in versions] == ["version_0", "version_1"]  # the resumed run has its own outputs
    final = torch.load(versions[-1] / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["olm"]["turns_trained"] == TURNS and final["ChatStreamDataModule"]["next_offset"] == TURNS
    offsets = trained_offsets(versions[-1])
    assert offsets == list(range(resume_at, TURNS)), str(offsets)
