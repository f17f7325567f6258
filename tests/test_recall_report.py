"""RecallReport: base vs adapted answers to each remembered fact, asked in a fresh context."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from olm.callbacks.recall_report import RecallReport, RecallRow, format_report, markdown_report, recall_rows
from olm.facts import FactDetector
from olm.module import OnlineLM
from olm.probes import answer_before, object_scores


def test_report_asks_base_and_adapter_separately(tiny_model_dir, tmp_path, capsys):
    module = OnlineLM(base_model=tiny_model_dir)
    fact = FactDetector().detect("Zara is my sister.")
    module.memory.store(fact, "Zara is my sister.", "Got it.", 0)
    with torch.no_grad():  # an adapter far from the base: its answers differ from the base's
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 5)
    [row] = recall_rows(module, 10)
    assert row.question == fact.question() and row.expected == "sister" and row.statements == 1
    assert row.base_answer != row.adapted_answer
    trainer = SimpleNamespace(log_dir=str(tmp_path), default_root_dir=str(tmp_path))
    report = RecallReport()
    report.on_train_end(trainer, module)
    out = capsys.readouterr().out
    assert "Who is Zara?" in out and "base" in out and "adapted" in out and "recall: adapted" in out
    saved = json.loads((tmp_path / "recall_report.json").read_text())
    assert saved[0]["question"] == "Who is Zara?" and (tmp_path / "recall_report.md").is_file()


def test_report_shares_and_empty_memory():
    rows = [RecallRow("Q1", "a", "x", "a", False, True, 2), RecallRow("Q2", "b", "b", "y", True, False, 1)]
    text = format_report(rows)
    assert "adapted 1/2 = 0.50" in text and "base 1/2 = 0.50" in text
    assert "no fact was remembered" in format_report([])


def test_with_routing_each_row_says_whether_the_adapter_or_the_base_answered(tiny_model_dir, capsys):
    from olm.routing import RoutingSettings

    module = OnlineLM(base_model=tiny_model_dir, routing=RoutingSettings(enabled=True, calibration=2, margin=1e6))
    fact = FactDetector().detect("Zara is my sister.")
    module.memory.store(fact, "Zara is my sister.", "Got it.", 0)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 5)
    [row] = recall_rows(module, 10)  # τ far above any score: the base answers
    assert row.routed is False and row.adapted_answer == row.base_answer
    assert "routed to the base" in format_report([row])
    module.router.settings = RoutingSettings(enabled=True, calibration=2, margin=1e-9)  # new settings: a new τ
    [row] = recall_rows(module, 10)
    assert row.routed is True and row.adapted_answer != row.base_answer
    assert "routed to the adapter" in format_report([row])
    module.router.settings = RoutingSettings(enabled=False)
    assert recall_rows(module, 10)[0].routed is None and "routed" not in format_report(recall_rows(module, 10))


def test_answer_before_is_the_answer_up_to_its_object():
    assert answer_before("Yelka's favourite colour is teal.", "teal") == "Yelka's favourite colour is"
    assert answer_before("Tom owns an apple.", "apple") == "Tom owns an"
    assert answer_before("Zara is your sister.", "sister") == "Zara is your"
    assert answer_before("Lisbon is where you live.", "Lisbon") == ""  # the object first: nothing before it
    assert answer_before("Tom is here.", "kite") == "" and answer_before("Tom is here.", "") == ""  # no object


def test_object_scores_match_one_unpadded_forward_per_row(tiny_model_dir):
    from olm.backbone import load_base
    from olm.render import messages_for, render_prompt

    model, tok = load_base(tiny_model_dir)
    questions = ["Who is Zara?", "Where does Maribel Tovar live these days?"]
    leads, objects = ["Zara is your", ""], ["sister", "Lisbon"]
    scores = object_scores(model, tok, questions, leads, objects)
    for q, lead, obj, got in zip(questions, leads, objects, scores):
        context = tok(render_prompt(tok, messages_for(q)) + lead, add_special_tokens=False).input_ids
        full = tok(render_prompt(tok, messages_for(q)) + lead + (" " if lead else "") + obj, add_special_tokens=False)
        ids = torch.tensor([full.input_ids])
        log_p = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
        start = len(context)  # the object's tokens follow the context's (a space starts a token)
        want = sum(float(log_p[i - 1, ids[0, i]]) for i in range(start, ids.shape[1]))
        assert got.log_p == pytest.approx(want, abs=1e-4) and got.log_p < 0
        assert got.rank == 1 + int((log_p[start - 1] > log_p[start - 1, ids[0, start]]).sum())
    model.train()  # dropout on: the scores are still the eval-mode ones, and the mode comes back
    embed = model.model.embed_tokens
    drop = embed.register_forward_hook(lambda mod, args, out: torch.nn.functional.dropout(out, 0.9, mod.training))
    assert object_scores(model, tok, questions, leads, objects) == scores and model.training
    drop.remove()
    with pytest.raises(ValueError, match="as many"):
        object_scores(model, tok, questions, leads[:1], objects)


def test_report_shows_how_firmly_each_object_is_held(tiny_model_dir, tmp_path):
    module = OnlineLM(base_model=tiny_model_dir)
    fact = FactDetector().detect("Zara is my sister.")
    module.memory.store(fact, "Zara is my sister.", "Got it.", 0)
    [row] = recall_rows(module, 10)
    assert row.base_log_p is not None and row.adapted_log_p == pytest.approx(row.base_log_p, abs=1e-5)  # B = 0
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 5)
    [row] = recall_rows(module, 10)
    assert row.adapted_log_p != pytest.approx(row.base_log_p, abs=1e-3) and row.adapted_rank >= 1
    assert f"rank {row.adapted_rank}" in format_report([row]) and "→" in markdown_report([row])
    unscored = RecallRow("Q", "a", "x", "a", False, True, 1)  # no pattern to lead with: no figures, no crash
    assert "rank" not in format_report([unscored]) and "| – → – |" in markdown_report([unscored])
