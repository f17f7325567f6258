"""The Python API (olm.api) on the committed olm-tiny: teaching changes the adapter through
OnlineLM's own step, the optimizer state carries across calls, ask answers in a fresh context
without learning, save writes a PEFT adapter directory."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel

import olm
from olm.api import CarryOptimizer
from olm.backbone import load_base
from olm.errors import RunError

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def lora(session) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in session.module.model.named_parameters() if "lora_" in n}


def optimizer_steps(session) -> int:
    (carry,) = [c for c in session.callbacks if isinstance(c, CarryOptimizer)]
    return int(next(iter(carry.state["state"].values()))["step"])


def test_teach_ask_and_save_on_olm_tiny(tmp_path):
    lm = olm.open(config=TINY)
    assert lm.module.base_model_name == "olm-tiny" and lm.module.optim.steps_per_fact == 2  # the config's
    before = lora(lm)
    replies = lm.learn([("Xiomara is my sister.", "Got it. Xiomara is your sister.")] * 2 + [("Who is Xiomara?", None)])
    assert replies[:2] == ["Got it. Xiomara is your sister."] * 2 and isinstance(replies[2], str) and replies[2]
    after = lora(lm)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the step changed the adapter
    assert lm.turns_trained == 3 and len(lm.module.memory) == 1  # the fact was remembered
    steps = optimizer_steps(lm)
    assert steps == 2 + 2 + 1  # two fact turns (2 steps each) and a question
    assert lm.tell("Hello there!", "Hi!") == "Hi!"
    assert optimizer_steps(lm) == steps + 1  # AdamW's state went on, not restarted
    taught = lora(lm)
    answer = lm.ask("Who is Xiomara?")
    assert isinstance(answer, str) and answer
    assert all(torch.equal(taught[k], v) for k, v in lora(lm).items()) and lm.turns_trained == 4  # asking learns nothing
    saved = lm.save(tmp_path / "adapter")
    assert (saved / "adapter_config.json").is_file() and (saved / "memory.json").is_file()
    base, _ = load_base("olm-tiny")
    loaded = PeftModel.from_pretrained(base, str(saved))
    weights = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert len(weights) == len(taught) and all(torch.equal(weights[k], taught[k]) for k in taught)
    # continuing from the saved adapter continues from its facts too: replay, routing and relatives know them
    again = olm.open(config=TINY, adapter=str(tmp_path / "adapter"))
    assert [(f.subject, f.object, f.count) for f in again.module.memory] == [("Xiomara", "sister", 2)]
    assert "Who is Xiomara?" in again.module.recent_fact_questions(4) and again.module.known_relatives() == {"sister"}
    assert max(f.last_access for f in again.module.memory) == 0 and again.turns_trained == 0
    with warnings.catch_warnings(record=True) as caught:  # saved again: its base is the local one, no hub lookup
        warnings.simplefilter("always")
        resaved = again.save(tmp_path / "again")
    assert not [str(w.message) for w in caught if "config" in str(w.message)], [str(w.message) for w in caught]
    assert json.loads((resaved / "adapter_config.json").read_text())["base_model_name_or_path"] == "olm-tiny"
    (saved / "memory.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(RunError, match="not a usable fact memory"):
        olm.open(config=TINY, adapter=str(saved))
    (saved / "memory.json").unlink()  # an adapter saved without one: its weights, an empty memory
    assert len(olm.open(config=TINY, adapter=str(saved)).module.memory) == 0


def test_overrides_records_and_respond_skip():
    lm = olm.open(base_model="olm-tiny", config=TINY, respond="skip")
    assert lm.tell("Who is Xiomara?") is None and lm.module.no_reply_skipped == 1 and lm.turns_trained == 0
    record = {"messages": [{"role": "user", "content": "Cancel X1."},
                           {"role": "assistant", "content": None,
                            "tool_calls": [{"id": "c1", "function": {"name": "cancel", "arguments": "{}"}}]},
                           {"role": "tool", "content": "ok"}, {"role": "assistant", "content": "Done."}]}
    (reply,) = lm.learn([record])
    assert reply == '[tool call] {"name": "cancel", "arguments": {}}\n[tool result] ok\nDone.'
    with pytest.raises(ValueError, match="unknown model settings"):
        olm.open(config=TINY, no_such_knob=1)


def test_the_configs_seed_everything_makes_two_sessions_learn_alike():
    import yaml

    cfg = yaml.safe_load(open(TINY))
    assert cfg["seed_everything"] == 0
    cfg["model"]["lora"] = {**(cfg["model"].get("lora") or {}), "dropout": 0.3}  # the step draws masks too
    turns = [("Xiomara is my sister.", "Got it. Xiomara is your sister.")]
    first, second = olm.open(config=cfg), olm.open(config=cfg)
    assert all(torch.equal(a, b) for a, b in zip(lora(first).values(), lora(second).values()))  # same LoRA init
    first.learn(turns)
    torch.rand(3)  # whatever ran in between: the second session is seeded again when it opens
    second = olm.open(config=cfg)
    second.learn(turns)
    assert all(torch.equal(a, b) for a, b in zip(lora(first).values(), lora(second).values()))
    unseeded = olm.open(config={**cfg, "seed_everything": False})
    unseeded.learn(turns)
    assert any(not torch.equal(a, b) for a, b in zip(lora(first).values(), lora(unseeded).values()))
    with pytest.raises(ValueError, match="seed_everything"):
        olm.open(config={**cfg, "seed_everything": "zero"})
