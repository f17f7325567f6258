"""CLI smoke tests: `cli.py fit` on every file in configs/ with a tiny model and a few steps; resume."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
USERS = ["Zara is my sister.", "Hello there, how are you today?", "Xiomara lives in Lisbon.", "Who is Zara?"]


def write_log(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            messages = [{"role": "user", "content": USERS[i % len(USERS)]}, {"role": "assistant", "content": "Got it."}]
            f.write(json.dumps({"id": f"c{i}", "messages": messages}) + "\n")
    return path


def local_config(config: Path, tmp: Path) -> Path:
    """A copy of `config` whose outputs (runs/...) all go under `tmp`."""
    text = config.read_text().replace("runs/", f"{tmp}/runs/").replace("save_dir: runs", f"save_dir: {tmp}/runs")
    out = tmp / config.name
    out.write_text(text)
    return out


def run_fit(config: Path, tmp: Path, model_dir: str, monkeypatch, turns: int = 6, *extra: str) -> dict:
    """Run `cli.py fit` in-process on a tiny model and a small log (or stdin lines); returns the config."""
    conf = yaml.safe_load(config.read_text())
    args = ["fit", "--config", str(local_config(config, tmp)), "--model.base_model", model_dir,
            "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "3", *extra]  # fmt: skip
    if conf.get("data", {}).get("source") == "-":
        monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(USERS[:turns]) + "\n"))
    else:
        args += ["--data.source", str(write_log(tmp / "log.jsonl", turns))]
    cli.main(args)
    return conf


def adapter_dirs(tmp: Path) -> list[Path]:
    return [p.parent for p in tmp.rglob("adapter_config.json")]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_runs_and_writes_events_and_adapter(config, tmp_path, tiny_model_dir, monkeypatch):
    run_fit(config, tmp_path, tiny_model_dir, monkeypatch)
    events = list((tmp_path / "runs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert len(acc.Scalars("turn/loss")) >= 3
    [adapter] = adapter_dirs(tmp_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = PeftModel.from_pretrained(base, str(adapter))
    assert any("lora_A" in n for n, _ in peft_model.named_parameters())
    assert (adapter / "memory.json").is_file()


def test_resume_continues_at_the_first_untrained_turn(tmp_path, tiny_model_dir, monkeypatch):
    config = ROOT / "configs" / "default.yaml"
    run_fit(config, tmp_path, tiny_model_dir, monkeypatch, 8)
    [ckpt] = list(tmp_path.rglob("last.ckpt"))
    state = torch.load(ckpt, weights_only=True)
    assert state["olm"]["turns_trained"] == 3 and state["ChatStreamDataModule"]["next_offset"] == 3
    assert all("lora_" in k for k in state["state_dict"])  # no frozen base weights in the checkpoint
    run_fit(config, tmp_path, tiny_model_dir, monkeypatch, 8, "--ckpt_path", str(ckpt), "--trainer.max_steps", "-1")
    state = torch.load(ckpt, weights_only=True)
    assert state["olm"]["turns_trained"] == 8 and state["ChatStreamDataModule"]["next_offset"] == 8
