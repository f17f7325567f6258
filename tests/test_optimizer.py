"""LoRA+ learning rates (`olm.optimizer`): the B matrices' group, its step size, and saved states moved
between the one-group and two-group layouts (a run resumed under another `optim.lr_ratio_b`), and the
fresh-adapter ratio (`optim.fresh_ratio_b`) that falls as the fact memory fills."""

from __future__ import annotations

import pytest
import torch

from olm.context import Context
from olm.module import OnlineLM, OptimSettings
from olm.optimizer import adamw, b_ratio, is_lora_b, param_groups, regroup_state, two_groups
from olm.render import render_exchange

NAMES = ["m.q.lora_A.default.weight", "m.q.lora_B.default.weight", "m.v.lora_A.default.weight",
         "m.v.lora_B.default.weight", "m.extra.bias"]  # fmt: skip


def _named(seed: int = 0) -> list[tuple[str, torch.nn.Parameter]]:
    g = torch.Generator().manual_seed(seed)
    return [(n, torch.nn.Parameter(torch.randn(3, 2, generator=g))) for n in NAMES]


def _step(opt: torch.optim.Optimizer, named, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _, p in named:
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()


def test_is_lora_b_reads_peft_names():
    assert is_lora_b("base_model.model.layers.0.mlp.up_proj.lora_B.default.weight")
    assert is_lora_b("x.lora_B.user_3f2a.weight")
    assert not is_lora_b("base_model.model.layers.0.mlp.up_proj.lora_A.default.weight")
    assert not is_lora_b("lora_Bias.weight")


def test_one_group_at_ratio_one_and_b_at_ratio_times_lr_otherwise():
    named = _named()
    (only,) = param_groups(named, 1e-3, 1.0)
    assert only["lr"] == only["base_lr"] == 1e-3 and len(only["params"]) == 5
    rest, b = param_groups(named, 1e-3, 16.0)
    assert [id(p) for p in b["params"]] == [id(p) for n, p in named if "lora_B" in n]
    assert len(rest["params"]) == 3 and rest["base_lr"] == 1e-3 and b["base_lr"] == pytest.approx(1.6e-2)


def test_first_adam_step_moves_b_ratio_times_as_far():
    """AdamW's first step moves each weight by lr (its bias-corrected m / sqrt(v) is ±1): B by lr × λ."""
    moved = {}
    for ratio in (1.0, 16.0):
        named = _named()
        before = [p.detach().clone() for _, p in named]
        _step(adamw(named, OptimSettings(lr=1e-3, weight_decay=0.0, lr_ratio_b=ratio)), named, seed=1)
        moved[ratio] = [float((p.detach() - b).abs().mean()) for (_, p), b in zip(named, before)]
    for i, name in enumerate(NAMES):
        expected = 16.0 if "lora_B" in name else 1.0
        assert moved[16.0][i] == pytest.approx(expected * moved[1.0][i], rel=1e-3), name


@pytest.mark.parametrize("saved_ratio, ratio", [(1.0, 16.0), (16.0, 1.0), (4.0, 16.0), (1.0, 1.0)])
def test_regrouped_state_keeps_every_parameters_moments(saved_ratio, ratio):
    named = _named()
    opt = adamw(named, OptimSettings(lr=1e-3, lr_ratio_b=saved_ratio))
    for seed in range(3):
        _step(opt, named, seed)
    moments = {n: opt.state[p]["exp_avg_sq"].clone() for n, p in named}
    fresh = _named(seed=5)
    new = adamw(fresh, OptimSettings(lr=1e-3, lr_ratio_b=ratio))
    new.load_state_dict(regroup_state(opt.state_dict(), [is_lora_b(n) for n, _ in fresh], ratio != 1.0))
    assert len(new.param_groups) == (1 if ratio == 1.0 else 2)
    for n, p in fresh:
        assert torch.equal(new.state[p]["exp_avg_sq"], moments[n]), n
        assert int(new.state[p]["step"]) == 3


def test_regroup_leaves_another_models_state_alone():
    state = adamw(_named(), OptimSettings(lr=1e-3)).state_dict()
    assert regroup_state(state, [False, True], True) is state  # two flags, five saved parameters
    with pytest.raises(ValueError, match="optim.lr_ratio_b"):
        OptimSettings(lr_ratio_b=0.0)


def _learner(tiny_model_dir, ratio: float) -> OnlineLM:
    model = OnlineLM(base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3, grad_clip=10.0, lr_ratio_b=ratio))
    model.optimizers = lambda: model._opt  # outside a trainer
    model._opt = model.configure_optimizers()
    model.manual_backward = lambda loss: loss.backward()
    return model


def test_a_fact_step_moves_b_faster_and_resume_across_ratios_keeps_moments(tiny_model_dir):
    torch.manual_seed(0)
    plain, plus = _learner(tiny_model_dir, 1.0), _learner(tiny_model_dir, 16.0)
    plus.model.load_state_dict(plain.model.state_dict())  # the same initial adapter
    ex = render_exchange(plain.tokenizer, "Zara is my sister.", "Got it. Zara is your sister.")
    moved = {}
    for name, model in (("plain", plain), ("plus", plus)):
        before = {n: p.detach().clone() for n, p in model.trainable_parameters()}
        model.learn(ex, Context("fact"))
        moved[name] = {n: float((p.detach() - before[n]).abs().sum()) for n, p in model.trainable_parameters()}
    b_plain = sum(v for n, v in moved["plain"].items() if is_lora_b(n))
    b_plus = sum(v for n, v in moved["plus"].items() if is_lora_b(n))
    assert b_plus == pytest.approx(16.0 * b_plain, rel=0.05)  # B starts at 0: its first step is lr × λ per weight
    # a checkpoint of the one-group run resumed with λ = 16: regrouped, the moments follow their parameter
    checkpoint = {"optimizer_states": [plain._opt.state_dict()]}
    messages = plus.apply_optim_settings(checkpoint)
    assert any("lr_ratio_b" in m for m in messages)
    plus._opt.load_state_dict(checkpoint["optimizer_states"][0])
    named_plain, named_plus = dict(plain.trainable_parameters()), dict(plus.trainable_parameters())
    for n, p in named_plus.items():
        assert torch.equal(plus._opt.state[p]["exp_avg"], plain._opt.state[named_plain[n]]["exp_avg"]), n
    lrs = {g.get("name"): (g["lr"], g["base_lr"]) for g in plus._opt.param_groups}
    assert lrs == {"lora_A": (1e-3, 1e-3), "lora_B": (pytest.approx(1.6e-2), pytest.approx(1.6e-2))}


def test_each_users_optimizer_has_the_b_group(tiny_model_dir):
    model = OnlineLM(base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3, lr_ratio_b=8.0), per_user=True)
    model.users.activate("alice")
    groups = {g.get("name"): g for g in model.users.optimizer.param_groups}
    assert groups["lora_B"]["base_lr"] == pytest.approx(8e-3) and groups["lora_A"]["base_lr"] == 1e-3
    mark = f".{model.users.state.adapter}."  # alice's own adapter
    b_names = [n for n, p in model.model.named_parameters() if any(p is q for q in groups["lora_B"]["params"])]
    assert b_names and all(mark in n and is_lora_b(n) for n in b_names)


def test_fresh_ratio_falls_linearly_to_lr_ratio_b_as_the_memory_fills():
    s = OptimSettings(lr_ratio_b=2.0, fresh_ratio_b=16.0, fresh_facts=4)
    assert [b_ratio(s, n) for n in range(6)] == [16.0, 12.5, 9.0, 5.5, 2.0, 2.0]
    unset = OptimSettings(lr_ratio_b=4.0)  # fresh_ratio_b None: λ throughout
    assert b_ratio(unset, 0) == b_ratio(unset, 9) == 4.0
    assert not two_groups(OptimSettings()) and not two_groups(OptimSettings(fresh_ratio_b=1.0))
    assert two_groups(OptimSettings(fresh_ratio_b=16.0)) and two_groups(OptimSettings(lr_ratio_b=16.0))
    for bad in ({"fresh_ratio_b": 0.0}, {"fresh_facts": 0}):
        with pytest.raises(ValueError, match="optim.fresh_"):
            OptimSettings(**bad)


def test_fresh_adapter_steps_b_at_the_fresh_ratio_until_the_memory_fills(tiny_model_dir):
    """A fact step of an adapter with an empty memory moves B λ₀ / λ times as far as the same step with a
    full memory; A moves alike, and between turns each group is back at its base lr."""
    torch.manual_seed(0)
    fresh = OnlineLM(base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3, grad_clip=10.0, fresh_ratio_b=8.0, fresh_facts=2))
    fresh.optimizers = lambda: fresh._opt
    fresh._opt = fresh.configure_optimizers()
    fresh.manual_backward = lambda loss: loss.backward()
    start = fresh.model.state_dict()
    ex = render_exchange(fresh.tokenizer, "Zara is my sister.", "Got it. Zara is your sister.")
    moved = []
    for facts in ("", "Zara is my sister. Tom is my brother."):  # empty memory, then 2 facts: ratio 8, then 1
        fresh.model.load_state_dict(start)
        fresh._opt = fresh.configure_optimizers()
        for text in filter(None, facts.split(". ")):
            fact = fresh.detector.detect(text.rstrip(".") + ".")
            fresh.memory.store(fact, text, "ok", 0)
        before = {n: p.detach().clone() for n, p in fresh.trainable_parameters()}
        stats = fresh.learn(ex, Context("fact"))
        assert stats["lr_b"] == pytest.approx(1e-3 * 5.0 * (8.0 if not facts else 1.0))  # fact ×5 (policy default)
        moved.append({n: float((p.detach() - before[n]).abs().sum()) for n, p in fresh.trainable_parameters()})
        assert {g["name"]: g["lr"] for g in fresh._opt.param_groups} == {"lora_A": 1e-3, "lora_B": 1e-3}
    b = [sum(v for n, v in m.items() if is_lora_b(n)) for m in moved]
    assert len(fresh.memory) == 2 and b[0] == pytest.approx(8.0 * b[1], rel=0.05)
