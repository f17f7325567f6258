"""Log sources and their readers: which files a source names, and bytes → conversations, safely.

A source is a file, a directory of logs (files sorted by path, recursively, hidden ones left out),
a glob pattern, or ``-`` for stdin. `SourceReader` turns one file into (where, `Conversation` or
`Problem`) items, choosing how to read it from the format and the file:

- a file whose first character is ``[`` (a JSON array, e.g. a ShareGPT dump) or a ``.json`` file
  is decoded value by value from bounded chunks (`JsonValueReader`); other files line by line;
- in ``auto`` mode ``.jsonl`` / ``.ndjson`` lines must be JSON records, ``.txt`` lines are
  DailyDialog (with ``__eou__``) or text, and lines of stdin or other files are records when they
  are JSON objects of a known shape, else text (`olm.formats.line_conversation`);
- only regular files are read: a FIFO, socket, device or directory is skipped with a problem
  (opening a FIFO would block until a writer came);
- in a directory or pattern, files without a log suffix are skipped; any file whose first
  `ReaderLimits.sniff_bytes` are binary (`binary_reason`: a UTF-16/32 byte-order mark, or control
  bytes and invalid UTF-8) is skipped; an unreadable file ends with a problem;
- NUL bytes are judged per line, not per file: trailing NUL padding (what a crash can leave at the
  end of a log) is removed and reported; a line with other NUL bytes is skipped as malformed;
- with ``follow`` a single file is polled for appended lines like ``tail -F`` (line records only),
  and a partial last line waits for its end; truncation (copytruncate), a rewrite in place and
  replacement by a new file (rename rotation) are noticed at the end of the data (`FollowedFile`),
  logged, and the file is read again from its start;
- stdin is read from ``sys.stdin`` or from a line source given instead (the interactive chat's
  console, which prompts and handles commands);
- a `StopRequest` (SIGINT, SIGTERM, SIGHUP) ends reading without losing input: its handler raises
  only inside a wait that consumes nothing (``select`` on stdin, the follow-mode sleep).

Invalid UTF-8 is replaced by U+FFFD (a problem), and a line or value over
`ReaderLimits.max_record_bytes` is skipped without being held in memory.
"""

from __future__ import annotations

import codecs
import glob
import json
import logging
import os
import select
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from olm.formats import Conversation, LineMode, Problem, line_conversation, record_conversation

if TYPE_CHECKING:
    from olm.data import StreamConfig

log = logging.getLogger(__name__)

STDIN = "-"
LOG_SUFFIXES: tuple[str, ...] = (".jsonl", ".ndjson", ".json", ".txt", ".log")
JSONL_SUFFIXES: tuple[str, ...] = (".jsonl", ".ndjson")
_TAIL = len("\\uXXXX")  # a value or error this close to the buffer's end may be cut off (an escape, "1e-")
_BOM_AND_SPACE = b"\xef\xbb\xbf \t\r\n"
_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_CONTROL = frozenset(map(chr, (*range(1, 9), *range(14, 27), *range(28, 32), 127)))  # not \t\n\v\f\r, ESC, NUL
BINARY_FRACTION = 0.3
"""A file is binary when control bytes and invalid UTF-8 make up more than this share of its non-NUL head."""

LineSource = Callable[[], Iterable[bytes | str | None]]
"""Returns the lines of stdin to read (as `read_lines` yields them); replaces ``sys.stdin``."""
Item = tuple[str, Conversation | Problem]
"""(where: ``path`` or ``path:line``, a conversation or a bad-input problem)."""


@dataclass(frozen=True)
class ReaderLimits:
    """Bounds that keep reading safe on hostile input."""

    max_record_bytes: int = 16 * 2**20
    """Longest line or JSON value read; a longer one is skipped without being held in memory."""
    chunk_bytes: int = 2**16
    """Bytes read at a time from JSON (array) files."""
    max_warnings: int = 5
    """Warnings logged per kind of problem; later ones are only counted in `Turn.skipped`."""
    max_conversations: int = 4096
    """Conversations whose history is kept (least recently used dropped first)."""
    sniff_bytes: int = 8192
    """Leading bytes examined to recognize a binary file (`binary_reason`) and a JSON array."""

    def __post_init__(self) -> None:
        bad = [f"{k}={v!r}" for k, v in vars(self).items() if not isinstance(v, int) or v < 1]
        if bad:
            raise ValueError(f"ReaderLimits: these must be positive integers: {', '.join(bad)}")


# ----------------------------------------------------------------------------- sources
def is_pattern(source: str) -> bool:
    return glob.has_magic(source) and not os.path.exists(source)


def resolve_sources(source: str, follow: bool = False) -> tuple[list[str], bool]:
    """The files a source names, in reading order.

    Args:
        source: a file, a directory (all files below it, sorted by path), a glob pattern, or ``-``.
        follow: a missing single file is allowed (follow mode waits for it).

    Returns:
        (the paths, whether they came from a directory or pattern, so non-log files are to be skipped).

    Raises:
        FileNotFoundError: the path does not exist or is not a regular file (a FIFO, a device), or
            no file matches the pattern.
    """
    if source == STDIN:
        return [STDIN], False
    if os.path.isdir(source):
        return _walk(source), True
    if os.path.isfile(source) or (follow and not is_pattern(source) and not os.path.exists(source)):
        return [source], False
    if os.path.exists(source):
        kind = not_regular(os.stat(source).st_mode)
        raise FileNotFoundError(f"log source {source!r} is {kind}: olm reads regular files (or '-' for stdin)")
    if is_pattern(source):
        files = sorted((f for f in glob.glob(source, recursive=True) if os.path.isfile(f)), key=_path_key)
        if not files:
            raise FileNotFoundError(f"no file matches the source pattern {source!r}")
        return files, True
    raise FileNotFoundError(f"log source {source!r} does not exist (expected a file, a directory, a glob or '-')")


def _walk(root: str) -> list[str]:
    """Files below `root` sorted by path; hidden files and folders (".name") are left out."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [os.path.join(folder, n) for n in names if not n.startswith(".")]
    return sorted(files, key=_path_key)


def _path_key(path: str) -> tuple[str, ...]:
    return Path(path).parts


def not_regular(mode: int) -> str | None:
    """What a file of this ``st_mode`` is when it is not a regular file (e.g. ``"a FIFO"``), else None."""
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a regular file")


class NotRegularFile(OSError):
    """A source path that is not a regular file (FIFO, socket, device, directory): it is never read."""


def open_regular(path: str) -> Any:
    """`path` opened for binary reading, only if it is a regular file (symlinks followed).

    It is checked before opening (opening a device can have effects) and again on the open file
    descriptor (the path may have been replaced meanwhile); the open never blocks: a FIFO is opened
    non-blocking, found out and closed.

    Raises:
        NotRegularFile: the path is a FIFO, socket, device or directory.
        OSError: it cannot be opened.
    """
    kind = not_regular(os.stat(path).st_mode)
    if kind is None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            kind = not_regular(os.fstat(fd).st_mode)
            if kind is None:
                os.set_blocking(fd, True)
                return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise NotRegularFile(f"skipped: {kind}, not a regular file")


def binary_reason(head: bytes) -> str | None:
    """Why a file beginning with `head` is not a UTF-8 text log, or None when it is one.

    NUL bytes are left out of the judgement (a crash can pad a log with them; lines decide about
    those, see `SourceReader`): a UTF-16/32 byte-order mark, or control bytes and invalid UTF-8 in
    more than `BINARY_FRACTION` of the rest of `head`, make a file binary.
    """
    if head.startswith(_WIDE_BOMS):
        return "UTF-16 or UTF-32 text (olm reads UTF-8)"
    text = head.replace(b"\0", b"").decode("utf-8", errors="replace")
    invalid = text.count("\ufffd") - head.count("\ufffd".encode())
    control = sum(1 for c in text if c in _CONTROL)
    return "binary file (control bytes or invalid UTF-8)" if invalid + control > BINARY_FRACTION * len(text) else None


# ----------------------------------------------------------------------------- stopping
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
"""Ctrl+C; what kill, systemd and docker send; what a closed terminal sends."""


class StopRequest:
    """A request to end the stream early so that the run finishes normally and saves.

    SIGINT (Ctrl+C), SIGTERM (``kill``, systemd, docker) and SIGHUP (a closed terminal) all mean the
    same: the turn in progress finishes, no further input is read, the stream ends, the checkpoint
    callbacks save at train end and the process exits 0. Lightning's own SIGTERM handler (which
    would exit 0 *without* saving) is replaced while this is installed; Lightning restores the
    original handlers at its teardown, and `restore` does so for ours.

    `handle` only sets `requested`, except inside `waiting` — a wait for input that consumes
    nothing (``select`` on stdin, the follow-mode sleep) — where it also raises KeyboardInterrupt
    to end the wait at once; `next` turns that into the end of the input. So a line that was read
    is never dropped: a stop that comes later lets it be trained first. On SIGHUP the terminal is
    gone: output to it is sent to the null device from then on (writing to it would fail).
    """

    def __init__(self) -> None:
        self.requested = False
        self.reading = False
        self._previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: Any) -> None:
        """The signal handler (see the class docstring)."""
        name = signal.Signals(signum).name
        if signum == getattr(signal, "SIGHUP", None):
            silence_terminal()
        if self.requested:
            log.warning("%s: already stopping after the current turn (SIGKILL stops at once, losing it)", name)
        else:
            log.warning("%s: finishing the current turn, then saving and exiting", name)
        self.requested = True
        if self.reading:
            raise KeyboardInterrupt

    def install(self) -> None:
        """Handle `STOP_SIGNALS` with `handle` (main thread only; again after Lightning replaced one).

        The first install of a run clears an old request.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        if not self._previous:
            self.requested = False
        for sig in STOP_SIGNALS:
            current = signal.getsignal(sig)
            if current != self.handle:
                self._previous.setdefault(sig, current)
                signal.signal(sig, self.handle)

    def restore(self) -> None:
        """Put back the handlers `install` replaced, where ours is still installed."""
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self.handle:
                signal.signal(sig, previous)
        self._previous.clear()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Marks a wait that consumes no input: a stop signal inside it raises KeyboardInterrupt.

        A stop requested before the wait began (say, Ctrl+C right after the chat's prompt, while the
        reader was still on its way to the wait) raises at once too: the wait would otherwise block
        until the next line came.
        """
        outer, self.reading = self.reading, True
        try:
            if self.requested:  # after `reading` is set: a signal from here on raises by itself
                raise KeyboardInterrupt
            yield
        finally:
            self.reading = outer

    def next(self, iterator: Iterator[Any], default: Any) -> Any:
        """``next(iterator, default)``, or `default` once a stop is requested (before or during the read)."""
        if self.requested:
            return default
        try:
            return next(iterator, default)
        except KeyboardInterrupt:  # raised by `handle` inside `waiting`
            if not self.requested:
                raise
            return default

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """The items of `iterable` until a stop is requested (checked before each one is read)."""
        iterator, end = iter(iterable), object()
        while (item := self.next(iterator, end)) is not end:
            yield item

    def sleep(self, seconds: float) -> bool:
        """Sleeps; False (at once) when a stop is requested before or during the sleep."""
        if self.requested:
            return False
        try:
            with self.waiting():
                time.sleep(seconds)
        except KeyboardInterrupt:
            if not self.requested:
                raise
        return not self.requested

    def wait_readable(self, fd: int) -> None:
        """Blocks until `fd` has input (or EOF); a stop signal meanwhile raises KeyboardInterrupt."""
        with self.waiting():
            select.select([fd], [], [])


def silence_terminal() -> None:
    """Point stdout and stderr at the null device when they are a terminal (it hung up: writes would fail)."""
    try:
        null = os.stat(os.devnull).st_rdev
        for stream in (sys.stdout, sys.stderr):
            fd = stream.fileno()
            mode = os.fstat(fd)
            if stat.S_ISCHR(mode.st_mode) and mode.st_rdev != null:
                with open(os.devnull, "wb") as sink:
                    os.dup2(sink.fileno(), fd)
    except (AttributeError, OSError, ValueError):  # no real file behind a stream: nothing to protect
        pass


class Poller:
    """Waits for a growing file in follow mode: sleeps `interval`, gives up after `timeout` s without
    growth, and at once on a stop request (`stopped`)."""

    def __init__(self, interval: float, timeout: float | None, stop: StopRequest | None = None) -> None:
        self.interval, self.timeout, self.last = interval, timeout, time.monotonic()
        self.stop = stop or StopRequest()
        self.stopped = False

    def grew(self) -> None:
        self.last = time.monotonic()

    def wait(self) -> bool:
        if self.timeout is not None and time.monotonic() - self.last >= self.timeout:
            return False
        self.stopped = not self.stop.sleep(self.interval)
        return not self.stopped


FINGERPRINT_BYTES = 4096
"""Leading bytes of a followed file compared at each poll to notice that it was rewritten in place."""


class FollowedFile:
    """``readline(size)`` over the file at `path` in follow mode, noticing at the end of the data when
    the path now holds other content, and then reading that from its start (with a logged warning):

    - truncated: the file is shorter than what was read (``copytruncate``);
    - rewritten: same file, but its first bytes (up to `FINGERPRINT_BYTES`) changed;
    - replaced: the path names another file (rename rotation, or a new file moved over it); the old
      one was read to its end first, and is kept until the new one exists.

    A partial last line of the old content ends there: a line break is returned before the new data.
    `on_switch` is called at each such change (the data module's resume record starts anew).
    Use as a context manager (closes the open file).

    Raises:
        NotRegularFile, OSError: as `open_regular`, for the first file.
    """

    def __init__(self, path: str, on_switch: Callable[[], None] | None = None) -> None:
        self.path, self.fh, self.on_switch = path, open_regular(path), on_switch
        self.read, self.head, self.partial, self.waited = 0, b"", False, False

    def __enter__(self) -> FollowedFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()

    def readline(self, size: int) -> bytes:
        if self.waited:  # new data after a wait: first check that the file was not cut or rewritten
            self.waited = False
            change = self._rewritten()
            if change is not None:
                return self._switch(change, size)
        piece = self.fh.readline(size)
        if not piece:
            change = self._replaced()  # only now: the old file is read to its end first
            if change is None:
                self.waited = True
                return b""
            return self._switch(change, size)
        return self._took(piece)

    def _took(self, piece: bytes) -> bytes:
        if self.read < FINGERPRINT_BYTES:
            self.head += piece[: FINGERPRINT_BYTES - self.read]
        self.read += len(piece)
        self.partial = not piece.endswith(b"\n")
        return piece

    def _switch(self, change: str, size: int) -> bytes:
        log.warning("%s: %s: reading it from the start", self.path, change)
        self.read, self.head = 0, b""
        if self.on_switch is not None:
            self.on_switch()
        if self.partial:  # end the old content's partial line before the new content
            self.partial = False
            return b"\n"
        piece = self.fh.readline(size)
        self.waited = not piece
        return self._took(piece) if piece else b""

    def _rewritten(self) -> str | None:
        """Whether the open file was truncated or rewritten in place (then it is read from 0 again)."""
        size = os.fstat(self.fh.fileno()).st_size
        if size < self.read:
            what = f"truncated to {size} bytes after {self.read} were read"
        elif os.pread(self.fh.fileno(), len(self.head), 0) != self.head:
            what = "rewritten in place (its first bytes changed)"
        else:
            return None
        self.fh.seek(0)
        return what

    def _replaced(self) -> str | None:
        """Whether the path names another file now (then that one is opened), else None."""
        try:
            now, mine = os.stat(self.path), os.fstat(self.fh.fileno())
            if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                return None
            fresh = open_regular(self.path)
        except OSError:
            return None  # renamed away, the new file not there (or not readable) yet: the old one may still grow
        self.fh.close()
        self.fh = fresh
        return f"replaced by a new file after {self.read} bytes were read from the old one"


class FdLineReader:
    """``readline(size)`` over a raw file descriptor that waits for input with `StopRequest.wait_readable`
    before each read, so a stop signal ends a blocked read without consuming (or losing) anything."""

    def __init__(self, fd: int, stop: StopRequest, chunk: int = 2**16) -> None:
        self.fd, self.stop, self.chunk = fd, stop, chunk
        self.buf, self.eof = bytearray(), False

    def readline(self, size: int) -> bytes:
        start = 0
        while True:
            end = self.buf.find(b"\n", start, size)
            if end >= 0 or len(self.buf) >= size or self.eof:
                cut = end + 1 if end >= 0 else min(size, len(self.buf))
                line = bytes(self.buf[:cut])
                del self.buf[:cut]
                return line
            start = len(self.buf)
            self.stop.wait_readable(self.fd)
            data = os.read(self.fd, self.chunk)
            self.eof = not data
            self.buf += data


class WaitingLineReader:
    """``readline(size)`` of a file object without a descriptor (a test's StringIO), the whole call
    marked as a wait (`StopRequest.waiting`)."""

    def __init__(self, fh: Any, stop: StopRequest) -> None:
        self.fh, self.stop = fh, stop

    def readline(self, size: int) -> bytes | str:
        with self.stop.waiting():
            return self.fh.readline(size)


def stdin_lines(limit: int, stop: StopRequest) -> Iterator[bytes | str | None]:
    """The lines of ``sys.stdin`` (see `read_lines`), read so that `stop` can end a blocked read.

    A real stdin is read from its descriptor (`FdLineReader`; nothing is to have been read through
    ``sys.stdin`` before), anything else (a StringIO) with `WaitingLineReader`. A closed stdin
    (``sys.stdin`` is None when the process started without one) has no lines, with a warning.
    """
    if sys.stdin is None or getattr(sys.stdin, "closed", False):  # started with stdin closed (0<&-)
        log.warning("stdin is closed: there is nothing to read")
        return iter(())
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return read_lines(WaitingLineReader(stream, stop), limit)
    return read_lines(FdLineReader(fd, stop), limit)


def read_lines(fh: Any, limit: int, poller: Poller | None = None) -> Iterator[bytes | str | None]:
    """Complete lines of a binary or text file object; None for a line over `limit` (its rest is discarded).

    At the end of the file, the partial last line is yielded, unless `poller` says more may come:
    then the partial line waits for the rest of it (and is dropped when a stop ends the wait).
    """
    pending, discarding = None, False
    while True:
        piece = fh.readline(limit + 1)
        if not piece:
            if poller is not None and poller.wait():
                continue
            if pending and not discarding and not (poller is not None and poller.stopped):
                yield pending
            return
        if poller is not None:
            poller.grew()
        complete = piece[-1:] in (b"\n", "\n")
        if discarding:
            discarding = not complete
            continue
        pending = piece if pending is None else pending + piece
        if complete:
            yield pending
            pending = None
        elif len(pending) > limit:
            yield None
            pending, discarding = None, True


class JsonValueReader:
    """Decodes the JSON values of a binary file from bounded chunks; a top-level array yields its elements.

    Yields (line, value or Problem). After a syntax error it skips to the next ``{`` and goes on.
    """

    def __init__(self, fh: Any, limits: ReaderLimits) -> None:
        self.fh, self.limits = fh, limits
        self.text = codecs.getincrementaldecoder("utf-8")("replace")
        self.decoder = json.JSONDecoder(strict=False)
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self.problems: list[Problem] = []
        self.bad_line = 0  # the last line reported for invalid UTF-8: one report per line

    def _read(self, size: int) -> None:
        data = self.fh.read(size)
        self.eof = not data
        chunk = self.text.decode(data, final=self.eof)
        if chunk.count("\ufffd") > data.count(b"\xef\xbf\xbd") and self.line != self.bad_line:
            self.bad_line = self.line
            self.problems.append(Problem("invalid_utf8", f"invalid UTF-8 near line {self.line} replaced"))
        if self.pos > self.limits.chunk_bytes:  # drop what was consumed; memory stays bounded
            self.buf, self.pos = self.buf[self.pos :], 0
        self.buf += chunk

    def _move(self, pos: int) -> None:
        self.line += self.buf.count("\n", self.pos, pos)
        self.pos = pos

    def _resync(self, start: int) -> None:
        while True:
            found = self.buf.find("{", start)
            if found >= 0 or self.eof:
                self._move(found if found >= 0 else len(self.buf))
                return
            self._move(len(self.buf))
            self._read(self.limits.chunk_bytes)
            start = self.pos

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        in_array = False
        while True:
            yield from ((self.line, p) for p in self.problems)
            self.problems.clear()
            skip = " \t\r\n\ufeff," if in_array else " \t\r\n\ufeff"
            pos = self.pos
            while pos < len(self.buf) and self.buf[pos] in skip:
                pos += 1
            self._move(pos)
            if pos >= len(self.buf):
                if self.eof:
                    return
                self._read(self.limits.chunk_bytes)
                continue
            if self.buf[pos] in "[]" and in_array == (self.buf[pos] == "]"):
                in_array = not in_array
                self._move(pos + 1)
                continue
            yield from self._value(pos)

    def _value(self, pos: int) -> Iterator[tuple[int, Any]]:
        try:
            value, end = self.decoder.raw_decode(self.buf, pos)
            if end + _TAIL < len(self.buf) or self.eof:  # a number at the buffer's end may go on in the next chunk
                line = self.line
                self._move(end)
                yield line, value
                return
            error_pos, cut, message = end, True, ""
        except json.JSONDecodeError as err:
            error_pos, message = err.pos, f"invalid JSON at line {self.line}: {err.msg}"
            cut = err.msg.startswith("Unterminated") or err.pos >= len(self.buf) - _TAIL
        except RecursionError:
            error_pos, cut, message = pos + 1, False, f"JSON at line {self.line} nested too deeply"
        kind = "malformed"
        if cut and not self.eof:
            if len(self.buf) - pos <= self.limits.max_record_bytes:
                self._read(max(self.limits.chunk_bytes, len(self.buf) - pos))  # geometric: linear total work
                return
            kind, message = "too_long", f"JSON value at line {self.line} longer than {self.limits.max_record_bytes}"
        yield self.line, Problem(kind, message)
        self._resync(max(pos + 1, error_pos))


# ----------------------------------------------------------------------------- one source → items
class SourceReader:
    """Reads one source path at a time as (where, `Conversation` or `Problem`) items; never raises on bad input.

    Args:
        config: the stream settings (format, limits, follow, poll_interval, idle_timeout).
        stdin: lines to read for ``-`` instead of ``sys.stdin`` (None: ``sys.stdin``).
        stop: ends a wait for stdin or for a followed file early (None: never requested).
    """

    def __init__(self, config: StreamConfig, stdin: LineSource | None = None, stop: StopRequest | None = None) -> None:
        self.config, self.limits, self.stdin = config, config.limits, stdin
        self.stop = stop or StopRequest()
        self.restarted: Callable[[], None] | None = None
        """Called when a followed file's content is replaced (it is then read from its start)."""

    def items(self, path: str, filtered: bool) -> Iterator[Item]:
        """The items of `path` (``-`` for stdin); `filtered`: skip files without a log suffix.

        An OSError while reading (unreadable, deleted meanwhile) ends the file with a problem; a
        path that is not a regular file (`open_regular`) is skipped with one.
        """
        try:
            yield from self._items(path, filtered)
        except NotRegularFile as err:
            yield path, Problem("not_regular", str(err))
        except OSError as err:
            yield path, Problem("unreadable", f"cannot read: {err}")

    def _items(self, path: str, filtered: bool) -> Iterator[Item]:
        fmt = self.config.format
        if path == STDIN:
            yield from self._line_items(self._stdin_lines(), path, "mixed" if fmt == "auto" else line_mode(fmt))
            return
        suffix = Path(path).suffix.lower()
        if filtered and suffix not in LOG_SUFFIXES:
            yield path, Problem("not_a_log", f"skipped: not a log file (suffixes read: {', '.join(LOG_SUFFIXES)})")
            return
        if self.config.follow:
            yield from self._follow_items(path, file_mode(fmt, suffix, ""))
            return
        with open_regular(path) as fh:
            head = fh.read(self.limits.sniff_bytes)
            fh.seek(0)
            reason = binary_reason(head)
            if reason is not None:
                yield path, Problem("binary_file", f"skipped: {reason}")
                return
            mode = file_mode(fmt, suffix, head.lstrip(_BOM_AND_SPACE)[:1].decode("latin-1"))
            if mode == "json":
                for line, value in JsonValueReader(fh, self.limits):
                    where = f"{path}:{line}"
                    yield where, value if isinstance(value, Problem) else record_conversation(value, fmt, where)
            else:
                yield from self._line_items(read_lines(fh, self.limits.max_record_bytes), path, mode)

    def _stdin_lines(self) -> Iterable[bytes | str | None]:
        if self.stdin is not None:
            return self.stdin()
        return stdin_lines(self.limits.max_record_bytes, self.stop)

    def _follow_items(self, path: str, mode: LineMode) -> Iterator[Item]:
        poller = Poller(self.config.poll_interval, self.config.idle_timeout, self.stop)
        while not os.path.exists(path):
            if not poller.wait():
                if not poller.stopped:
                    yield path, Problem("unreadable", "skipped: the file did not appear")
                return
        with FollowedFile(path, self.restarted) as followed:
            yield from self._line_items(read_lines(followed, self.limits.max_record_bytes, poller), path, mode)

    def _line_items(self, lines: Iterable[bytes | str | None], path: str, mode: LineMode) -> Iterator[Item]:
        for lineno, raw in enumerate(lines, start=1):
            where = f"{path}:{lineno}"
            if raw is None:
                yield where, Problem("too_long", f"line longer than {self.limits.max_record_bytes} bytes skipped")
                continue
            text, problem = decode(raw)
            if problem is not None:
                yield where, problem
            text = text.lstrip("\ufeff") if lineno == 1 else text
            text = text.rstrip("\r\n")
            if "\0" in text:
                text, problem = strip_nul(text)
                yield where, problem
                if problem.kind == "nul_bytes":
                    continue
            if text.strip():
                yield where, line_conversation(text, mode, self.config.format, path, lineno)


def line_mode(fmt: str) -> LineMode:
    """How stdin is read in a format other than ``auto``."""
    return fmt if fmt in ("text", "dailydialog") else "jsonl"


def file_mode(fmt: str, suffix: str, first: str) -> LineMode:
    """How to read a file: json (value by value), jsonl, txt (DailyDialog or text), mixed, text, dailydialog.

    Args:
        fmt: the stream's format.
        suffix: the file's lower-case suffix.
        first: its first character after a BOM and white space ("" when unknown, as in follow mode).
    """
    if fmt in ("text", "dailydialog"):
        return fmt
    if first == "[" or (suffix == ".json" and first == "{"):
        return "json"
    if fmt != "auto" or suffix in JSONL_SUFFIXES or suffix == ".json":
        return "jsonl"
    return "txt" if suffix == ".txt" else "mixed"


def strip_nul(line: str) -> tuple[str, Problem]:
    """A line holding NUL bytes: without its trailing NUL padding (problem ``nul_padding``), or, when
    NULs remain inside it, to be skipped (problem ``nul_bytes``)."""
    body = line.rstrip("\0")
    if "\0" in body:
        return body, Problem("nul_bytes", "line with NUL bytes skipped")
    removed = len(line) - len(body)
    return body, Problem("nul_padding", f"{removed} trailing NUL bytes removed (padding left by a crash?)")


def decode(raw: bytes | str) -> tuple[str, Problem | None]:
    """UTF-8 text of a line; invalid bytes become U+FFFD and are reported as a problem."""
    if isinstance(raw, str):
        return raw, None
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), Problem("invalid_utf8", "invalid UTF-8 replaced by U+FFFD")
