"""python -m olm.evaluate on adapters of the committed olm-tiny: an untouched adapter agrees with
the base everywhere, a taught one does not; probe files and the adapter's own memory as probes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import olm
from olm.evaluate import evaluate, load_probes, main

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
PROMPTS = ["Hi! What's new with you?", "What is 6 times 7?", "Tell me about your weekend."]


def test_evaluate_untouched_and_taught_adapters(tmp_path, capsys):
    lm = olm.open(config=TINY, optim={"lr": 3e-3})
    untouched = lm.save(tmp_path / "untouched")
    lm.learn([("Xiomara is my sister.", "Got it. Xiomara is your sister.")] * 3)
    taught = lm.save(tmp_path / "taught")
    probes = tmp_path / "probes.jsonl"
    probes.write_text('{"question": "Who is Xiomara?", "answer": "sister"}\n\n'
                      '{"question": "Who is Zara?", "answers": ["sister", "friend"]}\n', encoding="utf-8")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    out = tmp_path / "eval" / "untouched.json"
    assert main(["--adapter", str(untouched), "--probes", str(probes), "--prompts", str(tmp_path / "prompts.txt"),
                 "--out", str(out), "--max-new-tokens", "12"]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["probes"] == 2 and result["locality"]["teacher_forced"] == 1.0  # LoRA B = 0: the base itself
    assert all(r["adapted_answer"] == r["base_answer"] for r in result["rows"])
    assert result["recall_adapted"] == result["recall_base"] and out.with_suffix(".md").is_file()
    assert "recall from the weights" in capsys.readouterr().out
    moved = evaluate(taught, None, prompts=PROMPTS, max_new_tokens=12)  # probes: the adapter's memory.json
    assert [r["question"] for r in moved["rows"]] == ["Who is Xiomara?"] and moved["rows"][0]["statements"] == 3
    assert moved["locality"]["teacher_forced"] < 1.0  # the taught adapter changed some next-token choices
    assert moved["base_model"] == result["base_model"]
    routed = evaluate(taught, None, prompts=PROMPTS, max_new_tokens=12, routing=True)  # olm.routing
    assert routed["routing"] is True and moved["routing"] is False
    for r, m in zip(routed["rows"], moved["rows"]):  # each answer is the adapter's or the base's, whole
        assert r["adapted_answer"] in (m["adapted_answer"], m["base_answer"])


def test_bad_inputs_fail_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Who?", "answer": "x"}\n{"question": "no answer"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=f"{bad}:2: expected"):
        load_probes(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["--adapter", str(tmp_path / "empty")])
    assert exit_info.value.code == 2 and "not an adapter directory" in capsys.readouterr().err
