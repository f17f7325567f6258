"""Tests of the toy world (`olm/world/`) and the built-in model `olm-tiny`."""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from olm.world import templates as T
from olm.world.corpus import CorpusConfig, make_corpus, tokenizer_texts
from olm.world.generator import WorldConfig, make_world
from olm.world.logs import DEFAULT_LOG, LogConfig, sample_log
from olm.world.names import NameSettings, make_names
from olm.world.quality import DEFAULT_MODEL_DIR, QualityConfig, load_world
from olm.world.schedule import anchor_prompts, teaching_schedule, unrelated_turns
from olm.world.tokenizer import train_bpe_tokenizer
from olm.world.train import (
    ModelConfig,
    TrainConfig,
    build_model,
    encode_corpus,
    lr_at,
    pack,
    render_with_spans,
    train_model,
    weighted_lm_loss,
)

SMALL_CORPUS = CorpusConfig(
    blocks=1, questions_per_fact=2, statements_per_fact=1, unknown_questions=500, told_statements=300, smalltalk=200
)
UNICODE_NAMES = ["Zoë", "Łukasz", "Ñandú", "李小龙", "Émilie-Anne", "Øystein", "Nguyễn", "O'Brien", "🙂Zara"]
has_olm_tiny = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "model.safetensors").is_file(), reason="olm-tiny not built (python -m olm.world.build)"
)


@pytest.fixture(scope="module")
def world():
    return make_world(0)


@pytest.fixture(scope="module")
def corpus(world):
    return make_corpus(world, SMALL_CORPUS, seed=0)


def words_of(conversations) -> set[str]:
    return {w for conv in conversations for m in conv for w in re.findall(r"[^\W\d_]+", m["content"])}


# ---- world and corpus ----


def test_same_seed_same_world_and_corpus(world, corpus):
    again = make_world(0)
    assert again == world
    assert make_corpus(again, SMALL_CORPUS, seed=0) == corpus
    other = make_world(1)
    assert other.held_out != world.held_out and other.pretrain_names != world.pretrain_names
    assert make_corpus(world, SMALL_CORPUS, seed=1) != corpus


def test_pools_disjoint_prefix_free_and_sized(world):
    pools = [set(world.pretrain_names), set(world.held_out), set(world.unknown), set(world.told)]
    assert [len(p) for p in pools] == [200, 500, 20000, 20000]
    assert len(set().union(*pools)) == sum(len(p) for p in pools)
    names = sorted(n.lower() for p in pools for n in p)
    assert all(not b.startswith(a) for a, b in zip(names, names[1:]))  # sorted: a prefix sorts right before
    assert any(any(ord(c) > 127 for c in n) for n in world.held_out), "some non-ASCII names"
    assert all(n[0].isascii() and n[0].isupper() for p in pools for n in p)


def test_no_name_is_a_known_name_but_for_its_first_letter(world):
    """The tokenizer splits capitals off: a held-out "Kara" must not read as a known "Zara"."""
    known = sorted(n[1:].lower() for n in world.pretrain_names)
    assert all(not b.startswith(a) for a, b in zip(known, known[1:]))
    for name in world.held_out + world.unknown + world.told:
        tail = name[1:].lower()
        assert not any(tail.startswith(k) or k.startswith(tail) for k in known), name


def test_people_have_a_relation_and_attributes(world):
    kinds = {f.kind for f in world.facts}
    assert kinds == set(T.KINDS)
    assert len(T.RELATIONS) >= 15
    for person in world.people:
        assert person.facts[0].kind == "relation"
        assert 2 <= len(person.facts) <= 3
        assert len({f.kind for f in person.facts}) == len(person.facts)


def test_held_out_names_never_occur_in_corpus(world, corpus):
    assert not words_of(corpus) & set(world.held_out)


def test_unknown_names_only_in_dont_know_exchanges(world, corpus):
    unknown = set(world.unknown)
    seen = 0
    for conv in corpus:
        for user, reply in zip(conv[::2], conv[1::2]):
            names = set(re.findall(r"[^\W\d_]+", user["content"])) & unknown
            if names:
                (name,) = names
                assert reply["content"] == T.unknown_answer_for(name)
                seen += 1
            assert not set(re.findall(r"[^\W\d_]+", reply["content"])) & unknown - names
    assert seen == SMALL_CORPUS.unknown_questions


def test_told_names_only_in_statements_and_acknowledgements(world, corpus):
    told = set(world.told)
    seen = 0
    for conv in corpus:
        for user, reply in zip(conv[::2], conv[1::2]):
            names = set(re.findall(r"[^\W\d_]+", user["content"])) & told
            if names:
                assert not user["content"].endswith("?") and reply["content"].startswith("Got it. ")
                assert names <= set(re.findall(r"[^\W\d_]+", reply["content"]))
                seen += 1
    assert seen == SMALL_CORPUS.told_statements


def test_facts_phrased_in_canonical_forms(world):
    fact = next(f for f in world.facts if f.kind == "relation")
    s, o = fact.subject, fact.object
    assert fact.statements == (f"{s} is my {o}.", f"My {o} is {s}.", f"My {o}'s name is {s}.")
    assert fact.acknowledgement == f"Got it. {s} is your {o}."
    assert fact.answer == f"{s} is your {o}." and fact.probe == f"Who is {s}?"
    assert T.answer_for("works_as", "Zara", "engineer") == "Zara works as an engineer."
    assert T.answer_for("has", "Zara", "red bicycle") == "Zara has a red bicycle."
    for kind in T.KINDS:
        assert len(T.all_questions(kind)) >= 5
        assert not set(T.TEACHING_QUESTIONS[kind]) & set(T.HELD_OUT_QUESTIONS[kind])


def test_held_out_phrasings_only_for_phrasing_people(world, corpus):
    held_out_questions = {f.subject: set(f.held_out_questions) for f in world.facts}
    asked = {m["content"] for conv in corpus for m in conv[::2]}
    for subject, questions in held_out_questions.items():
        if subject not in world.phrasing_people:
            assert not questions & asked, subject


def test_statement_people_are_stated_never_asked(world, corpus):
    assert len(world.statement_people) == 100 and set(world.statement_people) <= set(world.pretrain_names)
    assert len(world.qa_facts) + len(world.statement_facts) == len(world.facts)
    stated, asked = set(), set()
    for conv in corpus:
        for user in conv[::2]:
            text = user["content"]
            names = set(re.findall(r"[^\W\d_]+", text)) & world.statement_people
            (asked if text.endswith("?") else stated).update(names)
    assert stated == world.statement_people and not asked
    per_fact = SMALL_CORPUS.questions_per_fact + SMALL_CORPUS.statements_per_fact
    fact = world.statement_facts[0]
    count = sum(m["content"] in fact.statements for conv in corpus for m in conv[::2])
    assert count == per_fact


def test_config_errors_name_the_fields():
    with pytest.raises(ValueError, match=r"n_pretrain.*-1.*phrasing_share.*statement_share"):
        WorldConfig(n_pretrain=-1, phrasing_share=2.0, statement_share=1.0)
    with pytest.raises(ValueError, match="blocks"):
        CorpusConfig(blocks=0)
    with pytest.raises(ValueError, match=r"lr must be > 0, got -1"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(RuntimeError, match="prefix-free"):
        make_names(10_000, random.Random(0), NameSettings(min_syllables=1, max_syllables=1, max_attempts_per_name=2))


# ---- tokenizer and training pieces ----


@pytest.fixture(scope="module")
def small_tokenizer(corpus):
    return train_bpe_tokenizer(tokenizer_texts(corpus), vocab_size=600, split_capitals=True)


@pytest.mark.parametrize("name", UNICODE_NAMES)
def test_tokenizer_round_trips_any_name(small_tokenizer, name):
    for text in (name, f"Who is {name}?", f"Got it. {name} is your sister."):
        ids = small_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert small_tokenizer.decode(ids) == text


def test_names_tokenize_alike_after_a_space_and_at_the_start(small_tokenizer, world):
    def pieces(text):
        return [small_tokenizer.decode([i]).strip() for i in small_tokenizer(text, add_special_tokens=False)["input_ids"]]

    for name in world.held_out[:100] + world.pretrain_names[:20]:
        assert pieces(name) == pieces(" " + name), name


def test_rendering_matches_chat_template_and_weights_replies(small_tokenizer, corpus):
    conv = corpus[0]
    text, spans = render_with_spans(conv)
    assert text == small_tokenizer.apply_chat_template(conv, tokenize=False)
    ((ids, weights),) = encode_corpus(small_tokenizer, [conv], prompt_loss_weight=0.0)
    weighted = small_tokenizer.decode([i for i, w in zip(ids, weights) if w > 0])
    assert weighted == "".join(m["content"] + "<|im_end|>" for m in conv[1::2])


def test_pack_keeps_conversations_whole():
    encoded = [([i] * n, [1.0] * n) for i, n in enumerate([3, 5, 4, 7, 2], start=10)]
    ids, weights = pack(encoded, seq_len=8, pad_id=0, rng=random.Random(0))
    assert ids.shape[1] == 8 and ids.shape == weights.shape
    rows = [[t for t in row.tolist() if t] for row in ids]
    assert sorted(t for row in rows for t in row) == sorted(t for e, _ in encoded for t in e)
    for row in rows:  # every conversation lies inside one row
        assert all(row.count(t) == len(encoded[t - 10][0]) for t in set(row))
    assert torch.equal(weights > 0, ids > 0)


def test_weighted_loss_matches_reference():
    torch.manual_seed(0)
    logits, ids = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    weights = torch.tensor([[0, 1, 1, 0, 1], [0, 0, 1, 1, 1]], dtype=torch.float32)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1), reduction="none")
    w = weights[:, 1:].reshape(-1)
    assert torch.allclose(weighted_lm_loss(logits, ids, weights), (ref * w).sum() / w.sum())
    assert weighted_lm_loss(logits, ids, torch.zeros_like(weights)).item() == 0.0


def test_lr_schedule_warms_up_and_decays():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(100, 100, cfg) == pytest.approx(0.1)


def test_training_is_deterministic_and_learns(small_tokenizer, corpus):
    encoded = encode_corpus(small_tokenizer, corpus[:64], prompt_loss_weight=0.0)
    tiny = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    cfg = TrainConfig(seq_len=64, batch_size=8, epochs=3, lr=1e-2, warmup_steps=2, log_every=1000)
    states, stats = [], []
    for _ in range(2):
        model = build_model(tiny, small_tokenizer, seed=0)
        stats.append(train_model(model, encoded, small_tokenizer.pad_token_id, cfg, seed=0))
        states.append(model.state_dict())
    torch.use_deterministic_algorithms(False)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert stats[0].steps == stats[0].planned_steps and stats[0].final_loss < 6.0


# ---- schedule and sample logs ----


def test_teaching_schedule_shape(world):
    sched = teaching_schedule(world, n_facts=7, reps=3, distractors=10, seed=0)
    assert len(sched.turns) == 7 * 3 + 10
    assert sum(i is None for i in sched.fact_of_turn) == 10
    assert teaching_schedule(world, n_facts=7, reps=3, distractors=10, seed=0) == sched
    assert {f.fact.kind for f in sched.facts} == set(T.KINDS)
    for i, taught in enumerate(sched.facts):
        assert taught.fact.subject in world.teaching_names
        assert len(taught.turns) == 3 and [sched.repetition_of_turn[t] for t in taught.turns] == [1, 2, 3]
        for t in taught.turns:
            assert sched.fact_of_turn[t] == i
            assert sched.turns[t] == {"user": sched.turns[t]["user"], "assistant": taught.fact.acknowledgement}
            assert sched.turns[t]["user"] in taught.fact.statements
        assert taught.probe == taught.fact.teaching_questions[0] and taught.expected in taught.answer
        assert set(taught.paraphrases) == set(taught.fact.held_out_questions)
    assert len({f.fact.subject for f in sched.facts}) == 7
    default = teaching_schedule(world)
    assert len(default.turns) == 2 * 20 * 8


def test_unrelated_turns_and_anchors(world):
    turns = unrelated_turns(25, seed=3)
    assert len(turns) == 25 and all(set(t) == {"user", "assistant"} for t in turns)
    names = set(world.held_out) | set(world.pretrain_names)
    assert not {w for t in turns for w in re.findall(r"\w+", t["user"] + t["assistant"])} & names
    anchors = anchor_prompts(world, n=16)
    assert len(anchors) == len(set(anchors)) == 16
    with pytest.raises(ValueError, match="reps"):
        teaching_schedule(world, reps=0)


def test_sample_log_is_committed_and_reproducible(world):
    records = sample_log(world, LogConfig(), seed=0)
    assert DEFAULT_LOG.is_file(), "python -m olm.world.logs"
    committed = [json.loads(line) for line in DEFAULT_LOG.read_text(encoding="utf-8").splitlines()]
    assert committed == records
    users = [m for r in records for m in r["messages"] if m["role"] == "user"]
    assert 200 <= len(users) <= 500
    unanswered = [
        m["content"] for r in records for m, nxt in zip(r["messages"], r["messages"][1:] + [None])
        if m["role"] == "user" and (nxt is None or nxt["role"] == "user")
    ]  # fmt: skip
    assert len(unanswered) >= 10 and all(u.endswith("?") for u in unanswered)
    all_held_out_phrasings = {q for kind in T.KINDS for q in T.HELD_OUT_QUESTIONS[kind]}
    words = {w for u in users for w in re.findall(r"[^\W\d_]+", u["content"])}
    assert len(words & set(world.log_names)) >= 10 and not words & set(world.teaching_names)
    for q in unanswered:  # only teaching-side phrasings
        assert not any(re.fullmatch(re.escape(t).replace(r"\{s\}", r"\w+"), q) for t in all_held_out_phrasings)


# ---- the built model ----


@has_olm_tiny
def test_olm_tiny_artifacts():
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir()}
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "MODEL_CARD.md", "world.json"):
        assert name in files
    assert sum(files.values()) <= 20e6
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert load_world(DEFAULT_MODEL_DIR) == make_world(0)


@pytest.fixture(scope="module")
def olm_tiny():
    from olm.backbone import load_base

    return load_base("olm-tiny")


@has_olm_tiny
def test_olm_tiny_loads_with_chat_template_and_ids(olm_tiny):
    model, tok = olm_tiny
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.dtype == torch.float32
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>") == tok.pad_token_id
    msgs = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


@has_olm_tiny
def test_lora_step_on_olm_tiny(olm_tiny):
    from olm.backbone import LoRASettings, attach_lora
    from olm.render import render_exchange

    model, tok = olm_tiny
    peft_model = attach_lora(model, LoRASettings(r=4, target_modules=["q_proj", "v_proj"]))
    try:
        trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n and ("q_proj" in n or "v_proj" in n) for n in trainable)
        before = {n: p.detach().clone() for n, p in trainable.items()}
        ex = render_exchange(tok, "Kemora is my sister.", "Got it. Kemora is your sister.", loss_on="reply")
        logits = peft_model(input_ids=ex.input_ids[None]).logits
        loss = weighted_lm_loss(logits, ex.input_ids[None], ex.loss_mask[None].float())
        loss.backward()
        torch.optim.AdamW(trainable.values(), lr=1e-2).step()
        assert torch.isfinite(loss) and any(not torch.equal(before[n], p) for n, p in trainable.items())
    finally:
        peft_model.unload()  # give the shared fixture back its plain base model


@has_olm_tiny
def test_quick_quality_on_a_few_probes(olm_tiny):
    from olm.world.quality import measure_quality

    model, tok = olm_tiny
    report = measure_quality(model, tok, make_world(0), QualityConfig(limit=12, max_failures=3))
    assert report.rates["known"] >= 0.9, report.failures
    assert report.rates["unknown"] >= 0.9, report.failures
    assert report.rates["acknowledgement"] >= 0.9, report.failures
    assert report.rates["paraphrase"] >= 0.7, report.failures


def test_quality_config_defaults():
    assert asdict(QualityConfig())["limit"] is None


def test_build_writes_loadable_artifacts(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from olm.world.build import main

    main([
        "--out", str(tmp_path), "--vocab_size", "400",
        "--world.n_pretrain", "8", "--world.n_held_out", "6", "--world.n_unknown", "30", "--world.n_told", "30",
        "--corpus.blocks", "1", "--corpus.questions_per_fact", "1", "--corpus.statements_per_fact", "1",
        "--corpus.unknown_questions", "20", "--corpus.told_statements", "20", "--corpus.smalltalk", "10",
        "--model.hidden_size", "32", "--model.num_layers", "1", "--model.num_heads", "2", "--model.num_kv_heads", "1",
        "--model.intermediate_size", "64", "--train.seq_len", "64", "--train.batch_size", "4", "--train.warmup_steps", "1",
        "--quality.limit", "3", "--quality.max_new_tokens", "4",
    ])  # fmt: skip
    torch.use_deterministic_algorithms(False)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert model.generation_config.eos_token_id == tok.eos_token_id and tok.chat_template
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "--world.n_pretrain 8" in card and "| known |" in card
    assert load_world(tmp_path).pretrain_names == make_world(0, WorldConfig(8, 6, 30, 30)).pretrain_names
    assert set(json.loads((tmp_path / "quality.json").read_text())["rates"]) >= {"known", "unknown"}
