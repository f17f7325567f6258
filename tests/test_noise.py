"""NEFTune noise (`olm.noise`): bounded, only inside its context, only on the adapter's training forwards."""

from __future__ import annotations

import pytest
import torch

import olm.module
from olm.backbone import load_base
from olm.module import ObjectiveSettings, OnlineLM, OptimSettings
from olm.noise import embedding_noise, noise_scale
from tests.test_module import fit, turns


def test_noise_is_bounded_by_alpha_over_sqrt_width_dim_and_gone_after_the_context(tiny_model_dir):
    model, _ = load_base(tiny_model_dir)
    emb = model.get_input_embeddings()
    ids = torch.tensor([[3, 17, 29, 4, 11]])
    clean = emb(ids).detach()
    bound = noise_scale(5.0, width=8, dim=clean.shape[-1])
    assert bound == pytest.approx(5.0 / (8 * clean.shape[-1]) ** 0.5)
    with embedding_noise(model, 5.0, width=8, generator=torch.Generator().manual_seed(0)):
        noisy = emb(ids).detach()
    delta = (noisy - clean).abs()
    assert 0.5 * bound < float(delta.max()) <= bound  # uniform on [-bound, bound]: reaches near the bound
    assert torch.equal(emb(ids), clean)  # the hook is removed on exit
    with embedding_noise(model, 0.0, width=8):
        assert torch.equal(emb(ids), clean)  # α = 0: no noise
    with pytest.raises(RuntimeError), embedding_noise(model, 5.0, width=8):
        raise RuntimeError("a failing forward")
    assert not emb._forward_hooks  # removed on an exception too


@pytest.mark.parametrize("alpha", [0.0, 5.0])
def test_learn_adds_noise_to_the_adapter_forwards_only(tiny_model_dir, monkeypatch, alpha):
    torch.manual_seed(0)
    model = OnlineLM(
        base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3, steps_per_fact=1),
        objective=ObjectiveSettings(embedding_noise=alpha),
    )  # fmt: skip
    seen: list[tuple[bool, int]] = []  # (gradient on, noise hooks) at each forward of learn()
    plain = olm.module.shared_prefix_forward

    def spy(m, *args, **kwargs):
        hooks = len(m.get_input_embeddings()._forward_hooks)
        seen.append((torch.is_grad_enabled(), hooks))
        return plain(m, *args, **kwargs)

    monkeypatch.setattr(olm.module, "shared_prefix_forward", spy)
    fit(model, turns(("Zara is my sister.", "Got it. Zara is your sister.")))
    noisy = [hooks for _, hooks in seen]
    if alpha == 0:
        assert noisy == [0] * len(seen)
        assert model.last.kl == pytest.approx(0.0, abs=1e-7)  # one step, B = 0: adapter == base
    else:
        assert noisy.count(1) == 1 and noisy.count(0) == len(seen) - 1  # the step's adapter forward
        assert seen[1] == (False, 0)  # the base's reference forward (no_grad, adapter off) runs on clean inputs
        assert all(grad for grad, hooks in seen if hooks)
        assert model.last.kl > 0  # the noisy forward differs from the clean base
    assert not model.model.get_input_embeddings()._forward_hooks


def test_negative_or_infinite_noise_is_refused():
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="embedding_noise"):
            ObjectiveSettings(embedding_noise=bad)
