"""The known-fact gate (olm.gate): pure functions, and learn() skipping what the model already knows."""

from __future__ import annotations

import math

import pytest
import torch

import olm.module
from olm.augment import AugmentSettings
from olm.context import Context
from olm.gate import answer_mask, known_rows, target_min_p
from olm.module import OnlineLM, OptimSettings
from olm.render import render_exchange


def test_target_min_p_is_the_least_likely_weighted_target_of_each_row():
    # vocab 3; position t predicts token t + 1
    logits = torch.log(torch.tensor([
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]],
        [[0.5, 0.25, 0.25], [0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3]],
    ]))  # fmt: skip
    ids = torch.tensor([[0, 0, 1], [2, 1, 2]])
    mask = torch.tensor([[False, True, True], [False, False, False]])  # row 1: nothing measured
    p = target_min_p(logits, ids, mask)
    assert p[0].item() == pytest.approx(0.7)  # targets: token 0 at p 0.7, token 1 at p 0.8
    assert p[1].item() == 1.0
    mask[0, 1] = False  # only the last target left
    assert target_min_p(logits, ids, mask)[0].item() == pytest.approx(0.8)


def test_answer_mask_covers_the_answer_tokens_of_the_reply_only(tiny_model_dir):
    from olm.backbone import load_base

    tok = load_base(tiny_model_dir)[1]
    e = render_exchange(tok, "What does Chako do for a living?", "Chako works as a chef.")
    mask = answer_mask(e.text, e.offsets, e.loss_mask, "What does Chako do for a living?", "chef")
    assert mask is not None and not (mask & ~e.loss_mask).any()
    spelled = "".join(e.text[s:t] for (s, t), m in zip(e.offsets, mask.tolist()) if m)
    assert "chef" in spelled.lower() and "works" not in spelled
    # the question holds the answer (a paraphrase: "Chako is a chef." -> "Got it. ..."): nothing to recall
    p = render_exchange(tok, "Chako is a chef.", "Got it. Chako works as a chef.")
    assert answer_mask(p.text, p.offsets, p.loss_mask, "Chako is a chef.", "chef") is None
    # the answer is nowhere among the targets
    assert answer_mask(e.text, e.offsets, e.loss_mask, "What does Chako do?", "pilot") is None


def test_known_rows_marks_a_whole_fact_only_when_every_measured_row_passes():
    min_p = torch.tensor([0.01, 0.9, 0.95, 0.2, 0.99, 0.4, 0.99])
    templated = [False, True, True, False, True, True, False]
    groups = ["a", "a", "a", "b", "b", "b", "c"]  # c: an exchange alone, never measured
    assert known_rows(min_p, templated, groups, 0.5).tolist() == [True, True, True, False, False, False, False]
    assert known_rows(min_p, templated, groups, 0.3).tolist() == [True, True, True, True, True, True, False]
    assert not known_rows(min_p, templated, groups, 0.0).any()  # off
    with pytest.raises(ValueError, match="differ in length"):
        known_rows(min_p, templated[:-1], groups, 0.5)


def _model(tiny_model_dir, skip_known: float) -> OnlineLM:
    torch.manual_seed(0)
    model = OnlineLM(
        base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3, steps_per_fact=2, skip_known=skip_known),
        augment=AugmentSettings(qa_pairs=2, paraphrases=1),
    )  # fmt: skip
    model._opt = model.configure_optimizers()
    model.optimizers = lambda: model._opt
    model.manual_backward = lambda loss: loss.backward()
    return model


def _fact_batch(model: OnlineLM, statement: str):
    fact = model.detector.detect(statement)
    examples = [render_exchange(model.tokenizer, statement, "Got it.")] + model.fact_examples(fact, 0, statement)
    return examples, Context("fact", fact=fact)


def _lora(model: OnlineLM) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("threshold, known", [(1e-30, True), (0.999, False)])
def test_a_fact_step_is_skipped_only_when_the_fact_is_known(tiny_model_dir, threshold, known):
    model = _model(tiny_model_dir, threshold)
    examples, ctx = _fact_batch(model, "Zara is my sister.")
    assert [e.answer_mask is not None for e in examples] == [False, True, True, False]  # Q/A pairs measured
    before = _lora(model)
    stats = model.learn(examples, ctx)
    after = _lora(model)
    assert stats["known"] == (1.0 if known else 0.0)
    assert stats["steps"] == (0 if known else 2)
    assert math.isfinite(stats["loss"])
    changed = any(not torch.equal(before[n], after[n]) for n in before)
    assert changed is not known  # a known fact: no edit at all


def test_the_gate_leaves_chat_turns_alone(tiny_model_dir):
    model = _model(tiny_model_dir, 1e-30)  # every fact would count as known
    example = render_exchange(model.tokenizer, "How are you?", "Fine, thanks.")
    before = _lora(model)
    stats = model.learn([example], Context("chat"))
    assert stats["steps"] == 1 and "known" not in stats
    assert any(not torch.equal(v, _lora(model)[n]) for n, v in before.items())


def test_a_replay_trains_only_on_the_facts_it_does_not_know(tiny_model_dir, monkeypatch):
    model = _model(tiny_model_dir, 0.5)
    a, ctx_a = _fact_batch(model, "Zara is my sister.")
    b, ctx_b = _fact_batch(model, "Omar lives in Lisbon.")
    known_a = torch.tensor([1.0] * len(a) + [0.0] * len(b))  # fact a answered, fact b not
    monkeypatch.setattr(olm.module, "target_min_p", lambda logits, ids, weights: known_a.clone())
    seen = []
    real = olm.module.online_loss
    monkeypatch.setattr(olm.module, "online_loss", lambda *args: seen.append(args[3].clone()) or real(*args))
    replay = lambda c: Context("replay", fact=c.fact, importance=1.0)  # noqa: E731
    stats = model.learn(a + b, replay(ctx_a), [replay(ctx_a)] * len(a) + [replay(ctx_b)] * len(b))
    assert stats["known"] == 0.5 and stats["steps"] == model.optim.steps_per_replay
    weights = seen[0]
    assert (weights[: len(a)] == 0).all()  # fact a's rows: no task targets (the KL term still holds them)
    assert (weights[len(a) :].sum(dim=1) > 0).all()


def test_skip_known_must_be_a_probability():
    with pytest.raises(ValueError, match="skip_known"):
        OptimSettings(skip_known=1.0)
    with pytest.raises(ValueError, match="skip_known"):
        OptimSettings(skip_known=-0.1)
