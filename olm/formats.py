"""Chat-log record formats: JSON records and text lines → (role, content) messages → exchanges.

Formats (``StreamConfig.format``), detected per record with ``auto``:
  messages     ``{"messages": [{"role", "content"}, ...]}`` (content may be a list of text parts)
  sharegpt     ``{"conversations": [{"from", "value"}, ...]}``
  transcript   ``{"messages_display": "user: ...\\nassistant: ..."}`` (τ-bench; unprefixed lines continue)
  pair         ``{"user": ..., "assistant": ...}``
  dailydialog  a text line of utterances separated by ``__eou__``, speakers alternating user/assistant
  text         every non-empty line is a user message with no logged reply

One `Exchange` per user message, with the assistant messages that follow it joined by a newline
as its reply (None when none follow). Tool steps are never assistant speech: a tool call (ShareGPT
``function_call``, OpenAI ``tool_calls`` / ``function_call`` fields) and a tool result (roles
``tool``, ``function``, ``observation``, ``ipython``) are, by the stream's ``tools`` setting,
``context`` — kept in the reply text, labelled (`TOOL_CALL_LABEL`, `TOOL_RESULT_LABEL`) and listed
in `Exchange.context_spans`, so the renderer masks them from the loss — or ``drop``ped. System
messages are never exchanges: with ``system="context"`` the record's system prompt rides along with
each exchange (`Exchange.system`, rendered as an untrained system message), with ``drop`` it is
left out. What is dropped by choice is listed in `Exchange.dropped` (not a problem).
Nothing here raises on bad input except `parse_record` (`BadRecord`, which readers turn into a
`Problem`): a bad role or content, an empty message, an overlong message (truncated to
``max_chars``) or a record without a user message is reported as a `Problem` beside the result.
Everything here is pure: no I/O, no logging.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["auto", "messages", "sharegpt", "transcript", "pair", "dailydialog", "text"]
FORMATS: tuple[str, ...] = ("auto", "messages", "sharegpt", "transcript", "pair", "dailydialog", "text")
ContextMode = Literal["context", "drop"]
"""What becomes of tool steps / system prompts: untrained context, or left out."""
CONTEXT_MODES: tuple[str, ...] = ("context", "drop")
TOOL_CALL_LABEL = "[tool call] "
TOOL_RESULT_LABEL = "[tool result] "
RECORD_KEYS: dict[str, str] = {  # detection order: the first key present picks the record format
    "messages": "messages", "conversations": "sharegpt", "messages_display": "transcript", "user": "pair",
}
ROLES: dict[str, str] = {
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "model": "assistant", "bot": "assistant", "chatgpt": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool", "ipython": "tool",
    "function_call": "tool_call", "tool_call": "tool_call",
    "system": "system", "developer": "system",
}
EOU = "__eou__"
TRANSCRIPT_NULL = "None"  # τ-bench writes "assistant: None" where the assistant made a tool call
_TRANSCRIPT_LINE = re.compile(r"^(" + "|".join(ROLES) + r"):[ \t]?(.*)$", re.DOTALL)
LineMode = Literal["json", "jsonl", "txt", "mixed", "text", "dailydialog"]
"""How a source's lines are read: see `line_mode` / `file_mode` in `olm.readers`."""


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
class Exchange:
    """One user message and what answered it.

    Attributes:
        user: the stripped user message.
        reply: the assistant messages (and, as context, tool steps) after it, joined by newlines;
            None when nothing followed.
        context_spans: (start, end) character spans of `reply` that are tool steps: context, never
            a training target.
        system: the record's system prompt(s) before this message, kept as context (None: none, or dropped).
        dropped: the kinds (``tool_call``, ``tool``, ``system``) of messages left out by choice.
    """

    user: str
    reply: str | None
    context_spans: tuple[tuple[int, int], ...] = ()
    system: str | None = None
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Conversation:
    """Messages of one record, roles not yet checked: (role, content) pairs in log order."""

    id: str
    messages: tuple[tuple[Any, Any], ...]
    user_id: Any = None
    """The record's top-level ``"user_id"`` as found (unchecked: `olm.users.user_id_problem`), None when absent."""


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
        calls = m.get("tool_calls") if isinstance(m.get("tool_calls"), list) else None
        if calls is None and isinstance(m.get("function_call"), dict):  # OpenAI's older single-call field
            calls = [m["function_call"]]
        content = m.get(text_key)
        if calls is None or content not in (None, "", []):
            out.append((m.get(role_key), content))
        if calls is not None:  # OpenAI: an assistant's tool calls are a tool step, not speech
            out.append(("tool_call", "\n".join(filter(None, map(call_text, calls))) or None))
    return out


def call_text(call: Any) -> str | None:
    """A tool call as ``{"name": ..., "arguments": ...}`` JSON (OpenAI call ids and types left out)."""
    if isinstance(call, dict):
        fn = call.get("function") if isinstance(call.get("function"), dict) else call
        if "name" in fn:
            args = fn.get("arguments")
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except (ValueError, RecursionError):
                    pass
            return _dumps({"name": fn["name"], "arguments": args})
    return _dumps(call)


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


def _system_field(record: dict) -> list[tuple[Any, Any]]:
    """A ShareGPT record's top-level ``system`` prompt (LLaMA-Factory's layout) as a first message."""
    system = record.get("system")
    return [("system", system)] if isinstance(system, str) and system.strip() else []


_PARSERS = {
    "messages": lambda v, _: _list_messages(v, "role", "content"),
    "conversations": lambda v, rec: _system_field(rec) + _list_messages(v, "from", "value"),
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
    messages: Iterable[tuple[Any, Any]], max_chars: int, tools: ContextMode = "context", system: ContextMode = "drop"
) -> tuple[list[Exchange], list[Problem]]:
    """Pair every user message with the assistant messages (and tool steps) that follow it.

    Args:
        messages: (role, content) pairs in log order, unchecked.
        max_chars: longer user messages, replies and system prompts are truncated.
        tools: tool calls and results after a user message become labelled context spans of its
            reply (``context``) or are left out (``drop``).
        system: system messages become each later exchange's `Exchange.system` (``context``) or are
            left out (``drop``).

    Returns:
        (the exchanges, problems: bad roles or contents, empty messages, truncations, or a record
        without any user message). A bad user message drops its replies.
    """
    exchanges: list[Exchange] = []
    problems: list[Problem] = []
    turn: _Open | None = None
    prompts: list[str] = []  # system prompts seen so far (context mode)
    prompt: str | None = None  # their text, truncated once
    dropped: list[str] = []  # kinds left out before the next exchange is opened
    for role, content in messages:
        kind, text, problem = _message(role, content)
        if problem is not None:
            problems.append(problem)
        if kind == "user":
            _close(exchanges, turn, max_chars, problems)
            turn, dropped = (_Open(text, prompt, dropped), []) if text is not None else (None, dropped)
        elif text is None:
            continue
        elif kind == "system" and system == "context":
            prompts.append(text)
            prompt = truncate("\n".join(prompts), max_chars, "system prompt", problems)
        elif kind == "system":
            dropped.append(kind)
        elif kind in ("tool", "tool_call") and tools == "drop":
            (turn.dropped if turn is not None else dropped).append(kind)
        elif kind in ("assistant", "tool", "tool_call") and turn is not None:
            turn.add(kind, text)  # a reply before the first user message is context, not a turn
    _close(exchanges, turn, max_chars, problems)
    if not exchanges and not problems:
        problems.append(Problem("no_user_message", "record has no user message"))
    return exchanges, problems


class _Open:
    """The exchange being gathered: its user message, reply parts and the spans of its tool steps."""

    LABELS = {"tool_call": TOOL_CALL_LABEL, "tool": TOOL_RESULT_LABEL}

    def __init__(self, user: str, system: str | None, dropped: list[str]) -> None:
        self.user, self.system, self.dropped = user, system, dropped
        self.parts: list[str] = []
        self.spans: list[tuple[int, int]] = []
        self.length = -1  # of "\n".join(parts)

    def add(self, kind: str, text: str) -> None:
        start = self.length + 1
        part = self.LABELS.get(kind, "") + text
        self.parts.append(part)
        self.length = start + len(part)
        if kind != "assistant":
            self.spans.append((start, self.length))


def _close(exchanges: list[Exchange], turn: _Open | None, max_chars: int, problems: list[Problem]) -> None:
    if turn is None:
        return
    reply = truncate("\n".join(turn.parts), max_chars, "reply", problems) if turn.parts else None
    spans = tuple((a, min(b, len(reply))) for a, b in turn.spans if reply is not None and a < len(reply))
    user = truncate(turn.user, max_chars, "user message", problems)
    exchanges.append(Exchange(user, reply, spans, turn.system, tuple(turn.dropped)))


def _message(role: Any, content: Any) -> tuple[str | None, str | None, Problem | None]:
    """(normalized role, stripped non-empty text or None, problem or None) of one message."""
    kind = ROLES.get(role.strip().lower()) if isinstance(role, str) else None
    if kind is None:
        return None, None, Problem("bad_field", f"message skipped: unknown role {_short(role)}")
    text = message_text(content)
    if text is None:
        return kind, None, Problem("bad_field", f"{kind} message skipped: content is {type(content).__name__}")
    if not text.strip():
        # an empty tool result or call is a legitimate output; an empty system prompt is harmless
        quiet = kind in ("tool", "tool_call", "system")
        return kind, None, None if quiet else Problem("empty_message", f"empty {kind} message")
    return kind, text.strip(), None


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- lines and values → conversations
def record_conversation(value: Any, fmt: str, default_id: str) -> Conversation | Problem:
    """The conversation of a decoded JSON record, or the problem that makes it unreadable.

    Args:
        value: a decoded JSON value.
        fmt: the stream's format; record formats are enforced, anything else detects per record.
        default_id: the id when the record has none (``<file>:<line>``).

    Returns:
        The `Conversation`, or a `Problem` (never raises).
    """
    try:
        rid, messages = parse_record(value, fmt if fmt in RECORD_KEYS.values() else "auto")
    except BadRecord as err:
        return Problem(err.kind, f"record skipped: {err}")
    return Conversation(rid if rid is not None else default_id, tuple(messages), value.get("user_id"))


def line_conversation(text: str, mode: LineMode, fmt: str, source: str, lineno: int) -> Conversation | Problem:
    """The conversation of one non-blank log line read in `mode`.

    Text lines belong to one conversation per source (id `source`); a DailyDialog line or a JSON
    record without an id is its own conversation (``<source>:<lineno>``). In ``mixed`` mode (stdin,
    unknown suffixes) a line is a record when it is a JSON object of a known shape, else text.

    Args:
        text: the line, without its line break.
        mode: jsonl, txt (DailyDialog with ``__eou__``, else text), mixed, text or dailydialog.
        fmt: the stream's format (see `record_conversation`).
        source: the file path, ``-`` for stdin.
        lineno: 1-based line number.

    Returns:
        The `Conversation`, or a `Problem` for invalid JSON in jsonl mode (never raises).
    """
    if mode == "text" or (mode == "txt" and EOU not in text):
        return Conversation(source, (("user", text),))
    if mode in ("dailydialog", "txt"):
        return Conversation(f"{source}:{lineno}", tuple(dialogue_messages(text)))
    try:
        value = json.loads(text, strict=False)
    except (json.JSONDecodeError, RecursionError) as err:
        if mode == "mixed":
            return Conversation(source, (("user", text),))
        return Problem("malformed", f"invalid JSON: {getattr(err, 'msg', 'nested too deeply')}")
    if mode == "mixed" and not (isinstance(value, dict) and any(k in value for k in RECORD_KEYS)):
        return Conversation(source, (("user", text),))
    return record_conversation(value, fmt, f"{source}:{lineno}")
