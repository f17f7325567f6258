"""Routing (`olm.routing`): each prompt answered by the adapter or by the base, by the adapter's read share."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
from test_module import fit, turns

from olm.bench.facts import main, reference, top1
from olm.generation import GenerationSettings, generate_replies
from olm.module import OnlineLM, OptimSettings
from olm.nullspace import lora_layers
from olm.render import messages_for, render_prompt
from olm.routing import (
    Router, RoutingSettings, adapter_disabled, addressee, asked_sentence, first_token_shift, gated,
    last_prompt_positions, left_padded, lora_snapshot, moved, own_tokens, prompt_batch, prompt_scores, read_shares,
    reply_shifts, template_prefix, threshold, token_shares,
)  # fmt: skip


SPEAKER = re.compile(r"\b(?:I|me|my|mine|myself)\b", re.IGNORECASE)  # default.yaml's speaker_words, as Router compiles them
ASSISTANT = re.compile(r"\b(?:you|your|yours|yourself)\b", re.IGNORECASE)  # ... and its assistant_words


def test_addressee_is_the_person_named_last():
    cases = {"What should I call you?": "assistant", "Tell me about yourself.": "assistant",
             "Do you know where I live?": "speaker", "Can you tell me my name?": "speaker",
             "what is my name": "speaker", "Where do you live?": "assistant", "Who is Tom?": None,
             "Youth is mine.": "speaker", "": None}  # fmt: skip
    for text, who in cases.items():
        assert addressee(text, SPEAKER, ASSISTANT) == who, text


def test_the_asking_frame_names_no_one():
    """"Do you know …", "Can you tell me …": who knows and who asks, not whom the question is about."""
    cases = {"Do you know who Zara is?": None, "Can you tell me who Zara is?": None,
             "do you remember where Tom works?": None, "Can you tell me a joke?": None,
             "Can you tell me where you live?": "assistant", "Do you know your name?": "assistant",
             "Could you please remind me what I like?": "speaker", "Do you know where I live?": "speaker",
             "Do you like music?": "assistant", "Do you know you are kind?": "assistant"}  # fmt: skip
    for text, who in cases.items():
        assert addressee(text, SPEAKER, ASSISTANT) == who, text


def test_the_asked_sentence_is_the_last_question_else_the_last_sentence():
    cases = {"I live in a small flat. Any decorating tips?": "Any decorating tips?", "What do I like?": "What do I like?",
             "Hi! What's my name? Thanks.": "What's my name?", "Tell me where I live.": "Tell me where I live.",
             "My kids are bored.  What games could we play?\n": "What games could we play?", "": ""}  # fmt: skip
    for text, asked in cases.items():
        assert asked_sentence(text) == asked, text


def test_token_shares_and_prompt_scores_use_only_the_rows_own_tokens():
    read = torch.tensor([[4.0, 1.0, 0.0], [9.0, 2.0, 3.0]])
    energy = torch.tensor([[8.0, 2.0, 0.0], [10.0, 4.0, 6.0]])
    shares = token_shares(read, energy)
    assert torch.allclose(shares, torch.tensor([[0.5, 0.5, 0.0], [0.9, 0.5, 0.5]]))
    own = torch.tensor([[False, True, True], [False, True, True]])  # column 0: the template prefix
    assert torch.allclose(prompt_scores(shares, own), torch.tensor([0.5, 0.5]))  # row 1's 0.9 is not its own
    assert torch.equal(prompt_scores(shares, torch.zeros_like(own)), torch.zeros(2))


def test_threshold_is_margin_times_the_quantile():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert threshold(scores, 1.0, 1.0) == 4.0
    assert threshold(scores, 1.0, 1.5) == 6.0
    assert threshold(scores, 0.5, 1.0) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="calibration"):
        threshold(torch.zeros(0), 1.0, 1.0)
    # the taught facts' questions raise τ to the geometric midpoint, never lower it
    assert threshold(scores, 1.0, 1.0, torch.tensor([16.0, 25.0])) == pytest.approx(8.0)
    assert threshold(scores, 1.0, 1.0, torch.tensor([1.0, 30.0])) == 4.0
    assert threshold(scores, 1.0, 1.0, torch.zeros(0)) == 4.0


@pytest.mark.parametrize(
    "bad",
    [{"margin": 0}, {"quantile": 0}, {"quantile": 1.5}, {"calibration": -1}, {"batch_size": 0}, {"tolerance": 1.0},
     {"shift_margin": -1.0}, {"shift_margin": float("inf")}, {"shift_margin": float("nan")}],
)
def test_bad_routing_settings_are_clear_errors(bad):
    with pytest.raises(ValueError, match="routing"):
        RoutingSettings(**bad)


def test_own_tokens_skip_the_shared_template_prefix_under_either_padding():
    prefix = [7, 8]
    ids = torch.tensor([[0, 0, 7, 8, 5], [7, 8, 5, 6, 0], [5, 7, 8, 6, 6]])
    attn = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    own = own_tokens(ids, attn, prefix)
    assert own.tolist() == [
        [False, False, False, False, True],  # left-padded: the prefix after the padding
        [False, False, True, True, False],  # right-padded
        [True, True, True, True, True],  # does not start with the prefix: every token is its own
    ]


@pytest.fixture(scope="module")
def module(tiny_model_dir):
    m = OnlineLM(base_model=tiny_model_dir, routing=RoutingSettings(enabled=True, calibration=4)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an adapter that changes the outputs everywhere
        for n, p in m.model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m


def _logits(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_gated_runs_each_row_with_the_adapter_on_or_off_in_one_batch(module):
    tok, model = module.tokenizer, module.model
    texts = [render_prompt(tok, messages_for(q)) for q in ("What is two plus two?", "Name a colour.", "Hi!")]
    batch = left_padded(tok, texts, "cpu")
    with torch.no_grad():
        on = _logits(model, batch)
        with model.disable_adapter():
            off = _logits(model, batch)
        with gated(model, torch.tensor([True, False, True])):
            mixed = _logits(model, batch)
        assert not torch.allclose(on, off, atol=1e-4)  # the adapter matters
        keep = batch["attention_mask"].bool()
        assert torch.allclose(mixed[0][keep[0]], on[0][keep[0]], atol=1e-5)
        assert torch.allclose(mixed[1][keep[1]], off[1][keep[1]], atol=1e-5)
        assert torch.allclose(mixed[2][keep[2]], on[2][keep[2]], atol=1e-5)
        with gated(model, torch.tensor([False, False, False])):
            assert torch.allclose(_logits(model, batch), off, atol=1e-6)
        assert torch.allclose(_logits(model, batch), on, atol=1e-6)  # hooks removed, adapter back on


def test_template_prefix_is_the_rendering_every_fresh_chat_starts_with(module):
    tok = module.tokenizer
    prefix = template_prefix(tok)
    for q in ("a question", "Zara is my sister."):
        ids = tok(render_prompt(tok, messages_for(q)), add_special_tokens=False).input_ids
        assert ids[: len(prefix)] == prefix and len(ids) > len(prefix)


def test_a_calibration_prompt_is_never_routed_above_the_maximum_and_tau_follows_the_weights(module):
    router, model, tok = module.router, module.model, module.tokenizer
    cal = router.calibration_scores(model)
    assert cal.shape == (4,) and bool((cal > 0).all())
    tau = router.tau(model)
    assert tau == pytest.approx(float(cal.max()))
    batch = left_padded(tok, [render_prompt(tok, messages_for(p)) for p in router.prompts], "cpu")
    assert not router.route(model, batch["input_ids"], batch["attention_mask"]).any()  # r ≤ τ: all the base
    lora_a = next(p for n, p in model.named_parameters() if "lora_A" in n)
    saved = lora_a.detach().clone()
    try:
        with torch.no_grad():
            lora_a.mul_(3.0)
        assert router.tau(model) != pytest.approx(tau)  # new weights: recalibrated
    finally:
        with torch.no_grad():
            lora_a.copy_(saved)
    assert router.tau(model) == pytest.approx(tau)


def test_a_low_threshold_gives_every_prompt_the_adapter_and_disabled_routing_changes_nothing(module):
    tok, model = module.tokenizer, module.model
    batch = left_padded(tok, [render_prompt(tok, messages_for("Something else entirely, 42."))], "cpu")
    low = Router(RoutingSettings(enabled=True, margin=1e-9, calibration=2), tok, module.router.prompts)
    assert low.route(model, batch["input_ids"], batch["attention_mask"]).all()
    off = Router(RoutingSettings(enabled=False), tok, module.router.prompts)
    assert off.route(model, batch["input_ids"], batch["attention_mask"]).all()


def test_inside_disable_adapter_nothing_is_routed_or_calibrated(module):
    router, model, tok = module.router, module.model, module.tokenizer
    batch = left_padded(tok, [render_prompt(tok, messages_for("Hello there."))], "cpu")
    router._tau = None
    with model.disable_adapter():
        assert adapter_disabled(model)
        assert router.route(model, batch["input_ids"], batch["attention_mask"]).all()
        assert router._tau is None  # no τ computed from a switched-off adapter
    assert not adapter_disabled(model)


def test_routed_generation_answers_unrelated_prompts_exactly_as_the_base(module):
    tok, model, router = module.tokenizer, module.model, module.router
    settings = GenerationSettings(max_new_tokens=8)
    convs = [messages_for(p) for p in router.prompts]  # scores at most τ: every one goes to the base
    with model.disable_adapter():
        base = generate_replies(model, tok, convs, settings)
    adapted = generate_replies(model, tok, convs, settings)
    routed = generate_replies(model, tok, convs, settings, router=router)
    assert routed == base
    assert adapted != base  # the adapter would have changed them
    high = Router(RoutingSettings(enabled=True, margin=1e-9, calibration=2), tok, router.prompts)
    assert generate_replies(model, tok, convs, settings, router=high) == adapted


def test_module_generate_and_teacher_forced_locality_are_routed(module):
    tok, model, router = module.tokenizer, module.model, module.router
    prompt = router.prompts[0]
    with model.disable_adapter():
        base = module.generate(prompt)
    assert module.generate(prompt) == base  # a calibration prompt: routed to the base
    ref = reference(module, router.prompts, [])
    assert torch.equal(top1(module, ref.ids, ref.attention, ref.positions, router), ref.base_top1)
    assert not torch.equal(top1(module, ref.ids, ref.attention, ref.positions), ref.base_top1)


def test_the_facts_bench_reports_the_share_of_each_probe_set_routed_to_the_adapter(tmp_path, tiny_model_dir):
    argv = ["--out", str(tmp_path), "--model", tiny_model_dir, "--facts", "2", "--reps", "1", "--unrelated", "1",
            "--seeds", "0", "--rows", "tuned", "--threads", "1", "--set=--model.routing.enabled=true",
            "--set=--model.routing.calibration=4"]  # fmt: skip
    assert main(argv) == 0
    routed = json.loads((tmp_path / "runs" / "tuned-seed0.json").read_text())["metrics"]["routed"]
    assert {"round1", "generalization", "retention", "gk_teach", "gk_after", "general_teach", "general_after"} <= set(routed)
    assert all(0.0 <= v <= 1.0 for v in routed.values())
    plain = tmp_path / "plain"
    assert main([*argv[:1], str(plain), *argv[2:-2], "--set=--model.routing.enabled=false"]) == 0  # nothing reported
    assert json.loads((plain / "runs" / "tuned-seed0.json").read_text())["metrics"]["routed"] is None


def test_a_generated_reply_is_routed_and_the_next_tau_is_computed_after_learning(tiny_model_dir):
    m = OnlineLM(base_model=tiny_model_dir, optim=OptimSettings(lr=1e-2), routing=RoutingSettings(enabled=True, calibration=3))
    routed = []
    route = m.router.route
    m.router.route = lambda *a, **k: (routed.append(1), route(*a, **k))[1]
    fit(m, turns(("Hello there", None), ("And how are you?", None)))
    assert len(routed) == 2  # each generated reply went through the router
    assert m.last.timings["routing_calibration"] > 0
    assert m.router._tau is not None and not moved(m.model, m.router._tau[0], 0.0)  # τ of the final weights
    assert 0.0 <= m.latest_scalars["routing/adapter_on"] <= 1.0
    fit(m, turns(("Hi", "Hello!")))  # a logged reply: nothing generated, nothing routed or calibrated
    assert len(routed) == 2 and "routing_calibration" not in m.last.timings


def test_read_shares_stop_after_the_last_adapted_layer_and_average_each_layers_share(module):
    tok, model = module.tokenizer, module.model
    batch = left_padded(tok, [render_prompt(tok, messages_for(p)) for p in ("Who is Zara?", "Hi")], "cpu")
    head = model.get_output_embeddings()
    called = []
    handle = head.register_forward_hook(lambda *a: called.append(1))
    try:
        shares = read_shares(model, batch["input_ids"], batch["attention_mask"])
    finally:
        handle.remove()
    assert not called  # no LM head: the forward stopped once every adapted layer was measured
    per_layer = []

    def record(_m, args, out):
        per_layer.append(out.pow(2).sum(-1) / args[0].pow(2).sum(-1))

    handles = [layer.lora_A["default"].register_forward_hook(record) for layer in lora_layers(model).values()]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    assert len(per_layer) > 1 and shares.shape == batch["input_ids"].shape
    real = batch["attention_mask"].bool()  # (a left pad's input can be all zeros: 0/0 by hand, 0 in read_shares)
    assert torch.allclose(shares[real], torch.stack(per_layer).mean(0)[real], rtol=1e-5)  # the mean, not Σ/Σ


def test_the_taught_facts_questions_raise_tau_and_a_new_fact_recalibrates(module):
    model, tok = module.model, module.tokenizer
    asked = []
    questions = ["Who is Zara?", "Where does Zara live?"]
    router = Router(
        RoutingSettings(enabled=True, calibration=4, facts=3), tok, module.router.prompts,
        lambda n: (asked.append(n), list(questions))[1],
    )  # fmt: skip
    tau0 = float(router.calibration_scores(model).max())
    facts = router.calibration_scores(model, questions)
    want = max(tau0, (tau0 * float(facts.min())) ** 0.5)
    assert router.tau(model) == pytest.approx(want) and asked == [3]
    assert router.tau(model) == pytest.approx(want)  # same weights, same questions: cached
    questions.append("What is 2 plus 2?")  # a new fact stated
    high = threshold(router.calibration_scores(model), 1.0, 1.0, router.calibration_scores(model, questions))
    assert router.tau(model) == pytest.approx(high)
    assert Router(RoutingSettings(enabled=True, calibration=4, facts=0), tok, module.router.prompts,
                  lambda n: pytest.fail("facts=0 asks for no questions")).tau(model) == pytest.approx(tau0)


def test_the_module_calibrates_on_the_trained_questions_of_its_latest_facts(tiny_model_dir):
    m = OnlineLM(base_model=tiny_model_dir, routing=RoutingSettings(enabled=True, calibration=2))
    assert m.recent_fact_questions(5) == []
    fit(m, turns(("Zara is my sister.", "Nice!"), ("Leo lives in Paris.", "Cool."), ("Zara is my sister.", "Yes.")))
    latest = m.recent_fact_questions(1)
    assert "Who is Zara?" in latest and not any("Leo" in q for q in latest)  # Zara's statement is the latest
    both = m.recent_fact_questions(5)
    assert "Where does Leo live?" in both and set(latest) < set(both)


def test_tau_is_recomputed_past_the_tolerance_only(module):
    model, tok = module.model, module.tokenizer
    router = Router(RoutingSettings(enabled=True, calibration=2, tolerance=0.05), tok, module.router.prompts)
    calls = []
    scores = router.calibration_scores
    router.calibration_scores = lambda m: (calls.append(1), scores(m))[1]
    snap = lora_snapshot(model)
    lora_b = next(p for n, p in model.named_parameters() if "lora_B" in n)
    try:
        router.tau(model)
        with torch.no_grad():
            lora_b.mul_(1.01)  # 1 % of that tensor: within the tolerance
        assert not moved(model, snap, 0.05) and moved(model, snap, 0.0)
        router.tau(model)
        assert len(calls) == 1
        with torch.no_grad():
            lora_b.mul_(1.2)
        router.tau(model)
        assert len(calls) == 2
    finally:
        with torch.no_grad():
            lora_b.copy_(snap[next(n for n, p in model.named_parameters() if p is lora_b)])
    assert not moved(model, snap, 0.0)


def test_last_prompt_positions_under_either_padding_and_with_prompt_end():
    attn = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert last_prompt_positions(attn).tolist() == [4, 2, 4]
    assert last_prompt_positions(attn, torch.tensor([5, 2, 3])).tolist() == [4, 1, 2]


def test_first_token_shift_is_the_kl_of_the_next_token_after_each_prompt(module):
    tok, model = module.tokenizer, module.model
    texts = [render_prompt(tok, messages_for(q)) for q in ("What is two plus two?", "Hi!")]
    batch = left_padded(tok, texts, "cpu")
    ids, attn = batch["input_ids"], batch["attention_mask"]
    shift = first_token_shift(model, ids, attn)
    with torch.no_grad():
        q = torch.log_softmax(_logits(model, batch)[:, -1], -1)
        with model.disable_adapter():
            p = torch.log_softmax(_logits(model, batch)[:, -1], -1)
    assert torch.allclose(shift, (p.exp() * (p - q)).sum(-1), atol=1e-5) and bool((shift > 0).all())
    # teacher forcing: the prompt ends before prompt_end, whatever follows it
    longer = torch.cat([ids, ids[:, -2:]], dim=1), torch.cat([attn, attn[:, -2:]], dim=1)
    forced = first_token_shift(model, *longer, torch.full((2,), ids.shape[1]))
    assert torch.allclose(forced, shift, atol=1e-5)
    with torch.no_grad():  # an adapter whose B is zero says nothing new: no shift
        saved = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.zero_()
        try:
            assert torch.allclose(first_token_shift(model, ids, attn), torch.zeros(2), atol=1e-6)
        finally:
            for n, p in model.named_parameters():
                if n in saved:
                    p.copy_(saved[n])


def _greedy_shifts(model, prompt: torch.Tensor, n: int) -> tuple[list[int], list[float]]:
    """One unpadded prompt: the adapter's n greedy tokens (full forwards, no cache) and the KL(base ‖ adapter)
    at each of those n positions."""
    seq, kls = prompt[None], []
    with torch.no_grad():
        for _ in range(n):
            q = torch.log_softmax(model(input_ids=seq).logits[0, -1], -1)
            with model.disable_adapter():
                p = torch.log_softmax(model(input_ids=seq).logits[0, -1], -1)
            kls.append(float((p.exp() * (p - q)).sum()))
            seq = torch.cat([seq, q.argmax()[None, None]], dim=1)
    return seq[0, len(prompt) :].tolist(), kls


def test_prompt_batch_keeps_each_rows_prompt_left_padded():
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 3, 4, 0]])
    attn = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    out, mask = prompt_batch(ids, attn, None, 0)
    assert out.tolist() == [[0, 5, 6, 7], [8, 9, 3, 4]] and mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]
    out, mask = prompt_batch(ids, attn, torch.tensor([4, 2]), 1)  # teacher forcing: the prompt ends before
    assert out.tolist() == [[5, 6], [8, 9]] and mask.tolist() == [[1, 1], [1, 1]]


def test_reply_shifts_are_the_kl_along_the_adapters_own_greedy_reply(module):
    tok, model = module.tokenizer, module.model
    questions = ("What is two plus two?", "Hi!")
    batch = left_padded(tok, [render_prompt(tok, messages_for(q)) for q in questions], "cpu")
    ids, attn = batch["input_ids"], batch["attention_mask"]
    shifts = reply_shifts(model, ids, attn, tokens=4, pad=tok.pad_token_id)
    assert shifts.shape == (2, 4)
    assert torch.allclose(shifts[:, 0], first_token_shift(model, ids, attn), atol=1e-5)
    assert torch.allclose(reply_shifts(model, ids, attn, tokens=1, pad=tok.pad_token_id)[:, 0], shifts[:, 0])
    chosen = []
    for i in range(2):  # the cached greedy steps under left padding equal unpadded full forwards
        greedy, kls = _greedy_shifts(model, ids[i][attn[i].bool()], 4)
        chosen.append(greedy)
        assert torch.allclose(shifts[i], torch.tensor(kls), atol=1e-4), (shifts[i], kls)
    # a stop token ends the reply: the positions after it read 0
    ended = reply_shifts(model, ids, attn, tokens=4, stop=frozenset({chosen[0][0]}), pad=tok.pad_token_id)
    assert ended[0, 0] == pytest.approx(float(shifts[0, 0])) and ended[0, 1:].tolist() == [0.0, 0.0, 0.0]
    # teacher forcing: rows that go on past their prompt are read from their prompt alone
    longer = torch.cat([ids, ids[:, -2:]], dim=1), torch.cat([attn, attn[:, -2:]], dim=1)
    forced = reply_shifts(model, *longer, torch.full((2,), ids.shape[1]), tokens=4, pad=tok.pad_token_id)
    assert torch.allclose(forced, shifts, atol=1e-4)


def test_shift_tokens_routes_by_either_read_against_its_own_calibration(module, monkeypatch):
    """With shift_tokens N > 1 a prompt gets the adapter when its first-token shift is above κ_1 or its largest
    shift over N reply tokens above κ_N, each κ = shift_margin × that read's calibration maximum."""
    tok, model = module.tokenizer, module.model
    prompts = module.router.prompts
    import olm.routing as routing

    calibration = torch.tensor([[0.1, 0.5, 0, 0], [0.4, 1.0, 0, 0], [0.2, 3.0, 0, 0], [0.3, 0.2, 0, 0]])
    asked = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 2.0, 1.0, 0.0], [0.1, 0.2, 7.0, 0.1]])
    kls = {4: calibration, 3: asked}  # by rows: the 4 calibration prompts, the 3 asked (each names the speaker)
    monkeypatch.setattr(routing, "reply_shifts", lambda m, ids, *a, **k: kls[ids.shape[0]])
    router = Router(RoutingSettings(enabled=True, calibration=4, shift_margin=2.0, shift_tokens=4), tok, prompts)
    monkeypatch.setattr(router, "scores", lambda m, ids, attn, end=None: torch.zeros(ids.shape[0]))
    texts = ["When is my birthday?", "Hi, I'm back.", "What is my name?"]
    batch = left_padded(tok, [render_prompt(tok, messages_for(q)) for q in texts], "cpu")
    on = router.route(model, batch["input_ids"], batch["attention_mask"])
    assert router.kappa(model).tolist() == pytest.approx([0.8, 6.0])  # 2 × (0.4, 3.0)
    assert on.tolist() == [True, False, True]  # first read 1.0 > 0.8; 0.5 and 2.0 under both; largest 7.0 > 6.0
    with pytest.raises(ValueError, match="shift_tokens"):
        RoutingSettings(shift_tokens=0)


def test_shift_margin_routes_a_prompt_the_adapter_answers_differently_whatever_its_read_share(module, monkeypatch):
    """A prompt below τ still gets the adapter when its first-token shift is above κ = shift_margin × the
    calibration prompts' largest; without shift_margin the read share alone decides."""
    tok, model = module.tokenizer, module.model
    prompts = module.router.prompts
    batch = left_padded(tok, [render_prompt(tok, messages_for(q)) for q in ("When is my birthday?", "Hi, me again!")], "cpu")
    shifts = {len(prompts): torch.tensor([0.1, 0.2, 0.3, 0.4]), 2: torch.tensor([1.0, 0.5])}
    import olm.routing as routing

    monkeypatch.setattr(routing, "first_token_shift", lambda m, ids, attn, end=None, base=None: shifts[ids.shape[0]])
    for margin, expected in ((0.0, [False, False]), (2.0, [True, False]), (3.0, [False, False])):
        router = Router(RoutingSettings(enabled=True, calibration=4, shift_margin=margin), tok, prompts)
        monkeypatch.setattr(router, "scores", lambda m, ids, attn, end=None: torch.zeros(ids.shape[0]))
        on = router.route(model, batch["input_ids"], batch["attention_mask"])
        assert on.tolist() == expected, margin
        assert router.kappa(model).tolist() == ([pytest.approx(margin * 0.4)] if margin else [float("inf")])


def test_speaker_shift_holds_the_speakers_questions_to_a_kappa_calibrated_on_their_trained_ones(module, monkeypatch):
    """With `speaker_shift`, a prompt about the speaker needs a shift above κ_S = min(κ, √(c · f)) only, c the
    calibration prompts' largest shift and f the smallest of the speaker's trained questions; κ where f ≤ c; a prompt
    that names no one keeps κ, and so does one whose question names no one after a sentence about the speaker ("I
    live in a flat. Any decorating tips?"); one put to the assistant gets no shift read at all."""
    tok, model = module.tokenizer, module.model
    prompts = module.router.prompts
    shift_of = {"What language do I speak?": 7.3, "Which tongue am I fluent in?": 6.0, "I need dinner ideas.": 3.0,
                "Tell a joke.": 6.0, "What languages do you speak?": 9.5,
                "I live in a flat. Any decorating tips?": 7.0}  # the question names no one: κ  # fmt: skip
    asked = list(shift_of)
    batch = left_padded(tok, [render_prompt(tok, messages_for(q)) for q in asked], "cpu")
    import olm.routing as routing

    def shift(m, ids, attn, end=None, base=None):
        texts = [tok.decode(row) for row in ids.tolist()]
        return torch.tensor([next((v for q, v in shift_of.items() if q in t), 4.4) for t in texts])  # prompts: 4.4

    monkeypatch.setattr(routing, "first_token_shift", shift)
    trained = lambda n: ["What language do I speak?"]  # noqa: E731 - the speaker's fact, its trained question
    cases = ((False, [4.4, 7.3], [False] * 6),  # κ = 8.8 for all: even the trained question (7.3) goes to the base
             (True, [4.4, 7.3], [True, True, False, False, False, False]),  # κ_S = √(4.4 · 7.3) = 5.67 for the speaker's
             (True, [4.4, 4.0], [False] * 6))  # f ≤ c: κ_S = κ (not c, which "Which tongue" would pass)  # fmt: skip
    for on, (c, f), expected in cases:
        shift_of["What language do I speak?"] = f
        settings = RoutingSettings(enabled=True, calibration=4, shift_margin=2.0, speaker_shift=on)
        router = Router(settings, tok, prompts, trained, trained)
        monkeypatch.setattr(router, "scores", lambda m, ids, attn, end=None: torch.zeros(ids.shape[0]))
        assert router.kappa(model).tolist() == [pytest.approx(2 * c)]
        kappa_s = min(2 * c, (c * f) ** 0.5) if on and f > c else 2 * c
        assert router.speaker_kappa(model).tolist() == [pytest.approx(kappa_s)]
        assert router.route(model, batch["input_ids"], batch["attention_mask"]).tolist() == expected, (on, f)
    got = routing.speaker_kappa(torch.tensor([8.8, 1.0]), torch.tensor([4.4, 0.5]), torch.tensor([100.0, 0.2]))
    assert got.tolist() == [pytest.approx(8.8), pytest.approx(1.0)]  # never above κ; κ where the trained shift less


def test_calibration_shifts_keep_the_base_outputs_and_equal_a_fresh_computation(module, monkeypatch):
    router = Router(RoutingSettings(enabled=True, calibration=4, batch_size=3, shift_margin=1.0), module.tokenizer,
                    module.router.prompts)  # fmt: skip
    fresh = router.calibration_shifts(module.model, list(router.prompts))  # no cache for explicit prompts
    cached = router.calibration_shifts(module.model)
    assert cached.shape == (4, 1) and torch.allclose(cached, fresh, atol=1e-5)
    import olm.routing as routing

    calls = []
    real = routing.first_token_log_probs
    monkeypatch.setattr(routing, "first_token_log_probs", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = router.calibration_shifts(module.model)
    assert torch.allclose(again, cached) and len(calls) == 2  # two batches, adapter on only: the base is kept
    router.settings = RoutingSettings(enabled=True, calibration=4, batch_size=4, shift_margin=1.0)
    assert torch.allclose(router.calibration_shifts(module.model), cached, atol=1e-5)  # other batches, same rows


def test_the_shift_reads_route_only_prompts_that_speak_of_the_speaker(module, monkeypatch):
    """"What is your name?" shares nearly the key of "What is my name?": an adapter that answers it differently
    leaks the speaker's fact, so a prompt put to the assistant (`assistant_words`) without `speaker_words` goes by its
    read share alone, and its shift is not even computed; "i" typed in lower case counts; one that names neither
    ("Tell a joke.") keeps its shift reads; `assistant_words: []` holds it apart too; `speaker_words: []` restores
    the rule before."""
    tok, model = module.tokenizer, module.model
    prompts = module.router.prompts
    import olm.routing as routing

    texts = ["What is your name?", "what is my name?", "Where do you live?", "i live where, again", "Tell a joke."]
    batch = left_padded(tok, [render_prompt(tok, messages_for(q)) for q in texts], "cpu")
    asked, read = [], {len(prompts): torch.zeros(len(prompts)), len(texts): torch.zeros(len(texts)), 1: torch.zeros(1)}

    def shift(m, ids, attn, end=None, base=None):
        asked.append(ids.shape[0])
        return torch.full((ids.shape[0],), 0.1 if ids.shape[0] == len(prompts) else 9.0)  # every asked prompt shifts

    monkeypatch.setattr(routing, "first_token_shift", shift)
    speaker = [False, True, False, True, False]
    settings = RoutingSettings(enabled=True, calibration=4, shift_margin=2.0)
    mine = lambda n: ["What is my name?"]  # noqa: E731 - a fact about the speaker remembered
    cases = (({}, [False, True, False, True, True], [True, False, True, False, False], 3),
             ({"assistant_words": []}, speaker, [True, False, True, False, True], 2),
             ({"speaker_words": []}, [True] * 5, [False] * 5, 5))  # fmt: skip
    for change, expected, held, computed in cases:
        router = Router(replace(settings, **change), tok, prompts, mine, mine)
        monkeypatch.setattr(router, "scores", lambda m, ids, attn, end=None: read[ids.shape[0]])
        asked.clear()
        assert router.mentions(batch["input_ids"], batch["attention_mask"]).tolist() == (
            [True] * 5 if change.get("speaker_words") == [] else speaker)
        assert router.held_apart(batch["input_ids"], batch["attention_mask"]).tolist() == held
        assert router.route(model, batch["input_ids"], batch["attention_mask"]).tolist() == expected
        assert asked[-1] == computed  # the rows it reads: those that could still get the adapter
    router = Router(settings, tok, prompts, mine, mine)
    monkeypatch.setattr(router, "scores", lambda m, ids, attn, end=None: read[ids.shape[0]])
    read[len(texts)] = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])  # above τ = 0: the read share routes these two
    assert router.route(model, batch["input_ids"], batch["attention_mask"]).tolist() == [True, True, False, True, True]
    assert asked[-1] == 2  # "i live where, again" and "Tell a joke."
    # no fact about the speaker: a prompt put to the assistant still gets no shift read ("Where do you live?" after
    # "Zara lives in Rome."; τ_S = 0); with `assistant_words: []` the rule waits for a fact about the speaker
    cases = (({}, True, [True, True, False, True, True]), ({"assistant_words": []}, False, [True] * 5))
    for change, rule, expected in cases:
        nobody = Router(replace(settings, **change), tok, prompts, lambda n: ["Who is Zara?"], lambda n: [])
        monkeypatch.setattr(nobody, "scores", lambda m, ids, attn, end=None: read[ids.shape[0]])
        assert nobody.speaker_rule(model) == rule and nobody.speaker_tau(model) == 0.0
        assert nobody.route(model, batch["input_ids"], batch["attention_mask"]).tolist() == expected
    # with history, the last user message alone: asked of the assistant after the speaker's own statement
    chats = [messages_for("Are you allergic to anything?", (("I am allergic to celery.", "Noted."),)),
             messages_for("And what am I allergic to?", (("Hello.", "Hi!"),))]  # fmt: skip
    batch = left_padded(tok, [render_prompt(tok, m) for m in chats], "cpu")
    assert router.mentions(batch["input_ids"], batch["attention_mask"]).tolist() == [False, True]
    # a message naming both asks about the one named last: "What should I call you?" is put to the assistant
    asked = [messages_for(q) for q in ("What should I call you?", "Can you tell me where you live?",
                                       "Do you know where I live?", "Can you tell me my name?")]
    batch = left_padded(tok, [render_prompt(tok, m) for m in asked], "cpu")
    assert router.held_apart(batch["input_ids"], batch["attention_mask"]).tolist() == [True, True, False, False]
    before = Router(replace(settings, assistant_words=[]), tok, prompts, mine, mine)  # the rule before: "I" frees it
    assert before.held_apart(batch["input_ids"], batch["attention_mask"]).tolist() == [False] * 4
    with pytest.raises(ValueError, match="speaker_words"):
        RoutingSettings(speaker_words=["my name"])
    with pytest.raises(ValueError, match="assistant_words"):
        RoutingSettings(assistant_words=["you?"])


def test_a_prompt_that_does_not_name_the_speaker_must_read_above_the_speakers_questions(module, monkeypatch):
    """Facts about the speaker are keyed on common words: "Are you allergic to anything?" reads as much as the
    trained "What am I allergic to?", so a prompt without `speaker_words` needs a read above τ_S = speaker_margin ×
    the speaker's questions' largest; the speaker's own questions keep τ; a made-up person's name reads above both."""
    tok, model = module.tokenizer, module.model
    prompts = module.router.prompts
    reads = {"What am I allergic to?": 0.0049, "Are you allergic to anything?": 0.0050, "Who is Zara?": 0.02,
             "What is the capital of France?": 0.0}  # fmt: skip

    def scores(m, ids, attn, end=None):
        texts = [tok.decode(row) for row in ids.tolist()]
        return torch.tensor([next((v for q, v in reads.items() if q in t), 0.001) for t in texts])  # prompts 0.001

    asked = list(reads)
    batch = left_padded(tok, [render_prompt(tok, messages_for(q)) for q in asked], "cpu")
    for margin, expected, tau_s in ((2.0, [True, False, True, False], 0.0098), (0.0, [True, True, True, False], 0.0)):
        router = Router(RoutingSettings(enabled=True, calibration=4, speaker_margin=margin), tok, prompts,
                        lambda n: ["What am I allergic to?", "Who is Zara?"], lambda n: ["What am I allergic to?"])
        monkeypatch.setattr(router, "scores", scores)
        assert router.tau(model) == pytest.approx((0.001 * 0.0049) ** 0.5)  # the midpoint of τ_0 and the facts' lowest
        assert router.speaker_tau(model) == pytest.approx(tau_s)
        assert router.route(model, batch["input_ids"], batch["attention_mask"]).tolist() == expected, margin
    with pytest.raises(ValueError, match="speaker_margin"):
        RoutingSettings(speaker_margin=-1.0)


def test_a_prompt_about_a_relative_the_memory_does_not_know_goes_to_the_base(module, monkeypatch):
    """Taught "My sister works at Halden Pharma.", an adapter answers "Where does my boss work?" with the sister's
    employer: a prompt naming only relatives the memory knows nothing about gets the base; one naming a known
    relative ("my sister", "my older sister", "my mother" once "my mum" is known, or "my boss" once "Zara is my
    boss.") and one naming none keep their route; `unknown_relatives: false` routes all alike."""
    from olm.facts import DetectorConfig, relation_key, relatives_regex

    tok, model = module.tokenizer, module.model
    texts = ["Where does my boss work?", "Where does my sister work?", "Where does my older sister work?",
             "What is my name?", "Does my boss know my sister?", "Where does my mother live?"]  # fmt: skip
    batch = left_padded(tok, [render_prompt(tok, messages_for(q)) for q in texts], "cpu")
    known = {"sister"}
    settings = RoutingSettings(enabled=True, calibration=4)
    relatives = (relatives_regex(DetectorConfig()), lambda: known, relation_key(DetectorConfig()))
    router = Router(settings, tok, module.router.prompts, relatives=relatives)
    read = lambda m, ids, attn, end=None: torch.full((ids.shape[0],), float(ids.shape[0] == len(texts)))  # noqa: E731
    monkeypatch.setattr(router, "scores", read)  # the calibration prompts read 0, these 1: all above τ
    ids, attn = batch["input_ids"], batch["attention_mask"]
    assert router.unknown_relative(ids, attn).tolist() == [True, False, False, False, False, True]
    assert router.route(model, ids, attn).tolist() == [False, True, True, True, True, False]
    known.update({"boss", "mum"})  # "Zara is my boss.", "My mum lives in Leeds."
    assert router.route(model, ids, attn).tolist() == [True] * 6
    known.clear()
    assert router.unknown_relative(ids, attn).tolist() == [True, True, True, False, True, True]
    off = Router(replace(settings, unknown_relatives=False), tok, module.router.prompts, relatives=relatives)
    monkeypatch.setattr(off, "scores", read)
    assert off.route(model, ids, attn).tolist() == [True] * 6


def test_the_module_knows_the_relatives_its_memory_holds_facts_about(tiny_model_dir):
    lm = OnlineLM(base_model=tiny_model_dir)
    for text in ("My mom lives in Lyon.", "Zara is my older sister.", "Tom lives in Oslo.", "I live in Rome."):
        fact = lm.detector.detect(text)
        lm.memory.store(fact, text, "Got it.", 0)
    assert lm.known_relatives() == {"mom", "older sister"}
