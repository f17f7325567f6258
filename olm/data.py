"""The chat-turn stream: `Turn` records read lazily from chat logs or stdin, and their data module.

`ChatTurnStream` is an `IterableDataset` of `Turn`, one per user message of the source (a file, a
directory of logs, a glob pattern, or ``-`` for stdin; see `olm.readers`) in any of the formats of
`olm.formats`. `ChatStreamDataModule` owns it and its resume state: the offset of the first
untrained turn. History holds up to ``history_turns`` earlier exchanges of the same conversation
id (a missing reply is "").

Bad input never ends the stream: malformed JSON, wrong-typed or missing fields, empty messages, a
record with no user message, an overlong record, a line with NUL bytes, a binary or non-log
file in a directory, a FIFO or other non-regular file, an unreadable file are skipped; trailing
NUL padding is removed; invalid UTF-8 is replaced and an overlong message truncated to
``max_message_chars``. Each such event logs a warning (the first `ReaderLimits.max_warnings` of
each kind; later ones are only counted) and adds one to `Turn.truncated` (a message cut to
``max_message_chars``) or to `Turn.skipped` (everything else).

Tool calls and tool results are never assistant speech (``tools``): ``context`` (the default)
keeps them in the reply, labelled, as spans the renderer masks from the loss (the reply that
follows a tool result is learned with the result in view, not as if from nowhere); ``drop``
leaves them out. System prompts (``system``): ``drop`` (the default: a long system prompt would
fill the token budget of every turn) or ``context`` (rendered before each turn, never trained).
The first message left out by choice is announced in the log; see `olm.formats`.

Stopping: SIGINT (Ctrl+C), SIGTERM and SIGHUP end the stream as its end would: the data module's
`StopRequest` (see `olm.readers`) is installed when training starts reading; the turn in progress
finishes, no further turn is read, and the run ends normally — the checkpoint callbacks save at
train end and the process exits 0. A line already read from stdin is trained first.

Resume: turns before ``start_offset`` are read again (offsets, history and counts stay exact) but not
yielded; stdin cannot be replayed, so its turns are numbered on from ``start_offset`` instead.
With DataLoader workers each worker reads the whole stream and keeps every n-th turn.

A resume also checks that the files are the ones the checkpoint read. The data module's state
records each source file that gave a trained turn (the last `MAX_FILE_RECORDS`): its path, inode,
size, the SHA-256 of its first `HEAD_BYTES` bytes and the stream offset of its first turn (in follow
mode, of its current content: a rotation noticed while running starts a new record). At resume a
recorded file that is gone, shorter than recorded, or whose first bytes differ is *not the one the
checkpoint read* (`file_change`); a warning names it and what changed, and:

- a single file (or a followed one) is read from its start, its turns numbered on from the
  checkpoint's position: nothing is skipped, no offset is reused;
- in a directory or pattern, the stream resumes at the first turn of the first such file (files
  after it are read again: their offsets may have moved).

A file whose inode changed but whose content is the one recorded (copied, saved by an editor, only
appended to) counts as the same file. Not detected: a file added to a directory before the resume
point, and a rewrite that keeps the first 4 KiB and the length.

Check a log: ``python -m olm.data PATH [--format FORMAT]`` prints its turn and problem counts.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from olm.distributed import gather_ranks, own_rank_state, padded_with_end, shard_of
from olm.formats import CONTEXT_MODES, FORMATS, ContextMode, Conversation, Format, Problem, build_exchanges
from olm.readers import (
    STDIN, LineSource, ReaderLimits, SourceReader, StopRequest, is_pattern, open_regular, resolve_sources,
)
from olm.users import DEFAULT_USER, user_id_problem, validate_user_id

log = logging.getLogger(__name__)

DEFAULT_SOURCE = str(Path(__file__).resolve().parent / "assets" / "logs" / "sample.jsonl")


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
        skipped: cumulative count of skipped / repaired inputs so far (not truncations).
        truncated: cumulative count of messages cut to ``max_message_chars`` so far.
        system: the conversation's system prompt, as context (None: none, or ``system: drop``).
        context_spans: (start, end) character spans of `assistant` that are tool calls / results:
            context, never a training target.
        file_start: stream offset of the first turn of `source`'s current content (the resume record).
        user_id: whose turn it is (per-user learning: the record's ``user_id``, else the stream's
            ``user_id`` setting); None when per-user learning is off.
    """

    conversation_id: str
    user: str
    assistant: str | None
    history: tuple[tuple[str, str], ...]
    source: str
    offset: int
    skipped: int
    truncated: int = 0
    system: str | None = None
    context_spans: tuple[tuple[int, int], ...] = ()
    file_start: int = 0
    user_id: str | None = None


@dataclass(frozen=True)
class StreamConfig:
    """What the stream reads and how; validated on construction."""

    source: str = DEFAULT_SOURCE
    """A log file, a directory of logs, a glob pattern, or ``-`` for stdin."""
    format: Format = "auto"
    """Record format, or ``auto`` to detect it per record (see `olm.formats`)."""
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
    max_turns: int | None = None
    """The stream ends after this many turns in all (a resumed run counts those trained before it);
    None: at the source's end. Unlike ``trainer.max_steps``, which counts optimizer steps (a fact
    turn takes ``steps_per_fact``, a replay more), this counts turns."""
    limits: ReaderLimits = field(default_factory=ReaderLimits)
    """Safety bounds of the readers."""
    tools: ContextMode = "context"
    """Tool calls and results: ``context`` (in view, masked from the loss) or ``drop`` (left out)."""
    system: ContextMode = "drop"
    """System prompts: ``drop`` (left out) or ``context`` (rendered before each turn, never trained)."""
    per_user: bool = False
    """Read each record's ``user_id`` (set from ``--model.per_user``); a record whose id is invalid is
    skipped (counted). Off: user ids are ignored and every turn's is None."""
    user_id: str | None = None
    """With per_user: the user of turns whose record names none (every line typed in the chat; the
    chat's ``/user NAME`` switches it); None: ``default``."""

    def __post_init__(self) -> None:
        problems = []
        if self.user_id is not None:
            if (problem := user_id_problem(self.user_id)) is not None:
                problems.append(f"user_id {self.user_id!r}: {problem}")
            elif not self.per_user:
                problems.append(f"user_id {self.user_id!r} needs per-user learning: add --model.per_user true")
        if not isinstance(self.source, str) or not self.source:
            problems.append(f"source must be a path, a glob or '-', got {self.source!r}")
        if self.format not in FORMATS:
            problems.append(f"format must be one of {FORMATS}, got {self.format!r}")
        for name in ("tools", "system"):
            if getattr(self, name) not in CONTEXT_MODES:
                problems.append(f"{name} must be one of {CONTEXT_MODES}, got {getattr(self, name)!r}")
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
        if self.max_turns is not None and (not isinstance(self.max_turns, int) or self.max_turns < 1):
            problems.append(f"max_turns must be None or an integer >= 1, got {self.max_turns!r}")
        if self.follow and isinstance(self.source, str) and (os.path.isdir(self.source) or is_pattern(self.source)):
            problems.append(f"follow needs a single file or '-', got the directory or pattern {self.source!r}")
        if problems:
            raise ValueError("invalid stream settings: " + "; ".join(problems))


_DEFAULTS = StreamConfig()


def source_problems(source: str, follow: bool = False) -> list[str]:
    """[] when `source` names something to read, else its one-line problem as ``--data.source``'s
    (checked before the model loads: `cli.OlmCLI`)."""
    try:
        resolve_sources(source, follow)
    except FileNotFoundError as err:
        return [f"--data.source: {err}"]
    return []


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
        max_turns: the stream ends at this turn offset (see `StreamConfig.max_turns`).
        tools, system: what becomes of tool steps and system prompts (see `StreamConfig`).
        stdin: lines to read for ``-`` instead of ``sys.stdin`` (the interactive chat's console).
        stop: ends a wait for stdin or a followed file (the data module's; None: never requested).

    Attributes ``rank`` / ``world_size`` (set by the data module under DDP): only the turns of this
    rank's conversations are yielded (`olm.distributed.shard_of`); offsets and counts stay those of
    the whole stream.

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
        max_turns: int | None = None,
        tools: ContextMode = _DEFAULTS.tools,
        system: ContextMode = _DEFAULTS.system,
        stdin: LineSource | None = None,
        stop: StopRequest | None = None,
        base_offset: int = 0,
        per_user: bool = False,
        user_id: str | None = None,
        current_user: Callable[[], str | None] | None = None,
    ) -> None:
        super().__init__()
        self.config = StreamConfig(
            source, format, history_turns, max_message_chars, follow, poll_interval, idle_timeout,
            max_turns=max_turns, limits=limits or ReaderLimits(), tools=tools, system=system,
            per_user=per_user, user_id=user_id,
        )
        self.current_user = current_user  # the chat's /user: the user of records without one (default: user_id)
        if not isinstance(start_offset, int) or start_offset < 0:
            raise ValueError(f"start_offset must be an integer >= 0, got {start_offset!r}")
        if not isinstance(base_offset, int) or not 0 <= base_offset <= start_offset:
            raise ValueError(f"base_offset must be an integer in [0, start_offset], got {base_offset!r}")
        self.start_offset, self.stdin, self.stop, self.base_offset = start_offset, stdin, stop, base_offset
        self.files, self.filtered = resolve_sources(source, follow)

    @classmethod
    def from_config(
        cls, config: StreamConfig, start_offset: int = 0, stdin: LineSource | None = None,
        stop: StopRequest | None = None, base_offset: int = 0, current_user: Callable[[], str | None] | None = None,
    ) -> ChatTurnStream:
        """The stream `config` describes (its `num_workers` is the DataLoader's), from `start_offset` on."""
        c = config
        return cls(
            c.source, c.format, c.history_turns, c.max_message_chars, c.follow, c.poll_interval, c.idle_timeout,
            start_offset, limits=c.limits, max_turns=c.max_turns, tools=c.tools, system=c.system, stdin=stdin,
            stop=stop, base_offset=base_offset, per_user=c.per_user, user_id=c.user_id, current_user=current_user,
        )

    rank, world_size = 0, 1

    def __iter__(self) -> Iterator[Turn]:
        worker = get_worker_info()
        shard, shards = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        if shards > 1 and (self.config.source == STDIN or self.config.follow):
            raise RuntimeError("stdin and follow mode must be read with num_workers=0")
        stop = self.stop if worker is None else None  # a worker never sees the main process's signals
        reader = _TurnReader(
            self.config, self.start_offset, warn=shard == 0, stdin=self.stdin, stop=stop, base_offset=self.base_offset,
            current_user=self.current_user,
        )
        kept = 0  # turns of this rank's conversations (all of them in a single process)
        for turn in reader.turns(self.files, self.filtered):
            if self.world_size > 1 and shard_of(turn.conversation_id, self.world_size) != self.rank:
                continue  # another DDP rank's conversation
            # shard relative to start_offset so that the DataLoader's round robin over workers keeps offset order
            index = turn.offset - self.start_offset if self.world_size == 1 else kept
            kept += 1
            if index % shards == shard:
                yield turn


class _TurnReader:
    """One pass over the sources: numbering, history, problem counting and warnings."""

    def __init__(
        self, config: StreamConfig, start_offset: int, warn: bool, stdin: LineSource | None = None,
        stop: StopRequest | None = None, base_offset: int = 0, current_user: Callable[[], str | None] | None = None,
    ) -> None:
        self.config, self.limits = config, config.limits
        self.current_user = current_user or (lambda: config.user_id)
        self.source = SourceReader(config, stdin, stop)
        self.source.restarted = self._restarted  # follow mode: the file's content was replaced
        self.start_offset = start_offset
        self.offset = start_offset if config.source == STDIN else base_offset  # the first file's numbering
        self.file_start = self.offset
        self.skipped = 0
        self.truncated = 0
        self.dropped: dict[str, int] = {}  # kind → messages left out by the tools / system settings
        self.warn = _Warner(self.limits.max_warnings, warn)
        self.histories: OrderedDict[str, deque] = OrderedDict()

    def turns(self, files: list[str], filtered: bool) -> Iterator[Turn]:
        if self._limit_reached():  # a resume past the limit reads nothing (stdin would wait for a line)
            return
        for path in files:
            self.file_start = self.offset
            for where, item in self.source.items(path, filtered):
                if isinstance(item, Problem):
                    self._problem(where, item)
                else:
                    yield from self._conversation_turns(path, where, item)
                if self._limit_reached():  # checked before the next read, which may wait (stdin, follow)
                    return

    def _restarted(self) -> None:
        self.file_start = self.offset

    def _limit_reached(self) -> bool:
        return self.config.max_turns is not None and self.offset >= self.config.max_turns

    def _problem(self, where: str, problem: Problem) -> None:
        if problem.kind == "truncated":
            self.truncated += 1
        else:
            self.skipped += 1
        self.warn(where, problem)

    def _conversation_turns(self, path: str, where: str, conv: Conversation) -> Iterator[Turn]:
        c = self.config
        user_id = None
        if c.per_user:
            if conv.user_id is None:
                user_id = self.current_user() or DEFAULT_USER
            elif (problem := user_id_problem(conv.user_id)) is not None:  # a record's id names a directory
                self._problem(where, Problem("bad_user_id", f"record skipped: {problem} (user_id {_shown(conv.user_id)})"))
                return
            else:
                user_id = conv.user_id
        exchanges, problems = build_exchanges(conv.messages, c.max_message_chars, c.tools, c.system)
        for p in problems:
            self._problem(where, p)
        for ex in exchanges:
            if self._limit_reached():
                return
            for kind in ex.dropped:
                self._dropped(where, kind)
            # per-user learning: a conversation's history is its user's only (the chat's lines are one conversation)
            history = self._history(conv.id if user_id is None else (user_id, conv.id), ex.user, ex.reply)
            turn = Turn(
                conv.id, ex.user, ex.reply, history, path, self.offset, self.skipped, self.truncated,
                ex.system, ex.context_spans, self.file_start, user_id,
            )
            self.offset += 1
            if turn.offset >= self.start_offset:
                yield turn

    def _dropped(self, where: str, kind: str) -> None:
        """Count a message left out by choice; the first of each kind is announced."""
        first = not any(self.dropped.get(k) for k in ((kind,) if kind == "system" else ("tool", "tool_call")))
        self.dropped[kind] = self.dropped.get(kind, 0) + 1
        if first and self.warn.enabled:
            what, flag = ("system prompts", "system") if kind == "system" else ("tool calls and results", "tools")
            log.warning("%s: %s are left out (--data.%s drop; 'context' keeps them, untrained)", where, what, flag)

    def _history(self, conv_id: str | tuple[str, str], user: str, reply: str | None) -> tuple[tuple[str, str], ...]:
        if self.config.history_turns == 0:
            return ()
        past = self.histories.pop(conv_id, None) or deque(maxlen=self.config.history_turns)
        history = tuple(past)
        past.append((user, reply or ""))
        self.histories[conv_id] = past  # re-inserted last: the least recently used is first
        if len(self.histories) > self.limits.max_conversations:
            self.histories.popitem(last=False)
        return history


# ----------------------------------------------------------------------------- data module
class StreamLoader(DataLoader):
    """The stream's DataLoader: its iteration ends, in the main process, once `stop` is requested.

    With `handle_signals` (a trainer is running) iterating it installs `stop`'s signal handlers:
    reading starts after Lightning installed its own, which they replace.
    """

    def __init__(self, dataset: ChatTurnStream, stop: StopRequest, handle_signals: bool, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.stop, self.handle_signals = stop, handle_signals

    def __iter__(self) -> Iterator[Any]:
        if self.handle_signals:
            self.stop.install()
        turns = self.stop.iterate(super().__iter__())
        # DDP: a rank whose shard ended still joins the others' steps (`olm.distributed`)
        return padded_with_end(turns) if getattr(self.dataset, "world_size", 1) > 1 else turns


class ChatStreamDataModule(L.LightningDataModule):
    """Owns the chat-turn stream and its resume position (the offset of the first untrained turn).

    Args:
        source: a log file, a directory of logs, a glob pattern, or ``-`` for stdin.
        format: record format or ``auto`` (see `olm.formats`).
        history_turns: earlier exchanges of the conversation attached to each turn.
        max_message_chars: longer messages are truncated with a warning.
        follow: wait for lines appended to a single file.
        poll_interval: seconds between checks in follow mode.
        idle_timeout: follow mode ends after this many seconds without new data (None: never).
        num_workers: DataLoader workers (0 for stdin and follow mode).
        max_turns: the stream ends after this many turns in all, counting those trained before a
            resume (None: at the source's end). ``trainer.max_steps`` counts optimizer steps instead.
        limits: reader safety bounds (default `ReaderLimits()`).
        tools: tool calls and results: ``context`` (kept in view, masked from the loss) or ``drop``.
        system: system prompts: ``drop`` or ``context`` (rendered before each turn, never trained).
        per_user: read each record's ``user_id`` (set from ``--model.per_user`` by the command line).
        user_id: with per_user, the user of turns whose record names none (the chat: every line;
            ``/user NAME`` switches it, `set_user`).

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
        max_turns: int | None = _DEFAULTS.max_turns,
        limits: ReaderLimits | None = None,
        tools: ContextMode = _DEFAULTS.tools,
        system: ContextMode = _DEFAULTS.system,
        per_user: bool = _DEFAULTS.per_user,
        user_id: str | None = _DEFAULTS.user_id,
    ) -> None:
        super().__init__()
        self.config = StreamConfig(
            source, format, history_turns, max_message_chars, follow, poll_interval, idle_timeout, num_workers,
            max_turns, limits or ReaderLimits(), tools, system, per_user, user_id,
        )
        self.user_id = user_id
        """The user of turns whose record names none (per_user); `set_user` changes it."""
        self.next_offset = 0
        self.skipped = 0
        self.truncated = 0
        self.files: list[dict[str, Any]] = []  # the source files read, for the resume check (`file_change`)
        self.file_base = 0  # offset of the first turn of a single source file (set at resume)
        self.console: LineSource | None = None
        self.stop = StopRequest()

    @property
    def source(self) -> str:
        """The configured source (a path, a glob or ``-``)."""
        return self.config.source

    def train_dataloader(self) -> StreamLoader:
        """Turns from `next_offset` on, uncollated (``batch_size=None``), in stream order, until `stop`."""
        stream = ChatTurnStream.from_config(
            self.config, self.next_offset, stdin=self.console, stop=self.stop, base_offset=self.file_base,
            current_user=lambda: self.user_id,
        )
        if self.trainer is not None:  # DDP: this rank's conversations only (`olm.distributed`)
            stream.rank, stream.world_size = self.trainer.global_rank, self.trainer.world_size
        handle_signals = self.trainer is not None  # restored at teardown / on_exception
        return StreamLoader(stream, self.stop, handle_signals, batch_size=None, num_workers=self.config.num_workers)

    def teardown(self, stage: str) -> None:
        self.stop.restore()

    def on_exception(self, exception: BaseException) -> None:
        self.stop.restore()

    def use_console(self, lines: LineSource | None) -> None:
        """Read stdin through `lines()` instead of ``sys.stdin`` (None: back to ``sys.stdin``).

        The interactive chat (`olm.callbacks.ChatCallback`) passes its console here: it prompts,
        runs ``/commands`` (which are never trained on) and ends the stream on /quit, Ctrl+C or EOF.
        Set it before the dataloader is built (a callback's ``setup``).
        """
        self.console = lines

    def set_user(self, user_id: str) -> None:
        """The user of the turns read from now on whose record names none (the chat's ``/user NAME``).

        Raises:
            ValueError: per-user learning is off, or `user_id` is invalid (the message says why).
        """
        if not self.config.per_user:
            raise ValueError("per-user learning is off: start with --model.per_user true")
        self.user_id = validate_user_id(user_id)

    def mark_trained(self, turn: Turn) -> None:
        """Record that `turn` was trained: a resume starts after it (and checks its file: module docstring)."""
        self.next_offset = turn.offset + 1
        self.skipped, self.truncated = turn.skipped, turn.truncated
        if turn.source != STDIN:
            self._note_file(turn.source, turn.file_start)

    def _note_file(self, source: str, first_offset: int) -> None:
        path = os.path.abspath(source)
        last = self.files[-1] if self.files else None
        if last is not None and last["path"] == path and last["first_offset"] == first_offset:
            return  # the common case: another turn of the current file
        fingerprint = file_fingerprint(path)
        if fingerprint is None:
            return
        self.files = [r for r in self.files if r["path"] != path]  # new content of a followed file replaces the old
        self.files.append({"path": path, "first_offset": first_offset, **fingerprint})
        del self.files[:-MAX_FILE_RECORDS]

    def state_dict(self) -> dict[str, Any]:
        """Plain-typed resume state, saved in Lightning checkpoints."""
        files = [dict(r) for r in self.files]
        if files and file_change(files[-1]) is None:  # the current file may have grown: a longer head
            files[-1].update(file_fingerprint(files[-1]["path"]) or {})
        state = {
            "source": self.config.source, "next_offset": self.next_offset, "skipped": self.skipped,
            "truncated": self.truncated, "files": files,
        }
        if self.config.per_user:  # the chat's current user (after /user) continues on resume
            state["user_id"] = self.user_id
        return gather_ranks(state)  # DDP: every rank's position (olm.distributed)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state["next_offset"]``; a state saved for another source restarts at 0 (with a warning).

        Raises:
            ValueError: the state lacks ``source`` / ``next_offset`` or has wrong types.
            ResumeError: the state was saved by another number of DDP ranks (`olm.distributed`).
        """
        state = own_rank_state(state, "stream state")
        offset, source = state.get("next_offset"), state.get("source")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0 or not isinstance(source, str):
            raise ValueError(f"stream state needs a 'source' string and a 'next_offset' >= 0, got {state!r}")
        self.files, self.file_base = [], 0
        saved_user = state.get("user_id")
        if self.config.per_user and self.config.user_id is None and user_id_problem(saved_user) is None:
            self.user_id = saved_user  # --data.user_id, when given, wins
        if not _same_source(source, self.config.source):
            log.warning("stream state is for source %r, not %r: starting at turn 0", source, self.config.source)
            self.next_offset, self.skipped, self.truncated = 0, 0, 0
            return
        self.next_offset, self.skipped = offset, int(state.get("skipped", 0))
        self.truncated = int(state.get("truncated", 0))
        self._check_files([r for r in state.get("files") or [] if _valid_record(r)])

    def _check_files(self, records: list[dict[str, Any]]) -> None:
        """Resume only into the files the checkpoint read (module docstring, "Resume")."""
        offset, source = self.next_offset, self.config.source
        if source == STDIN or not records:
            return
        if not (os.path.isdir(source) or is_pattern(source)):  # one file
            mine = [r for r in records if r["path"] == os.path.abspath(source)]
            change = file_change(mine[-1]) if mine else None
            if change is None:
                self.files = mine[-1:]
                self.file_base = mine[-1]["first_offset"] if mine else 0
                return
            log.warning("%s %s since the checkpoint read it: it is read from its start, its turns numbered on from "
                        "turn %d (nothing skipped)", source, change, offset)  # fmt: skip
            self.file_base = offset
            return
        for i, record in enumerate(records):
            change = file_change(record)
            if change is not None:
                start = min(offset, record["first_offset"])
                log.warning("%s %s since the checkpoint read it: resuming at its first turn, %d, instead of turn %d "
                            "(the files after it are read again)", record["path"], change, start, offset)  # fmt: skip
                self.next_offset, self.files = start, records[:i]
                return
        self.files = records


def _shown(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _same_source(a: str, b: str) -> bool:
    return a == b or (STDIN not in (a, b) and os.path.abspath(a) == os.path.abspath(b))


HEAD_BYTES = 4096
"""Leading bytes of a source file whose SHA-256 the resume record keeps."""
MAX_FILE_RECORDS = 1024
"""Most source files a checkpoint records (the latest)."""
_RECORD_KEYS = {"path": str, "first_offset": int, "inode": int, "size": int, "head_bytes": int, "head_sha256": str}


def _valid_record(record: Any) -> bool:
    return isinstance(record, dict) and all(isinstance(record.get(k), t) for k, t in _RECORD_KEYS.items())


def _read_head(path: str, n: int) -> tuple[os.stat_result, bytes]:
    with open_regular(path) as fh:  # never blocks on a FIFO put in a file's place
        return os.fstat(fh.fileno()), fh.read(n)


def file_fingerprint(path: str) -> dict[str, Any] | None:
    """What the resume record keeps of a file: inode, size, length and SHA-256 of its first
    `HEAD_BYTES` bytes (None when it cannot be read)."""
    try:
        st, head = _read_head(path, HEAD_BYTES)
    except OSError:
        return None
    return {"inode": st.st_ino, "size": st.st_size, "head_bytes": len(head),
            "head_sha256": hashlib.sha256(head).hexdigest()}  # fmt: skip


def file_change(record: dict[str, Any]) -> str | None:
    """None when the file at ``record["path"]`` is still the one recorded (the same first bytes, at
    least as long; its inode may differ), else what changed, in words ("is gone", ...)."""
    try:
        st, head = _read_head(record["path"], record["head_bytes"])
    except FileNotFoundError:
        return "is gone"
    except OSError as err:
        return f"cannot be read ({err})"
    if st.st_size < record["size"]:
        return f"is shorter than when it was read ({st.st_size} < {record['size']} bytes: truncated or replaced)"
    if hashlib.sha256(head).hexdigest() != record["head_sha256"]:
        return "holds other content (its first bytes differ: rewritten or replaced)"
    return None


COUNT_MAX_BYTES = 64 * 2**20


def count_turns(config: StreamConfig, max_bytes: int = COUNT_MAX_BYTES) -> int | None:
    """How many turns the stream described by `config` holds (at most ``max_turns``): the total of a
    progress bar. None for stdin, a followed file, or sources over `max_bytes` (counting reads them
    once more before training)."""
    if config.source == STDIN or config.follow:
        return None
    files, filtered = resolve_sources(config.source)
    if sum(os.path.getsize(f) for f in files) > max_bytes:
        return None
    return sum(1 for _ in _TurnReader(config, 0, warn=False).turns(files, filtered))


def main(argv: list[str] | None = None) -> int:
    """Print how many turns and problems a source yields. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m olm.data", description=main.__doc__)
    parser.add_argument("source")
    parser.add_argument("--format", default=_DEFAULTS.format, choices=FORMATS)
    parser.add_argument("--tools", default=_DEFAULTS.tools, choices=CONTEXT_MODES)
    parser.add_argument("--system", default=_DEFAULTS.system, choices=CONTEXT_MODES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    stream = ChatTurnStream(args.source, args.format, tools=args.tools, system=args.system)
    reader = _TurnReader(stream.config, 0, warn=True)
    turns = list(reader.turns(stream.files, stream.filtered))
    with_tools = sum(1 for t in turns if t.context_spans)
    dropped = ", ".join(f"{n} {k}" for k, n in sorted(reader.dropped.items())) or "none"
    print(
        f"{args.source}: {len(turns)} turns ({sum(t.assistant is None for t in turns)} without a logged reply, "
        f"{with_tools} with tool steps as context), {reader.skipped} inputs skipped or repaired, "
        f"{reader.truncated} messages truncated; left out by choice: {dropped}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
