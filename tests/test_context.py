"""Context policy: the LR multiplier table, repetition boost, clamps and dynamic KL λ."""

import pytest

from olm.context import Context, ContextPolicy, kl_lambda, lr_multiplier


@pytest.mark.parametrize("kind, expected", [("chat", 1.0), ("question", 2.0), ("fact", 5.0), ("replay", 0.5)])
def test_default_multipliers(kind, expected):
    assert lr_multiplier(Context(kind), ContextPolicy()) == pytest.approx(expected)


def test_repetition_boost_formula_and_clamp():
    policy = ContextPolicy(boost_factor=0.2, repetition_multiplier=1.5, max_multiplier=10.0)
    # mult · (1 + (count − 1) · boost · rep_mult) = 5 · (1 + 2 · 0.3) = 8
    assert lr_multiplier(Context("fact", repetition=3), policy) == pytest.approx(8.0)
    assert lr_multiplier(Context("fact", repetition=50), policy) == pytest.approx(10.0)  # clamped
    low = ContextPolicy(lr_multipliers={"chat": 0.01, "question": 2, "fact": 5, "replay": 0.5}, min_multiplier=0.1)
    assert lr_multiplier(Context("chat"), low) == pytest.approx(0.1)


def test_dynamic_kl_lambda():
    policy = ContextPolicy(importance_factor=0.5, min_kl=0.001, max_kl=0.1)
    assert kl_lambda(Context("chat"), policy) == pytest.approx(0.1)
    assert kl_lambda(Context("fact", importance=0.0), policy) == pytest.approx(0.01)
    assert kl_lambda(Context("fact", importance=1.0), policy) == pytest.approx(0.005)
    strong = ContextPolicy(importance_factor=2.0, min_kl=0.002)
    assert kl_lambda(Context("fact", importance=1.0), strong) == pytest.approx(0.002)  # clamped at min_kl


def test_bad_policy_lists_every_problem():
    with pytest.raises(ValueError) as err:
        ContextPolicy(lr_multipliers={"chat": -1.0}, min_kl=0.5, max_kl=0.1, boost_factor=-1)
    msg = str(err.value)
    for part in ("lacks kinds", "must be >= 0", "min_kl", "boost_factor"):
        assert part in msg
