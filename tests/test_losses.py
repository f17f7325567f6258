"""Losses against references: F.kl_div, hand-computed weighted CE, all-masked guards."""

import math

import torch
import torch.nn.functional as F

from olm.losses import kl_to_base, online_loss, weighted_token_ce


def test_kl_matches_kl_div_per_token_mean():
    torch.manual_seed(0)
    q, p = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.ones(2, 5, dtype=torch.bool)
    ref = F.kl_div(F.log_softmax(q, -1), F.softmax(p, -1), reduction="batchmean") * 2 / 10  # sum / tokens
    assert torch.allclose(kl_to_base(q, p, mask), ref, atol=1e-6)


def test_kl_direction_is_base_to_adapter():
    base = torch.log(torch.tensor([[[0.9, 0.1]]]))
    adapter = torch.log(torch.tensor([[[0.5, 0.5]]]))
    expected = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert math.isclose(float(kl_to_base(adapter, base, torch.ones(1, 1))), expected, rel_tol=1e-5)


def test_kl_mask_selects_tokens_and_zero_when_identical():
    torch.manual_seed(1)
    q, p = torch.randn(1, 4, 6), torch.randn(1, 4, 6)
    mask = torch.tensor([[0, 1, 0, 0]])
    one = F.kl_div(F.log_softmax(q[0, 1], -1), F.log_softmax(p[0, 1], -1), reduction="sum", log_target=True)
    assert torch.allclose(kl_to_base(q, p, mask), one, atol=1e-6)
    assert float(kl_to_base(q, q, torch.ones(1, 4))) < 1e-6


def test_all_masked_returns_zero_not_nan():
    q, p = torch.randn(1, 3, 5), torch.randn(1, 3, 5)
    assert float(kl_to_base(q, p, torch.zeros(1, 3))) == 0.0
    ce = weighted_token_ce(q, torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3))
    assert float(ce) == 0.0 and not torch.isnan(ce)


def test_weighted_ce_is_sum_w_l_over_sum_w():
    torch.manual_seed(2)
    logits, targets = torch.randn(1, 4, 9), torch.randint(0, 9, (1, 4))
    w = torch.tensor([[1.0, 3.0, 0.0, 2.0]])
    nll = -F.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    expected = (nll * w).sum() / w.sum()
    assert torch.allclose(weighted_token_ce(logits, targets, w), expected, atol=1e-6)
    # uniform weights reduce to the ordinary mean cross-entropy
    plain = F.cross_entropy(logits[0], targets[0])
    assert torch.allclose(weighted_token_ce(logits, targets, torch.ones(1, 4)), plain, atol=1e-6)


def test_online_loss_combines_with_lambdas_and_shifts():
    torch.manual_seed(3)
    ids = torch.randint(0, 11, (1, 6))
    a, b = torch.randn(1, 6, 11, requires_grad=True), torch.randn(1, 6, 11)
    w, m = torch.ones(1, 6), torch.ones(1, 6)
    out = online_loss(a, b, ids, w, m, kl_lambda=0.3, task_lambda=2.0)
    kl = kl_to_base(a[:, :-1], b[:, :-1], m[:, :-1])
    ce = F.cross_entropy(a[0, :-1], ids[0, 1:])
    assert torch.allclose(out["loss"], 0.3 * kl + 2.0 * ce, atol=1e-6)
    out["loss"].backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
