"""The fact-acquisition benchmark runs end to end on a tiny model and writes what it promises."""

import json

import pytest

import math

import torch

from olm.bench.facts import (
    KEYS, Reference, aggregate, binding_errors, flips, held_out_phrasings, main, round_ends, with_gk_kept,
)
from olm.world.generator import make_world
from olm.world.schedule import teaching_schedule


def test_round_ends_are_where_every_fact_has_k_statements():
    schedule = teaching_schedule(make_world(0), n_facts=3, reps=2, distractors=4, seed=1)
    ends = round_ends(schedule)
    for k, end in ends.items():
        stated = [r for r in schedule.repetition_of_turn[:end] if r]
        assert stated.count(k) == 3 and k + 1 not in stated
        assert schedule.repetition_of_turn[end - 1] == k  # the round's last statement is the last turn before the probe


def test_facts_bench_writes_results_table_and_plot(tmp_path, tiny_model_dir):
    out = tmp_path / "bench"
    argv = ["--out", str(out), "--model", tiny_model_dir, "--facts", "2", "--reps", "2", "--unrelated", "3",
            "--seeds", "0", "1", "--rows", "tuned", "update", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"tuned", "update"}
    assert 0.0 <= results["update"]["update"]["mean"] <= 1.0 and results["tuned"]["update"]["mean"] is None
    for row in results.values():
        assert set(row) == {*KEYS, "held_out_phrasings", "binding_errors"}
        assert row["binding_errors"]["generalization"]["asked"] == 2 * 2 * 3  # the same probes as the phrasings
        assert row["binding_errors"]["recall"]["asked"] == row["binding_errors"]["retention"]["asked"] == 2 * 2
        asked = row["held_out_phrasings"]  # per phrasing: 2 facts × 2 seeds, each fact asked its kind's phrasings
        assert asked and all("{subject}" in r["question"] and 0 <= r["recalled"] <= r["asked"] for r in asked)
        assert sum(r["asked"] for r in asked) == 2 * 2 * 3
        assert len(row["recall_at_k"]) == 2
        for rate in [*row["recall_at_k"], row["generalization"], row["retention"], row["base_control"],
                     row["locality"]["token_agreement"], row["locality"]["teacher_forced"],
                     row["locality_after"]["teacher_forced"], row["locality"]["gk_base"], row["locality_after"]["gk_adapted"],
                     row["locality"]["teacher_forced_train"], row["locality"]["near_tie_positions"],
                     *row["object_p_at_k"], row["base_object_p"]]:  # fmt: skip
            assert 0.0 <= rate["mean"] <= 1.0 and rate["n"] == 2
        assert 0.0 < row["base_object_p"]["mean"] < 1.0  # a probability, not a placeholder
    assert (out / "recall.png").stat().st_size > 0 and "| tuned |" in (out / "results.md").read_text()
    assert "Generalization by held-out phrasing, row `update`" in (out / "results.md").read_text()
    assert "| update | retention | 4 |" in (out / "results.md").read_text()
    stored = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert all(0.0 < p < 1.0 for fact in stored["metrics"]["facts"] for p in fact["object_p"])


def test_object_p_of_runs_stored_before_it():
    from olm.bench.facts import markdown
    rate = {"mean": 0.5, "std": 0.0, "n": 1}
    old = {"recall_at_k": [0.5], "generalization": 0.5, "retention": 0.5, "forgetting": 0.0, "reps_to_recall": 1.0,
           "locality": {"teacher_forced": 1.0}, "locality_after": {"teacher_forced": 1.0}, "base_control": 0.0,
           "update": None, "fact_turn_ratio": 2.0, "routed": None}  # fmt: skip
    agg = aggregate([old])  # a run stored before the figure: missing, not a KeyError
    assert agg["object_p_at_k"]["mean"] is None and agg["base_object_p"]["mean"] is None
    new = {**old, "object_p_at_k": [0.25], "base_object_p": 0.01}
    both = aggregate([old, new])
    assert both["object_p_at_k"][0]["mean"] == 0.25 and both["object_p_at_k"][0]["n"] == 1
    loc = {k: rate for k in ("teacher_forced", "gk_adapted", "gk_base", "token_agreement", "anchor_kl", "ppl_ratio")}
    rows = {"a": agg, "b": both}
    table = markdown({k: {**v, "locality": loc, "locality_after": loc} for k, v in rows.items()}, 1)
    assert "| – |" in table.splitlines()[2] and "0.25 (0.01)" in table.splitlines()[3]


def test_set_overrides_reach_the_cli_of_every_row(tmp_path, tiny_model_dir):
    argv = ["--out", str(tmp_path), "--model", tiny_model_dir, "--facts", "1", "--reps", "1", "--unrelated", "0",
            "--seeds", "0", "--rows", "tuned", "--set=--model.optim.lr=-1", "--set=--model.lora.r=0"]  # fmt: skip
    with pytest.raises(SystemExit) as err:  # the CLI's whole-config validation names both
        main(argv)
    assert "optim.lr" in str(err.value) and "lora.r" in str(err.value)


def test_runs_are_stored_per_seed_and_reused_only_when_settings_match(tmp_path, tiny_model_dir, monkeypatch):
    import olm.bench.facts as facts

    base = ["--out", str(tmp_path), "--model", tiny_model_dir, "--facts", "1", "--reps", "1", "--unrelated", "0",
            "--rows", "tuned", "--threads", "1"]  # fmt: skip
    assert main([*base, "--seeds", "0"]) == 0
    stored = json.loads((tmp_path / "runs" / "tuned-seed0.json").read_text())
    assert stored["settings"]["seed"] == 0 and set(stored["metrics"]) == {*KEYS, "facts", "gk"}
    (fact,) = stored["metrics"]["facts"]  # per fact: what was asked and answered, for diagnosis
    assert fact["recalled"] == [stored["metrics"]["recall_at_k"][0] == 1.0]
    assert len(fact["answers"]) == 1 and isinstance(fact["answer_after"], str) and fact["answer_after"]
    assert fact["generalization"] and all(g["question"] and isinstance(g["answer"], str) for g in fact["generalization"])
    gk = stored["metrics"]["gk"]  # per general-knowledge question: the base's and the adapted model's answers
    assert len(gk) == 52 and all(q["base"] and q["adapted"] and q["adapted_after"] for q in gk)
    teach = stored["metrics"]["locality"]
    assert sum(q["correct"][0] for q in gk) / 52 == teach["gk_base"] and sum(q["correct"][1] for q in gk) / 52 == teach["gk_adapted"]
    calls = []
    real = facts.run_once
    monkeypatch.setattr(facts, "run_once", lambda args, row, seed, workdir: calls.append(seed) or real(args, row, seed, workdir))
    assert main([*base, "--seeds", "0", "1"]) == 0  # seed 0 reused, seed 1 run: one aggregate of both
    assert calls == [1]
    assert json.loads((tmp_path / "results.json").read_text())["tuned"]["generalization"]["n"] == 2
    assert main([*base, "--seeds", "0", "--set=--model.optim.lr=1e-4"]) == 0  # other settings: run again
    assert main([*base, "--seeds", "1", "--fresh"]) == 0
    assert calls == [1, 0, 1]


def test_held_out_phrasings_pool_the_seeds_per_template_worst_first():
    def fact(subject, kind, obj, answers):
        qs = [f"What belongs to {subject}?", f"Remind me, what does {subject} have?"]
        return {"subject": subject, "kind": kind, "object": obj,
                "generalization": [{"question": q, "answer": a} for q, a in zip(qs, answers)]}  # fmt: skip

    seed0 = {"facts": [fact("Zara", "has", "red drum", ["Zara is your sister.", "Zara has a red drum."])]}
    seed1 = {"facts": [fact("Tom", "has", "blue boat", ["A blue boat!", "Tom has a boat."])]}
    rows = held_out_phrasings([seed0, seed1, {"facts": None}])  # a run without per-fact records adds nothing
    assert len(rows) == 2 and all(r["kind"] == "has" and r["asked"] == 2 for r in rows)
    by_q = {r["question"]: r for r in rows}
    assert by_q["What belongs to {subject}?"]["recalled"] == 1  # "A blue boat!" holds the object; "your sister" not
    assert by_q["Remind me, what does {subject} have?"]["recalled"] == 1  # "a boat" lacks "blue": not recalled
    worse = held_out_phrasings([{"facts": [fact("Zara", "has", "red drum", ["no", "Zara has a red drum."])]}])
    assert [r["recalled"] for r in worse] == [0, 1]  # worst first


def test_binding_errors_count_wrong_answers_that_hold_another_taught_fact_object():
    def fact(subject, obj, last, after, held):
        return {"subject": subject, "object": obj, "answers": ["-", last], "answer_after": after,
                "generalization": [{"question": "q", "answer": a} for a in held]}  # fmt: skip

    run = {"facts": [
        fact("Ana", "red bike", "Ana has a red bike.", "Ana has a blue car.", ["Ana is your aunt.", "Ana has a Blue Car!"]),
        fact("Ben", "blue car", "Ben has a red bike and more.", "Ben has a blue car.", ["Ben has a car."]),
    ]}  # fmt: skip
    errors = binding_errors([run, {"facts": None}])  # a run without per-fact records adds nothing
    assert errors["recall"] == {"asked": 2, "wrong": 1, "other_fact": 1}  # Ben → Ana's bike
    assert errors["retention"] == {"asked": 2, "wrong": 1, "other_fact": 1}  # Ana → Ben's car
    assert errors["generalization"] == {"asked": 3, "wrong": 3, "other_fact": 1}  # a frame, a binding, a partial
    same = {"facts": [fact("Ana", "kite", "Ana has a kite.", "-", []), fact("Ben", "Kite", "-", "Ben has a kite.", [])]}
    assert binding_errors([same])["recall"]["other_fact"] == 0  # two facts with one object: not another's
    updated = {"facts": [dict(fact("Ana", "red bike", "-", "Ana has a green kite.", []), object_after="green kite"),
                         dict(fact("Ben", "blue car", "-", "Ben has a green kite.", []), object_after="gold ring")]}
    assert binding_errors([updated])["retention"] == {"asked": 2, "wrong": 1, "other_fact": 1}  # new objects judged


def test_flips_say_where_the_adapter_changed_the_base_top1():
    ref = Reference(ids=torch.zeros(1, 4), attention=torch.ones(1, 4), positions=torch.ones(1, 4, dtype=torch.bool),
                    base_top1=torch.tensor([1, 2, 3, 4]), base_replies=[""], gk=[], gk_base=[], gk_answers=[],
                    base_margin=torch.tensor([0.1, 2.0, 0.3, 5.0]))  # fmt: skip
    out = flips(torch.tensor([1, 9, 9, 4]), ref)  # positions 1 (margin 2.0) and 2 (margin 0.3) flipped
    assert out["teacher_forced"] == 0.5 and out["near_tie_flips"] == 0.5 and out["near_tie_positions"] == 0.5
    assert math.isclose(out["flip_margin"], 0.3, rel_tol=1e-6)  # the lower median of (0.3, 2.0)
    same = flips(ref.base_top1.clone(), ref)
    assert same["teacher_forced"] == 1.0 and math.isnan(same["flip_margin"]) and math.isnan(same["near_tie_flips"])


def test_aggregate_counts_a_metric_only_in_the_runs_that_have_it():
    old = {k: None for k in KEYS} | {"locality": {"teacher_forced": 0.8}, "fact_turn_ratio": math.nan}
    new = {k: None for k in KEYS} | {"locality": {"teacher_forced": 0.9, "teacher_forced_train": 0.95},
                                     "fact_turn_ratio": 4.0}  # fmt: skip
    out = aggregate([old, new])
    assert out["locality"]["teacher_forced"]["n"] == 2 and math.isclose(out["locality"]["teacher_forced"]["mean"], 0.85)
    assert out["locality"]["teacher_forced_train"] == {"mean": 0.95, "std": 0.0, "n": 1}
    assert out["fact_turn_ratio"]["n"] == 1 and out["update"]["n"] == 0  # NaN and None are missing, not averaged


def test_gk_kept_counts_only_questions_the_base_answers_and_ignores_gains():
    def run(records):
        return {k: None for k in KEYS} | {"locality": {"gk_adapted": 0.5}, "locality_after": {"gk_adapted": 0.5},
                                          "gk": [{"correct": c} for c in records]}  # fmt: skip

    # base right on 4: the adapted model loses 1 of them after teaching, 2 after the unrelated turns,
    # and gains the 2 questions the base got wrong (which must not count)
    records = [[True, True, True], [True, True, True], [True, True, False], [True, False, False],
               [False, True, True], [False, True, True]]  # fmt: skip
    out = aggregate([run(records), run([[False, True, True]])])  # a run whose base answers nothing: no measure
    assert out["locality"]["gk_kept"] == {"mean": 0.75, "std": 0.0, "n": 1}
    assert out["locality_after"]["gk_kept"] == {"mean": 0.5, "std": 0.0, "n": 1}
    assert out["locality"]["gk_adapted"]["n"] == 2


def test_gk_whole_answers_extend_the_probe_answers_and_are_judged_alike(tmp_path, tiny_model_dir):
    argv = ["--out", str(tmp_path), "--model", tiny_model_dir, "--facts", "1", "--reps", "1", "--unrelated", "1",
            "--seeds", "0", "--rows", "tuned", "--threads", "1", "--probe-tokens", "3", "--gk-long-tokens", "9"]  # fmt: skip
    assert main(argv) == 0
    stored = json.loads((tmp_path / "runs" / "tuned-seed0.json").read_text())
    assert stored["settings"]["gk_long_tokens"] == 9
    records = stored["metrics"]["gk"]
    assert records and all(len(r["correct_long"]) == 3 for r in records)
    for r in records:  # greedy: the whole answer goes on from where the probe's stopped (up to a cut character)
        for short, long in ((r["base"], r["base_long"]), (r["adapted"], r["adapted_long"]),
                            (r["adapted_after"], r["adapted_after_long"])):  # fmt: skip
            assert long.startswith(short.split("\ufffd")[0]) and len(long) >= len(short.split("\ufffd")[0])
    with pytest.raises(SystemExit):
        main([*argv[:-1], "-1"])


def test_gk_kept_long_is_computed_from_the_whole_answers_only_when_a_run_has_them():
    gk = [{"correct": [True, False, False], "correct_long": [True, True, False]},
          {"correct": [True, True, True], "correct_long": [True, True, True]},
          {"correct": [False, False, False], "correct_long": [True, False, True]}]  # fmt: skip
    run = {k: None for k in KEYS} | {"locality": {}, "locality_after": {}, "gk": gk}
    out = with_gk_kept(run)
    assert out["locality"]["gk_kept"] == 0.5 and out["locality_after"]["gk_kept"] == 0.5
    # held by the base's *whole* answers: all three (the third is right only when not cut)
    assert out["locality"]["gk_kept_long"] == pytest.approx(2 / 3) and out["locality_after"]["gk_kept_long"] == pytest.approx(2 / 3)
    plain = with_gk_kept({**run, "gk": [{"correct": c["correct"]} for c in gk]})
    assert "gk_kept_long" not in plain["locality"] and plain["locality"]["gk_kept"] == 0.5
