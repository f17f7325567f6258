"""Property tests (hypothesis) of the log readers: arbitrary bytes and JSON never raise, never hang, and
every Turn is well formed (non-empty stripped user text, offsets consecutive, skip counts non-decreasing)."""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from olm.data import ChatTurnStream, Turn
from olm.formats import BadRecord, build_exchanges, parse_record
from olm.readers import JsonValueReader, ReaderLimits

MAX_CHARS = 50
FUZZ = settings(  # no example database: nothing is written into the repository
    max_examples=60, deadline=2000, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
roles = st.sampled_from(["user", "human", "assistant", "gpt", "tool", "observation", "system", "alien", ""])
contents = st.text(max_size=80) | st.sampled_from(["", "   ", "\n"]) | json_values
messages = st.lists(st.tuples(roles | json_values, contents), max_size=8)
record_like = st.fixed_dictionaries({}, optional={
    "messages": st.lists(st.fixed_dictionaries({"role": roles | json_values, "content": contents}), max_size=5)
    | json_values,
    "conversations": st.lists(st.fixed_dictionaries({"from": roles, "value": contents}), max_size=5) | json_values,
    "messages_display": st.text(alphabet="userasitnol: \nx", max_size=60) | json_values,
    "user": contents,
    "assistant": contents,
    "id": json_values,
})


@st.composite
def corrupted_logs(draw) -> bytes:
    """A JSON array or JSONL log of record-like values with a few byte ranges replaced by random bytes."""
    values = draw(st.lists(record_like, max_size=5))
    raw = (json.dumps(values, indent=1) if draw(st.booleans()) else "\n".join(map(json.dumps, values))).encode()
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(raw)))
        j = draw(st.integers(i, min(len(raw), i + 8)))
        raw = raw[:i] + draw(st.binary(max_size=4)) + raw[j:]
    return raw


def assert_well_formed(turns: list[Turn], first_offset: int = 0) -> None:
    assert [t.offset for t in turns] == list(range(first_offset, first_offset + len(turns)))
    skipped = [t.skipped for t in turns]
    assert skipped == sorted(skipped) and all(s >= 0 for s in skipped)
    for t in turns:
        assert isinstance(t.user, str) and t.user and t.user == t.user.strip() and len(t.user) <= MAX_CHARS
        assert t.assistant is None or (isinstance(t.assistant, str) and 0 < len(t.assistant) <= MAX_CHARS)
        assert isinstance(t.conversation_id, str) and isinstance(t.history, tuple)


@FUZZ
@given(messages)
def test_build_exchanges_never_raises_and_output_is_well_formed(msgs):
    pairs, problems = build_exchanges(msgs, MAX_CHARS, tools="context", system="context")
    for ex in pairs:
        assert ex.user and ex.user == ex.user.strip() and len(ex.user) <= MAX_CHARS
        assert ex.reply is None or 0 < len(ex.reply) <= MAX_CHARS
        ends = [0] + [x for span in ex.context_spans for x in span]
        assert ends == sorted(ends) and (not ex.context_spans or ends[-1] <= len(ex.reply))  # ordered, inside
        assert ex.system is None or 0 < len(ex.system) <= MAX_CHARS
    assert pairs or problems  # a record that yields nothing is always accounted for


@FUZZ
@given(json_values | record_like)
def test_parse_record_only_raises_bad_record(value):
    try:
        rid, msgs = parse_record(value)
    except BadRecord as err:
        assert err.kind in ("bad_record", "bad_field")
        return
    assert rid is None or isinstance(rid, str)
    build_exchanges(msgs, MAX_CHARS)


@FUZZ
@given(st.lists(json_values | record_like, max_size=6), st.integers(1, 64))
def test_json_array_reader_matches_json_loads_for_any_chunk_size(values, chunk):
    raw = json.dumps(values, indent=1).encode()
    decoded = [v for _, v in JsonValueReader(io.BytesIO(raw), ReaderLimits(chunk_bytes=chunk))]
    assert decoded == json.loads(raw)


@FUZZ
@given(st.binary(max_size=400) | corrupted_logs(), st.sampled_from([".jsonl", ".json", ".txt", ".log"]),
       st.integers(1, 32))
def test_stream_never_raises_on_arbitrary_bytes(data, suffix, chunk):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"log{suffix}"
        path.write_bytes(data)
        limits = ReaderLimits(chunk_bytes=chunk, max_record_bytes=200, max_warnings=1)
        assert_well_formed(list(ChatTurnStream(str(path), max_message_chars=MAX_CHARS, history_turns=2,
                                               limits=limits)))


@FUZZ
@given(st.lists(record_like.map(json.dumps) | st.text(max_size=40), max_size=8), st.integers(0, 3))
def test_stream_of_jsonl_records_is_well_formed(lines, start):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.jsonl"
        path.write_text("\n".join(line.replace("\n", " ") for line in lines), encoding="utf-8", errors="replace")
        everything = list(ChatTurnStream(str(path), max_message_chars=MAX_CHARS, limits=ReaderLimits(max_warnings=1)))
        assert_well_formed(everything)
        resumed = list(ChatTurnStream(str(path), max_message_chars=MAX_CHARS, start_offset=start,
                                      limits=ReaderLimits(max_warnings=1)))
        assert resumed == everything[start:]


def read_stdin(text: str, fmt: str) -> list[Turn]:
    saved = sys.stdin
    sys.stdin = io.StringIO(text)
    try:
        return list(ChatTurnStream("-", fmt, max_message_chars=MAX_CHARS, limits=ReaderLimits(max_warnings=1)))
    finally:
        sys.stdin = saved


@FUZZ
@given(st.text(max_size=300) | st.lists(record_like.map(json.dumps), max_size=4).map("\n".join))
@example("\x00")  # found by a CI run: a NUL-only line is padding, not a turn
@example("a\x00b\nc\x00\r\n")
def test_stdin_never_raises(text):
    assert_well_formed(read_stdin(text, "auto"))
    as_text = read_stdin(text, "text")
    assert_well_formed(as_text)
    # a line's trailing NULs (crash padding) are removed and a line still holding a NUL is a logged skip
    kept = (line.rstrip("\r").rstrip("\x00") for line in text.split("\n"))
    assert len(as_text) == sum(1 for line in kept if line.strip() and "\x00" not in line)
