"""Remembered facts' keys exempted from the null-space constraint (`olm.exemption`, `olm.nullspace.exempt_basis`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from olm.backbone import LoRASettings
from olm.context import Context
from olm.exemption import KeyExemption, key_text, key_texts
from olm.facts import FactDetector
from olm.locality import LocalitySettings
from olm.module import OnlineLM, OptimSettings
from olm.nullspace import exempt_basis, inputs_at, lora_layers
from olm.render import render_exchange


def _orthonormal(d: int, k: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


def test_exempt_basis_frees_the_keys_in_subspace_parts_and_keeps_the_rest():
    u = _orthonormal(16, 6)
    keys = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    v = exempt_basis(u, keys)
    assert v.shape == (16, 4)  # one direction per independent key
    torch.testing.assert_close(v.T @ v, torch.eye(4), atol=1e-5, rtol=0)  # orthonormal
    torch.testing.assert_close(u @ (u.T @ v), v, atol=1e-5, rtol=0)  # inside the protected span
    inside = u @ (u.T @ keys.T)  # the keys' in-U parts: no longer protected
    assert (v.T @ inside).abs().max() < 1e-4
    # the keys' in-U parts plus what is still protected span the old subspace again
    both = torch.cat([v, inside / inside.norm(dim=0)], dim=1)
    assert torch.linalg.matrix_rank(both.double()) == 6


def test_exempt_basis_edge_cases():
    u = _orthonormal(16, 6)
    assert exempt_basis(u, torch.zeros(0, 16)) is u  # no key: unchanged
    assert exempt_basis(torch.zeros(16, 0), torch.randn(3, 16)).shape == (16, 0)  # nothing protected
    outside = torch.randn(1, 16) @ (torch.eye(16) - u @ u.T)  # a key the constraint does not touch
    assert exempt_basis(u, outside).shape == (16, 6)
    same = torch.randn(1, 16).repeat(3, 1)  # one key three times: one direction
    assert exempt_basis(u, same).shape == (16, 5)
    assert exempt_basis(u, torch.randn(10, 16)).shape == (16, 0)  # more keys than directions: all freed


def test_key_text_is_the_first_question_and_the_answers_words_before_the_object():
    detector = FactDetector()
    pattern = detector.pattern("i_live_in")
    assert key_text("me", "Lisbon", "lives_in", pattern) == ("Where do I live?", "You live in")
    name = detector.pattern("my_name_is")
    assert key_text("me", "Sam", "name", name) == (name.questions[0], name.answer.split("{object}")[0].rstrip())
    assert key_text("me", "Lisbon", "lives_in", None) is None


def test_inputs_at_are_each_layers_input_at_the_position(tiny_model_dir):
    model = OnlineLM(base_model=tiny_model_dir)
    peft = model.model.eval()
    seqs = [(torch.tensor(model.tokenizer(t).input_ids), p) for t, p in (("Zara is my sister.", 2), ("Hi there", 0))]
    expected: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, layer in lora_layers(peft).items():
        def keep(_m, args, name=name):
            expected.setdefault(name, []).append(args[0][0].float())
        hooks.append(layer.base_layer.register_forward_pre_hook(keep))
    with torch.no_grad(), peft.disable_adapter():
        for ids, _ in seqs:
            peft(input_ids=ids[None])
    for h in hooks:
        h.remove()
    with peft.disable_adapter():
        got = inputs_at(peft, seqs)
    assert sorted(got) == sorted(expected)
    for name, rows in got.items():
        assert rows.shape[0] == 2
        torch.testing.assert_close(rows[0], expected[name][0][2])
        torch.testing.assert_close(rows[1], expected[name][1][0])


def test_chosen_takes_the_steps_facts_then_the_most_important_within_the_limit():
    detector = FactDetector()
    step = detector.detect("I live in Lisbon.")
    memory = [detector.detect(t) for t in ("My name is Sam.", "My favourite colour is green.", "I work at Google.")]
    stored = [SimpleNamespace(**vars(f), importance=imp, last_turn=0) for f, imp in zip(memory, (0.2, 0.9, 0.5))]
    texts = KeyExemption(3).chosen([step], stored, detector.pattern)
    assert texts[0] == ("Where do I live?", "You live in")
    assert [t[0] for t in texts[1:]] == [detector.pattern(memory[1].pattern).questions[0],
                                         detector.pattern(memory[2].pattern).questions[0]]  # fmt: skip
    assert KeyExemption(0).chosen([step], stored, detector.pattern) == []
    with pytest.raises(ValueError, match="exempt_facts"):
        LocalitySettings(exempt_facts=-1)
    with pytest.raises(ValueError, match="exempt_about"):
        LocalitySettings(exempt_about="everyone")


def test_frames_add_each_facts_key_in_its_patterns_other_answer_frames_within_the_fact_limit():
    detector = FactDetector()
    work = detector.detect("I work at Google.")
    pattern = detector.pattern(work.pattern)
    leads = [pattern.answer.split("{object}")[0].rstrip()] + [a.split("{object}")[0].rstrip() for a in pattern.answers]
    assert len(set(leads)) == 3  # "You work at", "You work for", "Your employer is"
    assert key_texts("me", "Google", "works_at", pattern) == [key_text("me", "Google", "works_at", pattern)]
    both = key_texts("me", "Google", "works_at", pattern, frames=True)
    assert both == [(pattern.questions[0], lead) for lead in leads]
    assert key_texts("me", "Google", "works_at", None, frames=True) == []
    lives = detector.detect("I live in Lisbon.")
    stored = [SimpleNamespace(**vars(lives), importance=0.5, last_turn=0)]
    one = KeyExemption(1, frames=True).chosen([work], stored, detector.pattern)
    assert one == both  # the limit counts facts: the step's fact with all its frames, then no other
    two = KeyExemption(2, frames=True).chosen([work], stored, detector.pattern)
    assert two[:3] == both and len(two) > 3 and {q for q, _ in two[3:]} == {"Where do I live?"}
    assert KeyExemption(2).chosen([work], stored, detector.pattern) == [both[0], key_text("me", "Lisbon", "lives_in",
                                                                          detector.pattern(lives.pattern))]  # fmt: skip


def test_chosen_skips_third_person_facts_unless_about_is_all():
    detector = FactDetector()
    sister, lives = detector.detect("Zara is my sister."), detector.detect("I live in Lisbon.")
    assert KeyExemption(4).chosen([sister, None, lives], [], detector.pattern) == [("Where do I live?", "You live in")]
    everyone = KeyExemption(4, "all").chosen([sister, None, lives], [], detector.pattern)
    assert everyone[0][0] == detector.pattern(sister.pattern).questions[0].format(subject="Zara")
    assert everyone[1] == ("Where do I live?", "You live in") and len(everyone) == 2


def _learner(tiny_model_dir, exempt: int, frames: bool = False) -> OnlineLM:
    model = OnlineLM(
        base_model=tiny_model_dir, optim=OptimSettings(lr=1e-2, grad_clip=10.0),
        lora=LoRASettings(target_modules=["gate_proj", "up_proj", "down_proj"]),
        locality=LocalitySettings(
            weight=0.0, null_space_energy=0.95, exempt_facts=exempt, exempt_frames=frames, disk_cache=False
        ),
    )  # fmt: skip
    model.optimizers = lambda: model._opt  # outside a trainer
    model._opt = model.configure_optimizers()
    model.manual_backward = lambda loss: loss.backward()
    return model


def _key_part(model: OnlineLM, fact) -> float:
    """Largest |A·w| over layers and rows, w the unit in-subspace part of the fact's key."""
    text = key_text(fact.subject, fact.object, fact.relation, model.detector.pattern(fact.pattern))
    keys = model.exemption._keys[text] if text in model.exemption._keys else None
    if keys is None:
        model.exemption._compute(model.model, model.tokenizer, [text])
        keys = model.exemption._keys[text]
    base = model.locality.projectors(model.model)
    most = 0.0
    for name, layer in lora_layers(model.model).items():
        u = base[name].basis
        w = u @ (u.T @ keys[name])
        most = max(most, float((layer.lora_A["default"].weight.detach() @ (w / w.norm())).abs().max()))
    return most


def test_a_step_writes_along_the_facts_key_only_while_it_is_exempted(tiny_model_dir):
    fact = FactDetector().detect("I live in Lisbon.")
    example = render_exchange(OnlineLM(base_model=tiny_model_dir).tokenizer, "I live in Lisbon.", "You live in Lisbon.")
    plain, exempted = _learner(tiny_model_dir, 0), _learner(tiny_model_dir, 8)
    for m in (plain, exempted):
        for _ in range(3):
            m.learn([example], Context("fact", fact=fact, repetition=1, importance=1.0))
    assert _key_part(plain, fact) < 1e-5  # the constraint keeps A off the key's protected part
    assert _key_part(exempted, fact) > 1e-3  # exempted: the step writes there
    assert exempted.exemption.exempted == 1
    spaces = exempted.null_spaces(Context("chat"), None)  # the fact is not remembered: no longer exempted
    assert exempted.exemption.exempted == 0 and spaces is not exempted.locality.projectors(exempted.model)
    exempted.learn([example], Context("chat"))
    assert _key_part(exempted, fact) < 1e-5  # projected again: what it wrote along the key is gone
    for name, layer in lora_layers(exempted.model).items():
        u = exempted.locality.projectors(exempted.model)[name].basis
        assert (layer.lora_A["default"].weight @ u).abs().max() < 1e-5  # back in the constraint's null space


def test_exempt_frames_frees_one_protected_direction_per_answer_frame(tiny_model_dir):
    fact = FactDetector().detect("I live in Lisbon.")
    ctx = Context("fact", fact=fact, repetition=1, importance=1.0)
    one, frames = _learner(tiny_model_dir, 8), _learner(tiny_model_dir, 8, frames=True)
    leads = len(key_texts(fact.subject, fact.object, fact.relation, frames.detector.pattern(fact.pattern), True))
    assert frames.exemption.frames and not one.exemption.frames and leads == 3
    base = one.locality.projectors(one.model)
    for model, freed in ((one, 1), (frames, leads)):
        spaces = model.null_spaces(ctx, None)
        assert model.exemption.exempted == freed
        for name, space in spaces.items():  # one direction per key and layer (each in-subspace part independent)
            assert space.basis.shape[1] == base[name].basis.shape[1] - freed


def test_remembered_facts_stay_exempted_across_steps_and_recompute_the_same(tiny_model_dir):
    m = _learner(tiny_model_dir, 8)
    detector = m.detector
    fact = detector.detect("I live in Lisbon.")
    m.memory.store(fact, "I live in Lisbon.", "You live in Lisbon.", 0)
    first, changed = m.exemption.spaces(m.model, m.tokenizer, m.locality.projectors(m.model),
                                        m.exemption.chosen([], m.memory, detector.pattern))  # fmt: skip
    assert changed and m.exemption.exempted == 1
    again, changed = m.exemption.spaces(m.model, m.tokenizer, m.locality.projectors(m.model),
                                        m.exemption.chosen([], m.memory, detector.pattern))  # fmt: skip
    assert not changed and again is first
    fresh = KeyExemption(8)  # a resumed run: the same memory gives the same spaces
    resumed, _ = fresh.spaces(m.model, m.tokenizer, m.locality.projectors(m.model),
                              fresh.chosen([], m.memory, detector.pattern))  # fmt: skip
    for name in first:
        torch.testing.assert_close(resumed[name].projector, first[name].projector, atol=1e-5, rtol=0)
    gate = next(n for n in first if n.endswith("gate_proj"))
    assert first[gate] is first[gate.replace("gate_proj", "up_proj")]  # one input, one space
