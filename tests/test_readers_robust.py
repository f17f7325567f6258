"""Hostile files in a log source (issue 16): FIFOs and other non-regular files are skipped without
blocking, NUL bytes are judged per line (crash padding removed, NUL-holding lines skipped), real
binary files are still skipped whole, and follow mode notices truncation and rotation."""

from __future__ import annotations

import gzip
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from olm.data import ChatTurnStream, Turn
from olm.readers import NotRegularFile, binary_reason, open_regular

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")


def record(user: str) -> bytes:
    return (json.dumps({"user": user, "assistant": "ok"}) + "\n").encode()


def read_with_deadline(fifos: list[Path], seconds: float = 20, **kwargs) -> list[Turn]:
    """Read the stream in a thread; if it is still blocked after `seconds`, unblock the FIFOs and fail."""
    result: list = []
    thread = threading.Thread(target=lambda: result.extend(ChatTurnStream(**kwargs)), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:  # a writer releases a reader blocked in open()
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"reading blocked for {seconds} s on a FIFO")
    return result


# ----------------------------------------------------------------------------- non-regular files
def test_fifo_in_a_log_directory_is_skipped_with_a_warning(tmp_path, caplog):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.jsonl").write_bytes(record("a"))
    os.mkfifo(logs / "b.jsonl")  # a log suffix: the directory filter lets it through
    (logs / "c.jsonl").write_bytes(record("c"))
    with caplog.at_level(logging.WARNING, logger="olm.data"):
        turns = read_with_deadline([logs / "b.jsonl"], source=str(logs))
    assert [t.user for t in turns] == ["a", "c"] and turns[-1].skipped == 1
    assert "b.jsonl: skipped: a FIFO, not a regular file" in caplog.text


def test_fifo_named_directly_or_followed_never_blocks(tmp_path):
    fifo = tmp_path / "live.jsonl"
    os.mkfifo(fifo)
    for follow in (False, True):
        with pytest.raises(FileNotFoundError, match="is a FIFO"):
            ChatTurnStream(str(fifo), follow=follow)
    later = tmp_path / "later.jsonl"  # follow mode waits for a missing file: it appears as a FIFO
    threading.Timer(0.1, os.mkfifo, [later]).start()
    turns = read_with_deadline([later], source=str(later), follow=True, poll_interval=0.02, idle_timeout=2)
    assert turns == []
    with pytest.raises(NotRegularFile, match="a FIFO"):
        open_regular(str(fifo))
    with pytest.raises(NotRegularFile, match="a directory"):
        open_regular(str(tmp_path))


# ----------------------------------------------------------------------------- NUL bytes
def test_one_nul_byte_skips_one_line_not_the_file(tmp_path, caplog):
    path = tmp_path / "log.jsonl"
    path.write_bytes(record("one") + b'{"user": "t\0rn"}\n' + record("three") + record("four"))
    with caplog.at_level(logging.WARNING, logger="olm.data"):
        turns = list(ChatTurnStream(str(path)))  # a single file named directly
    assert [t.user for t in turns] == ["one", "three", "four"] and turns[-1].skipped == 1
    assert "log.jsonl:2: line with NUL bytes skipped" in caplog.text


def test_crash_padded_log_in_a_directory_keeps_every_good_turn(tmp_path, caplog):
    logs = tmp_path / "logs"
    logs.mkdir()
    good = [f"turn {i}" for i in range(6)]
    # six good turns, the last one torn by NUL padding, then the zeroed tail a crash leaves behind
    body = b"".join(record(u) for u in good)
    (logs / "chat.log").write_bytes(body[:-1] + b"\0" * 7 + b"\n" + b"\0" * 9000)
    (logs / "notes.txt").write_bytes(b"hello\n\0\0\0\nbye\0\0\n")
    with caplog.at_level(logging.WARNING, logger="olm.data"):
        turns = list(ChatTurnStream(str(logs)))
    assert [t.user for t in turns] == good + ["hello", "bye"]
    assert turns[-1].skipped == 4  # four padded lines repaired, none dropped
    assert "trailing NUL bytes removed" in caplog.text


def test_real_binary_files_are_still_skipped_whole(tmp_path, caplog):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "z.jsonl").write_bytes(record("z"))  # read last: its turn carries the count
    (logs / "blob.log").write_bytes(bytes(range(256)) * 40)
    (logs / "gz.jsonl").write_bytes(gzip.compress(record("hidden") * 200))
    (logs / "wide.txt").write_bytes("\ufeffhello\nthere\n".encode("utf-16"))
    with caplog.at_level(logging.WARNING, logger="olm.data"):
        turns = list(ChatTurnStream(str(logs)))
    assert [t.user for t in turns] == ["z"] and turns[-1].skipped == 3
    assert caplog.text.count("binary file") == 2 and "UTF-16" in caplog.text


def test_binary_reason_ignores_nul_padding_and_a_little_bad_utf8():
    assert binary_reason(b"\0" * 8192) is None
    assert binary_reason(record("caf\xe9").replace(b"\xc3\xa9", b"\xe9") * 5 + b"\0" * 100) is None
    assert binary_reason(bytes(range(256))) is not None
    assert binary_reason("x\n".encode("utf-16")) is not None


# ----------------------------------------------------------------------------- follow mode
def follow_in_thread(path: Path, **kwargs) -> tuple[threading.Thread, list[Turn]]:
    turns: list[Turn] = []
    stream = ChatTurnStream(str(path), follow=True, poll_interval=0.02, **kwargs)
    thread = threading.Thread(target=lambda: turns.extend(stream), daemon=True)
    thread.start()
    return thread, turns


def wait_for(turns: list, n: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while len(turns) < n:
        assert time.monotonic() < deadline, f"only {len(turns)} of {n} turns after {seconds} s"
        time.sleep(0.02)


def test_follow_mode_rereads_a_copytruncated_log_from_its_start(tmp_path, caplog):
    path = tmp_path / "live.jsonl"
    path.write_bytes(record("a") + record("b"))
    with caplog.at_level(logging.WARNING, logger="olm.readers"):
        thread, turns = follow_in_thread(path, idle_timeout=1.5)
        wait_for(turns, 2)
        (tmp_path / "live.jsonl.1").write_bytes(path.read_bytes())  # logrotate's copytruncate
        with path.open("r+b") as f:
            f.truncate(0)
        time.sleep(0.2)
        with path.open("ab") as f:
            f.write(record("c") + record("d"))
        thread.join(20)
    assert [t.user for t in turns] == ["a", "b", "c", "d"] and turns[-1].skipped == 0
    assert "truncated to 0 bytes after" in caplog.text and "reading it from the start" in caplog.text


def test_follow_mode_notices_a_rewrite_in_place_that_is_not_shorter(tmp_path, caplog):
    path = tmp_path / "live.jsonl"
    path.write_bytes(record("a"))
    with caplog.at_level(logging.WARNING, logger="olm.readers"):
        thread, turns = follow_in_thread(path, idle_timeout=1.5)
        wait_for(turns, 1)
        fd = os.open(path, os.O_WRONLY)  # new content over the old, no shorter: the size alone misses it
        os.pwrite(fd, record("x") + record("y"), 0)
        os.close(fd)
        thread.join(20)
    assert [t.user for t in turns] == ["a", "x", "y"]
    assert "rewritten in place" in caplog.text


def test_follow_mode_follows_a_rename_rotation_to_the_new_file(tmp_path, caplog):
    path = tmp_path / "live.jsonl"
    path.write_bytes(record("a") + b'{"user": "torn')
    with caplog.at_level(logging.WARNING):
        thread, turns = follow_in_thread(path, idle_timeout=1.5)
        wait_for(turns, 1)
        os.rename(path, tmp_path / "live.jsonl.1")
        with (tmp_path / "live.jsonl.1").open("ab") as f:  # the writer still has the old file open
            f.write(b' line"}\n' + record("b"))
        time.sleep(0.3)
        path.write_bytes(record("c"))  # the writer reopens: a new file at the path
        thread.join(20)
    assert [t.user for t in turns] == ["a", "torn line", "b", "c"] and turns[-1].skipped == 0
    assert "replaced by a new file" in caplog.text


def test_follow_mode_ends_a_partial_line_when_the_file_is_replaced(tmp_path, caplog):
    path = tmp_path / "live.jsonl"
    path.write_bytes(record("a") + b'{"user": "never finis')
    with caplog.at_level(logging.WARNING):
        thread, turns = follow_in_thread(path, idle_timeout=1.5)
        wait_for(turns, 1)
        new = tmp_path / "new.jsonl"
        new.write_bytes(record("b"))
        os.replace(new, path)
        thread.join(20)
    assert [t.user for t in turns] == ["a", "b"] and turns[-1].skipped == 1  # the cut line: malformed
    assert "replaced by a new file" in caplog.text and "invalid JSON" in caplog.text
