"""SIGTERM, SIGHUP and SIGINT save and exit 0 like the end of the stream (issue 16, item 2), tested on
real `cli.py fit` processes with a tiny model: a batch run over a log, a batch run over a stdin pipe
(a line already read is trained and saved, a blocked read ends), and the chat through a pty (a
closed terminal, `kill`)."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

import pytest
import torch
from test_chat import PROMPT, local_chat_config, saved_state, start_chat
from test_chat import finish as chat_finish
from test_cli import ROOT, local_config, write_log
from test_crash_resume import fit_cmd, trained_offsets

from olm.data import ChatTurnStream
from olm.readers import STOP_SIGNALS, StopRequest

TURNS = 60
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def every(n: int) -> dict[str, str]:
    return {"every_n_turns: 50\n        save_top_k": f"every_n_turns: {n}\n        save_top_k"}


def load(ckpt: Path) -> dict | None:
    try:
        return torch.load(ckpt, weights_only=True)
    except Exception:  # noqa: BLE001 - absent, or being replaced right now
        return None


def wait_for_turns(ckpt: Path, proc: subprocess.Popen, turns: int, seconds: float = 120) -> None:
    """Until the periodic checkpoint shows at least `turns` trained turns."""
    deadline = time.monotonic() + seconds
    while not ((state := load(ckpt)) and state["olm"]["turns_trained"] >= turns):
        assert proc.poll() is None, "the run ended before the signal"
        assert time.monotonic() < deadline, f"no checkpoint with {turns} turns within {seconds} s"
        time.sleep(0.05)


def finish(proc: subprocess.Popen, err: Path, seconds: float = 120) -> int:
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"still running {seconds} s after the signal:\n{err.read_text()[-3000:]}")


def assert_everything_trained_was_saved(run_root: Path, ckpt: Path) -> int:
    state = torch.load(ckpt, weights_only=True)
    trained = state["olm"]["turns_trained"]
    assert state["ChatStreamDataModule"]["next_offset"] == trained
    [version] = sorted(run_root.glob("version_*"))
    assert trained_offsets(version) == list(range(trained))  # every turn trained is in the checkpoint
    return trained


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_signal_mid_log_finishes_the_turn_saves_and_exits_0(sig, tmp_path, tiny_model_dir):
    config = local_config(ROOT / "configs" / "tiny.yaml", tmp_path, every(4))
    log = write_log(tmp_path / "log.jsonl", TURNS)
    ckpt = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    err = tmp_path / "stderr.txt"
    with err.open("w") as stderr:
        proc = subprocess.Popen(fit_cmd(config, tiny_model_dir, log, "--model.optim.steps_per_fact", "1"),
                                cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip
        wait_for_turns(ckpt, proc, 4)
        time.sleep(0.1)  # land inside a later turn, not right after the periodic save
        proc.send_signal(sig)
        rc = finish(proc, err)
    assert rc == 0, err.read_text()[-3000:]
    trained = assert_everything_trained_was_saved(tmp_path / "runs" / "tiny", ckpt)
    assert 4 <= trained < TURNS
    adapter_memory = tmp_path / "runs" / "tiny" / "version_0" / "adapter" / "latest" / "memory.json"
    assert adapter_memory.is_file()  # the adapter was saved at the end too (every_n_turns is 50)
    assert f"{sig.name}: finishing the current turn, then saving and exiting" in err.read_text()


def test_sigterm_on_a_stdin_pipe_trains_the_line_read_then_ends_the_blocked_read(tmp_path, tiny_model_dir):
    config = local_config(ROOT / "configs" / "tiny.yaml", tmp_path, every(3))
    ckpt = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    err = tmp_path / "stderr.txt"
    read_end, write_end = os.pipe()
    watch = os.dup(read_end)  # to see (FIONREAD) when the run has taken the line, never to read it
    try:
        with err.open("w") as stderr:
            proc = subprocess.Popen(fit_cmd(config, tiny_model_dir, "-", "--data.format", "text"), cwd=tmp_path,
                                    env=ENV, stdin=read_end, stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip
            os.close(read_end)
            os.write(write_end, b"Hello there.\nHow are you today?\nWho is Zara?\n")
            wait_for_turns(ckpt, proc, 3)
            os.write(write_end, b"Xiomara lives in Lisbon.\n")
            deadline = time.monotonic() + 60
            while struct.unpack("i", fcntl.ioctl(watch, termios.FIONREAD, b"\0\0\0\0"))[0]:
                assert time.monotonic() < deadline, "the run never read the fourth line"
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)  # the line is read: it is trained; then the next read ends at once
            rc = finish(proc, err)
    finally:
        os.close(write_end)  # kept open until here: only the signal can end the read
        os.close(watch)
    assert rc == 0, err.read_text()[-3000:]
    state = torch.load(ckpt, weights_only=True)
    assert state["olm"]["turns_trained"] == 4 and state["ChatStreamDataModule"]["next_offset"] == 4
    assert [f["subject"] for f in state["olm"]["memory"]["facts"]] == ["Xiomara"]


# ----------------------------------------------------------------------------- in process
@pytest.fixture
def stop():
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    request = StopRequest()
    yield request
    request.restore()
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_install_replaces_any_handler_once_and_restore_puts_it_back(stop):
    def lightning_like(signum, frame):  # Lightning's SIGTERM handler would only set a flag
        raise AssertionError("not ours")

    signal.signal(signal.SIGTERM, lightning_like)
    stop.install()
    assert all(signal.getsignal(sig) == stop.handle for sig in STOP_SIGNALS)
    signal.signal(signal.SIGTERM, lightning_like)  # Lightning installs its own after setup ...
    stop.install()  # ... and reading starts later: ours again, the first previous handler kept
    assert signal.getsignal(signal.SIGTERM) == stop.handle
    stop.handle(signal.SIGTERM, None)  # not waiting: only the flag
    assert stop.requested and stop.next(iter([1]), "end") == "end"
    stop.restore()
    assert signal.getsignal(signal.SIGTERM) is lightning_like
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    stop.install()  # a new run: the old request is cleared
    assert not stop.requested


def test_sigterm_ends_a_follow_mode_wait_at_once_and_drops_the_partial_line(tmp_path, stop):
    path = tmp_path / "live.jsonl"
    path.write_text('{"user": "early"}\n{"user": "hal', encoding="utf-8")
    stream = ChatTurnStream(str(path), follow=True, poll_interval=0.05, idle_timeout=20, stop=stop)
    stop.install()
    assert signal.getsignal(signal.SIGTERM) == stop.handle  # never kill the test process
    threading.Timer(0.5, os.kill, [os.getpid(), signal.SIGTERM]).start()
    start = time.monotonic()
    turns = list(stop.iterate(stream))
    assert [t.user for t in turns] == ["early"] and time.monotonic() - start < 10
    assert stop.requested and not stop.reading


# ----------------------------------------------------------------------------- the chat
def test_chat_closed_terminal_saves_and_exits_0(tmp_path, tiny_model_dir):
    config = local_chat_config(tmp_path)
    child = start_chat(config, tiny_model_dir)
    child.expect_exact(PROMPT)
    child.sendline("Zara is my sister.")
    child.expect(r"memory=1 turns=1")
    child.expect_exact(PROMPT)
    child.ptyproc.fileobj.close()  # the terminal goes away: the kernel sends SIGHUP, writes to it fail
    deadline = time.monotonic() + 120
    while child.ptyproc.isalive():
        assert time.monotonic() < deadline, "the chat is still running 120 s after its terminal closed"
        time.sleep(0.05)
    assert child.ptyproc.exitstatus == 0 and child.ptyproc.signalstatus is None
    state = saved_state(tmp_path)  # every_n_turns is 10: only the final save can hold turn 1
    assert state["olm"]["turns_trained"] == 1 and state["ChatStreamDataModule"]["next_offset"] == 1
    assert (tmp_path / "runs" / "chat" / "version_0" / "adapter" / "latest" / "memory.json").is_file()


def test_chat_sigterm_at_the_prompt_saves_and_exits_0(tmp_path, tiny_model_dir):
    config = local_chat_config(tmp_path)
    child = start_chat(config, tiny_model_dir)
    child.expect_exact(PROMPT)
    child.sendline("Zara is my sister.")
    child.expect(r"memory=1 turns=1")
    child.expect_exact(PROMPT)
    child.kill(signal.SIGTERM)
    child.expect("Saving and exiting")
    assert chat_finish(child) == 0
    assert saved_state(tmp_path)["olm"]["turns_trained"] == 1
