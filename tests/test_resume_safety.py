"""No learned state lost (issue 16, items 1, 4, 6, 8, 9, 10): checkpoint rotation and atomic writes,
files changed between runs, settings changed on resume, destroyed adapters, the run lock, and the
chat's input, save order and RNG. Process behaviour is tested on real `cli.py fit` processes, some
run through `tests/hooked_cli.py`, which kills or signals the process at an exact call."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_chat import local_chat_config
from test_cli import ROOT, cli, local_config, run_fit, write_log

from olm.callbacks.checkpoint import checkpoint_problem, resolve_resume_checkpoint
from olm.data import ChatStreamDataModule, ChatTurnStream
from olm.durable import RunLock, atomic_write, remove_orphans
from olm.errors import ResumeError, RunLocked
from olm.readers import FdLineReader, StopRequest, read_lines
from olm.runs import run_versions

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONWARNINGS": "ignore"}  # fmt: skip
TINY = ROOT / "configs" / "tiny.yaml"
HOOKED = ROOT / "tests" / "hooked_cli.py"


def every(n: int, dirpath: Path | None = None) -> dict[str, str]:
    """Config edits: TurnCheckpoint every `n` turns, in a fixed `dirpath` when given."""
    fixed = f"\n        dirpath: {dirpath}" if dirpath else ""
    return {"every_n_turns: 50\n        save_top_k": f"every_n_turns: {n}{fixed}\n        save_top_k"}


def cmd(config: Path, model_dir: str, *extra: str, hooked: bool = False) -> list[str]:
    script = HOOKED if hooked else ROOT / "cli.py"
    return [sys.executable, str(script), "fit", "--config", str(config), "--model.base_model", model_dir,
            "--trainer.enable_progress_bar", "false", "--model.optim.steps_per_fact", "1", *extra]  # fmt: skip


def run(args: list[str], cwd: Path, hook: str | None = None, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    env = {**ENV, "OLM_HOOK": hook} if hook else ENV
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def turns_in(ckpt: Path) -> int:
    return torch.load(ckpt, weights_only=True)["olm"]["turns_trained"]


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".olm-tmp" in p.name or ".olm-old" in p.name]


# ----------------------------------------------------------------------------- 1: rotation, atomic writes
@pytest.mark.slow  # the default suite's time budget: a subprocess kill/restart, ~40-60 s on 2 cores
def test_corrupt_last_is_quarantined_and_a_kill_in_the_next_save_loses_nothing(tmp_path, tiny_model_dir):
    ckpts = tmp_path / "ckpts"
    config = local_config(TINY, tmp_path, every(2, ckpts))
    log = write_log(tmp_path / "log.jsonl", 12)
    done = run(cmd(config, tiny_model_dir, "--data.source", str(log), "--trainer.max_steps", "6"), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    last, previous = ckpts / "last.ckpt", ckpts / "previous.ckpt"
    assert (turns_in(last), turns_in(previous)) == (6, 4)
    last.write_bytes(last.read_bytes()[:100])  # torn, as a copy across filesystems cut by a full disk leaves it

    # resume: falls back to previous.ckpt; its first save is cut off mid-write by SIGKILL
    args = cmd(config, tiny_model_dir, "--data.source", str(log), "--ckpt_path", "last", hooked=True)
    killed = run(args, tmp_path, hook="torch:save:torn:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert checkpoint_problem(previous) is None and turns_in(previous) == 4  # survived the fallback and the kill
    assert "unusable" in killed.stderr and "quarantined" in killed.stderr
    [quarantined] = ckpts.glob("last.ckpt.corrupt-*")
    assert quarantined.stat().st_size == 100

    # the next resume still finds it, clears the torn temporary file and finishes the log
    done = run(cmd(config, tiny_model_dir, "--data.source", str(log), "--ckpt_path", "last"), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert turns_in(last) == 12 and torch.load(last, weights_only=True)["ChatStreamDataModule"]["next_offset"] == 12
    assert not temp_files(tmp_path) and "left by an interrupted save" in done.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 160 KiB tmpfs: room for one tiny checkpoint (about 107 KB, most of it the hyperparameters: the detector's
    patterns), not two; a skip where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): the simulated variant below covers the clean-up")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_leaves_no_torn_checkpoint(tmp_path, tiny_model_dir, small_disk):
    """A real full disk: the checkpoint directory is on a tmpfs with room for one checkpoint. The second
    save fails; Lightning's own write (in /tmp, then copied over) left a torn last.ckpt there."""
    ckpts = small_disk / "ckpts"
    config = local_config(TINY, tmp_path, every(2, ckpts))
    log = write_log(tmp_path / "log.jsonl", 8)
    failed = run(cmd(config, tiny_model_dir, "--data.source", str(log)), tmp_path)
    assert failed.returncode != 0 and "No space left on device" in failed.stderr, failed.stderr[-3000:]
    left = sorted(p.name for p in ckpts.iterdir())
    assert all(checkpoint_problem(ckpts / name) is None for name in left), left  # nothing torn
    assert left == ["previous.ckpt"] and turns_in(ckpts / "previous.ckpt") == 2  # no temporary file either


def test_a_failed_write_simulated_leaves_the_old_checkpoints_and_no_temp_file(tmp_path, tiny_model_dir):
    """ENOSPC simulated in-process (half the bytes written, then the error) for where no tmpfs can be
    mounted: it checks the clean-up; only the tmpfs variant above reproduces the old torn file."""
    ckpts = tmp_path / "ckpts"
    config = local_config(TINY, tmp_path, every(2, ckpts))
    log = write_log(tmp_path / "log.jsonl", 8)
    assert run(cmd(config, tiny_model_dir, "--data.source", str(log), "--trainer.max_steps", "4"), tmp_path).returncode == 0
    args = cmd(config, tiny_model_dir, "--data.source", str(log), "--ckpt_path", "last", hooked=True)
    failed = run(args, tmp_path, hook="torch:save:enospc:1")
    assert failed.returncode != 0 and os.strerror(errno.ENOSPC) in failed.stderr
    assert sorted(p.name for p in ckpts.iterdir()) == ["previous.ckpt"] and turns_in(ckpts / "previous.ckpt") == 4


def test_atomic_write_and_orphans(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, lambda fh: fh.write(b"old"))

    def disk_full(fh):
        fh.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError):
        atomic_write(target, disk_full)
    assert target.read_bytes() == b"old" and not temp_files(tmp_path)
    # a killed adapter save (the new directory half written, the old one set aside, no final one) and a
    # killed checkpoint save; a live process's temporary file is left alone
    run_dir = tmp_path / "root" / "version_0"
    (run_dir / "adapter.olm-old-999999").mkdir(parents=True)
    (run_dir / "adapter.olm-old-999999" / "adapter_model.safetensors").write_bytes(b"good")
    (run_dir / "adapter.olm-tmp-999999").mkdir()
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt.olm-tmp-999999").write_bytes(b"torn")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        busy = run_dir / "checkpoints" / f"last.ckpt.olm-tmp-{live.pid}"
        busy.write_bytes(b"being written")
        done = remove_orphans(tmp_path / "root")
        assert busy.is_file() and len(done) == 3
    finally:
        live.kill()
        live.wait()
    assert (run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == b"good"
    assert temp_files(tmp_path) == [busy]


# ----------------------------------------------------------------------------- 4: files changed since the checkpoint
def write_turns(path: Path, users: list[str], tag: str) -> Path:
    with path.open("w") as f:
        for i, user in enumerate(users):
            f.write(json.dumps({"id": f"{tag}{i}", "messages": [{"role": "user", "content": user},
                                                               {"role": "assistant", "content": "Ok."}]}) + "\n")
    return path


def fit_on(log: Path, tmp: Path, model_dir: str, *extra: str) -> None:
    """`cli.py fit` in-process on configs/tiny.yaml and `log` (run_fit would write its own log)."""
    cli.main(["fit", "--config", str(local_config(TINY, tmp)), "--model.base_model", model_dir, "--data.source",
              str(log), "--trainer.enable_progress_bar", "false", "--model.optim.steps_per_fact", "1", *extra])


def test_a_log_replaced_at_the_same_path_is_read_from_its_start(tmp_path, tiny_model_dir, caplog):
    log = write_turns(tmp_path / "log.jsonl", [f"Old message {i}." for i in range(8)], "old")
    fit_on(log, tmp_path, tiny_model_dir, "--trainer.max_steps", "3")
    write_turns(log, [f"New message {i}." for i in range(8)], "new")  # same path, other content
    fit_on(log, tmp_path, tiny_model_dir, "--ckpt_path", "last")
    state = latest_ckpt(tmp_path)
    assert state["olm"]["turns_trained"] == 3 + 8  # every new turn trained, none skipped
    assert state["ChatStreamDataModule"]["next_offset"] == 11  # numbered on, no offset reused
    assert "holds other content" in caplog.text and "read from its start" in caplog.text


def drain(module: ChatStreamDataModule, n: int | None = None) -> list:
    taken = []
    for turn in module.train_dataloader().dataset:
        module.mark_trained(turn)
        taken.append(turn)
        if n is not None and len(taken) == n:
            break
    return taken


def resumed(module: ChatStreamDataModule, **kwargs) -> ChatStreamDataModule:
    again = ChatStreamDataModule(**kwargs)
    again.load_state_dict(module.state_dict())
    return again


def test_in_a_directory_a_changed_file_is_read_again_from_its_first_turn(tmp_path, caplog):
    logs = tmp_path / "logs"
    logs.mkdir()
    write_turns(logs / "a.jsonl", ["a0", "a1", "a2"], "a")
    write_turns(logs / "b.jsonl", ["b0", "b1", "b2"], "b")
    module = ChatStreamDataModule(source=str(logs))
    drain(module, 5)  # into b.jsonl
    assert resumed(module, source=str(logs)).next_offset == 5  # nothing changed: on where it was
    with (logs / "b.jsonl").open("a") as f:  # appended to: still the same file
        f.write(json.dumps({"messages": [{"role": "user", "content": "b3"}]}) + "\n")
    again = resumed(module, source=str(logs))
    assert [t.user for t in drain(again)] == ["b2", "b3"]
    write_turns(logs / "a.jsonl", ["A0 is longer now", "A1 is longer now", "A2 is longer now"], "A")
    again = resumed(module, source=str(logs))  # a.jsonl was rewritten
    assert again.next_offset == 0 and "a.jsonl holds other content (its first bytes differ" in caplog.text
    assert [t.user for t in drain(again)] == ["A0 is longer now", "A1 is longer now", "A2 is longer now", "b0", "b1",
                                              "b2", "b3"]  # fmt: skip


def test_a_rotation_seen_in_follow_mode_is_resumed_in_the_new_file(tmp_path):
    path = tmp_path / "live.jsonl"
    write_turns(path, ["old0", "old1", "old2"], "o")
    kwargs = {"source": str(path), "follow": True, "poll_interval": 0.02, "idle_timeout": 0.3}
    module = ChatStreamDataModule(**kwargs)
    stream = iter(module.train_dataloader().dataset)
    for _ in range(3):
        module.mark_trained(next(stream))
    write_turns(tmp_path / "new.jsonl", ["new0", "new1"], "n")
    os.replace(tmp_path / "new.jsonl", path)  # rename rotation: the path now names a new file
    got = [next(stream), next(stream)]
    for turn in got:
        module.mark_trained(turn)
    assert [(t.user, t.offset, t.file_start) for t in got] == [("new0", 3, 3), ("new1", 4, 3)]
    with path.open("a") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "new2"}]}) + "\n")
    again = resumed(module, **kwargs)
    assert [(t.user, t.offset) for t in drain(again)] == [("new2", 5)]  # the two trained ones not again


# ----------------------------------------------------------------------------- 6: settings changed on resume
@pytest.fixture
def trained(tmp_path, tiny_model_dir, monkeypatch) -> Path:
    """A run of 3 turns (every 2: last.ckpt at 3 and previous.ckpt at 2); returns last.ckpt."""
    run_fit(TINY, tmp_path, tiny_model_dir, monkeypatch, 8, edits=every(2))
    return run_versions(tmp_path / "runs" / "tiny")[-1] / "checkpoints" / "last.ckpt"


def latest_ckpt(tmp_path: Path) -> dict:
    return torch.load(run_versions(tmp_path / "runs" / "tiny")[-1] / "checkpoints" / "last.ckpt", weights_only=True)


def test_the_command_line_wins_over_an_explicit_checkpoint(trained, tmp_path, tiny_model_dir, monkeypatch, caplog):
    run_fit(TINY, tmp_path, tiny_model_dir, monkeypatch, 8, "--ckpt_path", str(trained), "--model.optim.lr", "0.01",
            "--trainer.max_steps", "-1", edits=every(2))  # fmt: skip
    state = latest_ckpt(tmp_path)
    assert state["olm"]["turns_trained"] == 8
    assert [(g["lr"], g["base_lr"]) for g in state["optimizer_states"][0]["param_groups"]] == [(0.01, 0.01)]
    assert state["hyper_parameters"]["optim"]["lr"] == 0.01  # not replaced by the checkpoint's
    config = yaml.safe_load((run_versions(tmp_path / "runs" / "tiny")[-1] / "config.yaml").read_text())
    assert config["model"]["optim"]["lr"] == 0.01
    assert "optim.lr 0.01 (the checkpoint's was 0.0003)" in caplog.text


def test_what_cannot_change_fails_in_one_sentence(trained, tmp_path, tiny_model_dir, monkeypatch):
    with pytest.raises(SystemExit) as err:
        run_fit(TINY, tmp_path, tiny_model_dir, monkeypatch, 8, "--ckpt_path", str(trained), "--model.lora.r", "4",
                edits=every(2))  # fmt: skip
    message = str(err.value)
    assert message.startswith("olm: checkpoint's adapter has LoRA r 8") and "this run's has r 4" in message
    assert "\n" not in message


def test_the_adapted_blocks_are_part_of_a_checkpoints_identity(tiny_model_dir):
    from olm.backbone import LoRASettings
    from olm.module import OnlineLM

    saved: dict = {"state_dict": {}}
    OnlineLM(base_model=tiny_model_dir).on_save_checkpoint(saved)
    with pytest.raises(ResumeError, match=r"this run's has r 4 .* blocks \[0\]"):  # 2 blocks, the lower half
        OnlineLM(base_model=tiny_model_dir, lora=LoRASettings(lower_fraction=0.5)).on_load_checkpoint(saved)


def test_corrupt_explicit_file_falls_back_and_a_file_named_last_is_not_taken(trained, tmp_path, tiny_model_dir,
                                                                              monkeypatch, caplog):
    trained.write_bytes(b"\0" * 64)  # the explicit file is corrupt; previous.ckpt (turn 2) lies beside it
    monkeypatch.chdir(tmp_path)
    Path("last").write_bytes(b"not a checkpoint, just a file named last")
    run_fit(TINY, tmp_path, tiny_model_dir, monkeypatch, 8, "--ckpt_path", str(trained), "--trainer.max_steps", "-1",
            edits=every(2))  # fmt: skip
    assert "resuming from the previous good checkpoint" in caplog.text and latest_ckpt(tmp_path)["olm"]["turns_trained"] == 8
    run_fit(TINY, tmp_path, tiny_model_dir, monkeypatch, 10, "--ckpt_path", "last", "--trainer.max_steps", "-1",
            edits=every(2))  # fmt: skip
    assert latest_ckpt(tmp_path)["olm"]["turns_trained"] == 10  # `last` is the keyword, not ./last


# ----------------------------------------------------------------------------- 8: destroyed adapters
@pytest.mark.parametrize("value", [float("nan"), 1e20], ids=["nan", "huge"])
def test_an_unusable_last_checkpoint_falls_back_to_previous(trained, tmp_path, tiny_model_dir, monkeypatch, caplog,
                                                            value):
    state = torch.load(trained, weights_only=True)
    name = next(k for k in state["state_dict"] if "lora_B" in k)
    state["state_dict"][name].fill_(value)
    torch.save(state, trained)  # well formed, but its adapter is destroyed
    assert "its adapter is unusable" in checkpoint_problem(trained)
    run_fit(TINY, tmp_path, tiny_model_dir, monkeypatch, 8, "--ckpt_path", "last", "--trainer.max_steps", "-1",
            edits=every(2))  # fmt: skip
    assert "resuming from the previous good checkpoint" in caplog.text
    final = latest_ckpt(tmp_path)
    assert final["olm"]["turns_trained"] == 8 and checkpoint_problem(run_versions(tmp_path / "runs" / "tiny")[-1] / "checkpoints" / "last.ckpt") is None
    assert list(trained.parent.glob("last.ckpt.corrupt-*"))


def test_a_run_that_destroys_its_adapter_stops_without_saving_it(tmp_path, tiny_model_dir, monkeypatch):
    with pytest.raises(SystemExit) as err:
        run_fit(TINY, tmp_path, tiny_model_dir, monkeypatch, 8, "--model.optim.lr", "1e6", "--trainer.max_steps", "-1",
                edits=every(2))  # fmt: skip
    message = str(err.value)
    assert message.startswith("olm: the adapter is destroyed after turn 2") and "over its bound" in message
    assert "--model.optim.lr is 1e+06" in message
    assert not list((tmp_path / "runs").rglob("*.ckpt")) and not list((tmp_path / "runs").rglob("adapter_model*"))


def test_the_drift_guard_rolls_a_destroyed_adapter_back_at_once(tiny_model_dir):
    from test_monitors import fit as fit_turns

    from olm.callbacks.drift import DriftGuard, lora_snapshot
    from olm.guards import adapter_problem
    from olm.module import OnlineLM, OptimSettings

    torch.manual_seed(0)
    model = OnlineLM(base_model=tiny_model_dir, optim=OptimSettings(lr=1e6))  # every step destroys the adapter
    start = lora_snapshot(model.model)
    guard = DriftGuard(max_kl=10.0, every_n_turns=100)  # no anchor check in these turns: the bound acts alone
    fit_turns(model, 3, [guard])
    assert guard.rollbacks == 3 and adapter_problem(model.model) is None
    assert all(torch.equal(p, start[name]) for name, p in lora_snapshot(model.model).items())


def test_resolve_reports_every_unusable_candidate(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"torn")
    (tmp_path / "previous.ckpt").write_bytes(b"torn too")
    with pytest.raises(ResumeError, match=r"(?s)--ckpt_path null.*last\.ckpt.*previous\.ckpt"):
        resolve_resume_checkpoint(str(tmp_path / "last.ckpt"), trainer=None)
    assert (tmp_path / "last.ckpt").is_file()  # nothing usable: nothing quarantined either


# ----------------------------------------------------------------------------- 9: the run lock
@pytest.mark.slow  # the default suite's time budget: a subprocess kill/restart, ~40-60 s on 2 cores
def test_a_second_run_on_the_same_directory_is_refused_and_a_kill_frees_it(tmp_path, tiny_model_dir):
    config = local_config(TINY, tmp_path)
    read_end, write_end = os.pipe()
    try:
        first = subprocess.Popen(cmd(config, tiny_model_dir, "--data.source", "-", "--data.format", "text"),
                                 cwd=tmp_path, env=ENV, stdin=read_end, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
        os.close(read_end)
        os.write(write_end, b"Hello there.\n")  # it waits for more: the stdin pipe stays open
        lock = tmp_path / "runs" / "tiny" / ".olm.lock"
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        log = write_log(tmp_path / "log.jsonl", 4)
        second = run(cmd(config, tiny_model_dir, "--data.source", str(log), "--ckpt_path", "last"), tmp_path)
        assert second.returncode == 1
        assert f"olm: another olm run (pid {first.pid}) is using {tmp_path}/runs/tiny" in second.stderr
        assert "Traceback" not in second.stderr
        first.kill()  # kill -9: the lock file stays, the lock dies with the process
        first.wait()
    finally:
        os.close(write_end)
    assert lock.is_file()
    third = run(cmd(config, tiny_model_dir, "--data.source", str(log), "--trainer.max_steps", "2"), tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]


def test_the_lock_is_released_on_exit_and_exclusive_within_a_process(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):
        pass


# ----------------------------------------------------------------------------- 10: the chat, save order, RNG
def test_a_stop_just_before_the_read_waits_does_not_wait(tmp_path):
    """Ctrl+C after `StopRequest.next` checked for a stop and before the read began to wait: the read
    must not block until a line comes (stdin here is a pipe that never gets one)."""
    stop, (read_end, write_end) = StopRequest(), os.pipe()

    def lines():
        stop.handle(signal.SIGINT, None)  # lands here: not yet waiting, so it only sets the flag
        yield from read_lines(FdLineReader(read_end, stop), 100)

    timer = threading.Timer(10, os.write, [write_end, b"unblock\n"])
    timer.start()
    try:
        start = time.monotonic()
        assert stop.next(lines(), "end") == "end"
        assert time.monotonic() - start < 5, "the read waited for a line after the stop"
    finally:
        timer.cancel()
        os.close(read_end)
        os.close(write_end)


def chat_cmd(tmp_path: Path, model_dir: str, hooked: bool = False) -> list[str]:
    script = HOOKED if hooked else ROOT / "cli.py"
    return [sys.executable, str(script), "fit", "--config", str(local_chat_config(tmp_path)), "--model.base_model",
            model_dir]  # fmt: skip


def test_chat_ctrl_c_right_after_the_prompt_exits_at_once(tmp_path, tiny_model_dir):
    read_end, write_end = os.pipe()  # stdin stays open and empty: only the signal can end the read
    try:
        proc = subprocess.Popen(chat_cmd(tmp_path, tiny_model_dir, hooked=True), cwd=ROOT,
                                env={**ENV, "OLM_HOOK": "olm.readers:FdLineReader.readline:sigint-before:1"},
                                stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        os.close(read_end)
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the chat hung after Ctrl+C at the prompt:\n{out[-2000:]}\n{err[-2000:]}")
    finally:
        os.close(write_end)
    assert proc.returncode == 0, err[-3000:]
    assert "you> " in out and "Saving and exiting" in out


def test_chat_with_stdin_closed_exits_cleanly(tmp_path, tiny_model_dir):
    done = run(chat_cmd(tmp_path, tiny_model_dir), ROOT, stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(0))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stdin is closed" in done.stderr and "AttributeError" not in done.stderr


def test_the_checkpoint_is_saved_before_the_adapter(tmp_path, tiny_model_dir):
    edits = {**every(4), "every_n_turns: 50\n    - class_path: olm.callbacks.TurnCheckpoint":
             "every_n_turns: 4\n    - class_path: olm.callbacks.TurnCheckpoint"}  # fmt: skip
    config = local_config(TINY, tmp_path, edits)
    log = write_log(tmp_path / "log.jsonl", 8)
    args = cmd(config, tiny_model_dir, "--data.source", str(log), hooked=True)
    killed = run(args, tmp_path, hook="olm.callbacks.checkpoint:AdapterCheckpoint.save:kill-after:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    [version] = run_versions(tmp_path / "runs" / "tiny")
    adapter_turn = json.loads((version / "adapter" / "latest" / "olm_state.json").read_text())["turns_trained"]
    assert adapter_turn == 4 and turns_in(version / "checkpoints" / "last.ckpt") == adapter_turn


def test_a_resumed_run_with_dropout_matches_an_uninterrupted_one(tmp_path, tiny_model_dir, monkeypatch):
    assert yaml.safe_load(TINY.read_text())["model"]["lora"]["dropout"] > 0
    whole, split = tmp_path / "whole", tmp_path / "split"
    whole.mkdir(), split.mkdir()
    run_fit(TINY, whole, tiny_model_dir, monkeypatch, 8, "--trainer.max_steps", "-1")
    run_fit(TINY, split, tiny_model_dir, monkeypatch, 8, "--trainer.max_steps", "4")
    run_fit(TINY, split, tiny_model_dir, monkeypatch, 8, "--ckpt_path", "last", "--trainer.max_steps", "-1")
    a, b = latest_ckpt(whole), latest_ckpt(split)
    assert a["olm"]["turns_trained"] == b["olm"]["turns_trained"] == 8
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
