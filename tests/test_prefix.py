"""The shared-prefix forward: the same logits and gradient as one plain padded forward, fewer positions."""

from __future__ import annotations

import pytest
import torch

from olm.backbone import LoRASettings, attach_lora, load_base
from olm.prefix import MIN_PREFIX, common_prefix_length, shared_prefix_forward


def batch(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, attention


def test_common_prefix_length_stops_at_the_first_difference_and_leaves_each_row_a_token():
    assert common_prefix_length(*batch([[5, 6, 7, 8, 9], [5, 6, 7, 1], [5, 6, 7, 8]])) == 3
    assert common_prefix_length(*batch([[5, 6, 7], [5, 6, 7, 8, 9]])) == 2  # the shorter row keeps its last token
    assert common_prefix_length(*batch([[5, 6, 7], [5, 6, 7]])) == 2
    assert common_prefix_length(*batch([[1, 2], [3, 2]])) == 0
    assert common_prefix_length(*batch([[5, 6, 7, 8]])) == 0  # one row: nothing to share
    # padding is not a shared token: rows equal up to the shorter one's end, pad id equal to a token
    assert common_prefix_length(*batch([[5, 0, 0], [5, 0, 0, 0, 0]], pad=0)) == 2


@pytest.fixture
def model(tiny_model_dir):
    base, _ = load_base(tiny_model_dir)
    peft = attach_lora(base, LoRASettings(dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a trained adapter: the prefix's keys and values depend on it
    peft.train()
    return peft


def test_shared_prefix_forward_gives_the_plain_forwards_logits_and_gradient(model):
    head = [3, 17, 29, 4, 11, 8, 21]
    ids, attention = batch([head + [5, 9, 13, 2], head + [30, 1], head + [7, 7, 7, 7, 7, 12]])
    assert common_prefix_length(ids, attention) == len(head) >= MIN_PREFIX
    lora = [p for n, p in model.named_parameters() if "lora_" in n]

    def run(enabled: bool):
        logits = shared_prefix_forward(model, ids, attention, enabled)
        loss = (logits.log_softmax(-1)[..., 3] * attention).sum()  # padding positions do not count
        grads = torch.autograd.grad(loss, lora)
        return logits.detach(), grads

    plain, plain_grads = run(False)
    shared, shared_grads = run(True)
    real = attention.bool()
    assert shared.shape == plain.shape
    assert torch.allclose(shared[real], plain[real], atol=1e-4)
    for a, b in zip(shared_grads, plain_grads):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)
    assert any(g.abs().sum() > 0 for g in shared_grads)


def test_a_short_prefix_or_disabled_sharing_is_one_plain_forward(model, monkeypatch):
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: (calls.append(k["input_ids"].shape), forward(*a, **k))[1])
    ids, attention = batch([[3, 17, 29, 5, 9], [3, 17, 29, 30]])  # 3 < MIN_PREFIX shared tokens
    shared_prefix_forward(model, ids, attention)
    long_ids, long_attention = batch([[3, 17, 29, 4, 11, 5], [3, 17, 29, 4, 11, 30, 2]])
    shared_prefix_forward(model, long_ids, long_attention, enabled=False)
    assert calls == [ids.shape, long_ids.shape]
    calls.clear()
    shared_prefix_forward(model, long_ids, long_attention)
    assert calls == [torch.Size([1, 5]), torch.Size([2, 2])]  # the prefix once, then each row's rest


@pytest.mark.parametrize("enabled", [True, False])
def test_positions_give_the_full_forwards_logits_there_and_the_same_gradient(model, enabled):
    head = [3, 17, 29, 4, 11, 8, 21]
    ids, attention = batch([head + [5, 9, 13, 2], head + [30, 1], head + [7, 7, 7, 7, 7, 12]])
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[0, 8:11], positions[1, 7:9], positions[2, 9:13] = True, True, True  # each row's own, after the prefix
    lora = [p for n, p in model.named_parameters() if "lora_" in n]

    def run(read):
        logits = read()
        loss = logits.log_softmax(-1)[..., 3].sum()
        return logits.detach(), torch.autograd.grad(loss, lora)

    full, full_grads = run(lambda: shared_prefix_forward(model, ids, attention, enabled)[positions])
    kept, kept_grads = run(lambda: shared_prefix_forward(model, ids, attention, enabled, positions))
    assert kept.shape == full.shape == (int(positions.sum()), full.shape[-1])
    assert torch.allclose(kept, full, atol=1e-4)
    for a, b in zip(kept_grads, full_grads):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)
    assert any(g.abs().sum() > 0 for g in kept_grads)


def test_a_read_position_inside_the_prefix_falls_back_to_one_plain_forward(model, monkeypatch):
    head = [3, 17, 29, 4, 11, 8, 21]
    ids, attention = batch([head + [5, 9, 13, 2], head + [30, 1]])
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[0, 2], positions[1, 7] = True, True  # row 0 reads a prefix position
    full = shared_prefix_forward(model, ids, attention, enabled=False)[positions].detach()
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: (calls.append(k["input_ids"].shape), forward(*a, **k))[1])
    kept = shared_prefix_forward(model, ids, attention, positions=positions)
    assert calls == [ids.shape]
    assert torch.allclose(kept.detach(), full, atol=1e-4)
