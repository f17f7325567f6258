"""Edit sites (`olm.editsite`): a fact row's LoRA delta kept at its subject's tokens only."""

from __future__ import annotations

import pytest
import torch

import olm.module
from olm.augment import AugmentSettings
from olm.editsite import agrees_on_prefix, edit_mask, lora_b_modules, lora_delta_mask, subject_positions
from olm.module import ObjectiveSettings, OnlineLM, OptimSettings
from olm.prefix import shared_prefix_forward
from tests.test_module import fit, turns


def spans(text: str) -> list[tuple[int, int]]:
    """Whitespace-token offsets of `text` (a stand-in tokenizer for the pure tests)."""
    out, start = [], 0
    for word in text.split(" "):
        out.append((start, start + len(word)))
        start += len(word) + 1
    return out


def test_subject_positions_are_whole_word_case_insensitive_occurrences():
    text = "Who is ana? Anastasia knows. ANA is your sister."
    mask = subject_positions(text, spans(text), "Ana")
    assert mask.tolist() == [False, False, True, False, False, True, False, False, False]  # "ana?" and "ANA"
    multi = "Where does Dr. Lee live? Dr. Lee lives in Oslo."
    assert subject_positions(multi, spans(multi), "Dr. Lee").tolist() == [
        False, False, True, True, False, True, True, False, False, False,
    ]  # fmt: skip
    assert subject_positions(text, spans(text), "Ben") is None  # absent
    assert subject_positions(text, spans(text), "  ") is None  # empty
    assert subject_positions("a.b", [(0, 3)], "a.b").tolist() == [True]  # regex characters are literal


def test_edit_mask_keeps_rows_without_a_subject_whole():
    a, b = "Who is Ana? Ana is your sister.", "Hello there."
    mask = edit_mask([(a, spans(a), "Ana"), (b, spans(b), None), (b, spans(b), "Ana")], width=8)
    assert mask.shape == (3, 8)
    assert mask[0].tolist() == [0, 0, 1, 1, 0, 0, 0, 1]  # the subject's tokens, padding 1
    assert mask[1].tolist() == [1] * 8 and mask[2].tolist() == [1] * 8  # no subject / subject absent: unrestricted


@pytest.fixture()
def adapted(tiny_model_dir):
    """The tiny model's peft model with a non-zero LoRA B (a fresh adapter's delta is 0)."""
    torch.manual_seed(0)
    lm = OnlineLM(base_model=tiny_model_dir)
    with torch.no_grad():
        for b in lora_b_modules(lm.model):
            b.weight.normal_(0, 0.5)
    lm.model.eval()  # no LoRA dropout
    return lm.model


def test_the_delta_is_kept_only_where_the_mask_is_one(adapted):
    ids = torch.tensor([[3, 17, 29, 4, 11, 8], [3, 17, 29, 4, 5, 9]])
    attn = torch.ones_like(ids)
    with torch.no_grad(), adapted.disable_adapter():
        base = adapted(input_ids=ids, attention_mask=attn).logits
    with torch.no_grad():
        full = adapted(input_ids=ids, attention_mask=attn).logits
        with lora_delta_mask(adapted, torch.zeros(2, 6)):
            none = adapted(input_ids=ids, attention_mask=attn).logits
        mask = torch.tensor([[0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.float)
        with lora_delta_mask(adapted, mask):
            some = adapted(input_ids=ids, attention_mask=attn).logits
        later = torch.tensor([[0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.float)
        assert agrees_on_prefix(later, 4) and not agrees_on_prefix(mask, 4)
        with lora_delta_mask(adapted, later):
            plain = adapted(input_ids=ids, attention_mask=attn).logits
            shared = shared_prefix_forward(adapted, ids, attn, enabled=True)  # prefix [3, 17, 29, 4] in one row
    assert not torch.allclose(full, base, atol=1e-4)
    torch.testing.assert_close(none, base)  # mask 0 everywhere: the base
    torch.testing.assert_close(some[:, :3], base[:, :3])  # causal: before the kept token, the base
    assert not torch.allclose(some[0, 3:], base[0, 3:], atol=1e-4)  # from it on, the edit is read
    torch.testing.assert_close(some[1], base[1])  # a row masked out entirely
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-4)  # the shared-prefix forward's two calls
    assert not torch.allclose(plain[0, 4:], base[0, 4:], atol=1e-4)
    assert all(not b._forward_hooks for b in lora_b_modules(adapted))  # hooks removed on exit
    with lora_delta_mask(adapted, None):
        assert all(not b._forward_hooks for b in lora_b_modules(adapted))


@pytest.mark.parametrize("edit_at", ["all", "subject"])
def test_learn_restricts_the_fact_rows_to_their_subject(tiny_model_dir, monkeypatch, edit_at):
    torch.manual_seed(0)
    model = OnlineLM(
        base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3, steps_per_fact=1),
        objective=ObjectiveSettings(edit_at=edit_at), augment=AugmentSettings(qa_pairs=2, paraphrases=1),
    )  # fmt: skip
    masks: list[torch.Tensor | None] = []
    plain = olm.module.lora_delta_mask

    def spy(m, mask):
        masks.append(mask)
        return plain(m, mask)

    monkeypatch.setattr(olm.module, "lora_delta_mask", spy)
    fit(model, turns(("Xiomara lives in Lisbon.", "Got it."), ("Hello there, how are you today?", "Fine.")))
    assert len(masks) == 2  # one adapter forward per turn (steps_per_fact = steps_per_turn = 1)
    fact_mask, chat_mask = masks
    assert chat_mask is None  # a chat turn is never restricted
    if edit_at == "all":
        assert fact_mask is None
        return
    assert fact_mask.shape[0] >= 2  # the exchange and its augmentation rows
    assert bool((fact_mask == 0).any()) and bool((fact_mask == 1).any())
    assert all(bool(row.any()) for row in fact_mask)  # every row keeps the subject (or everything)


@pytest.mark.parametrize("prefix_agrees", [True, False])
def test_learn_shares_the_prefix_only_when_the_rows_masks_agree_on_it(tiny_model_dir, monkeypatch, prefix_agrees):
    """A prefix computed once can carry one mask: learn() turns sharing off when rows differ inside it."""
    torch.manual_seed(0)
    model = OnlineLM(
        base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3, steps_per_fact=1, share_prefix=True),
        objective=ObjectiveSettings(edit_at="subject"), augment=AugmentSettings(qa_pairs=2, paraphrases=1),
    )  # fmt: skip

    def sites(self, examples, ctx, contexts, width):
        if ctx.kind != "fact":
            return None
        mask = torch.zeros(len(examples), width)
        mask[:, -1] = 1.0  # every row keeps only its last position: they agree on any prefix
        if not prefix_agrees:
            mask[0] = 1.0  # one unrestricted row (a first-person fact's in a replay batch)
        return mask

    calls: list[bool] = []  # sharing enabled, per forward of the fact rows (the locality rows pass positions)
    plain = olm.module.shared_prefix_forward

    def spy(m, ids, attn, enabled=True, positions=None):
        if positions is None:
            calls.append(bool(enabled))
        return plain(m, ids, attn, enabled, positions)

    monkeypatch.setattr(OnlineLM, "edit_sites", sites)
    monkeypatch.setattr(olm.module, "shared_prefix_forward", spy)
    fit(model, turns(("Xiomara lives in Lisbon.", "Got it.")))
    adapter_forward, base_forward = calls[:2]  # learn(): the adapter forward, then the base's
    assert adapter_forward is prefix_agrees  # the masked adapter forward shares the prefix only if the masks agree
    assert base_forward is True  # the base forward (no mask) always may


def test_edit_at_is_validated():
    with pytest.raises(ValueError, match="edit_at"):
        ObjectiveSettings(edit_at="objects")
