"""RecallReport: base vs adapted answers to each remembered fact, asked in a fresh context."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from olm.callbacks.recall_report import RecallReport, RecallRow, format_report, recall_rows
from olm.facts import FactDetector
from olm.module import OnlineLM


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
