"""The chat-turn stream: `Turn` records read from chat logs one line (or JSON value) at a time.

`ChatTurnStream` is an `IterableDataset` of `Turn`; `ChatStreamDataModule` owns it and its resume
state (the offset of the first untrained turn). A source is a file, a directory of logs (files
sorted by path, recursively), a glob pattern, or ``-`` for stdin; with ``follow=True`` a single
file is polled for appended lines like ``tail -f``.

Formats, detected per record with ``format="auto"``:
  messages     ``{"messages": [{"role", "content"}, ...]}`` (content may be a list of text parts)
  sharegpt     ``{"conversations": [{"from", "value"}, ...]}``
  transcript   ``{"messages_display": "user: ...\\nassistant: ..."}`` (τ-bench; unprefixed lines continue)
  pair         ``{"user": ..., "assistant": ...}``
  dailydialog  a text line of utterances separated by ``__eou__``, speakers alternating user/assistant
  text         every non-empty line is a user message with no logged reply
A file whose first character is ``[`` (a JSON array, e.g. a ShareGPT dump) or a ``.json`` file is
decoded value by value from buffered chunks; other files line by line. In auto mode ``.jsonl`` /
``.ndjson`` lines must be JSON records, ``.txt`` lines are DailyDialog (with ``__eou__``) or text,
and lines of stdin or other files are records when they are JSON objects of a known shape, else text.

One `Turn` per user message, with the assistant (and tool) messages that follow it joined by a
newline as its reply (None when none follow). System messages are context, not turns. History
holds up to ``history_turns`` earlier exchanges of the same conversation id (a missing reply is "").

Bad input never ends the stream: malformed JSON, wrong-typed or missing fields, empty messages, a
record with no user message, an overlong record, a binary or non-log file in a directory, an
unreadable file: skipped. Invalid UTF-8 is replaced by U+FFFD and an overlong message truncated to
``max_message_chars``. Each such event logs a warning (the first `ReaderLimits.max_warnings` of
each kind; later ones are only counted) and adds one to `Turn.skipped`.

Resume: turns before ``start_offset`` are read again (offsets, history and counts stay exact) but not
yielded; stdin cannot be replayed, so its turns are numbered on from ``start_offset`` instead. Follow
mode reads line records only (JSONL, text, DailyDialog), and a partial last line waits for its end.
With DataLoader workers each worker reads the whole stream and keeps every n-th turn.

Check a log: ``python -m olm.data PATH [--format FORMAT]`` prints its turn and problem counts.
"""

from __future__ import annotations

import argparse
import codecs
import glob
import json
import logging
import os
import re
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

log = logging.getLogger(__name__)

Format = Literal["auto", "messages", "sharegpt", "transcript", "pair", "dailydialog", "text"]
FORMATS: tuple[str, ...] = ("auto", "messages", "sharegpt", "transcript", "pair", "dailydialog", "text")
RECORD_KEYS: dict[str, str] = {  # detection order: the first key present picks the record format
    "messages": "messages", "conversations": "sharegpt", "messages_display": "transcript", "user": "pair",
}
ROLES: dict[str, str] = {
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "model": "assistant", "bot": "assistant", "chatgpt": "assistant",
    "tool": "tool", "function": "tool", "function_call": "tool", "observation": "tool", "ipython": "tool",
    "system": "system", "developer": "system",
}
STDIN = "-"
DEFAULT_SOURCE = str(Path(__file__).resolve().parent / "assets" / "logs" / "sample.jsonl")
LOG_SUFFIXES: tuple[str, ...] = (".jsonl", ".ndjson", ".json", ".txt", ".log")
JSONL_SUFFIXES: tuple[str, ...] = (".jsonl", ".ndjson")
EOU = "__eou__"
TRANSCRIPT_NULL = "None"  # τ-bench writes "assistant: None" where the assistant made a tool call
_TRANSCRIPT_LINE = re.compile(r"^(" + "|".join(ROLES) + r"):[ \t]?(.*)$", re.DOTALL)
_TAIL = len("\\uXXXX")  # a value or error this close to the buffer's end may be cut off (an escape, "1e-")


@dataclass(frozen=True)
class Turn:
    """One user message of the stream, with its logged reply and context.

    Attributes:
        conversation_id: the record's ``id`` / ``conversation_id``, else ``<file>:<line>``.
        user: the user message (non-empty, at most ``max_message_chars``).
        assistant: the logged reply, None when the log has none.
        history: up to ``history_turns`` earlier (user, assistant) exchanges, oldest first.
        source: the file the turn came from, ``-`` for stdin.
        offset: 0-based index of this turn in the whole stream: the resume key.
        skipped: cumulative count of skipped / truncated / repaired inputs so far.
    """

    conversation_id: str
    user: str
    assistant: str | None
    history: tuple[tuple[str, str], ...]
    source: str
    offset: int
    skipped: int


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
    """Leading bytes searched for a NUL byte to recognize a binary file."""

    def __post_init__(self) -> None:
        bad = [f"{k}={v!r}" for k, v in vars(self).items() if not isinstance(v, int) or v < 1]
        if bad:
            raise ValueError(f"ReaderLimits: these must be positive integers: {', '.join(bad)}")


@dataclass(frozen=True)
class StreamConfig:
    """What the stream reads and how; validated on construction."""

    source: str = DEFAULT_SOURCE
    """A log file, a directory of logs, a glob pattern, or ``-`` for stdin."""
    format: Format = "auto"
    """Record format, or ``auto`` to detect it per record (see the module docstring)."""
    history_turns: int = 0
    """Earlier exchanges of the same conversation attached to each turn."""
    max_message_chars: int = 8000
    """Longer messages are truncated (with a warning)."""
    follow: bool = False
    """After the end of a single file, wait for appended lines."""
    poll_interval: float = 0.5
    """Seconds between checks for new lines in follow mode."""
    idle_timeout: float | None = None
    """Follow mode ends after this many seconds without new data (None: never)."""
    num_workers: int = 0
    """DataLoader worker processes; each reads the stream and keeps every num_workers-th turn."""
    limits: ReaderLimits = field(default_factory=ReaderLimits)
    """Safety bounds of the readers."""

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.source, str) or not self.source:
            problems.append(f"source must be a path, a glob or '-', got {self.source!r}")
        if self.format not in FORMATS:
            problems.append(f"format must be one of {FORMATS}, got {self.format!r}")
        if not isinstance(self.history_turns, int) or self.history_turns < 0:
            problems.append(f"history_turns must be an integer >= 0, got {self.history_turns!r}")
        if not isinstance(self.max_message_chars, int) or self.max_message_chars < 1:
            problems.append(f"max_message_chars must be an integer >= 1, got {self.max_message_chars!r}")
        if not self.poll_interval > 0:
            problems.append(f"poll_interval must be > 0 seconds, got {self.poll_interval!r}")
        if self.idle_timeout is not None and not self.idle_timeout >= 0:
            problems.append(f"idle_timeout must be None or >= 0 seconds, got {self.idle_timeout!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            problems.append(f"num_workers must be an integer >= 0, got {self.num_workers!r}")
        elif self.num_workers > 0 and (self.source == STDIN or self.follow):
            problems.append(f"num_workers must be 0 when reading stdin or following a file, got {self.num_workers}")
        if self.follow and isinstance(self.source, str) and (os.path.isdir(self.source) or _is_pattern(self.source)):
            problems.append(f"follow needs a single file or '-', got the directory or pattern {self.source!r}")
        if problems:
            raise ValueError("invalid stream settings: " + "; ".join(problems))


_DEFAULTS = StreamConfig()


class BadRecord(ValueError):
    """A record that cannot be read; `kind` names the problem for counting and warnings."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Problem:
    """A bad-input event: skipped, truncated or repaired input."""

    kind: str
    message: str


@dataclass(frozen=True)
class Conversation:
    """Messages of one record, roles not yet checked: (role, content) pairs in log order."""

    id: str
    messages: tuple[tuple[Any, Any], ...]


# ----------------------------------------------------------------------------- records → exchanges
def parse_record(obj: Any, fmt: str = "auto") -> tuple[str | None, list[tuple[Any, Any]]]:
    """The conversation id and (role, content) messages of a JSON record.

    Args:
        obj: a decoded JSON value.
        fmt: a record format (messages, sharegpt, transcript, pair) or ``auto`` to detect it.

    Returns:
        (the record's id or None, the messages in order; roles and contents unchecked).

    Raises:
        BadRecord: the value is not an object, has no field of the format, or that field has the wrong type.
    """
    if not isinstance(obj, dict):
        raise BadRecord("bad_record", f"a record must be a JSON object, got {type(obj).__name__}")
    key = next((k for k in RECORD_KEYS if k in obj), None) if fmt == "auto" else _key_of(fmt)
    if key is None or key not in obj:
        wanted = f"'{key}'" if key else " or ".join(f"'{k}'" for k in RECORD_KEYS)
        raise BadRecord("bad_record", f"record has no {wanted} field (keys: {sorted(map(str, obj))[:8]})")
    rid = next((obj[k] for k in ("conversation_id", "id") if isinstance(obj.get(k), (str, int))), None)
    rid = None if rid is None or isinstance(rid, bool) else str(rid)
    return rid, _PARSERS[key](obj[key], obj)


def _key_of(fmt: str) -> str:
    return next(k for k, f in RECORD_KEYS.items() if f == fmt)


def _list_messages(value: Any, role_key: str, text_key: str) -> list[tuple[Any, Any]]:
    if not isinstance(value, list):
        raise BadRecord("bad_field", f"messages must be a list, got {type(value).__name__}")
    out = []
    for m in value:
        if not isinstance(m, dict):
            out.append((None, m))
            continue
        content = m.get(text_key)
        if content in (None, "") and isinstance(m.get("tool_calls"), list):  # OpenAI: the call is the reply
            content = _dumps(m["tool_calls"])
        out.append((m.get(role_key), content))
    return out


def _dumps(value: Any) -> str | None:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):
        return None


def transcript_messages(text: Any) -> list[tuple[Any, Any]]:
    """Messages of a ``"role: text"`` transcript; lines without a role prefix continue the previous message."""
    if not isinstance(text, str):
        raise BadRecord("bad_field", f"messages_display must be a string, got {type(text).__name__}")
    out: list[list[str]] = []
    for line in text.split("\n"):
        match = _TRANSCRIPT_LINE.match(line)
        if match:
            out.append([match.group(1), match.group(2)])
        elif out:
            out[-1][1] += "\n" + line
    return [(r, t) for r, t in out if not (r in ("assistant", "gpt") and t.strip() == TRANSCRIPT_NULL)]


def dialogue_messages(line: str) -> list[tuple[str, str]]:
    """Messages of a DailyDialog line: ``__eou__``-separated utterances, alternating user / assistant."""
    parts = line.split(EOU)
    if parts and not parts[-1].strip():
        parts.pop()
    return [("user" if i % 2 == 0 else "assistant", p) for i, p in enumerate(parts)]


_PARSERS = {
    "messages": lambda v, _: _list_messages(v, "role", "content"),
    "conversations": lambda v, _: _list_messages(v, "from", "value"),
    "messages_display": lambda v, _: transcript_messages(v),
    "user": lambda v, rec: [("user", v)] + [("assistant", a) for a in [rec.get("assistant")] if a is not None],
}


def message_text(content: Any) -> str | None:
    """The text of a message content: a string, a list of text parts, or None (""); None for other types."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict) and isinstance(content.get("text"), str):
        return content["text"]
    if isinstance(content, list):  # text parts: strings or {"type": "text", "text": ...}; other parts ignored
        parts = [p if isinstance(p, str) else p.get("text") if isinstance(p, dict) else None for p in content]
        texts = [p for p in parts if isinstance(p, str)]
        return "\n".join(t for t in texts if t) if texts or not content else None
    return None


def truncate(text: str, max_chars: int, what: str, problems: list[Problem]) -> str:
    """`text` cut to `max_chars`, recording a problem when it was longer."""
    if len(text) <= max_chars:
        return text
    problems.append(Problem("truncated", f"{what} of {len(text)} characters truncated to {max_chars}"))
    return text[:max_chars].rstrip()  # `text` starts with a non-space, so this stays non-empty


def build_exchanges(
    messages: Iterable[tuple[Any, Any]], max_chars: int
) -> tuple[list[tuple[str, str | None]], list[Problem]]:
    """Pair every user message with the assistant / tool messages that follow it.

    Args:
        messages: (role, content) pairs in log order, unchecked.
        max_chars: longer user messages and replies are truncated.

    Returns:
        (exchanges as (stripped user text, joined reply or None), problems: bad roles or contents, empty
        messages, truncations, or a record without any user message). A bad user message drops its replies.
    """
    exchanges: list[tuple[str, str | None]] = []
    problems: list[Problem] = []
    user: str | None = None
    reply: list[str] = []
    for role, content in messages:
        kind, text, problem = _message(role, content)
        if problem is not None:
            problems.append(problem)
        if kind == "user":
            _close(exchanges, user, reply, max_chars, problems)
            user, reply = text, []
        elif kind in ("assistant", "tool") and user is not None and text is not None:
            reply.append(text)  # a reply before the first user message is context, not a turn
    _close(exchanges, user, reply, max_chars, problems)
    if not exchanges and not problems:
        problems.append(Problem("no_user_message", "record has no user message"))
    return exchanges, problems


def _message(role: Any, content: Any) -> tuple[str | None, str | None, Problem | None]:
    """(normalized role, stripped non-empty text or None, problem or None) of one message."""
    kind = ROLES.get(role.strip().lower()) if isinstance(role, str) else None
    if kind is None:
        return None, None, Problem("bad_field", f"message skipped: unknown role {_short(role)}")
    text = message_text(content)
    if text is None:
        return kind, None, Problem("bad_field", f"{kind} message skipped: content is {type(content).__name__}")
    if not text.strip():
        # an empty tool result is a legitimate output; an empty system prompt is harmless
        return kind, None, None if kind in ("tool", "system") else Problem("empty_message", f"empty {kind} message")
    return kind, text.strip(), None


def _close(
    exchanges: list[tuple[str, str | None]], user: str | None, reply: list[str], max_chars: int, problems: list
) -> None:
    if user is not None:
        joined = truncate("\n".join(reply), max_chars, "reply", problems) if reply else None
        exchanges.append((truncate(user, max_chars, "user message", problems), joined))


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- sources and readers
def _is_pattern(source: str) -> bool:
    return glob.has_magic(source) and not os.path.exists(source)


def resolve_sources(source: str, follow: bool = False) -> tuple[list[str], bool]:
    """The files a source names, in reading order.

    Args:
        source: a file, a directory (all files below it, sorted by path), a glob pattern, or ``-``.
        follow: a missing single file is allowed (follow mode waits for it).

    Returns:
        (the paths, whether they came from a directory or pattern, so non-log files are to be skipped).

    Raises:
        FileNotFoundError: the path does not exist, or no file matches the pattern.
    """
    if source == STDIN:
        return [STDIN], False
    if os.path.isdir(source):
        return _walk(source), True
    if os.path.isfile(source) or (follow and not _is_pattern(source)):
        return [source], False
    if _is_pattern(source):
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


class _Poller:
    """Waits for a growing file in follow mode: sleeps `interval`, gives up after `timeout` s without growth."""

    def __init__(self, interval: float, timeout: float | None) -> None:
        self.interval, self.timeout, self.last = interval, timeout, time.monotonic()

    def grew(self) -> None:
        self.last = time.monotonic()

    def wait(self) -> bool:
        if self.timeout is not None and time.monotonic() - self.last >= self.timeout:
            return False
        time.sleep(self.interval)
        return True


def read_lines(fh: Any, limit: int, poller: _Poller | None = None) -> Iterator[bytes | str | None]:
    """Complete lines of a binary or text file object; None for a line over `limit` (its rest is discarded).

    At the end of the file, the partial last line is yielded, unless `poller` says more may come:
    then the partial line waits for the rest of it.
    """
    pending, discarding = None, False
    while True:
        piece = fh.readline(limit + 1)
        if not piece:
            if poller is not None and poller.wait():
                continue
            if pending and not discarding:
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


# ----------------------------------------------------------------------------- the stream
class _Warner:
    """Logs the first `limit` warnings of each kind (then one note that more are only counted)."""

    def __init__(self, limit: int, enabled: bool) -> None:
        self.limit, self.enabled, self.counts = limit, enabled, {}

    def __call__(self, where: str, problem: Problem) -> None:
        n = self.counts[problem.kind] = self.counts.get(problem.kind, 0) + 1
        if self.enabled and n <= self.limit:
            more = f" (further '{problem.kind}' warnings are only counted)" if n == self.limit else ""
            log.warning("%s: %s%s", where, problem.message, more)


class ChatTurnStream(IterableDataset):
    """Turns of a chat-log source, read lazily in order.

    Args:
        source, format, history_turns, max_message_chars, follow, poll_interval, idle_timeout:
            see `StreamConfig`.
        start_offset: turns before this offset are read but not yielded (resume). For stdin, which
            cannot be replayed, nothing is skipped: its turns are numbered from `start_offset` on.
        limits: reader bounds (default `ReaderLimits()`).

    Raises:
        ValueError: invalid settings (all problems in one message).
        FileNotFoundError: the source names no file.
    """

    def __init__(
        self,
        source: str = _DEFAULTS.source,
        format: Format = _DEFAULTS.format,
        history_turns: int = _DEFAULTS.history_turns,
        max_message_chars: int = _DEFAULTS.max_message_chars,
        follow: bool = _DEFAULTS.follow,
        poll_interval: float = _DEFAULTS.poll_interval,
        idle_timeout: float | None = _DEFAULTS.idle_timeout,
        start_offset: int = 0,
        *,
        limits: ReaderLimits | None = None,
    ) -> None:
        super().__init__()
        self.config = StreamConfig(
            source, format, history_turns, max_message_chars, follow, poll_interval, idle_timeout,
            limits=limits or ReaderLimits(),
        )
        if not isinstance(start_offset, int) or start_offset < 0:
            raise ValueError(f"start_offset must be an integer >= 0, got {start_offset!r}")
        self.start_offset = start_offset
        self.files, self.filtered = resolve_sources(source, follow)

    def __iter__(self) -> Iterator[Turn]:
        worker = get_worker_info()
        shard, shards = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        if shards > 1 and (self.config.source == STDIN or self.config.follow):
            raise RuntimeError("stdin and follow mode must be read with num_workers=0")
        reader = _TurnReader(self.config, self.start_offset, warn=shard == 0)
        for turn in reader.turns(self.files, self.filtered):
            # shard relative to start_offset so that the DataLoader's round robin over workers keeps offset order
            if (turn.offset - self.start_offset) % shards == shard:
                yield turn


class _TurnReader:
    """One pass over the sources: numbering, history, problem counting and warnings."""

    def __init__(self, config: StreamConfig, start_offset: int, warn: bool) -> None:
        self.config, self.limits = config, config.limits
        self.start_offset = start_offset
        self.offset = start_offset if config.source == STDIN else 0
        self.skipped = 0
        self.warn = _Warner(self.limits.max_warnings, warn)
        self.histories: OrderedDict[str, deque] = OrderedDict()

    def turns(self, files: list[str], filtered: bool) -> Iterator[Turn]:
        for path in files:
            for where, item in self._guarded(path, filtered):
                if isinstance(item, Problem):
                    self._problem(where, item)
                else:
                    yield from self._conversation_turns(path, where, item)

    def _problem(self, where: str, problem: Problem) -> None:
        self.skipped += 1
        self.warn(where, problem)

    def _conversation_turns(self, path: str, where: str, conv: Conversation) -> Iterator[Turn]:
        exchanges, problems = build_exchanges(conv.messages, self.config.max_message_chars)
        for p in problems:
            self._problem(where, p)
        for user, reply in exchanges:
            turn = Turn(conv.id, user, reply, self._history(conv.id, user, reply), path, self.offset, self.skipped)
            self.offset += 1
            if turn.offset >= self.start_offset:
                yield turn

    def _history(self, conv_id: str, user: str, reply: str | None) -> tuple[tuple[str, str], ...]:
        if self.config.history_turns == 0:
            return ()
        past = self.histories.pop(conv_id, None) or deque(maxlen=self.config.history_turns)
        history = tuple(past)
        past.append((user, reply or ""))
        self.histories[conv_id] = past  # re-inserted last: the least recently used is first
        if len(self.histories) > self.limits.max_conversations:
            self.histories.popitem(last=False)
        return history

    def _guarded(self, path: str, filtered: bool) -> Iterator[tuple[str, Conversation | Problem]]:
        try:
            yield from self._items(path, filtered)
        except OSError as err:  # unreadable, deleted while read, ...: skip the rest of the file
            yield path, Problem("unreadable", f"cannot read: {err}")

    def _items(self, path: str, filtered: bool) -> Iterator[tuple[str, Conversation | Problem]]:
        fmt, limit = self.config.format, self.limits.max_record_bytes
        if path == STDIN:
            fh = getattr(sys.stdin, "buffer", sys.stdin)
            mode = "mixed" if fmt == "auto" else _line_mode(fmt)
            yield from self._line_items(read_lines(fh, limit), path, mode)
            return
        suffix = Path(path).suffix.lower()
        if filtered and suffix not in LOG_SUFFIXES:
            yield path, Problem("not_a_log", f"skipped: not a log file (suffixes read: {', '.join(LOG_SUFFIXES)})")
            return
        if self.config.follow:
            yield from self._follow_items(path, _file_mode(fmt, suffix, ""))
            return
        with open(path, "rb") as fh:
            head = fh.read(self.limits.sniff_bytes)
            fh.seek(0)
            if b"\0" in head:
                yield path, Problem("binary_file", "skipped: binary file (NUL bytes)")
                return
            mode = _file_mode(fmt, suffix, head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1].decode("latin-1"))
            if mode == "json":
                for line, value in JsonValueReader(fh, self.limits):
                    yield f"{path}:{line}", (value if isinstance(value, Problem) else self._record(value, path, line))
            else:
                yield from self._line_items(read_lines(fh, limit), path, mode)

    def _follow_items(self, path: str, mode: str) -> Iterator[tuple[str, Conversation | Problem]]:
        poller = _Poller(self.config.poll_interval, self.config.idle_timeout)
        while not os.path.exists(path):
            if not poller.wait():
                yield path, Problem("unreadable", "skipped: the file did not appear")
                return
        with open(path, "rb") as fh:
            yield from self._line_items(read_lines(fh, self.limits.max_record_bytes, poller), path, mode)

    def _line_items(
        self, lines: Iterator[bytes | str | None], path: str, mode: str
    ) -> Iterator[tuple[str, Conversation | Problem]]:
        for lineno, raw in enumerate(lines, start=1):
            where = f"{path}:{lineno}"
            if raw is None:
                yield where, Problem("too_long", f"line longer than {self.limits.max_record_bytes} bytes skipped")
                continue
            text, problem = _decode(raw)
            if problem is not None:
                yield where, problem
            text = text.lstrip("\ufeff") if lineno == 1 else text
            text = text.rstrip("\r\n")
            if text.strip():
                yield where, self._line_item(text, path, lineno, mode)

    def _line_item(self, text: str, path: str, lineno: int, mode: str) -> Conversation | Problem:
        if mode == "text" or (mode == "txt" and EOU not in text):
            return Conversation(path, (("user", text),))
        if mode in ("dailydialog", "txt"):
            return Conversation(f"{path}:{lineno}", tuple(dialogue_messages(text)))
        try:
            value = json.loads(text, strict=False)
        except (json.JSONDecodeError, RecursionError) as err:
            if mode == "mixed":
                return Conversation(path, (("user", text),))
            return Problem("malformed", f"invalid JSON: {getattr(err, 'msg', 'nested too deeply')}")
        if mode == "mixed" and not (isinstance(value, dict) and any(k in value for k in RECORD_KEYS)):
            return Conversation(path, (("user", text),))
        return self._record(value, path, lineno)

    def _record(self, value: Any, path: str, line: int) -> Conversation | Problem:
        fmt = self.config.format
        try:
            rid, messages = parse_record(value, fmt if fmt in RECORD_KEYS.values() else "auto")
        except BadRecord as err:
            return Problem(err.kind, f"record skipped: {err}")
        return Conversation(rid if rid is not None else f"{path}:{line}", tuple(messages))


def _line_mode(fmt: str) -> str:
    return fmt if fmt in ("text", "dailydialog") else "jsonl"


def _file_mode(fmt: str, suffix: str, first: str) -> str:
    """How to read a file: json (value by value), jsonl, txt (DailyDialog or text), mixed, text, dailydialog."""
    if fmt in ("text", "dailydialog"):
        return fmt
    if first == "[" or (suffix == ".json" and first == "{"):
        return "json"
    if fmt != "auto" or suffix in JSONL_SUFFIXES or suffix == ".json":
        return "jsonl"
    return "txt" if suffix == ".txt" else "mixed"


def _decode(raw: bytes | str) -> tuple[str, Problem | None]:
    if isinstance(raw, str):
        return raw, None
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), Problem("invalid_utf8", "invalid UTF-8 replaced by U+FFFD")


# ----------------------------------------------------------------------------- data module
class ChatStreamDataModule(L.LightningDataModule):
    """Owns the chat-turn stream and its resume position (the offset of the first untrained turn).

    Args:
        source: a log file, a directory of logs, a glob pattern, or ``-`` for stdin.
        format: record format or ``auto`` (see `olm.data`).
        history_turns: earlier exchanges of the conversation attached to each turn.
        max_message_chars: longer messages are truncated with a warning.
        follow: wait for lines appended to a single file.
        poll_interval: seconds between checks in follow mode.
        idle_timeout: follow mode ends after this many seconds without new data (None: never).
        num_workers: DataLoader workers (0 for stdin and follow mode).
        limits: reader safety bounds (default `ReaderLimits()`).

    Raises:
        ValueError: invalid settings, all listed in one message.
    """

    def __init__(
        self,
        source: str = _DEFAULTS.source,
        format: Format = _DEFAULTS.format,
        history_turns: int = _DEFAULTS.history_turns,
        max_message_chars: int = _DEFAULTS.max_message_chars,
        follow: bool = _DEFAULTS.follow,
        poll_interval: float = _DEFAULTS.poll_interval,
        idle_timeout: float | None = _DEFAULTS.idle_timeout,
        num_workers: int = _DEFAULTS.num_workers,
        limits: ReaderLimits | None = None,
    ) -> None:
        super().__init__()
        self.config = StreamConfig(
            source, format, history_turns, max_message_chars, follow, poll_interval, idle_timeout, num_workers,
            limits or ReaderLimits(),
        )
        self.next_offset = 0
        self.skipped = 0

    @property
    def source(self) -> str:
        return self.config.source

    def train_dataloader(self) -> DataLoader:
        """Turns from `next_offset` on, uncollated (``batch_size=None``), in stream order."""
        c = self.config
        stream = ChatTurnStream(
            c.source, c.format, c.history_turns, c.max_message_chars, c.follow, c.poll_interval, c.idle_timeout,
            self.next_offset, limits=c.limits,
        )
        return DataLoader(stream, batch_size=None, num_workers=c.num_workers)

    def mark_trained(self, turn: Turn) -> None:
        """Record that `turn` was trained: a resume starts after it."""
        self.next_offset = turn.offset + 1
        self.skipped = turn.skipped

    def state_dict(self) -> dict[str, Any]:
        """Plain-typed resume state, saved in Lightning checkpoints."""
        return {"source": self.config.source, "next_offset": self.next_offset, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state["next_offset"]``; a state saved for another source restarts at 0 (with a warning).

        Raises:
            ValueError: the state lacks ``source`` / ``next_offset`` or has wrong types.
        """
        offset, source = state.get("next_offset"), state.get("source")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0 or not isinstance(source, str):
            raise ValueError(f"stream state needs a 'source' string and a 'next_offset' >= 0, got {state!r}")
        if not _same_source(source, self.config.source):
            log.warning("stream state is for source %r, not %r: starting at turn 0", source, self.config.source)
            self.next_offset, self.skipped = 0, 0
            return
        self.next_offset, self.skipped = offset, int(state.get("skipped", 0))


def _same_source(a: str, b: str) -> bool:
    return a == b or (STDIN not in (a, b) and os.path.abspath(a) == os.path.abspath(b))


def main(argv: list[str] | None = None) -> int:
    """Print how many turns and problems a source yields. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m olm.data", description=main.__doc__)
    parser.add_argument("source")
    parser.add_argument("--format", default=_DEFAULTS.format, choices=FORMATS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    stream = ChatTurnStream(args.source, args.format)
    reader = _TurnReader(stream.config, 0, warn=True)
    count = sum(1 for _ in reader.turns(stream.files, stream.filtered))
    print(f"{args.source}: {count} turns, {reader.skipped} inputs skipped, truncated or repaired")
    return 0

if __name__ == "__main__":
    sys.exit(main())
