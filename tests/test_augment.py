"""Fact augmentation, the locality term, first-person facts and contradiction updates."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

from olm.augment import (
    AugmentSettings, contrast_questions, fact_exchanges, fact_questions, fact_rows, forget_rows, forget_window,
    listed_object, second_person, sibling_facts, sibling_rows,
)
from olm.backbone import LoRASettings
from olm.prefix import MIN_PREFIX, common_prefix_length
from olm.bench.facts import GENERAL_PROMPTS, GK_QUESTIONS
from olm.context import Context
from olm.facts import DetectorConfig, FactDetector, FactPattern, fill
from olm.locality import DEFAULT_PROMPTS, LocalityRow, LocalitySettings, lead_weights, locality_batch
from olm.losses import kl_to_base, top_k_kl, top_k_log_probs
from olm.memory import FactMemory
from olm.module import ObjectiveSettings, OnlineLM, OptimSettings
from olm.probes import load_anchors
from olm.render import render_exchange
from olm.world import templates as T

NAMES = ("Zara", "Anna Maria")


def test_training_templates_never_hold_a_held_out_question():
    """Generalization asks held-out phrasings: none may be trained on, for any subject."""
    held_out = {
        " ".join(T.fill(q, name).casefold().split()) for qs in T.HELD_OUT_QUESTIONS.values() for q in qs for name in NAMES
    }
    trained = {" ".join(t.format(subject=name).casefold().split()) for t in AugmentSettings().about_questions for name in NAMES}
    for p in DetectorConfig().patterns:
        for t in [p.question, *p.questions, *p.statements, p.answer, p.short_answer, *p.answers]:
            for name in NAMES:
                trained.add(" ".join(fill(t, p.subject or name, "sister", p.relation).casefold().split()))
    assert trained and not trained & held_out, sorted(trained & held_out)


def words(text: str) -> set[str]:
    """A template's words, its replacement fields and a possessive's "s" left out."""
    return set(re.findall(r"[a-z]{2,}", re.sub(r"\{\w+\}", " ", text.casefold())))


def test_answer_frames_hold_no_held_out_word_the_training_questions_lack():
    """`FactPattern.answers` are the fact in other sentence frames; a frame built from a held-out
    phrasing's words ("X's prized possession is …") would teach the generalization probe's answer."""
    checked = 0
    for p in DetectorConfig().patterns:
        kind = "relation" if p.relation == "{object}" else p.relation
        if kind not in T.HELD_OUT_QUESTIONS:
            continue
        known = set().union(*(words(t) for t in [*p.questions, p.answer]))
        held = set().union(*(words(q) for q in T.HELD_OUT_QUESTIONS[kind])) - known
        for t in p.answers:
            assert not words(t) & held, (p.name, t, sorted(words(t) & held))
            checked += 1
    assert checked >= 14


@pytest.mark.parametrize("frames", [0, 2])
def test_answer_frames_add_rows_in_the_patterns_other_frames(frames):
    pattern = FactDetector().pattern("has")
    settings = AugmentSettings(qa_pairs=3, paraphrases=1, answer_frames=frames, acknowledgement="{answer}")
    canonical = fill(pattern.answer, "Tom", "red kite", "has")
    others = {fill(t, "Tom", "red kite", "has") for t in pattern.answers}
    pairs = set()
    for rotation in range(3):
        rows = fact_rows("Tom", "red kite", "has", pattern, settings, rotation)
        qa = [(q, a) for q, a, statement in rows if not statement]
        assert [a for q, a in qa[:3]] == [canonical] * 3  # the qa_pairs rows keep `answer`
        assert {a for q, a in qa[3:]} == (others if frames else set())  # then one row per other frame
        assert [a for _, a, statement in rows if statement] == [canonical]  # the paraphrase's acknowledgement
        pairs |= set(qa[3:])
    if frames:  # across steps a frame meets more than one question
        assert len({q for q, a in pairs}) > 1 and all("red kite" in a for q, a in pairs)
    [ana] = list(_memory_of("Ana has a blue boat."))
    assert [a for _, a, _ in sibling_rows(ana, pattern, 1)] == ["Ana has a blue boat."]  # siblings keep `answer`
    with pytest.raises(ValueError, match="answer_frames"):
        AugmentSettings(answer_frames=-1)


def test_answer_frames_on_replay_leave_the_fact_turns_canonical():
    pattern = FactDetector().pattern("has")
    on_replay = AugmentSettings(qa_pairs=3, paraphrases=1, answer_frames=2, answer_frames_on="replay")
    everywhere = AugmentSettings(qa_pairs=3, paraphrases=1, answer_frames=2)
    others = {fill(t, "Tom", "red kite", "has") for t in pattern.answers}
    for rotation in range(3):
        turn = fact_rows("Tom", "red kite", "has", pattern, on_replay, rotation)
        replayed = fact_rows("Tom", "red kite", "has", pattern, on_replay, rotation, replay=True)
        assert not {a for _, a, _ in turn} & others and len(turn) == 4  # 3 Q/A + 1 paraphrase, canonical only
        assert replayed == fact_rows("Tom", "red kite", "has", pattern, everywhere, rotation)  # the replay: all rows
        assert fact_rows("Tom", "red kite", "has", pattern, everywhere, rotation, replay=True) == replayed
    with pytest.raises(ValueError, match="answer_frames_on"):
        AugmentSettings(answer_frames_on="fact")


def test_a_replay_step_trains_the_frames_a_fact_turn_leaves_out(tiny_model_dir):
    from olm.module import OnlineLM

    module = OnlineLM(base_model=tiny_model_dir, augment=AugmentSettings(answer_frames=2, answer_frames_on="replay"))
    [fact] = list(_memory_of("Tom has a red kite."))
    turn = [e.text for e in module.fact_examples(fact, 0, fact.text)]
    replay = [e.text for e in module.fact_examples(fact, 0, fact.text, replay=True)]
    assert len(replay) == len(turn) + 2 and set(turn) < set(replay)
    frames = ("assistant\nTom owns a red kite.", "assistant\nTom has got a red kite.")  # answered in a frame
    assert all(any(f in t for t in replay) for f in frames) and not any(f in t for t in turn for f in frames)


def test_locality_training_prompts_and_benchmark_prompts_are_disjoint():
    # the locality prompts also calibrate routing (olm.routing): the benchmark's prompts and
    # general-knowledge questions stay held out from both
    train = {p.casefold() for p in load_anchors(DEFAULT_PROMPTS)}
    bench = {p.casefold() for p in load_anchors(GENERAL_PROMPTS)}
    gk = {json.loads(line)["question"].casefold() for line in GK_QUESTIONS.read_text().splitlines() if line.strip()}
    assert len(train) >= 50 and len(bench) >= 20 and len(gk) >= 50 and not train & bench and not train & gk


def test_a_fact_about_the_speakers_unnamed_relative_is_answered_to_the_speaker():
    """"My mom lives in Lyon.": every row asks in the speaker's words and answers in the assistant's."""
    detector = FactDetector()
    fact = detector.detect("My mom lives in Lyon.")
    settings = AugmentSettings(qa_pairs=3, paraphrases=2, answer_frames=2, acknowledgement="{answer}")
    rows = fact_rows(fact.subject, fact.object, fact.relation, detector.pattern(fact.pattern), settings, replay=True)
    questions = [u for u, _, statement in rows if not statement]
    assert len(rows) == 7 and all("my mom" in u for u in questions)
    assert all(a.startswith("Your mom ") and "Lyon" in a for _, a, _ in rows)
    assert [u for u, _, statement in rows if statement] == ["My mom lives in Lyon.", "My mom is living in Lyon."]


def test_fact_exchanges_counts_rotation_and_no_verbatim_statement():
    detector = FactDetector()
    fact = detector.detect("Zara is my sister.")
    pattern = detector.pattern(fact.pattern)
    settings = AugmentSettings(qa_pairs=2, paraphrases=1)
    first = fact_exchanges(fact.subject, fact.object, fact.relation, pattern, settings, 0, "Zara is my sister.")
    assert len(first) == 3
    assert first[0] == ("Who is Zara?", "Zara is your sister.") and first[1][1] == "Zara is your sister."
    assert first[2][0] != "Zara is my sister." and first[2][1] == "Got it. Zara is your sister."
    second = fact_exchanges(fact.subject, fact.object, fact.relation, pattern, settings, 1, "Zara is my sister.")
    assert [q for q, _ in second[:2]] != [q for q, _ in first[:2]]  # rotated
    assert fact_exchanges("Zara", "sister", "sister", None, settings) == []
    assert fact_exchanges("Zara", "sister", "sister", pattern, AugmentSettings(0, 0)) == []
    with pytest.raises(ValueError, match="qa_pairs"):
        AugmentSettings(qa_pairs=-1)
    with pytest.raises(ValueError, match="about_questions"):
        AugmentSettings(about_questions=["What is {object}?"])
    with pytest.raises(ValueError, match="about_pairs"):
        AugmentSettings(about_pairs=-1)


def test_short_answers_rotate_through_the_questions_and_fall_back_to_the_full_answer():
    detector = FactDetector()
    fact = detector.detect("Tom works as an engineer.")
    pattern = detector.pattern(fact.pattern)
    settings = AugmentSettings(qa_pairs=3, paraphrases=1, short_answers=1)
    seen: dict[str, set[str]] = {}
    for rotation in range(8):
        rows = fact_rows(fact.subject, fact.object, fact.relation, pattern, settings, rotation, "Tom works as an engineer.")
        questions = [(q, a) for q, a, statement in rows if not statement]
        assert len(questions) == 3 and [a for _, a in questions].count("An engineer.") == 1  # capitalised
        assert rows[-1][2] and rows[-1][1] == "Got it. Tom works as an engineer."  # paraphrases keep the full answer
        for q, a in questions:
            seen.setdefault(q, set()).add(a)
    assert len(seen) == len(pattern.questions)
    shortened = [q for q, forms in seen.items() if "An engineer." in forms]
    assert len(shortened) >= 3 and all("Tom works as an engineer." in forms for forms in seen.values()), seen
    every = AugmentSettings(qa_pairs=2, paraphrases=0, short_answers=5)  # more than there are rows: all short
    assert [a for _, a, _ in fact_rows("Zara", "sister", "sister", detector.pattern("x_is_my_y"), every)] == ["Your sister."] * 2
    bare = FactPattern("bare", r"(?P<subject>{NAME}) is my (?P<object>{RELATION})", "{object}", "Who is {subject}?",
                       questions=["Who is {subject}?"], answer="{subject} is your {object}.")  # fmt: skip
    assert fact_rows("Zara", "sister", "sister", bare, every) == [("Who is Zara?", "Zara is your sister.", False)]
    with pytest.raises(ValueError, match="short_answers"):
        AugmentSettings(short_answers=-1)
    with pytest.raises(ValueError, match="short_answer"):
        DetectorConfig(patterns=[FactPattern("bad", bare.regex, "{object}", "Who?", answer="a", short_answer="{age}")])


def test_subject_only_questions_for_third_person_facts_only():
    detector = FactDetector()
    settings = AugmentSettings(qa_pairs=1, paraphrases=1, about_pairs=1)
    fact = detector.detect("Zara is my sister.")
    pattern = detector.pattern(fact.pattern)
    first = fact_exchanges(fact.subject, fact.object, fact.relation, pattern, settings, 0, "Zara is my sister.")
    second = fact_exchanges(fact.subject, fact.object, fact.relation, pattern, settings, 1, "Zara is my sister.")
    assert len(first) == 3 and first[1] == ("What do you know about Zara?", "Zara is your sister.")
    assert second[1] == ("Tell me about Zara.", "Zara is your sister.")  # rotated
    assert first[2][1] == "Got it. Zara is your sister."  # paraphrases stay last
    me = detector.detect("I live in Lisbon.")
    mine = fact_exchanges(me.subject, me.object, me.relation, detector.pattern(me.pattern), settings, 0, "I live in Lisbon.")
    assert len(mine) == 2 and not any("about" in q for q, _ in mine)
    with pytest.raises(ValueError, match="acknowledgement"):
        AugmentSettings(acknowledgement="Got {it}")


@pytest.mark.parametrize(
    "text, slot, obj, question",
    [
        ("I live in Lisbon.", "lives_in", "Lisbon", "Where do I live?"),
        ("My name is Sam.", "name", "Sam", "What is my name?"),
        ("I'm Sam.", "name", "Sam", "What is my name?"),
        ("My favourite colour is green.", "favourite_colour", "green", "What is my favourite colour?"),
        ("My birthday is in May.", "birthday", "May", "When is my birthday?"),
        ("I work at Google.", "works_at", "Google", "Where do I work?"),
        ("I am allergic to peanuts.", "allergic_to", "peanuts", "What am I allergic to?"),
    ],
)
def test_first_person_facts(text, slot, obj, question):
    fact = FactDetector().detect(text)
    assert fact is not None, text
    assert (fact.subject, fact.slot, fact.object, fact.question()) == ("me", slot, obj, question)


def test_first_person_non_facts():
    detector = FactDetector()
    for text in ("I'm tired.", "I'm fine, thanks.", "I work at home.", "My name is not important."):
        assert detector.detect(text) is None, text


def test_top_k_kl_is_exact_at_full_k_and_a_lower_bound_below():
    torch.manual_seed(0)
    adapter, base = torch.randn(5, 50), torch.randn(5, 50) * 2
    exact = kl_to_base(adapter[None], base[None], torch.ones(1, 5))
    log_p, ids = top_k_log_probs(base, 50)
    assert torch.allclose(top_k_kl(adapter, log_p, ids), exact, atol=1e-5)
    log_p, ids = top_k_log_probs(base, 5)
    coarse = top_k_kl(adapter, log_p, ids)
    assert 0 <= coarse <= exact + 1e-6
    assert top_k_kl(base, *top_k_log_probs(base, 5)) == pytest.approx(0.0, abs=1e-5)
    adapter.requires_grad_(True)
    top_k_kl(adapter, log_p, ids).backward()
    assert adapter.grad.abs().sum() > 0


def test_top_k_kl_counts_weighted_positions_more_without_diluting_the_rest():
    torch.manual_seed(0)
    adapter, base = torch.randn(4, 30), torch.randn(4, 30)
    log_p, ids = top_k_log_probs(base, 8)
    each = torch.stack([top_k_kl(adapter[i : i + 1], log_p[i : i + 1], ids[i : i + 1]) for i in range(4)])
    w = torch.tensor([5.0, 1.0, 1.0, 0.0])
    assert torch.allclose(top_k_kl(adapter, log_p, ids, w), (w * each).sum() / 4, atol=1e-6)
    assert torch.allclose(top_k_kl(adapter, log_p, ids, torch.ones(4)), top_k_kl(adapter, log_p, ids), atol=1e-6)


def outside_trainer(model: OnlineLM) -> None:
    """Let `model.learn` step outside a Lightning trainer: its own optimizer, a plain backward."""
    model.optimizers = lambda: model._opt
    model._opt = model.configure_optimizers()
    model.manual_backward = lambda loss: loss.backward()


def recorded_top_k_kl(monkeypatch) -> list[tuple]:
    """The arguments of every call `OnlineLM.learn` makes to the locality term's `top_k_kl`, as they come."""
    import olm.module

    seen, real = [], olm.module.top_k_kl
    monkeypatch.setattr(olm.module, "top_k_kl", lambda *a: (seen.append(a), real(*a))[1])
    return seen


def locality_row(prompt: int, reply: int) -> LocalityRow:
    """A cached locality row of `prompt` + `reply` tokens whose reply positions are compared."""
    positions = torch.zeros(prompt + reply, dtype=torch.bool)
    positions[prompt - 1 : prompt + reply - 1] = True
    ids = torch.zeros(prompt + reply, dtype=torch.long)
    return LocalityRow(ids, positions, torch.zeros(reply, 2), torch.zeros(reply, 2))


def test_lead_weights_weigh_the_first_compared_positions_of_each_row():
    rows = [locality_row(5, 4), locality_row(3, 1), locality_row(2, 3)]
    w = lead_weights(rows, 2, 6.0)
    assert w.tolist() == [6, 6, 1, 1, 6, 6, 6, 1]  # a row shorter than lead_tokens: all of it
    assert lead_weights(rows, 0, 6.0) is None and lead_weights(rows, 2, 1.0) is None
    for bad in ({"lead_tokens": -1}, {"lead_weight": -2.0}, {"lead_weight": float("nan")}, {"lead_weight": float("inf")}):
        with pytest.raises(ValueError, match="lead_"):
            LocalitySettings(**bad)


def test_locality_batch_row_weights_multiply_every_compared_position_of_their_row():
    rows = [locality_row(5, 4), locality_row(3, 1), locality_row(2, 3)]
    plain = LocalitySettings(weight=1.0)
    assert locality_batch(rows, plain, 0, "cpu", [1.0, 1.0, 1.0]).weights is None  # all ones: the plain mean
    assert locality_batch(rows, plain, 0, "cpu", [1.0, 1.0, 8.0]).weights.tolist() == [1] * 5 + [8] * 3
    lead = LocalitySettings(weight=1.0, lead_tokens=2, lead_weight=6.0)
    assert locality_batch(rows, lead, 0, "cpu", [1.0, 0.0, 2.0]).weights.tolist() == [6, 6, 1, 1, 0, 12, 12, 2]
    with pytest.raises(ValueError, match="row_weights"):
        locality_batch(rows, plain, 0, "cpu", [1.0])
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="contrast_weight"):
            AugmentSettings(contrast_weight=bad)


def test_fact_step_trains_on_one_padded_batch_and_its_locality_prompts_on_another(tiny_model_dir, monkeypatch):
    model = OnlineLM(
        base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3, share_prefix=False),  # rows whole: tests/test_prefix.py
        augment=AugmentSettings(qa_pairs=2, paraphrases=1), locality=LocalitySettings(weight=1.0, per_step=2),
    )  # fmt: skip
    outside_trainer(model)
    calls = []
    forward = model.model.forward
    monkeypatch.setattr(model.model, "forward", lambda *a, **k: (calls.append(k["input_ids"].shape), forward(*a, **k))[1])
    fact = model.detector.detect("Zara is my sister.")
    ctx = Context("fact", fact=fact)
    examples = [render_exchange(model.tokenizer, "Zara is my sister.", "Got it.")]
    examples += model.fact_examples(fact, 0, "Zara is my sister.")
    assert len(examples) == 4
    calls.clear()
    before = {k: v.clone() for k, v in model.model.named_parameters() if v.requires_grad}
    stats = model.learn(examples, ctx)
    assert stats["examples"] == 6 and stats["locality_kl"] == pytest.approx(0.0, abs=1e-5)  # first step: adapter = base
    steps = model.optim.steps_per_fact
    mine = calls[-(1 + 2 * steps) :]  # after the cache's fill (its generation and scoring)
    assert [shape[0] for shape in mine] == [4] + [4, 2] * steps  # base; per step: the 4 examples, the 2 prompts
    assert mine[1][1] == max(e.num_tokens for e in examples)  # the examples padded to their own width
    assert any(not torch.equal(v, before[k]) for k, v in model.model.named_parameters() if v.requires_grad)
    cached = dict(model.locality._cache)
    assert len(cached) == len(model.locality.prompts) and model.locality.position == 2  # filled once, batched
    model.learn(examples, ctx)  # next rotation: served from the cache, nothing recomputed
    assert model.locality.position == 4 and all(model.locality._cache[i] is cached[i] for i in cached)
    assert model.learn(examples, Context("chat"))["examples"] == 4  # chat steps carry no locality term


def test_fact_step_weighs_the_lead_positions_of_the_locality_replies(tiny_model_dir, monkeypatch):
    model = OnlineLM(
        base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3, steps_per_fact=1),
        locality=LocalitySettings(weight=1.0, per_step=2, lead_tokens=3, lead_weight=4.0),
    )  # fmt: skip
    outside_trainer(model)
    seen = recorded_top_k_kl(monkeypatch)
    fact = model.detector.detect("Zara is my sister.")
    model.learn([render_exchange(model.tokenizer, "Zara is my sister.", "Got it.")], Context("fact", fact=fact))
    logits, top_log_p, _, weights = seen[0]
    rows = [model.locality._cache[i] for i in (0, 1)]
    assert logits.shape[0] == top_log_p.shape[0] == weights.shape[0] == sum(int(r.positions.sum()) for r in rows)
    first = int(rows[0].positions.sum())
    assert weights[:3].tolist() == [4.0] * 3 and weights[first : first + 3].tolist() == [4.0] * 3
    assert int((weights == 1.0).sum()) == weights.shape[0] - 6


def test_a_fact_step_with_the_shared_prefix_makes_the_same_update_as_without(tiny_model_dir):
    def step(share: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = OnlineLM(
            base_model=tiny_model_dir, lora=LoRASettings(dropout=0.0), optim=OptimSettings(lr=1e-3, share_prefix=share),
            augment=AugmentSettings(qa_pairs=2, paraphrases=1), locality=LocalitySettings(weight=1.0, per_step=2),
        )  # fmt: skip
        outside_trainer(model)
        statement = "Zara is my sister."
        fact = model.detector.detect(statement)
        system = "You are a kind assistant who keeps answers short."  # a long shared prefix
        examples = [render_exchange(model.tokenizer, statement, "Got it.", system=system)]
        examples += [render_exchange(model.tokenizer, u, "Zara is your sister.", system=system)
                     for u in ("Who is Zara?", "Who is Zara to me?")]  # fmt: skip
        rows = [e.input_ids.tolist() for e in examples]
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        assert common_prefix_length(ids, attention) >= MIN_PREFIX  # the shared path is taken
        for _ in range(2):  # the second step starts from a trained adapter
            model.learn(examples, Context("fact", fact=fact))
        return {n: p.detach().clone() for n, p in model.model.named_parameters() if "lora_" in n}

    shared, plain = step(True), step(False)
    assert any(not torch.equal(v, torch.zeros_like(v)) for n, v in shared.items() if "lora_B" in n)
    for name in plain:
        assert torch.allclose(shared[name], plain[name], atol=1e-5), name


def test_contradiction_replaces_the_fact_in_memory_and_what_is_replayed(tiny_model_dir):
    model = OnlineLM(base_model=tiny_model_dir, augment=AugmentSettings(qa_pairs=1, paraphrases=0))
    old, new = model.detector.detect("Zara is my sister."), model.detector.detect("Zara is my cousin.")
    model.memory.store(old, "Zara is my sister.", "Got it.", 0)
    model.memory.store(new, "Zara is my cousin.", "Got it.", 1)
    [stored] = list(model.memory)
    assert (stored.relation, stored.object, stored.count) == ("cousin", "cousin", 1)
    model.queue_replay([stored])
    assert model.replay_queue == [("Zara", "relation")]
    [qa] = model.fact_examples(stored, 0)
    assert "cousin" in qa.text and "sister" not in qa.text


def test_facts_of_many_objects_are_kept_side_by_side_and_answered_together(tiny_model_dir):
    """"I like chess." after "I love jazz." is a second like, not an update: both are remembered, and the Q/A rows
    of either answer with both, in the order first stated; a third-person fact of one object is still updated."""
    model = OnlineLM(base_model=tiny_model_dir, augment=AugmentSettings(qa_pairs=1, paraphrases=1))
    for turn, text in enumerate(["I love jazz.", "I like chess.", "I love jazz.", "Zara has a red kite.",
                                 "Zara has a blue kite.", "I speak Portuguese."]):  # fmt: skip
        model.memory.store(model.detector.detect(text), text, "Got it.", turn)
    assert sorted((f.key_slot, f.object, f.count) for f in model.memory) == [
        ("has", "blue kite", 1), ("likes=chess", "chess", 1), ("likes=jazz", "jazz", 2),
        ("speaks=portuguese", "Portuguese", 1)]  # fmt: skip
    chess = model.memory.get("me", "likes=chess")
    [qa, para] = model.fact_examples(chess, 0)
    assert "You like jazz and chess." in qa.text and "jazz and chess" in para.text
    assert bool(qa.answer_mask.any())  # the listed objects are the measured answer
    hiking = model.detector.detect("I enjoy hiking.")  # stated now, not stored yet: listed last
    assert listed_object(model.memory, hiking) == "jazz, chess and hiking"
    assert listed_object(model.memory, hiking, limit=2) == "jazz and hiking"  # the most recently stated other (turn 2)
    assert listed_object(model.memory, hiking, limit=1) == "hiking"
    assert listed_object(model.memory, model.memory.get("me", "speaks=portuguese")) == "Portuguese"
    kite = model.memory.get("zara", "has")
    assert listed_object(model.memory, kite) == "blue kite"  # one object per subject: its own
    model.queue_replay([chess])
    assert model.replay_queue == [("me", "likes=chess")] and model.memory.get(*model.replay_queue[0]) is chess
    # the speaker's other likes are listed in the fact's own rows, never rehearsed beside them as siblings
    assert [f.object for f in sibling_facts(model.memory, hiking, 9, any_kind=True)] == ["Portuguese", "blue kite"]
    again = FactMemory()
    again.load_state_dict(model.memory.state_dict())
    assert [f.key for f in again] == [f.key for f in model.memory]
    with pytest.raises(ValueError, match="listed_objects"):
        AugmentSettings(listed_objects=0)


def _memory_of(*statements: str) -> FactMemory:
    detector, mem = FactDetector(), FactMemory()
    for turn, text in enumerate(statements):
        mem.store(detector.detect(text), text, "Got it.", turn)
    return mem


def test_sibling_facts_are_other_subjects_of_the_same_slot_most_recent_first_and_rotate():
    mem = _memory_of(
        "Ana has a red bike.", "Zara is my sister.", "Ben has a blue car.", "Ali is my uncle.", "Cleo has a kite.",
    )  # fmt: skip
    new = FactDetector().detect("Dan has a silver guitar.")
    assert [f.subject for f in sibling_facts(mem, new, 2)] == ["Cleo", "Ben"]  # same slot ("has"), newest first
    assert [f.subject for f in sibling_facts(mem, new, 2, rotation=1)] == ["Ana", "Cleo"]  # the window moves on
    assert [f.subject for f in sibling_facts(mem, new, 5)] == ["Cleo", "Ben", "Ana"]  # no more than there are
    who = FactDetector().detect("My cousin is Omar.")  # another pattern, same slot: the relation to the speaker
    assert [f.subject for f in sibling_facts(mem, who, 3)] == ["Ali", "Zara"]
    ben_again = FactDetector().detect("BEN has a green car.")  # never the fact's own subject, whatever its case
    assert "Ben" not in [f.subject for f in sibling_facts(mem, ben_again, 3)]
    assert sibling_facts(mem, new, 0) == [] and sibling_facts(FactMemory(), new, 2) == []
    with pytest.raises(ValueError, match="siblings"):
        AugmentSettings(siblings=-1)


def test_siblings_of_any_kind_follow_the_facts_own_kind():
    """`sibling_kinds: any`: the fact's own kind first, then the other kinds' facts, newest first, the window rotating
    over them all; "same" (the default) never leaves the fact's kind."""
    mem = _memory_of("Ana has a red bike.", "Zara is my sister.", "Ben lives in Oslo.", "Cleo has a kite.")
    new = FactDetector().detect("Dan has a silver guitar.")
    assert [f.subject for f in sibling_facts(mem, new, 3, any_kind=True)] == ["Cleo", "Ana", "Ben"]
    assert [f.subject for f in sibling_facts(mem, new, 2, rotation=1, any_kind=True)] == ["Ben", "Zara"]
    assert [f.subject for f in sibling_facts(mem, new, 9)] == ["Cleo", "Ana"]
    assert [f.subject for f in sibling_facts(mem, FactDetector().detect("Ana lives in Rome."), 9, any_kind=True)] == [
        "Ben", "Cleo", "Zara", "Ana"]  # Ana's bike too: another kind  # fmt: skip
    with pytest.raises(ValueError, match="sibling_kinds"):
        AugmentSettings(sibling_kinds="all")


def test_sibling_rows_are_one_question_answered_with_the_siblings_own_object():
    mem = _memory_of("Ben has a blue car.")
    [ben] = list(mem)
    pattern = FactDetector().pattern(ben.pattern)
    rows = sibling_rows(ben, pattern, 0)
    assert rows == [("What does Ben have?", "Ben has a blue car.", False)]
    assert sibling_rows(ben, pattern, 1)[0][0] != rows[0][0]  # rotated like the fact's own questions
    assert sibling_rows(ben, None) == []


def test_a_fact_step_rehearses_its_siblings_with_their_own_contexts(tiny_model_dir):
    model = OnlineLM(base_model=tiny_model_dir, augment=AugmentSettings(qa_pairs=1, paraphrases=0, siblings=2))
    for turn, text in enumerate(["Ana has a red bike.", "Zara is my sister.", "Ben has a blue car."]):
        model.memory.store(model.detector.detect(text), text, "Got it.", turn)
    fact = model.detector.detect("Dan has a silver guitar.")
    ctx = Context("fact", fact=fact)
    own = [render_exchange(model.tokenizer, "Dan has a silver guitar.", "Got it.")] + model.fact_examples(fact, 0)
    examples, contexts = model.with_siblings(own, ctx)
    assert len(examples) == len(own) + 2 and examples[: len(own)] == own
    assert contexts[: len(own)] == [ctx] * len(own)
    assert [(c.kind, c.fact.subject) for c in contexts[len(own) :]] == [("replay", "Ben"), ("replay", "Ana")]
    assert "blue car" in examples[-2].text and "red bike" in examples[-1].text
    assert bool(examples[-2].answer_mask.any())  # the sibling's object is the measured answer
    outside_trainer(model)  # one real step on the batch, per-row contexts
    stats = model.learn(examples, ctx, contexts)
    assert stats["steps"] == model.optim.steps_per_fact and stats["examples"] == len(examples)
    model.augment = AugmentSettings(qa_pairs=1, paraphrases=0, siblings=0)
    assert model.with_siblings(own, ctx) == (own, None)  # off: the fact's own rows, one context


def test_a_dislike_forgets_the_like_before_its_step_and_rehearses_the_likes_still_true(tiny_model_dir):
    """"I hate jazz." after "I love jazz." and "I like chess.": the like of jazz is dropped before the step, so the
    step's rows never answer with it, and a question of the likes is rehearsed first, answered "You like chess."."""
    import olm

    lm = olm.open(base_model=tiny_model_dir, config={"model": {"augment": {"siblings": 1, "sibling_kinds": "any"}}})
    lm.learn([("I love jazz.", "Nice."), ("I like chess.", "Nice."), ("Zara has a red kite.", "Nice.")])
    seen, real = [], lm.module.learn
    lm.module.learn = lambda examples, *a: (seen.append([e.text for e in examples]), real(examples, *a))[1]
    lm.learn([("I hate jazz.", "Noted.")])
    assert sorted(f.key_slot for f in lm.module.memory if f.subject == "me") == ["dislikes=jazz", "likes=chess"]
    [texts] = seen
    assert any("You dislike jazz." in t for t in texts)
    assert any("assistant\nYou like chess." in t for t in texts)  # the heir ("What do I enjoy?"), whatever its kind
    assert not any("You like jazz" in t or "jazz and chess" in t for t in texts)
    assert sibling_facts([], None, 0, first=list(lm.module.memory)) == []  # no more than n


def test_forget_rows_are_the_dropped_facts_questions_with_its_answers_and_a_rotated_window_of_them():
    pattern = FactDetector().pattern("i_like")
    every = forget_rows("me", "jazz", "likes", pattern)
    assert [q for q, _ in every] == fact_questions("me", "jazz", "likes", pattern)
    assert [a for _, a in every] == ["You like jazz.", "You enjoy jazz.", "You love jazz."]  # each frame in turn
    assert forget_rows("me", "jazz", "likes", None) == []
    assert forget_window(every, 2, 0) == every[:2] and forget_window(every, 2, 1) != every[:2]
    assert forget_window(every, 9, 0) == every and forget_window([], 2) == []


def test_a_contradicted_fact_with_no_heir_is_compared_with_the_base_along_its_old_answers(tiny_model_dir):
    """"I hate jazz." after "I love jazz." alone: no like is left to answer "What do I like?", so with
    `augment.forget` the step compares that many of the like's questions, each with its old answer ("You like
    jazz."), with the base (locality rows along the given answer, the base's log-probabilities computed with the
    adapter off), and so do the dislike's later statements and replays (`StoredFact.forgets`, kept in the memory's
    state) until a like is stated again; without it, none."""
    import olm

    config = {"model": {"augment": {"siblings": 1, "forget": 2, "forget_weight": 3.0},
                        "locality": {"weight": 1.0, "per_step": 1}}}
    lm = olm.open(base_model=tiny_model_dir, config=config)
    lm.learn([("I love jazz.", "Nice.")])
    seen, real = [], lm.module.learn
    lm.module.learn = lambda examples, ctx, contexts=None, forget=(): (seen.append((ctx.kind, list(forget))),
                                                                          real(examples, ctx, contexts, forget))[1]
    lm.learn([("I hate jazz.", "Noted."), ("I hate jazz.", "Noted.")])
    every = forget_rows("me", "jazz", "likes", lm.module.detector.pattern("i_like"))
    assert seen[0] == ("fact", every[:2])
    assert seen[1][0] == "fact" and len(seen[1][1]) == 2 and set(seen[1][1]) <= set(every)  # the statement again
    row = lm.module.locality._extra["What do I like?", "You like jazz."]
    text = lm.module.tokenizer.decode(row.input_ids)
    assert "You like jazz." in text and int(row.positions.sum()) == row.top_ids.shape[0]  # compared along it
    [dislike] = [f for f in lm.module.memory if f.slot == "dislikes"]
    assert dislike.forgets == [list(r) for r in every]
    restored = FactMemory()
    restored.load_state_dict(json.loads(json.dumps(lm.module.memory.state_dict())))
    assert restored.get("me", dislike.key_slot).forgets == dislike.forgets
    seen.clear()
    lm.module.queue_replay([dislike])
    lm.learn([("Nice weather today.", "It is!")])
    assert seen[0][0] == "replay" and len(seen[0][1]) == 2 and set(seen[0][1]) <= set(every)
    seen.clear()
    lm.learn([("I like chess.", "Nice."), ("I hate jazz.", "Noted.")])  # a like again: it answers them now
    assert seen[-1] == ("fact", [])
    off = olm.open(base_model=tiny_model_dir, config={"model": {"augment": {"forget": 0}, "locality": {"weight": 1.0}}})
    off.learn([("I love jazz.", "Nice.")])
    gone = off.module.memory.drop_contradicted(off.module.detector.detect("I hate jazz."))
    assert gone is not None and off.module.forgotten(off.module.detector.detect("I hate jazz."), 0, gone) == []


@pytest.mark.parametrize("apart", [False, True])
def test_forget_rows_are_compared_in_the_fact_steps_or_in_a_step_of_their_own(tiny_model_dir, monkeypatch, apart):
    """`augment.forget_apart`: the forget rows' KL (with the step's locality rows) in optimizer steps of their own, as
    many as the fact's and before them, whose locality batches then lack them; off, they are rows of the fact steps'
    batches."""
    import olm
    import olm.module

    config = {"model": {"augment": {"siblings": 1, "forget": 2, "forget_weight": 3.0, "forget_apart": apart},
                        "locality": {"weight": 1.0, "per_step": 1}, "optim": {"steps_per_fact": 2}}}
    lm = olm.open(base_model=tiny_model_dir, config=config)
    lm.learn([("I love jazz.", "Nice.")])
    batches, real = [], olm.module.locality_batch
    monkeypatch.setattr(olm.module, "locality_batch", lambda rows, *a, **k: (
        batches.append((len(rows), a[3] if len(a) > 3 else k.get("row_weights"))), real(rows, *a, **k))[1])
    stats, learn = [], lm.module.learn
    lm.module.learn = lambda *a, **k: (lambda r: (stats.append(r), r)[1])(learn(*a, **k))
    lm.learn([("I hate jazz.", "Noted.")])
    if apart:
        assert batches == [(1, None), (3, [1.0, 3.0, 3.0])] and stats[0]["steps"] == 4  # as many again
    else:
        assert batches == [(3, [1.0, 3.0, 3.0])] and stats[0]["steps"] == 2


def test_an_update_takes_steps_per_update_and_a_repeat_or_a_new_fact_steps_per_fact(tiny_model_dir):
    """`optim.steps_per_update`: "Zara is my cousin." after "Zara is my sister." (`Context.update`, the memory's
    `superseded`) takes that many optimizer steps; its repeat, a new fact and a like beside another like (its own
    memory key) take `steps_per_fact`; unset, an update takes `steps_per_fact` too."""
    import olm

    for update, expected in ((3, [3, 1, 1, 1]), (None, [1, 1, 1, 1])):
        optim = {"steps_per_fact": 1, "steps_per_update": update}
        lm = olm.open(base_model=tiny_model_dir, config={"model": {"optim": optim}})
        lm.learn([("Zara is my sister.", "Nice."), ("I love jazz.", "Nice.")])
        seen, real = [], lm.module.learn
        lm.module.learn = lambda *a, **k: (lambda r: (seen.append((a[1].update, r["steps"])), r)[1])(real(*a, **k))
        lm.learn([("Zara is my cousin.", "Noted."), ("Zara is my cousin.", "Noted."), ("Tom works at Siemens.", "Ok."),
                  ("I love chess.", "Nice.")])
        assert [s for _, s in seen] == expected and [u for u, _ in seen] == [True, False, False, False]
    with pytest.raises(ValueError, match="steps_per_update"):
        OptimSettings(steps_per_update=0)


def test_a_memory_state_with_malformed_forgets_is_refused():
    mem = FactMemory()
    mem.store(FactDetector().detect("I hate jazz."), "I hate jazz.", "Noted.", 0)
    state = mem.state_dict()
    for bad in ("What do I like?", [["What do I like?"]], [["What do I like?", 3]]):
        state["facts"][0]["forgets"] = bad
        with pytest.raises(ValueError, match="forgets"):
            FactMemory().load_state_dict(state)


def test_a_contradicted_fact_with_a_heir_is_not_compared_with_the_base(tiny_model_dir):
    """With another like left ("I like chess."), the step rehearses it ("You like chess.", `with_siblings`) and
    keeps no row of the dropped like's as the base answers: the heir answers its questions."""
    import olm

    config = {"model": {"augment": {"siblings": 1, "forget": 3}, "locality": {"weight": 1.0, "per_step": 1}}}
    lm = olm.open(base_model=tiny_model_dir, config=config)
    lm.learn([("I love jazz.", "Nice."), ("I like chess.", "Nice.")])
    seen, real = [], lm.module.learn
    lm.module.learn = lambda examples, ctx, contexts=None, forget=(): (
        seen.append(([e.text for e in examples], list(forget))), real(examples, ctx, contexts, forget))[1]
    lm.learn([("I hate jazz.", "Noted.")])
    [(texts, forget)] = seen
    assert any("assistant\nYou like chess." in t for t in texts) and forget == []
    [dislike] = [f for f in lm.module.memory if f.slot == "dislikes"]
    assert dislike.forgets  # kept for the day the heir is gone too


@pytest.mark.parametrize("on", [False, True])
def test_heir_steps_teach_the_heir_again_after_the_contradicting_statement(tiny_model_dir, on):
    """`augment.heir_steps`: "I hate jazz." after "I love jazz." and "I like chess." also takes the heir's fact steps,
    after the dislike's, answered without the dropped object ("You like chess.", in the canonical answer frame alone)
    and rehearsing the dislike, stored by then. A contradiction that leaves its slot empty ("Zara is my cousin." after
    "... sister.") takes none; off, none either."""
    import olm

    config = {"model": {"augment": {"siblings": 1, "sibling_kinds": "any", "heir_steps": on, "answer_frames": 2,
                                    "answer_frames_on": "replay"}, "optim": {"steps_per_fact": 2}}}
    lm = olm.open(base_model=tiny_model_dir, config=config)
    lm.learn([("I love jazz.", "Nice."), ("I like chess.", "Nice."), ("Zara is my sister.", "Nice.")])
    seen, real = [], lm.module.learn
    lm.module.learn = lambda examples, ctx, contexts=None, forget=(): (
        seen.append((ctx.fact, [e.text for e in examples])), real(examples, ctx, contexts, forget))[1]
    lm.learn([("I hate jazz.", "Noted.")])
    chess = lm.module.memory.get("me", "likes=chess")
    assert [fact is chess for fact, _ in seen] == ([False, True] if on else [False])
    if on:
        texts = seen[1][1]
        assert texts[0].count("I like chess.") == 1 and "Nice." in texts[0]  # its stored exchange
        assert any("assistant\nYou like chess." in t for t in texts)
        assert not any("You enjoy chess." in t or "You love chess." in t for t in texts)  # no replay frames
        assert any("assistant\nYou dislike jazz." in t for t in texts)  # the statement's fact, rehearsed
        assert not any(w in t for w in ("You like jazz", "You enjoy jazz", "You love jazz", "jazz and") for t in texts)
    seen.clear()
    lm.learn([("Zara is my cousin.", "Nice.")])
    assert len(seen) == 1 and lm.module.memory.get("zara", "relation").object == "cousin"


def test_a_step_that_forgets_a_slot_rehearses_that_slots_facts_about_others_first(tiny_model_dir):
    """"Tom hates jazz." after "Tom likes jazz.", no other like of Tom's left: the step compares "What does Tom
    like?" with the base along "Tom likes jazz.", and rehearses first the likes of others ("You like chess."),
    which that pull would otherwise take back to the base too; a later statement, the same."""
    import olm

    config = {"model": {"augment": {"siblings": 1, "forget": 2}, "locality": {"weight": 1.0, "per_step": 1}}}
    lm = olm.open(base_model=tiny_model_dir, config=config)
    lm.learn([("I like chess.", "Nice."), ("Tom likes jazz.", "Nice."), ("I hate opera.", "Noted.")])
    seen, real = [], lm.module.learn
    lm.module.learn = lambda examples, ctx, contexts=None, forget=(): (
        seen.append(([e.text for e in examples], list(forget))), real(examples, ctx, contexts, forget))[1]
    lm.learn([("Tom hates jazz.", "Noted."), ("Tom hates jazz.", "Noted.")])
    for texts, forget in seen:
        assert forget and all(q == "What does Tom like?" or "Tom" in q for q, _ in forget)
        assert any("assistant\nYou like chess." in t for t in texts)  # not "I hate opera.", the newer dislike
        assert not any("opera" in t for t in texts)
    gone = lm.module.forgetting(lm.module.detector.detect("Tom hates jazz."))
    assert gone is not None and gone[:2] == ("tom", "likes")  # the memory key
    assert lm.module.forgetting(lm.module.detector.detect("I hate opera.")) is None  # it contradicted nothing


def test_memory_state_version_1_loads_with_slot_from_relation():
    mem = FactMemory()
    mem.store(FactDetector().detect("Xiomara lives in Lisbon."), "Xiomara lives in Lisbon.", "Got it.", 0)
    state = mem.state_dict()
    assert state["version"] == 2
    for f in state["facts"]:
        del f["slot"]
    state["version"] = 1
    old = FactMemory()
    old.load_state_dict(state)
    assert old.get("Xiomara", "lives_in").slot == "lives_in"


@pytest.mark.parametrize("train_end", [True, False])
def test_augmented_answers_train_their_end_of_turn_only_when_set(tiny_model_dir, train_end):
    model = OnlineLM(base_model=tiny_model_dir, augment=AugmentSettings(qa_pairs=2, paraphrases=1, train_end=train_end))
    fact = model.detector.detect("Zara is my sister.")
    for ex in model.fact_examples(fact, 0, "Zara is my sister."):
        last = int(ex.loss_mask.nonzero().max())  # the last target token
        answer_end = ex.text.rindex("sister.") + len("sister.")
        if train_end:  # the template's markup after the answer is trained
            assert ex.offsets[last][0] >= answer_end
        else:  # the answer's own last token is the last target
            assert ex.offsets[last][1] == answer_end
        assert "sister" in "".join(ex.text[s:e] for (s, e), m in zip(ex.offsets, ex.loss_mask.tolist()) if m)


def test_fact_questions_are_the_patterns_trained_questions_filled():
    pattern = FactDetector().pattern("x_is_my_y")
    qs = fact_questions("Zara", "sister", "sister", pattern)
    assert qs and "Who is Zara?" in qs and all("{" not in q for q in qs)
    assert fact_questions("Zara", "sister", "sister", None) == []


def test_a_stated_fact_with_a_generated_reply_is_learned_with_its_acknowledgement(tiny_model_dir):
    from test_module import fit, turns

    from olm.augment import fact_acknowledgement

    pattern = FactDetector().pattern("x_is_my_y")
    assert fact_acknowledgement("Zara", "sister", "sister", pattern, AugmentSettings()) == "Got it. Zara is your sister."
    assert fact_acknowledgement("Zara", "sister", "sister", None, AugmentSettings()) is None
    learned = []
    for acknowledge in (True, False):
        m = OnlineLM(base_model=tiny_model_dir, augment=AugmentSettings(acknowledge_generated=acknowledge))
        shown = []
        m.reply_listener = lambda text, end: shown.append(text)
        fit(m, turns(("Zara is my sister.", None), ("Leo lives in Paris.", "Nice, Paris!")))
        [zara] = [f for f in m.memory if f.subject == "Zara"]
        [leo] = [f for f in m.memory if f.subject == "Leo"]
        assert leo.reply == "Nice, Paris!"  # a logged reply is learned as it is
        assert "".join(shown).strip()  # the person still reads the generated reply
        learned.append(zara.reply)
    assert learned[0] == "Got it. Zara is your sister." and learned[1] != learned[0]


def test_fact_rows_mark_the_paraphrased_statements():
    pattern = FactDetector().pattern("x_is_my_y")
    settings = AugmentSettings(qa_pairs=2, paraphrases=1)
    rows = fact_rows("Zara", "sister", "sister", pattern, settings, 0, "Zara is my sister.")
    assert [s for _, _, s in rows] == [False, False, True]
    assert [(u, a) for u, a, _ in rows] == fact_exchanges("Zara", "sister", "sister", pattern, settings, 0, "Zara is my sister.")


def _trained_text(ex) -> str:
    return "".join(ex.text[s:e] for (s, e), m in zip(ex.offsets, ex.loss_mask.tolist()) if m)


@pytest.mark.parametrize("train_statements", [True, False])
def test_train_statements_trains_the_statement_rows_user_side_only(tiny_model_dir, train_statements):
    """augment.train_statements: the stated exchange, a replay's stored exchange and the paraphrases learn
    the user's words too; the Q/A rows and every other turn stay reply-only."""
    from test_module import fit, turns

    model = OnlineLM(
        base_model=tiny_model_dir, objective=ObjectiveSettings(loss_on="reply"),
        augment=AugmentSettings(qa_pairs=2, paraphrases=1, train_statements=train_statements),
    )  # fmt: skip
    seen: list[tuple[str, list]] = []
    real = model.learn
    model.learn = lambda examples, ctx, *a: (seen.append((ctx.kind, list(examples))), real(examples, ctx, *a))[1]
    fact = model.detector.detect("Zara is my sister.")
    model.memory.store(fact, "Zara is my sister.", "Got it.", 0)
    model.queue_replay(list(model.memory))
    fit(model, turns(("Zara is my sister.", "Got it."), ("I went for a walk today.", "Sounds nice.")))
    kinds = [k for k, _ in seen]
    assert kinds == ["replay", "fact", "chat"]
    for kind, examples in seen:
        if kind == "chat":
            assert "walk" not in _trained_text(examples[0])
            continue
        statement, q1, q2, para = examples
        assert ("Zara is my sister" in _trained_text(statement)) == train_statements
        assert ("Zara" in _trained_text(para).split("Zara is your sister")[0]) == train_statements  # its user side
        for qa in (q1, q2):
            assert "?" not in _trained_text(qa) and "Zara is your sister" in _trained_text(qa)


@pytest.mark.parametrize(
    "text, expected",
    [("Where do I live?", "Where do you live?"), ("What am I allergic to?", "What are you allergic to?"),
     ("When is my birthday?", "When is your birthday?"),
     ("Do you know what I’m allergic to?", "Do you know what you're allergic to?"),
     ("My name is Sam and I am here.", "Your name is Sam and you are here."), ("Who is Zara?", "Who is Zara?"),
     ("Mimi likes mine.", "Mimi likes yours.")],
)  # fmt: skip
def test_second_person_puts_the_speakers_words_to_the_listener(text, expected):
    assert second_person(text) == expected


def test_contrast_questions_come_from_facts_about_the_speaker_only_and_rotate():
    detector = FactDetector()
    lives, sister = detector.detect("I live in Lisbon."), detector.detect("Zara is my sister.")
    swapped = [second_person(q) for q in detector.pattern("i_live_in").questions]
    assert contrast_questions([lives, sister, lives], detector.pattern, 2, 0) == swapped[:2]
    assert contrast_questions([lives], detector.pattern, 2, 1) == [swapped[2], swapped[0]]
    assert contrast_questions([sister, None], detector.pattern, 2) == []  # third person: none
    assert contrast_questions([lives], detector.pattern, 0) == []
    with pytest.raises(ValueError, match="contrasts"):
        AugmentSettings(contrasts=-1)


def test_a_first_person_fact_step_adds_its_contrast_questions_to_the_locality_rows(tiny_model_dir):
    model = OnlineLM(
        base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3),
        augment=AugmentSettings(qa_pairs=1, paraphrases=0, contrasts=2),
        locality=LocalitySettings(weight=1.0, per_step=2),
    )  # fmt: skip
    outside_trainer(model)
    fact = model.detector.detect("I live in Lisbon.")
    examples = [render_exchange(model.tokenizer, "I live in Lisbon.", "Got it.")] + model.fact_examples(fact, 0)
    stats = model.learn(examples, Context("fact", fact=fact, repetition=1))
    assert stats["examples"] == len(examples) + 2 + 2  # 2 rotation prompts + 2 contrast questions
    asked = contrast_questions([fact], model.detector.pattern, 2, 1)
    assert sorted(model.locality._extra) == sorted((q, None) for q in asked)
    row = model.locality._extra[asked[0], None]
    text = model.tokenizer.decode(row.input_ids)
    assert asked[0] in text and int(row.positions.sum()) == row.top_ids.shape[0]  # the base's reply compared
    kept = dict(model.locality._extra)
    model.learn(examples, Context("fact", fact=fact, repetition=1))  # computed once
    assert all(model.locality._extra[k] is v for k, v in kept.items())
    sister = model.detector.detect("Zara is my sister.")
    third = [render_exchange(model.tokenizer, "Zara is my sister.", "Got it.")]
    assert model.learn(third, Context("fact", fact=sister, repetition=1))["examples"] == 1 + 2  # none for others


def test_contrast_weight_counts_the_contrast_rows_positions_that_many_times(tiny_model_dir, monkeypatch):
    model = OnlineLM(
        base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3, steps_per_fact=1),
        augment=AugmentSettings(qa_pairs=1, paraphrases=0, contrasts=2, contrast_weight=5.0),
        locality=LocalitySettings(weight=1.0, per_step=2),
    )  # fmt: skip
    outside_trainer(model)
    seen = recorded_top_k_kl(monkeypatch)
    fact = model.detector.detect("I live in Lisbon.")
    examples = [render_exchange(model.tokenizer, "I live in Lisbon.", "Got it.")] + model.fact_examples(fact, 0)
    model.learn(examples, Context("fact", fact=fact, repetition=1))
    weights = seen[0][3]
    general = sum(int(model.locality._cache[i].positions.sum()) for i in (0, 1))
    asked = contrast_questions([fact], model.detector.pattern, 2, 1)
    contrast = sum(int(model.locality._extra[q, None].positions.sum()) for q in asked)
    assert weights.tolist() == [1.0] * general + [5.0] * contrast
