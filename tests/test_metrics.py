"""olm.metrics against hand computations on small tensors: accumulation over several updates,
reset, checkpoint-state round trips, and the anchor / recall probes on a tiny Qwen2."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.regression import KLDivergence
from torchmetrics.text import Perplexity

from olm.backbone import LoRASettings, attach_lora, load_base
from olm.metrics import (
    AnchorPerplexity,
    FactRecall,
    Plasticity,
    RecallByRepetitions,
    Regression,
    ValueStd,
    load_metric_state_dict,
    metric_state_dict,
    window_slope,
)
from olm.probes import AnchorProbe, build_anchor_batch, is_recalled, load_anchors, normalize_answer
from olm.render import render_prompt

pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")  # after reset()


# ----------------------------------------------------------------------------- stability
def test_anchor_perplexity_matches_hand_computation_over_two_updates():
    torch.manual_seed(0)
    logits1, logits2 = torch.randn(2, 3, 5), torch.randn(1, 4, 5)
    t1, t2 = torch.randint(0, 5, (2, 3)), torch.randint(0, 5, (1, 4))
    t2[0, 1] = -100
    metric = AnchorPerplexity(ignore_index=-100)
    metric.update(logits1, t1)
    metric.update(logits2, t2)
    nll = [-F.log_softmax(logits1, -1)[b, t, t1[b, t]] for b in range(2) for t in range(3)]
    nll += [-F.log_softmax(logits2, -1)[0, t, t2[0, t]] for t in (0, 2, 3)]
    assert metric.compute().item() == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)
    reference = Perplexity(ignore_index=-100)
    reference.update(logits1, t1)
    reference.update(logits2, t2)
    assert metric.compute().item() == pytest.approx(reference.compute().item(), rel=1e-5)
    metric.reset()
    metric.update(logits1[:1, :1], t1[:1, :1])
    assert metric.compute().item() == pytest.approx(math.exp(nll[0].item()), rel=1e-5)


def test_anchor_perplexity_stays_finite_where_softmax_underflows():
    logits = torch.tensor([[[0.0, -150.0], [0.0, -150.0], [0.0, -150.0], [0.0, -150.0]]])
    target = torch.tensor([[1, 0, 0, 0]])  # p(first target) = e^-150 underflows to 0 in float32
    reference = Perplexity()
    reference.update(logits, target)
    assert math.isinf(reference.compute().item())
    metric = AnchorPerplexity()
    metric.update(logits, target)
    assert metric.compute().log().item() == pytest.approx(150.0 / 4, rel=1e-4)


def test_kl_divergence_of_log_probs_is_kl_base_to_adapter():
    torch.manual_seed(1)
    base, adapter = F.log_softmax(torch.randn(6, 7), -1), F.log_softmax(torch.randn(6, 7), -1)
    kl = KLDivergence(log_prob=True)
    kl.update(base[:2], adapter[:2])
    kl.update(base[2:], adapter[2:])
    hand = (base.exp() * (base - adapter)).sum(-1).mean()
    assert kl.compute().item() == pytest.approx(hand.item(), rel=1e-5)
    assert kl.compute().item() == pytest.approx(
        F.kl_div(adapter, base, log_target=True, reduction="batchmean").item(), rel=1e-5
    )


def test_value_std_is_population_std_and_resets():
    metric = ValueStd()
    values = [3.0, 5.0, 11.0, 2.5]
    metric.update(values[0])
    assert metric.compute().item() == 0.0
    for v in values[1:]:
        metric.update(torch.tensor(v))
    assert metric.compute().item() == pytest.approx(torch.tensor(values).std(unbiased=False).item(), rel=1e-6)
    metric.reset()
    metric.update(torch.tensor([1.0, 3.0]))
    assert metric.compute().item() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- plasticity
def test_plasticity_recent_loss_is_mean_of_last_window():
    metric = Plasticity(window=3)
    assert metric.compute()["recent_loss"].item() == 0.0  # nothing seen yet
    for v in [1.0, 2.0, 3.0, 10.0]:
        metric.update(v)
    assert metric.compute()["recent_loss"].item() == pytest.approx(5.0)


def test_plasticity_improvement_old_vs_new_window():
    metric = Plasticity(window=2)
    metric.update(4.0)
    assert metric.compute()["improvement"].item() == 0.0  # one loss: no evidence
    metric.update(2.0)
    assert metric.compute()["improvement"].item() == pytest.approx((4 - 2) / 4)
    metric.update(3.0)  # k = 1: old = 2, new = 3
    assert metric.compute()["improvement"].item() == pytest.approx((2 - 3) / 2)
    for v in [1.0, 1.0]:
        metric.update(v)
    # last 4 values: [2, 3, 1, 1] -> old avg 2.5, new avg 1
    assert metric.compute()["improvement"].item() == pytest.approx((2.5 - 1.0) / 2.5)
    metric.reset()
    assert metric.compute()["improvement"].item() == 0.0


def test_plasticity_zero_old_average_is_zero_not_nan():
    metric = Plasticity(window=2)
    metric.update(0.0)
    metric.update(1.0)
    assert metric.compute()["improvement"].item() == 0.0


def test_plasticity_slope_is_least_squares_slope_of_window():
    metric = Plasticity(window=4)
    for v in [100.0, 5.0, 3.0, 1.0, -1.0]:  # the first value falls out of the slope's window
        metric.update(v)
    assert metric.compute()["slope"].item() == pytest.approx(-2.0)
    metric.reset()
    metric.update(1.0)
    assert metric.compute()["slope"].item() == 0.0
    metric.update(2.0)
    metric.update(4.0)
    x, y = torch.arange(3.0), torch.tensor([1.0, 2.0, 4.0])
    hand = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert metric.compute()["slope"].item() == pytest.approx(hand.item())


def test_plasticity_keeps_two_windows_and_matches_a_recomputation():
    metric, seen = Plasticity(window=3), []
    for i in range(20):
        v = float((i * 7) % 5) + 0.5 * i
        metric.update(v)
        seen.append(v)
    assert len(metric.values) == 6
    last = torch.tensor(seen[-6:])
    out = metric.compute()
    assert out["recent_loss"].item() == pytest.approx(last[-3:].mean().item())
    assert out["improvement"].item() == pytest.approx(((last[:3].mean() - last[3:].mean()) / last[:3].mean()).item())
    assert out["slope"].item() == pytest.approx(window_slope(last[-3:]).item())


def test_window_metrics_reject_bad_window():
    with pytest.raises(ValueError, match="window must be >= 2, got 1"):
        Plasticity(window=1)


# ----------------------------------------------------------------------------- forgetting
def test_regression_against_first_value_and_rate_per_turn():
    metric = Regression()
    metric.update(10.0, turn=0)
    assert metric.compute() == {"regression": pytest.approx(0.0), "rate": pytest.approx(0.0)}
    metric.update(12.0, turn=4)
    metric.update(15.0, turn=10)
    out = metric.compute()
    assert out["regression"].item() == pytest.approx(0.5)
    assert out["rate"].item() == pytest.approx(0.05)
    metric.reset()
    metric.update(2.0, turn=10)
    metric.update(1.0, turn=12)
    assert metric.compute()["regression"].item() == pytest.approx(-0.5)


def test_fact_recall_rate_forgetting_and_first_recall():
    metric = FactRecall()
    metric.update(["a", "b"], torch.tensor([True, False]), torch.tensor([1, 1]), turn=5)
    out = metric.compute()
    assert out["recall"].item() == pytest.approx(0.5)
    assert out["forgetting"].item() == 0.0
    assert out["turns_since_first_recall"].item() == pytest.approx(0.0)
    metric.update(["a", "b", "c"], torch.tensor([False, True, True]), torch.tensor([2, 3, 1]), turn=9)
    out = metric.compute()
    assert out["recall"].item() == pytest.approx(2 / 3)
    assert out["forgetting"].item() == pytest.approx(1 / 3)  # a: best 1, now 0
    assert out["ever_recalled"].item() == pytest.approx(1.0)
    assert out["turns_since_first_recall"].item() == pytest.approx((4 + 0 + 0) / 3)  # a first at 5, b and c at 9
    assert out["reps_to_first_recall"].item() == pytest.approx((1 + 3 + 1) / 3)
    assert metric.per_fact_forgetting() == {"a": 1.0, "b": 0.0, "c": 0.0}
    metric.update(["c"], torch.tensor([False]), torch.tensor([2]), turn=10)  # only c probed now
    assert metric.compute()["recall"].item() == 0.0
    assert metric.per_fact_forgetting() == {"c": 1.0}
    metric.reset()
    assert metric.keys == []
    assert metric.compute()["recall"].item() == 0.0


def test_recall_by_repetitions_bins_and_pools():
    metric = RecallByRepetitions(max_reps=3)
    metric.update(torch.tensor([1, 1, 2]), torch.tensor([True, False, True]))
    metric.update(torch.tensor([5, 2]), torch.tensor([True, False]))  # 5 goes to the last bin
    rates = metric.compute()
    assert rates.tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert metric.counts().tolist() == [2, 2, 1]
    metric.reset()
    metric.update(torch.tensor([2]), torch.tensor([True]))
    assert math.isnan(metric.compute()[0].item()) and metric.compute()[1].item() == 1.0


@pytest.mark.parametrize("make", [ValueStd, lambda: Plasticity(window=2), Regression, FactRecall])
def test_metric_state_round_trips_through_plain_types(make):
    a, b = make(), make()
    feeds = {
        FactRecall: lambda m, i: m.update([f"k{i % 2}"], torch.tensor([i % 3 == 0]), torch.tensor([i]), turn=i),
        Regression: lambda m, i: m.update(float(i * i + 1), turn=i),
    }
    feed = feeds.get(type(a), lambda m, i: m.update(torch.tensor(float(i * i))))
    for i in range(1, 5):
        feed(a, i)
    state = metric_state_dict(a)
    torch.save(state, buf := io.BytesIO())
    buf.seek(0)
    load_metric_state_dict(b, torch.load(buf, weights_only=True))
    ca, cb = a.compute(), b.compute()
    if isinstance(ca, dict):
        assert all(torch.allclose(ca[k], cb[k]) for k in ca)
    else:
        assert torch.allclose(ca, cb)
    feed(a, 5)
    feed(b, 5)  # still accumulating the same way after the restore
    ca, cb = a.compute(), b.compute()
    assert all(torch.allclose(ca[k], cb[k]) for k in ca) if isinstance(ca, dict) else torch.allclose(ca, cb)


# ----------------------------------------------------------------------------- probes
def test_normalized_containment():
    assert normalize_answer("  Zara is YOUR sister!! ") == "zara is your sister"
    assert is_recalled("Zara is your best-friend.", "best friend")
    assert is_recalled("She lives in São Paulo.", "são paulo")
    assert not is_recalled("Zara is a catherine.", "cat")
    assert not is_recalled("anything", "  ")


def test_load_anchors_default_file_list_and_errors(tmp_path):
    default = load_anchors()
    assert 12 <= len(default) <= 24 and all(default)
    path = tmp_path / "a.txt"
    path.write_text("# comment\n\nHi there\n  Bye \n")
    assert load_anchors(str(path)) == ["Hi there", "Bye"]
    assert load_anchors(["x", " ", "y"]) == ["x", "y"]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_anchors(str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="at least one"):
        load_anchors([" "])


@pytest.fixture(scope="module")
def peft_model(tiny_model_dir):
    torch.manual_seed(0)
    base, tok = load_base(tiny_model_dir)
    return attach_lora(base, LoRASettings(dropout=0.0)), tok


def test_anchor_batch_positions_cover_prompt_tail(peft_model):
    _, tok = peft_model
    batch = build_anchor_batch(tok, ["Hi", "Who is Zara today?"])
    lengths = batch.attention_mask.sum(1)
    assert batch.positions.sum().item() == batch.targets.numel()
    for b in range(2):
        idx = batch.positions[b].nonzero().flatten()
        assert idx[-1].item() == lengths[b].item() - 1  # the last real token predicts the reply
        assert torch.equal(idx, torch.arange(idx[0], lengths[b]))  # contiguous, no padding
    assert (~batch.has_target).sum().item() == 2  # one reply-start position per prompt


def test_anchor_probe_base_equals_adapter_at_start_and_is_cached(peft_model):
    model, tok = peft_model
    probe = AnchorProbe(tok, ["Hello there", "Who is Zara?"])
    model.train()
    adapted, base = probe.log_probs(model), probe.log_probs(model, adapter=False)
    assert model.training  # train mode restored
    assert torch.allclose(adapted, base, atol=1e-6)  # LoRA B = 0: adapter == base
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    try:
        moved = probe.log_probs(model)
        assert not torch.allclose(moved, base, atol=1e-4)
        assert probe.log_probs(model, adapter=False) is base  # cached, not recomputed
        kl = KLDivergence(log_prob=True)
        kl.update(base, moved)
        assert kl.compute().item() > 0
        # the probe's positions give the same log-probs as an unpadded single forward
        prompt = render_prompt(tok, [{"role": "user", "content": "Hello there"}])
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        model.eval()
        with torch.no_grad():
            single = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        model.train()
        n0 = int(probe.batch.positions[0].sum())
        assert torch.allclose(moved[:n0], single[-n0:], atol=1e-4)
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.zero_()


def test_anchor_probe_reuses_a_pass_of_the_same_version(peft_model):
    model, tok = peft_model
    probe = AnchorProbe(tok, ["Hello there"])
    first = probe.log_probs(model, version=1)
    assert probe.log_probs(model, version=1) is first
    assert probe.log_probs(model, version=2) is not first
    again = probe.log_probs(model, version=2)
    probe.invalidate()
    assert probe.log_probs(model, version=2) is not again
    assert probe.log_probs(model) is not probe.log_probs(model)  # no version: always a new pass
