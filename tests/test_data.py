"""Tests of the chat-turn stream (olm.data): formats, sources, bad input, follow mode, resume, workers."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from olm.data import ChatStreamDataModule, ChatTurnStream, StreamConfig, Turn
from olm.formats import build_exchanges, parse_record, transcript_messages
from olm.readers import ReaderLimits

REAL_LOGS = Path(__file__).resolve().parents[2] / "shared" / "reallogs"


def write_jsonl(path: Path, records: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return str(path)


def msgs(*pairs: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


def read(source: str, **kwargs) -> list[Turn]:
    return list(ChatTurnStream(source, **kwargs))


def exchanges(turns: list[Turn]) -> list[tuple[str, str | None]]:
    return [(t.user, t.assistant) for t in turns]


# ----------------------------------------------------------------------------- formats
def test_messages_format_one_turn_per_user_message(tmp_path):
    rec = msgs(("system", "be nice"), ("user", "hi"), ("assistant", "hello"), ("user", " two "),
               ("assistant", "a"), ("tool", "t"), ("assistant", "b"), ("user", "last"))
    rec["id"] = "c1"
    turns = read(write_jsonl(tmp_path / "log.jsonl", [rec, msgs(("user", "solo"))]))
    assert exchanges(turns) == [("hi", "hello"), ("two", "a\n[tool result] t\nb"), ("last", None), ("solo", None)]
    assert turns[1].context_spans == ((2, 17),) and turns[1].assistant[2:17] == "[tool result] t"
    assert [t.conversation_id for t in turns] == ["c1", "c1", "c1", f"{tmp_path / 'log.jsonl'}:2"]
    assert [t.offset for t in turns] == [0, 1, 2, 3]
    assert all(t.skipped == 0 and t.source == str(tmp_path / "log.jsonl") and t.history == () for t in turns)


def test_sharegpt_jsonl_and_pretty_json_array_agree(tmp_path):
    records = [
        {"id": "a", "conversations": [{"from": "human", "value": "book a flight"},
                                      {"from": "function_call", "value": '{"name": "book"}'},
                                      {"from": "observation", "value": '{"ok": true}'},
                                      {"from": "gpt", "value": "Booked."}]},
        {"conversations": [{"from": "system", "value": "s"}, {"from": "user", "value": "q"},
                           {"from": "assistant", "value": "r"}]},
    ]
    jsonl = read(write_jsonl(tmp_path / "a.jsonl", records))
    dump = json.dumps(records, indent=2)
    (tmp_path / "b.json").write_text(dump, encoding="utf-8")
    array = read(str(tmp_path / "b.json"), limits=ReaderLimits(chunk_bytes=7))
    expected = [("book a flight", '[tool call] {"name": "book"}\n[tool result] {"ok": true}\nBooked.'), ("q", "r")]
    assert exchanges(jsonl) == exchanges(array) == expected
    second = dump.splitlines().index("  {", 2) + 1  # the line where the second element starts
    assert array[1].conversation_id == f"{tmp_path / 'b.json'}:{second}"


def test_transcript_format_continuations_and_tool_call_placeholders(tmp_path):
    text = "user: hi\nthere\nassistant: None\ntool: {}\nassistant: done\n- item\nuser: bye"
    assert transcript_messages(text) == [("user", "hi\nthere"), ("tool", "{}"), ("assistant", "done\n- item"),
                                         ("user", "bye")]
    turns = read(write_jsonl(tmp_path / "t.jsonl", [{"messages_display": text}]))
    assert exchanges(turns) == [("hi\nthere", "[tool result] {}\ndone\n- item"), ("bye", None)]


def test_pair_records_share_history_by_conversation_id(tmp_path):
    records = [{"conversation_id": "x", "user": "u1", "assistant": "a1"}, {"conversation_id": "y", "user": "v1"},
               {"conversation_id": "x", "user": "u2", "assistant": "a2"}, {"conversation_id": "x", "user": "u3"}]
    turns = read(write_jsonl(tmp_path / "p.jsonl", records), history_turns=1)
    assert exchanges(turns) == [("u1", "a1"), ("v1", None), ("u2", "a2"), ("u3", None)]
    assert [t.history for t in turns] == [(), (), (("u1", "a1"),), (("u2", "a2"),)]


def test_history_turns_oldest_first_and_zero_means_none(tmp_path):
    rec = msgs(("user", "1"), ("assistant", "a"), ("user", "2"), ("user", "3"), ("assistant", "c"), ("user", "4"))
    path = write_jsonl(tmp_path / "h.jsonl", [rec, msgs(("user", "other"))])
    turns = read(path, history_turns=2)
    assert [t.history for t in turns] == [(), (("1", "a"),), (("1", "a"), ("2", "")), (("2", ""), ("3", "c")), ()]
    assert all(t.history == () for t in read(path, history_turns=0))


def test_dailydialog_alternates_speakers(tmp_path):
    path = tmp_path / "dialogues.txt"
    path.write_text("Hi . __eou__ Hello ! __eou__ How are you ? __eou__\nA __eou__ B __eou__\n", encoding="utf-8")
    turns = read(str(path))
    assert exchanges(turns) == [("Hi .", "Hello !"), ("How are you ?", None), ("A", "B")]
    assert [t.conversation_id for t in turns] == [f"{path}:1", f"{path}:1", f"{path}:2"]


def test_text_format_every_nonempty_line_is_a_user_message(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text('first\n\n  \n{"user": "json is text here"}\nlast', encoding="utf-8")
    turns = read(str(path), format="text")
    assert exchanges(turns) == [("first", None), ('{"user": "json is text here"}', None), ("last", None)]
    assert {t.conversation_id for t in turns} == {str(path)}  # one conversation: history runs across lines
    assert exchanges(read(str(path))) == exchanges(turns)  # auto: a .txt line without __eou__ is text


def test_content_parts_and_openai_tool_calls():
    messages = [("user", [{"type": "text", "text": "look"}, {"type": "image_url"}, "and this"]),
                ("assistant", None), ("assistant", "ok")]
    pairs, problems = build_exchanges(messages, max_chars=100)
    assert [(e.user, e.reply) for e in pairs] == [("look\nand this", "ok")]
    assert [p.kind for p in problems] == ["empty_message"]
    calls = [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]
    _, parsed = parse_record({"messages": [{"role": "assistant", "content": None, "tool_calls": calls},
                                           {"role": "assistant", "content": "and", "function_call": {"name": "g"}}]})
    assert parsed == [("tool_call", '{"name": "f", "arguments": {"x": 1}}'), ("assistant", "and"),
                      ("tool_call", '{"name": "g", "arguments": null}')]  # call ids and types left out


# an OpenAI log with a system prompt, a tool call (with a call id) and its result, as τ-bench writes them
TOOL_LOG = {"messages": [
    {"role": "system", "content": "You are an airline agent."},
    {"role": "user", "content": "Cancel booking X1."},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "call_abc", "type": "function", "function": {"name": "cancel", "arguments": '{"id": "X1"}'}}]},
    {"role": "tool", "tool_call_id": "call_abc", "name": "cancel", "content": '{"status": "cancelled"}'},
    {"role": "assistant", "content": "Booking X1 is cancelled."},
    {"role": "user", "content": "Thanks."},
    {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "call_d", "function": {"name": "log"}}]},
]}


def test_tool_steps_are_untrained_context_by_default(tmp_path):
    first, second = read(write_jsonl(tmp_path / "tau.jsonl", [TOOL_LOG]))
    call, result = '[tool call] {"name": "cancel", "arguments": {"id": "X1"}}', '[tool result] {"status": "cancelled"}'
    assert first.assistant == f"{call}\n{result}\nBooking X1 is cancelled."
    assert [first.assistant[a:b] for a, b in first.context_spans] == [call, result]
    assert "call_abc" not in first.assistant and first.system is None  # system: drop by default
    assert second.assistant == 'Checking.\n[tool call] {"name": "log", "arguments": null}'
    assert [second.assistant[a:b] for a, b in second.context_spans] == [second.assistant[10:]]


def test_tools_drop_and_system_context(tmp_path, caplog):
    path = write_jsonl(tmp_path / "tau.jsonl", [TOOL_LOG, TOOL_LOG])
    with caplog.at_level(logging.WARNING, logger="olm.data"):
        turns = read(path, tools="drop", system="context", history_turns=1)
    assert exchanges(turns[:2]) == [("Cancel booking X1.", "Booking X1 is cancelled."), ("Thanks.", "Checking.")]
    assert all(t.context_spans == () and t.system == "You are an airline agent." for t in turns)
    assert turns[1].history == (("Cancel booking X1.", "Booking X1 is cancelled."),)
    assert caplog.text.count("tool calls and results are left out (--data.tools drop") == 1  # announced once
    with caplog.at_level(logging.WARNING, logger="olm.data"):
        assert read(path)[0].system is None
    assert "system prompts are left out (--data.system drop" in caplog.text
    with pytest.raises(ValueError, match="tools must be one of"):
        ChatTurnStream(path, tools="train")


def test_forced_format_skips_records_of_other_formats(tmp_path):
    sharegpt = {"conversations": [{"from": "human", "value": "b"}]}
    path = write_jsonl(tmp_path / "m.jsonl", [msgs(("user", "a")), sharegpt])
    turns = read(path, format="sharegpt")
    assert exchanges(turns) == [("b", None)] and turns[0].skipped == 1


# ----------------------------------------------------------------------------- bad input
BAD_LINES = [
    "{not json",                                       # malformed JSON
    "[1, 2]",                                          # not an object
    '"just a string"',
    '{"messages": "oops"}',                            # wrong-typed field
    '{"messages": [{"content": "no role"}]}',          # missing role
    '{"messages": [{"role": "user", "content": 5}]}',  # wrong-typed content
    '{"messages": [{"role": "user", "content": "   "}]}',  # whitespace-only message
    '{"messages": [{"role": "assistant", "content": "no user"}]}',
    '{"conversations": [{"from": "alien", "value": "x"}]}',  # unknown role
    '{"unrelated": 1}',                                # no known format
    '{"user": ""}',                                    # empty message
]


def test_every_kind_of_bad_line_is_skipped_counted_and_warned(tmp_path, caplog):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"user": "fine", "assistant": "ok"})
    with open(path, "wb") as f:
        f.write((good + "\n").encode())
        for line in BAD_LINES:
            f.write(line.encode() + b"\n")
        f.write(b'{"user": "caf\xe9 \xff"}\n')  # invalid UTF-8: replaced, not skipped
        f.write((good + "\n").encode())
    with caplog.at_level(logging.WARNING, logger="olm.data"):
        turns = read(str(path), limits=ReaderLimits(max_warnings=100))
    assert [t.user for t in turns] == ["fine", "caf\ufffd \ufffd", "fine"]
    assert [t.skipped for t in turns] == [0, len(BAD_LINES) + 1, len(BAD_LINES) + 1]
    assert [t.offset for t in turns] == [0, 1, 2]
    assert len(caplog.records) == len(BAD_LINES) + 1
    assert all(str(path) in r.getMessage() for r in caplog.records)


def test_repeated_warnings_are_rate_limited_but_all_counted(tmp_path, caplog):
    path = write_jsonl(tmp_path / "x.jsonl", ["{bad"] * 20 + [{"user": "u"}])
    with caplog.at_level(logging.WARNING, logger="olm.data"):
        turns = read(path, limits=ReaderLimits(max_warnings=3))
    assert turns[0].skipped == 20
    assert len(caplog.records) == 3 and "only counted" in caplog.records[-1].getMessage()


def test_megabyte_message_is_truncated_with_a_warning(tmp_path, caplog):
    big = "x" * 2**20
    path = write_jsonl(tmp_path / "big.jsonl", [{"user": big, "assistant": big}, {"user": "next"}])
    with caplog.at_level(logging.WARNING, logger="olm.data"):
        turns = read(path, max_message_chars=1000)
    assert len(turns[0].user) == len(turns[0].assistant) == 1000
    assert (turns[0].skipped, turns[0].truncated) == (0, 2)  # truncations are counted apart from skips
    assert turns[1].user == "next" and "truncated" in caplog.text


def test_line_over_the_record_limit_is_skipped_without_crashing(tmp_path):
    path = write_jsonl(tmp_path / "long.jsonl", [{"user": "y" * 5000}, {"user": "short"}])
    turns = read(path, limits=ReaderLimits(max_record_bytes=1000))
    assert exchanges(turns) == [("short", None)] and turns[0].skipped == 1


def test_malformed_json_array_element_resyncs_to_the_next_record(tmp_path):
    path = tmp_path / "dump.json"
    path.write_text('[\n {"user": "a"},\n {"user": tru},\n {"user": "b"}, 42,\n {"user": "c"}\n]', encoding="utf-8")
    turns = read(str(path), limits=ReaderLimits(chunk_bytes=4))
    assert [t.user for t in turns] == ["a", "b", "c"]
    assert turns[-1].skipped == 2  # the broken element and the number


def test_truncated_json_array_yields_what_is_complete(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('[{"user": "a"}, {"user": "b"}, {"user": "unfinish', encoding="utf-8")
    assert [t.user for t in read(str(path))] == ["a", "b"]


# ----------------------------------------------------------------------------- sources
def test_directory_sorted_recursive_with_binary_and_non_log_files(tmp_path, caplog):
    logs = tmp_path / "logs"
    (logs / "sub").mkdir(parents=True)
    (logs / ".hidden").mkdir()
    write_jsonl(logs / "b.jsonl", [{"user": "b"}])
    write_jsonl(logs / "a.jsonl", [{"user": "a"}])
    write_jsonl(logs / "sub" / "c.jsonl", [{"user": "c"}])
    write_jsonl(logs / ".hidden" / "h.jsonl", [{"user": "hidden"}])
    (logs / "blob.jsonl").write_bytes(bytes(range(256)) * 4)
    (logs / "README.md").write_text("not a log")
    with caplog.at_level(logging.WARNING, logger="olm.data"):
        turns = read(str(logs))
    assert [t.user for t in turns] == ["a", "b", "c"]
    assert turns[-1].skipped == 2
    assert "binary" in caplog.text and "README.md" in caplog.text


def test_glob_pattern_and_missing_sources(tmp_path):
    write_jsonl(tmp_path / "2.jsonl", [{"user": "two"}])
    write_jsonl(tmp_path / "1.jsonl", [{"user": "one"}])
    write_jsonl(tmp_path / "1.other", [{"user": "not matched"}])
    assert [t.user for t in read(str(tmp_path / "*.jsonl"))] == ["one", "two"]
    with pytest.raises(FileNotFoundError, match="no file matches"):
        ChatTurnStream(str(tmp_path / "*.none"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ChatTurnStream(str(tmp_path / "missing.jsonl"))


def test_stdin_auto_reads_records_and_plain_text(monkeypatch):
    lines = ['hello there', '{"user": "from json", "assistant": "r"}', '', '42', '{"messages": 3}', 'bye']
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    turns = read("-")
    assert exchanges(turns) == [("hello there", None), ("from json", "r"), ("42", None), ("bye", None)]
    assert turns[-1].skipped == 1 and all(t.source == "-" for t in turns)


def test_stdin_binary_buffer_with_invalid_utf8_and_start_offset(monkeypatch):
    raw = io.TextIOWrapper(io.BytesIO(b"caf\xe9\nsecond\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", raw)
    turns = read("-", format="text", start_offset=5)
    # stdin cannot be replayed: nothing is skipped on resume, turns are numbered on from start_offset
    assert [(t.user, t.offset, t.skipped) for t in turns] == [("caf\ufffd", 5, 1), ("second", 6, 1)]


def test_follow_mode_waits_for_appended_and_partial_lines(tmp_path):
    path = tmp_path / "live.jsonl"
    path.write_text(json.dumps({"user": "early"}) + "\n", encoding="utf-8")

    def writer() -> None:
        with open(path, "a", encoding="utf-8") as f:
            for piece in ['{"user": "hal', 'f line"}\n', json.dumps({"user": "late"}) + "\n"]:
                time.sleep(0.15)
                f.write(piece)
                f.flush()

    thread = threading.Thread(target=writer)
    thread.start()
    start = time.monotonic()
    turns = read(str(path), follow=True, poll_interval=0.02, idle_timeout=0.6)
    thread.join()
    assert [t.user for t in turns] == ["early", "half line", "late"] and turns[-1].skipped == 0
    assert 0.45 + 0.6 <= time.monotonic() - start < 5


def test_follow_mode_waits_for_the_file_to_appear(tmp_path):
    path = tmp_path / "later.jsonl"
    timer = threading.Timer(0.1, lambda: write_jsonl(path, [{"user": "appeared"}]))
    timer.start()
    turns = read(str(path), follow=True, poll_interval=0.02, idle_timeout=0.4)
    timer.join()
    assert [t.user for t in turns] == ["appeared"]


# ----------------------------------------------------------------------------- settings
def test_invalid_settings_are_all_reported_at_once(tmp_path):
    with pytest.raises(ValueError) as err:
        StreamConfig(source="-", format="yaml", history_turns=-1, max_message_chars=0, poll_interval=0,
                     idle_timeout=-1, num_workers=2)
    for name in ("format", "history_turns", "max_message_chars", "poll_interval", "idle_timeout", "num_workers"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="follow needs a single file"):
        ChatStreamDataModule(str(tmp_path), follow=True)
    with pytest.raises(ValueError, match="num_workers must be 0"):
        ChatStreamDataModule(str(tmp_path / "f.jsonl"), follow=True, num_workers=1)
    with pytest.raises(ValueError, match="max_warnings"):
        ReaderLimits(max_warnings=0)
    with pytest.raises(ValueError, match="start_offset"):
        ChatTurnStream("-", start_offset=-1)


# ----------------------------------------------------------------------------- data module, workers, resume
def numbered_log(tmp_path: Path, n: int = 10) -> str:
    return write_jsonl(tmp_path / "n.jsonl", [{"user": f"u{i}", "assistant": f"a{i}"} for i in range(n)])


def test_dataloader_yields_uncollated_turns_in_order(tmp_path):
    dm = ChatStreamDataModule(numbered_log(tmp_path), history_turns=1)
    turns = list(dm.train_dataloader())
    assert all(isinstance(t, Turn) and isinstance(t.history, tuple) for t in turns)
    assert [t.user for t in turns] == [f"u{i}" for i in range(10)]


@pytest.mark.parametrize("start", [0, 3])
def test_worker_sharding_keeps_exact_order_and_offsets(tmp_path, start):
    dm = ChatStreamDataModule(numbered_log(tmp_path, 11), num_workers=2)
    dm.next_offset = start
    turns = list(dm.train_dataloader())
    assert [t.offset for t in turns] == list(range(start, 11))
    assert [t.user for t in turns] == [f"u{i}" for i in range(start, 11)]


def test_state_round_trip_resumes_at_the_first_untrained_turn(tmp_path):
    source = numbered_log(tmp_path)
    dm = ChatStreamDataModule(source)
    first = []
    for turn in dm.train_dataloader():
        if len(first) == 4:
            break  # read ahead but never trained: must come again after the resume
        first.append(turn)
        dm.mark_trained(turn)
    torch.save(dm.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)  # plain types only
    assert state["next_offset"] == 4 and state["source"] == source
    resumed = ChatStreamDataModule(source)
    resumed.load_state_dict(state)
    rest = list(resumed.train_dataloader())
    assert [t.offset for t in first + rest] == list(range(10))


def test_state_for_another_source_restarts_and_bad_state_raises(tmp_path, caplog):
    dm = ChatStreamDataModule(numbered_log(tmp_path))
    with caplog.at_level(logging.WARNING, logger="olm.data"):
        dm.load_state_dict({"source": "elsewhere.jsonl", "next_offset": 7})
    assert dm.next_offset == 0 and "elsewhere" in caplog.text
    dm.load_state_dict({"source": os.path.relpath(dm.source), "next_offset": 7})  # same file, other spelling
    assert dm.next_offset == 7
    with pytest.raises(ValueError, match="next_offset"):
        dm.load_state_dict({"source": dm.source, "next_offset": "7"})


class TurnRecorder(L.LightningModule):
    """Trains nothing: records the turns it is given and marks them trained, one optimizer step each."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[int] = []

    def training_step(self, dataloader_iter):
        turn, _, _ = next(dataloader_iter)
        self.seen.append(turn.offset)
        opt = self.optimizers()
        self.manual_backward((self.weight * 0).sum())
        opt.step()
        opt.zero_grad()
        self.trainer.datamodule.mark_trained(turn)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's notes on dataloader_iter and callbacks
def test_lightning_checkpoint_resumes_the_stream(tmp_path):
    """A checkpoint written mid-stream (after 4 trained turns) resumes at turn 4: none twice, none skipped."""
    source = numbered_log(tmp_path, 9)
    kwargs = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                  max_epochs=1)
    every4 = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    first = TurnRecorder()
    L.Trainer(max_steps=6, callbacks=[every4], **kwargs).fit(first, datamodule=ChatStreamDataModule(source))
    (ckpt,) = (tmp_path / "ckpt").iterdir()
    assert torch.load(ckpt, weights_only=True)["ChatStreamDataModule"]["next_offset"] == 4
    second = TurnRecorder()
    L.Trainer(enable_checkpointing=False, **kwargs).fit(second, datamodule=ChatStreamDataModule(source), ckpt_path=ckpt)
    assert first.seen == [0, 1, 2, 3, 4, 5] and second.seen == [4, 5, 6, 7, 8]


# ----------------------------------------------------------------------------- real public logs
DATA = Path(__file__).resolve().parent / "data"  # excerpts of real public logs; sources and licences: SOURCES.md
EXCERPT_COUNTS = {  # (turns = user messages, conversations)
    "glaive_toolcall_excerpt.json": (23, 8),
    "sharegpt_vicuna_excerpt.json": (5, 2),
    "dailydialog_excerpt.txt": (86, 20),
    "taubench_airline_excerpt.jsonl": (16, 4),
}
REAL_LOGS = Path(os.environ.get("OLM_REAL_LOGS", Path(__file__).resolve().parents[2] / "shared" / "reallogs"))
REAL_COUNTS = {  # the full files, from their SOURCES.md: turns = user messages (DailyDialog: ceil(utterances / 2))
    "sharegpt_glaive_toolcall_en_demo.json": (746, 300),
    "sharegpt_vicuna_original_example.json": (14, 5),
    "dailydialog_test_dialogues.txt": (4040, 1000),
    "taubench_airline_fewshot_transcripts.jsonl": (136, 19),
}


def speech(turn: Turn) -> str:
    """The reply without its context spans (tool steps): what is trained as assistant speech."""
    text, end = "", 0
    for a, b in turn.context_spans:
        text, end = text + turn.assistant[end:a], b
    return text + (turn.assistant or "")[end:]


def check_counts(path: Path, n_turns: int, n_conversations: int) -> None:
    turns = read(str(path), history_turns=2)
    assert len(turns) == n_turns
    assert len({t.conversation_id for t in turns}) == n_conversations
    assert [t.offset for t in turns] == list(range(n_turns))
    assert turns[-1].skipped == turns[-1].truncated == 0 and all(t.user and t.user == t.user.strip() for t in turns)


@pytest.mark.parametrize("name", sorted(EXCERPT_COUNTS))
def test_real_log_excerpts_yield_their_turn_counts(name):
    check_counts(DATA / name, *EXCERPT_COUNTS[name])


def test_real_dailydialog_odd_dialogues_end_without_reply():
    path = DATA / "dailydialog_excerpt.txt"
    odd = sum(line.count("__eou__") % 2 for line in path.read_text(encoding="utf-8").splitlines())
    turns = read(str(path))
    assert sum(t.assistant is None for t in turns) == odd == 7
    assert turns[0].user == "Hey man , you wanna buy some weed ?"


def test_real_glaive_tool_steps_are_context_never_speech():
    path = DATA / "glaive_toolcall_excerpt.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    steps = [m["value"] for r in raw for m in r["conversations"] if m["from"] in ("function_call", "observation")]
    said = [m["value"] for r in raw for m in r["conversations"] if m["from"] == "gpt"]
    turns = read(str(path))
    spans = [t.assistant[a:b] for t in turns for a, b in t.context_spans]
    assert len(spans) == len(steps) == 12 and all(any(v in s for s in spans) for v in steps)
    assert all(any(v in speech(t) for t in turns) for v in said)
    assert not any(v in speech(t) for t in turns for v in steps)  # no tool JSON is trained as speech
    dropped = read(str(path), tools="drop")
    assert [t.assistant for t in dropped] == [speech(t).strip("\n") or None for t in turns]


def test_real_taubench_as_messages_records_gives_the_same_turns(tmp_path):
    source = DATA / "taubench_airline_excerpt.jsonl"
    records = []
    for line in source.read_text(encoding="utf-8").splitlines():
        traj = transcript_messages(json.loads(line)["messages_display"])
        records.append({"messages": [{"role": r, "content": c} for r, c in traj]})
    mine, theirs = read(write_jsonl(tmp_path / "tau_messages.jsonl", records)), read(str(source))
    assert exchanges(mine) == exchanges(theirs)
    assert [t.context_spans for t in mine] == [t.context_spans for t in theirs] and any(t.context_spans for t in mine)


def test_real_log_excerpts_directory_reads_everything_and_skips_sources_md(caplog):
    with caplog.at_level(logging.WARNING, logger="olm.data"):
        turns = read(str(DATA))
    assert len(turns) == sum(n for n, _ in EXCERPT_COUNTS.values())
    assert turns[-1].skipped == 1 and "SOURCES.md" in caplog.text


@pytest.mark.skipif(not REAL_LOGS.is_dir(), reason=f"full real logs absent ({REAL_LOGS}; set OLM_REAL_LOGS)")
@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_full_real_logs_yield_the_documented_turn_counts(name):
    check_counts(REAL_LOGS / name, *REAL_COUNTS[name])
