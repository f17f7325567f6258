"""The null-space constraint (`olm.nullspace`): LoRA A kept orthogonal to unrelated text's inputs."""

from __future__ import annotations

import pytest
import torch

from olm.context import Context
from olm.locality import LocalitySettings
from olm.module import OnlineLM, OptimSettings
from olm.nullspace import NullSpace, lora_layers, null_projector, project_lora_a, protected_basis, protected_share
from olm.render import render_exchange


def test_null_projector_protects_the_requested_energy():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([10.0, 5.0, 1.0, 0.1, 0.01, 0.001])
    x = torch.randn(500, 6, generator=g, dtype=torch.float64) * scales
    moment = x.T @ x
    assert torch.equal(null_projector(moment, 0.0), torch.eye(6))
    for energy in (0.5, 0.9, 0.99):
        p = null_projector(moment, energy).double()
        assert torch.allclose(p @ p, p, atol=1e-5) and torch.allclose(p, p.T, atol=1e-6)  # orthogonal projector
        removed = protected_share(moment, p)
        assert removed >= energy  # the fewest top directions holding at least `energy`
        keep = int(p.trace().round())
        if keep < 6:  # one direction fewer would not reach it
            fewer = null_projector(moment, 0.0).double()
            vals, vecs = torch.linalg.eigh(moment)
            u = vecs[:, -(6 - keep - 1) :] if 6 - keep - 1 > 0 else vecs[:, :0]
            fewer = fewer - u @ u.T
            assert protected_share(moment, fewer) < energy
    with pytest.raises(ValueError, match="energy"):
        null_projector(moment, 1.0)


@pytest.mark.parametrize("k", [2, 20])
def test_null_space_apply_is_a_times_p_in_either_form(k):
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(24, k, generator=g, dtype=torch.float64))
    space = NullSpace(u.float())
    assert space.low_rank is (k == 2)  # 2k < d: A − (A U) Uᵀ; else A·P
    a = torch.randn(8, 24, generator=g)
    torch.testing.assert_close(space.apply(a), a @ space.projector, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(space.apply(space.apply(a)), space.apply(a), atol=1e-5, rtol=1e-5)  # idempotent
    assert space.apply(a).double().matmul(u).abs().max() < 1e-5  # nothing left in the protected directions


def test_projection_skips_an_a_nothing_wrote_to_since(tiny_model_dir):
    model = OnlineLM(base_model=tiny_model_dir)
    layers = lora_layers(model.model)
    spaces = {}
    for name, layer in layers.items():
        d = layer.lora_A["default"].weight.shape[1]
        spaces[name] = NullSpace(protected_basis(torch.diag(torch.arange(d, 0, -1).double()), 0.5))
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_A["default"].weight.normal_()
    seen: dict = {}
    assert project_lora_a(model.model, spaces, seen) == len(layers)  # every A: not projected before
    after = {n: layer.lora_A["default"].weight.clone() for n, layer in layers.items()}
    assert project_lora_a(model.model, spaces, seen) == 0  # nothing wrote to them since
    name = next(iter(layers))
    with torch.no_grad():
        layers[name].lora_A["default"].weight.add_(1.0)  # an optimizer step, a loaded state: written in place
    assert project_lora_a(model.model, spaces, seen) == 1
    model.model.load_state_dict({k: v for k, v in model.model.state_dict().items()}, strict=False)  # copies in place
    assert project_lora_a(model.model, spaces, seen) == len(layers)
    assert project_lora_a(model.model, spaces) == len(layers)  # without `seen`: always
    for n, layer in layers.items():
        if n != name:
            torch.testing.assert_close(layer.lora_A["default"].weight, after[n])  # projecting twice changes nothing


def test_bad_null_space_energy_is_a_clear_error():
    with pytest.raises(ValueError, match="null_space_energy"):
        LocalitySettings(null_space_energy=1.5)


def _learner(tiny_model_dir, energy: float) -> OnlineLM:
    model = OnlineLM(
        base_model=tiny_model_dir, optim=OptimSettings(lr=1e-2, grad_clip=10.0),
        locality=LocalitySettings(weight=0.0, null_space_energy=energy),
    )  # fmt: skip
    model.optimizers = lambda: model._opt  # outside a trainer
    model._opt = model.configure_optimizers()
    model.manual_backward = lambda loss: loss.backward()
    return model


def _adapter_change_on_locality_text(model: OnlineLM) -> float:
    """Mean |adapter − base| logit difference over the locality prompts + the base's replies."""
    model.model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(len(model.locality.prompts)):
            ids = model.locality._cache[i].input_ids[None]
            adapted = model.model(input_ids=ids).logits
            with model.model.disable_adapter():
                base = model.model(input_ids=ids).logits
            total += float((adapted - base).abs().mean())
    model.model.train()
    return total / len(model.locality.prompts)


def _train(model: OnlineLM) -> tuple[float, float]:
    example = render_exchange(model.tokenizer, "Zara is my sister.", "Got it, Zara is your sister.", loss_on="reply")
    first = model.learn([example], Context("fact"))["ce"]
    for _ in range(6):
        last = model.learn([example], Context("fact"))["ce"]
    return first, last


def test_constrained_adapter_learns_the_fact_and_barely_touches_the_protected_text(tiny_model_dir):
    """The same steps with and without the constraint: both lower the fact's loss about as much, but the
    constrained adapter changes the model far less on the prompts the projectors were computed from.
    (A random 32-wide model gives the fact text little room of its own: the margin is ~2×, not more.)"""
    free, constrained = _learner(tiny_model_dir, 0.0), _learner(tiny_model_dir, 0.95)
    first, last = _train(free)
    assert last < first and free.locality._cache == {}  # off: nothing computed
    first_c, last_c = _train(constrained)
    assert last_c < first_c and last_c < last + 0.25 * (first - last)  # learns nearly as much
    projectors = constrained.locality.projectors(constrained.model)
    assert set(projectors) == set(lora_layers(constrained.model))
    assert all(0 < p.projector.trace() < p.projector.shape[0] for p in projectors.values())  # some protected, some free
    for name, layer in lora_layers(constrained.model).items():  # every A stays in its null space
        a = layer.lora_A["default"].weight
        assert torch.allclose(a @ projectors[name].projector, a, atol=1e-5)
    free.locality._cache = constrained.locality._cache  # same texts for both
    assert _adapter_change_on_locality_text(constrained) < 0.6 * _adapter_change_on_locality_text(free)


def test_input_moments_match_each_layers_own_inputs(tiny_model_dir):
    from olm.backbone import LoRASettings
    from olm.nullspace import input_moments

    model = OnlineLM(base_model=tiny_model_dir, lora=LoRASettings(target_modules=["gate_proj", "up_proj", "down_proj"]))
    peft = model.model.eval()
    seqs = [torch.tensor(model.tokenizer(t).input_ids) for t in ("Zara is my sister.", "What is 2 + 2? It is 4.")]
    expected: dict[str, torch.Tensor] = {}
    hooks = []
    for name, layer in lora_layers(peft).items():
        def keep(_m, args, name=name):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            expected[name] = expected.get(name, 0) + x.T @ x
        hooks.append(layer.base_layer.register_forward_pre_hook(keep))
    with torch.no_grad(), peft.disable_adapter():
        for ids in seqs:
            peft(input_ids=ids[None])
    for h in hooks:
        h.remove()
    with peft.disable_adapter():
        got = input_moments(peft, seqs)
    assert sorted(got) == sorted(expected) and any("down_proj" in n for n in got)
    for name, moment in got.items():
        assert torch.allclose(moment, expected[name], rtol=1e-4, atol=1e-4), name
        if name.endswith("gate_proj"):  # one input, one moment
            assert got[name.replace("gate_proj", "up_proj")] is moment
