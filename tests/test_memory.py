"""FactMemory: repeats and updates, importance modes, eviction policies, decay, replay order, state."""

import json
import logging

import pytest
import torch

from olm.facts import FactDetector, FactInfo
from olm.memory import FactMemory, MemoryConfig, StoredFact, importance_score


def fact(subject: str, obj: str = "sister", relation: str = "relation") -> FactInfo:
    return FactInfo(subject, relation, obj, (subject,), 0.9, (0, len(subject)), "x_is_my_y")


def memory(**kwargs) -> FactMemory:
    return FactMemory(MemoryConfig(**kwargs))


def test_repeat_raises_count_and_keeps_one_entry():
    mem = memory()
    assert mem.count(fact("Zara")) == 0
    first = mem.store(fact("Zara"), "Zara is my sister.", "Got it. Zara is your sister.", turn=0)
    assert mem.count(fact("Zara")) == 1
    again = mem.store(fact("zara"), "Zara is my sister!", "Noted.", turn=4)  # subject case-insensitive
    assert again is first and len(mem) == 1
    assert (again.count, again.first_turn, again.last_turn) == (2, 0, 4)
    assert (again.text, again.reply) == ("Zara is my sister!", "Noted.")  # the latest statement
    assert again.question == "Who is Zara?"
    assert mem.get("ZARA", "relation") is again and mem.get("Zara", "lives_in") is None


def test_changed_object_is_an_update_that_replaces(caplog):
    mem = memory()
    mem.store(fact("Zara", "sister"), "Zara is my sister.", "ok", turn=0)
    mem.store(fact("Zara", "sister"), "Zara is my sister.", "ok", turn=1)
    with caplog.at_level(logging.INFO, logger="olm.memory"):
        new = mem.store(fact("Zara", "friend"), "Zara is my friend.", "ok", turn=5)
    assert "update" in caplog.text and "'sister' -> 'friend'" in caplog.text
    assert len(mem) == 1 and mem.get("Zara", "relation").object == "friend"
    assert (new.count, new.first_turn) == (1, 5)
    assert mem.count(fact("Zara", "sister")) == 0  # the old object is gone


def test_a_dislike_drops_the_like_of_the_same_object_and_back(caplog):
    """"I hate jazz." after "I love jazz." and "I like chess.": the like of jazz is no longer true (dropped), chess
    stays; liking jazz again drops the dislike."""
    detect, mem = FactDetector().detect, memory()
    for turn, text in enumerate(["I love jazz.", "I like chess."]):
        mem.store(detect(text), text, "ok", turn)
    with caplog.at_level(logging.INFO, logger="olm.memory"):
        mem.store(detect("I hate jazz."), "I hate jazz.", "ok", 2)
    assert "dropped" in caplog.text
    assert sorted(f.key_slot for f in mem) == ["dislikes=jazz", "likes=chess"]
    mem.store(detect("I love Jazz."), "I love Jazz.", "ok", 3)  # the object compared casefolded
    assert sorted(f.key_slot for f in mem) == ["likes=chess", "likes=jazz"]


def test_a_single_valued_dislike_drops_only_the_like_of_the_same_object():
    """Third-person likes hold one object: "Tom hates chess." leaves "Tom likes jazz." alone, "Tom hates jazz."
    drops it."""
    detect, mem = FactDetector().detect, memory()
    mem.store(detect("Tom likes jazz."), "Tom likes jazz.", "ok", 0)
    mem.store(detect("Tom hates chess."), "Tom hates chess.", "ok", 1)
    assert sorted((f.key_slot, f.object) for f in mem) == [("dislikes", "chess"), ("likes", "jazz")]
    mem.store(detect("Tom hates jazz."), "Tom hates jazz.", "ok", 2)  # replaces the dislike of chess, drops the like
    assert [(f.key_slot, f.object) for f in mem] == [("dislikes", "jazz")]


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("repetition", [0.2, 0.2, 0.4]),  # count / saturation(5), age ignored
        ("recency", [1.0, 0.5, 0.5]),  # 0.5 ** (age / half_life(10))
        ("hybrid", [0.6, 0.35, 0.45]),  # mean of the two (weights 0.5 / 0.5)
    ],
)
def test_importance_modes(mode, expected):
    config = MemoryConfig(importance=mode, repetition_saturation=5, recency_half_life=10, decay_after=100)
    got = [importance_score(config, 1, 0), importance_score(config, 1, 10), importance_score(config, 2, 10)]
    assert got == pytest.approx(expected)


def test_importance_is_bounded_and_weights_apply():
    config = MemoryConfig(importance="hybrid", repetition_weight=3.0, recency_weight=1.0, repetition_saturation=2)
    assert importance_score(config, 1, 0) == pytest.approx((3 * 0.5 + 1 * 1.0) / 4)
    assert importance_score(config, 100, 0) == 1.0 and importance_score(config, 100, -5) == 1.0


def test_importance_of_previews_the_stored_importance():
    mem = memory(importance="repetition", repetition_saturation=4)
    assert mem.importance_of(fact("Zara"), 0) == pytest.approx(0.25)
    stored = mem.store(fact("Zara"), "t", "r", 0)
    assert stored.importance == pytest.approx(0.25)
    assert mem.importance_of(fact("Zara"), 3) == pytest.approx(0.5)
    assert mem.importance_of(fact("Zara", "friend"), 3) == pytest.approx(0.25)  # an update starts over


def _fill(mem: FactMemory, names: str) -> None:
    for turn, name in enumerate(names):
        mem.store(fact(name), "t", "r", turn)


def _subjects(mem: FactMemory) -> list[str]:
    return [f.subject for f in mem]


def test_fifo_evicts_the_oldest_insert():
    mem = memory(max_facts=3, eviction="fifo")
    _fill(mem, "ABC")
    mem.store(fact("A"), "t", "r", 3)  # a repeat does not move A
    mem.store(fact("D"), "t", "r", 4)
    assert _subjects(mem) == ["B", "C", "D"]


def test_lru_evicts_the_least_recently_accessed():
    mem = memory(max_facts=3, eviction="lru")
    _fill(mem, "ABC")
    mem.touch(mem.get("A", "relation"), 5)  # replayed: A is fresh, B is now least recent
    mem.store(fact("D"), "t", "r", 6)
    assert _subjects(mem) == ["A", "C", "D"]
    with pytest.raises(KeyError):
        mem.touch(StoredFact("Nobody", "relation", "x", "", "", [], "", 1, 0, 0, 0, 0.0, 0.5), 7)


def test_importance_evicts_the_least_important():
    mem = memory(max_facts=3, eviction="importance", importance="repetition")
    _fill(mem, "ABC")
    for turn in (3, 4):
        mem.store(fact("A"), "t", "r", turn)
        mem.store(fact("C"), "t", "r", turn)
    mem.store(fact("D"), "t", "r", 5)
    assert _subjects(mem) == ["A", "C", "D"]  # B was stated once


def test_hybrid_eviction_mixes_importance_and_access():
    mem = memory(
        max_facts=3, eviction="hybrid", importance="repetition", eviction_importance_weight=0.5, recency_half_life=2
    )
    _fill(mem, "ABC")
    mem.store(fact("A"), "t", "r", 3)  # A: more important; C: most recently accessed; B: neither
    mem.store(fact("D"), "t", "r", 4)
    assert _subjects(mem) == ["A", "C", "D"]
    only_access = memory(max_facts=2, eviction="hybrid", eviction_importance_weight=0.0)
    _fill(only_access, "AB")
    only_access.touch(only_access.get("A", "relation"), 9)
    only_access.store(fact("C"), "t", "r", 10)
    assert _subjects(only_access) == ["A", "C"]


def test_decay_removes_unseen_facts_below_threshold():
    mem = memory(importance="repetition", repetition_saturation=2, decay_after=10, decay_rate=0.5, min_importance=0.1)
    mem.store(fact("A"), "t", "r", 0)  # importance 0.5
    mem.store(fact("B"), "t", "r", 0)
    mem.store(fact("B"), "t", "r", 0)  # importance 1.0
    assert mem.decay(10) == [] and mem.get("A", "relation").importance == pytest.approx(0.5)
    assert mem.decay(12) == [] and mem.get("A", "relation").importance == pytest.approx(0.125)
    removed = mem.decay(13)  # A: 0.0625 < 0.1; B: 0.125
    assert [f.subject for f in removed] == ["A"] and _subjects(mem) == ["B"]
    assert [f.subject for f in mem.decay(14)] == ["B"] and len(mem) == 0


def test_decay_depends_on_the_turn_not_on_calls_and_restating_resets_it():
    config = dict(importance="repetition", decay_after=2, decay_rate=0.5, min_importance=0.0)
    every_turn, once = memory(**config), memory(**config)
    for mem in (every_turn, once):
        mem.store(fact("A"), "t", "r", 0)
    for turn in range(1, 8):
        every_turn.decay(turn)
    once.decay(7)
    assert every_turn.get("A", "relation").importance == pytest.approx(once.get("A", "relation").importance)
    once.store(fact("A"), "t", "r", 7)
    once.decay(8)
    assert once.get("A", "relation").importance == pytest.approx(0.4)  # count 2 / saturation 5, fresh


def test_replay_candidates_by_importance_with_stable_ties():
    mem = memory(importance="repetition", replay_limit=2, replay_order="importance")
    _fill(mem, "ABCD")
    for turn in (5, 6):
        mem.store(fact("C"), "t", "r", turn)
    mem.store(fact("D"), "t", "r", 7)
    assert [f.subject for f in mem.replay_candidates(8)] == ["C", "D"]
    assert [f.subject for f in mem.replay_candidates(8, limit=10)] == ["C", "D", "A", "B"]
    assert mem.replay_candidates(8, limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        mem.replay_candidates(8, limit=-1)


def test_spaced_replay_brings_round_stale_facts_and_replays_rotate():
    mem = memory(importance="repetition", replay_limit=2)  # spaced is the default order
    _fill(mem, "ABCD")
    for turn in (5, 6):
        mem.store(fact("C"), "t", "r", turn)  # C: count 3, just stated
    mem.store(fact("D"), "t", "r", 7)
    # importance order would pick C and D (stated most); spaced weighs in the time since last rehearsal
    first = mem.replay_candidates(8)
    assert [f.subject for f in first] == ["A", "B"]
    for f in first:
        mem.touch(f, 8)  # the replay rehearses them
    assert [f.subject for f in mem.replay_candidates(9)] == ["C", "D"]
    with pytest.raises(ValueError, match="replay_order"):
        memory(replay_order="random")


def _populated() -> FactMemory:
    mem = memory()
    mem.store(fact("Zoë"), "Zoë is my sister.", "Got it.", 0)
    mem.store(fact("Zoë"), "Zoë is my sister.", "Got it.", 2)
    mem.store(fact("Bob", "Oslo", "lives_in"), "Bob lives in Oslo.", "Noted.", 3)
    mem.touch(mem.get("Bob", "lives_in"), 9)
    return mem


def test_state_round_trip_through_torch_save_weights_only(tmp_path):
    mem = _populated()
    torch.save({"memory": mem.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["memory"]
    restored = FactMemory(mem.config)
    restored.load_state_dict(state)
    assert [vars(f) for f in restored] == [vars(f) for f in mem]
    assert restored.count(fact("Zoë")) == 2 and restored.get("Bob", "lives_in").last_access == 9


def test_load_rejects_bad_state_and_evicts_to_capacity():
    state = _populated().state_dict()
    with pytest.raises(ValueError, match="version"):
        FactMemory().load_state_dict({**state, "version": 99})
    with pytest.raises(ValueError, match="unknown fields"):
        FactMemory().load_state_dict({**state, "facts": [{**state["facts"][0], "colour": "red"}]})
    small = memory(max_facts=1, eviction="fifo")
    small.load_state_dict(state)
    assert _subjects(small) == ["Bob"]


def test_json_export(tmp_path):
    mem = _populated()
    path = tmp_path / "memory.json"
    mem.to_json(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert [f["subject"] for f in data["facts"]] == ["Zoë", "Bob"]
    assert "Zoë" in path.read_text(encoding="utf-8")  # written as UTF-8, not escaped
    again = FactMemory()
    again.load_json(path)
    assert [vars(f) for f in again] == [vars(f) for f in mem]


def test_carry_over_restarts_the_turn_clock_and_keeps_the_facts_ages(tmp_path):
    mem = _populated()
    path = tmp_path / "memory.json"
    mem.to_json(path)
    newest = max(max(f.last_turn, f.last_access) for f in mem)
    assert newest == 9  # Bob's recall at turn 9, after his statement at 3
    carried = FactMemory(mem.config)
    assert carried.carry_over(path) == len(mem) == 2
    for old, new in zip(mem, carried):
        assert (new.first_turn, new.last_turn, new.last_access) == (
            old.first_turn - newest, old.last_turn - newest, old.last_access - newest)  # fmt: skip
        assert (new.subject, new.object, new.count, new.question) == (old.subject, old.object, old.count, old.question)
    assert max(f.last_access for f in carried) == 0  # the new run's first turn comes after the newest event
    mem._refresh(newest + 5)
    carried._refresh(5)
    assert [f.importance for f in carried] == [f.importance for f in mem]  # the same ages, so the same importance
    for broken in ("{not json", '{"facts": 3}', '[1, 2]', '{"version": 99, "facts": []}'):
        path.write_text(broken, encoding="utf-8")
        with pytest.raises(ValueError, match="not a usable fact memory"):
            FactMemory().carry_over(path)
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match="not a usable fact memory"):
        FactMemory().carry_over(path)


def test_config_errors_are_collected():
    with pytest.raises(ValueError) as err:
        MemoryConfig(max_facts=0, eviction="random", importance="magic", decay_rate=2.0, recency_half_life=0)
    msg = str(err.value)
    for part in ("max_facts", "eviction", "importance", "decay_rate", "recency_half_life"):
        assert part in msg
