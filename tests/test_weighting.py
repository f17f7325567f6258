"""ImportanceWeighter: offset alignment on names split into several tokens, each strategy, combining."""

import pytest
import torch

from olm.render import render_exchange
from olm.weighting import ImportanceWeighter, WeightingConfig, term_spans, tokens_overlapping
from olm.world.tokenizer import train_bpe_tokenizer

CORPUS = ["Zara is my sister.", "Got it. Zara is your sister.", "Who is Zara?", "Hello there, how are you today?"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(CORPUS * 10, vocab_size=300)


@pytest.fixture(scope="module")
def example(tokenizer):
    return render_exchange(tokenizer, "Xiomara is my sister.", "Got it. Xiomara is your sister.")


def weigher(*strategies, **kwargs) -> ImportanceWeighter:
    return ImportanceWeighter(WeightingConfig(strategies=list(strategies), **kwargs))


def covering(example, word: str) -> list[list[int]]:
    """Token indices covering each occurrence of `word` (computed independently, by char position)."""
    groups, start = [], example.text.find(word)
    while start >= 0:
        end = start + len(word)
        groups.append([i for i, (s, e) in enumerate(example.offsets) if s < end and e > start and e > s])
        start = example.text.find(word, end)
    return groups


def test_split_name_gets_every_piece_and_no_neighbour(example):
    groups = covering(example, "Xiomara")
    assert len(groups) == 2 and all(len(g) >= 3 for g in groups)  # the name really is split
    w = weigher("entity", entity_weight=3.0).weights(example.text, example.offsets, ["Xiomara"])
    name_tokens = {i for g in groups for i in g}
    assert w.dtype == torch.float32 and w.shape == (len(example.offsets),)
    assert all(w[i] == 3.0 for i in name_tokens)
    assert all(w[i] == 1.0 for i in range(len(w)) if i not in name_tokens)
    for g in groups:  # the tokens right before and after each name are untouched
        assert w[g[0] - 1] == 1.0 and w[g[-1] + 1] == 1.0


def test_fact_terms_and_entities_take_the_larger_weight(example):
    w = weigher("entity", entity_weight=2.0, fact_weight=4.0).weights(
        example.text, example.offsets, ["Xiomara"], fact_terms=["Xiomara", "sister"]
    )
    sister = {i for g in covering(example, "sister") for i in g}
    name = {i for g in covering(example, "Xiomara") for i in g}
    assert all(w[i] == 4.0 for i in sister | name)
    split = weigher("entity", entity_weight=2.0, fact_weight=4.0)
    only_entity = split.weights(example.text, example.offsets, ["Xiomara"], ["sister"])
    assert all(only_entity[i] == 2.0 for i in name) and all(only_entity[i] == 4.0 for i in sister)


def test_terms_match_whole_words_case_sensitively():
    text = "Anna met Ann; ann and Annabel too."
    assert term_spans(text, ["Ann"]) == [(9, 12)]
    offsets = torch.tensor([[0, 4], [4, 8], [8, 12], [12, 13], [13, 17]])
    assert tokens_overlapping(offsets, [(9, 12)]).tolist() == [False, False, True, False, False]
    empty = torch.tensor([[5, 5], [0, 3]])  # zero-width tokens (e.g. special) never overlap
    assert tokens_overlapping(empty, [(0, 10)]).tolist() == [False, True]


def test_unicode_name_split_into_bytes(tokenizer):
    ex = render_exchange(tokenizer, "Zoë is my sister.", "Got it.")
    w = weigher("entity").weights(ex.text, ex.offsets, ["Zoë"])
    (group,) = covering(ex, "Zoë")
    assert len(group) >= 2 and all(w[i] == 3.0 for i in group)
    assert int((w == 3.0).sum()) == len(group)


def test_position_first_and_last_of_the_mask():
    offsets = [(i, i + 1) for i in range(10)]
    mask = torch.tensor([False] * 3 + [True] * 6 + [False])
    w = weigher("position", position_tokens=2, position_weight=2.0).weights("x" * 10, offsets, [], mask=mask)
    assert w.tolist() == [1, 1, 1, 2, 2, 1, 1, 2, 2, 1]
    whole = weigher("position", position_tokens=2, position_weight=2.0).weights("x" * 10, offsets, [])
    assert whole.tolist() == [2, 2, 1, 1, 1, 1, 1, 1, 2, 2]
    none = weigher("position", position_tokens=2).weights("x" * 10, offsets, [], mask=torch.zeros(10))
    assert none.tolist() == [1.0] * 10
    off = weigher("position", position_tokens=0).weights("x" * 10, offsets, [])
    assert off.tolist() == [1.0] * 10


def test_repetition_by_id_and_by_text(example):
    text, offsets = "cat,cat dog", [(0, 3), (3, 4), (4, 7), (7, 11)]
    by_text = weigher("repetition", repetition_weight=2.0).weights(text, offsets, [])
    assert by_text.tolist() == [2, 1, 2, 1]  # "," repeats nothing; "cat" twice
    by_id = weigher("repetition", repetition_weight=2.0).weights(text, offsets, [], input_ids=[5, 6, 7, 7])
    assert by_id.tolist() == [1, 1, 2, 2]  # ids, when given, decide
    w = weigher("repetition", repetition_weight=2.0).weights(
        example.text, example.offsets, [], input_ids=example.input_ids
    )
    pieces = [example.text[s:e] for s, e in example.offsets]
    weighted = {p for p, x in zip(pieces, w.tolist()) if x == 2.0}
    assert " is" in weighted and " sister" in weighted  # restated by the reply
    assert "<|im_start|>" not in weighted and "." not in weighted  # markup and punctuation skipped
    assert all(len(p.strip()) >= 2 for p in weighted)  # one-letter fragments skipped


def test_no_strategies_gives_all_ones(example):
    w = weigher().weights(example.text, example.offsets, ["Xiomara"], ["sister"], mask=example.loss_mask)
    assert torch.equal(w, torch.ones(len(example.offsets)))


def test_combine_max_and_product():
    text, offsets = "Zara Zara", [(0, 4), (4, 9)]
    mask = torch.tensor([True, False])
    kw = dict(entity_weight=3.0, position_tokens=1, position_weight=2.0)
    w_max = weigher("entity", "position", combine="max", **kw).weights(text, offsets, ["Zara"], mask=mask)
    w_prod = weigher("entity", "position", combine="product", **kw).weights(text, offsets, ["Zara"], mask=mask)
    assert w_max.tolist() == [3.0, 3.0] and w_prod.tolist() == [6.0, 3.0]


def test_default_weights_on_a_fact_exchange(example):
    w = ImportanceWeighter().weights(
        example.text, example.offsets, ["Xiomara"], ["Xiomara", "sister"], mask=example.loss_mask,
        input_ids=example.input_ids,
    )  # fmt: skip
    name = {i for g in covering(example, "Xiomara") for i in g}
    assert all(w[i] == 3.0 for i in name) and w.min() >= 1.0


def test_errors():
    with pytest.raises(ValueError, match="one entry per token"):
        ImportanceWeighter().weights("ab", [(0, 1), (1, 2)], [], mask=torch.ones(3))
    with pytest.raises(ValueError) as err:
        WeightingConfig(strategies=["entity", "entity", "bold"], combine="sum", entity_weight=0, position_tokens=-1)
    msg = str(err.value)
    for part in ("unknown ['bold']", "duplicates", "combine", "entity_weight", "position_tokens"):
        assert part in msg
