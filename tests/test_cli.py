"""CLI smoke tests: `cli.py fit` on every file in configs/ with a tiny model and a few steps; resume."""

from __future__ import annotations

import io
import logging
import re
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

from olm.runs import run_versions

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


def local_config(config: Path, tmp: Path, edits: dict[str, str] | None = None) -> Path:
    """A copy of `config` whose outputs (runs/...) all go under `tmp`, with text `edits` applied."""
    text = config.read_text().replace("runs/", f"{tmp}/runs/")
    for old, new in (edits or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    out = tmp / config.name
    out.write_text(text)
    return out


def run_fit(config: Path, tmp: Path, model_dir: str, monkeypatch, turns: int = 6, *extra: str, edits=None) -> dict:
    """Run `cli.py fit` in-process on a tiny model and a small log (or stdin lines); returns the config."""
    conf = yaml.safe_load(config.read_text())
    # one optimizer step per turn whatever the config tunes, so max_steps counts turns
    args = ["fit", "--config", str(local_config(config, tmp, edits)), "--model.base_model", model_dir,
            "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "3", "--model.optim.steps_per_fact", "1",
            *extra]  # fmt: skip
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
    config = ROOT / "configs" / "tiny.yaml"
    run_fit(config, tmp_path, tiny_model_dir, monkeypatch, 8)
    [ckpt] = list(tmp_path.rglob("last.ckpt"))
    state = torch.load(ckpt, weights_only=True)
    assert state["olm"]["turns_trained"] == 3 and state["ChatStreamDataModule"]["next_offset"] == 3
    assert all("lora_" in k for k in state["state_dict"])  # no frozen base weights in the checkpoint
    run_fit(config, tmp_path, tiny_model_dir, monkeypatch, 8, "--ckpt_path", str(ckpt), "--trainer.max_steps", "-1")
    state = torch.load(run_versions(tmp_path / "runs" / "tiny")[-1] / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["olm"]["turns_trained"] == 8 and state["ChatStreamDataModule"]["next_offset"] == 8


def test_default_root_dir_moves_every_output_of_the_run(tmp_path, tiny_model_dir, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    run_fit(ROOT / "configs" / "default.yaml", tmp_path, tiny_model_dir, monkeypatch, 4,
            "--trainer.default_root_dir", str(elsewhere))  # fmt: skip
    run = elsewhere / "version_0"
    assert list(run.glob("events.out.tfevents.*")) and (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "adapter" / "latest" / "adapter_config.json").is_file()
    assert (run / "recall_report.json").is_file()
    assert not (tmp_path / "runs").exists()  # the config's runs/default got nothing


def test_each_run_keeps_its_outputs_and_last_resumes_the_latest_run(tmp_path, tiny_model_dir, monkeypatch):
    config = ROOT / "configs" / "tiny.yaml"
    run_fit(config, tmp_path, tiny_model_dir, monkeypatch, 8)  # 3 turns (max_steps 3)
    run_fit(config, tmp_path, tiny_model_dir, monkeypatch, 8, "--ckpt_path", "last", "--trainer.max_steps", "-1",
            "--data.max_turns", "5")  # fmt: skip
    run_fit(config, tmp_path, tiny_model_dir, monkeypatch, 8, "--ckpt_path", "last", "--trainer.max_steps", "-1",
            "--data.max_turns", "6")  # fmt: skip
    runs = run_versions(tmp_path / "runs" / "tiny")
    assert [r.name for r in runs] == ["version_0", "version_1", "version_2"]
    turns = [torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["olm"]["turns_trained"] for r in runs]
    assert turns == [3, 5, 6]  # each run resumed from the one before, none overwrote another
    assert all((r / "adapter" / "latest" / "adapter_model.safetensors").is_file() for r in runs)


def test_a_missing_source_fails_in_one_line_before_the_model_loads(tmp_path, monkeypatch):
    args = ["fit", "--config", str(local_config(ROOT / "configs" / "tiny.yaml", tmp_path)),
            "--model.base_model", str(tmp_path / "no-model"), "--data.source", str(tmp_path / "no-log.jsonl")]  # fmt: skip
    with pytest.raises(SystemExit) as err:
        cli.main(args)
    msg = str(err.value)
    assert "--data.source" in msg and "no-log.jsonl" in msg and "\n" not in msg, msg
    assert not (tmp_path / "runs").exists()  # no empty version_N


def test_abbreviated_flags_are_rejected(capsys):
    args = ["fit", "--config", str(ROOT / "configs" / "tiny.yaml"), "--model.optim.l", "0.5", "--print_config"]
    with pytest.raises(SystemExit) as err:
        cli.main(args)
    assert err.value.code != 0 and "lr: 0.5" not in capsys.readouterr().out


def test_every_config_problem_is_listed_in_one_message(tmp_path, tiny_model_dir, monkeypatch):
    bad = ["--model.optim.lr", "-1", "--model.lora.r", "0", "--data.history_turns", "-2",
           "--model.detector.patterns", '[{"name": "x", "regex": "(?P<subject>\\\\w+", "relation": "r", "question": "q"}]']  # fmt: skip
    with pytest.raises(SystemExit) as err:
        run_fit(ROOT / "configs" / "tiny.yaml", tmp_path, tiny_model_dir, monkeypatch, 4, *bad)
    msg = str(err.value)
    for part in ("optim.lr", "lora.r", "history_turns", "not a valid regex"):
        assert part in msg, msg


def test_corrupt_last_checkpoint_falls_back_to_previous(tmp_path, tiny_model_dir, monkeypatch, caplog):
    config = ROOT / "configs" / "tiny.yaml"
    every = {"every_n_turns: 50\n        save_top_k": "every_n_turns: 2\n        save_top_k"}
    run_fit(config, tmp_path, tiny_model_dir, monkeypatch, 12, "--trainer.max_steps", "6", edits=every)
    [last] = list(tmp_path.rglob("last.ckpt"))
    previous = last.with_name("previous.ckpt")
    assert torch.load(previous, weights_only=True)["olm"]["turns_trained"] == 4
    last.write_bytes(last.read_bytes()[:100])  # truncated, as by a crash outside Lightning's atomic write
    run_fit(config, tmp_path, tiny_model_dir, monkeypatch, 12, "--ckpt_path", "last", "--trainer.max_steps", "-1", edits=every)
    assert "unusable" in caplog.text and str(last) in caplog.text
    resumed = run_versions(tmp_path / "runs" / "tiny")[-1] / "checkpoints" / "last.ckpt"
    assert resumed != last and torch.load(resumed, weights_only=True)["olm"]["turns_trained"] == 12


def test_last_falls_back_to_previous_only_within_the_latest_run(tmp_path):
    from olm.runs import latest_checkpoints

    names = ("last.ckpt", "previous.ckpt")
    for version, files in ((0, names), (1, ()), (2, ("previous.ckpt",)), (10, ("last.ckpt",))):
        (tmp_path / f"version_{version}" / "checkpoints").mkdir(parents=True)
        for name in files:
            (tmp_path / f"version_{version}" / "checkpoints" / name).write_bytes(b"x")
    assert latest_checkpoints(tmp_path, names) == [tmp_path / "version_10" / "checkpoints" / "last.ckpt"]
    (tmp_path / "version_10" / "checkpoints" / "last.ckpt").unlink()  # version_10 saved nothing
    assert latest_checkpoints(tmp_path, names) == [tmp_path / "version_2" / "checkpoints" / "previous.ckpt"]
    assert latest_checkpoints(tmp_path / "absent", names) == []


def test_unreadable_checkpoint_without_previous_is_a_clear_error(tmp_path):
    from olm.callbacks.checkpoint import resolve_resume_checkpoint

    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.ckpt"):
        resolve_resume_checkpoint(str(broken), trainer=None)
    with pytest.raises(FileNotFoundError):
        resolve_resume_checkpoint(str(tmp_path / "absent.ckpt"), trainer=None)


def test_progress_counts_turns_and_a_summary_ends_the_run(tmp_path, tiny_model_dir, monkeypatch, capsys):
    run_fit(ROOT / "configs" / "tiny.yaml", tmp_path, tiny_model_dir, monkeypatch, 8, "--trainer.enable_progress_bar", "true")
    out = capsys.readouterr().out
    assert "turns" in out and "3/8" in out and "facts=" in out, out  # total: the log's 8 turns
    assert "Epoch" not in out and "v_num" not in out, out
    run = tmp_path / "runs" / "tiny" / "version_0"
    assert "olm: trained 3 turns in this run (3 in all)" in out, out
    for what, path in (("adapter", run / "adapter" / "v1"), ("checkpoint", run / "checkpoints" / "last.ckpt"), ("logs", run)):
        assert re.search(rf"^  {what} +{re.escape(str(path))}", out, re.M), out


KNOWN_NOISE = ("Here be dragons", "dataloader_iter", "LeafSpec", "is_gradient_checkpointing", "GPU available",
               "TPU available", "litlogger", "LightningCLI's args parameter", "dirpath has changed")  # fmt: skip


def test_a_run_shows_no_known_library_noise(tmp_path, tiny_model_dir, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        run_fit(ROOT / "configs" / "tiny.yaml", tmp_path, tiny_model_dir, monkeypatch, 4)
        run_fit(ROOT / "configs" / "tiny.yaml", tmp_path, tiny_model_dir, monkeypatch, 4, "--ckpt_path", "last")
    seen = caplog.text + "\n".join(f"{w.category.__name__}: {w.message}" for w in caught)
    assert not [noise for noise in KNOWN_NOISE if noise in seen], seen


def test_the_adapter_directory_is_self_contained(tmp_path, tiny_model_dir, monkeypatch):
    from transformers import AutoTokenizer

    from olm.adapter_card import portable_base_name
    from olm.backbone import resolve_model_path
    from olm.module import OnlineLM

    run_fit(ROOT / "configs" / "tiny.yaml", tmp_path, tiny_model_dir, monkeypatch, 4)
    [adapter] = adapter_dirs(tmp_path)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model_dir
    card = (adapter / "README.md").read_text()
    assert "More Information Needed" not in card, card  # olm's card, not PEFT's template
    for part in (f"base model: `{tiny_model_dir}`", "turns trained: 3", "facts learned: ", "command: `"):
        assert part in card, card
    assert AutoTokenizer.from_pretrained(adapter).chat_template  # the tokenizer travels with the adapter
    model = OnlineLM(base_model=config["base_model_name_or_path"], adapter=str(adapter))  # olm loads it back
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.model.named_parameters())
    # a built-in model is named as such, not by its directory in this checkout or cache
    assert portable_base_name("olm-tiny") == "olm-tiny" != resolve_model_path("olm-tiny")
