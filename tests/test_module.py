"""OnlineLM on a tiny Qwen2 built in code: what one turn changes, KL at the start, loss going
down, the per-turn LR, fact context, replay counting and non-finite steps."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

import olm.module
from olm.callbacks import FactReplay
from olm.context import Context, kl_lambda, lr_multiplier
from olm.data import Turn
from olm.module import OnlineLM, OptimSettings


def turns(*pairs: tuple[str, str | None]) -> list[Turn]:
    return [
        Turn(conversation_id="c", user=u, assistant=a, history=(), source="test", offset=i, skipped=0)
        for i, (u, a) in enumerate(pairs)
    ]


def fit(model: OnlineLM, data: list[Turn], callbacks=(), **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(
        **{"accelerator": "cpu", "max_epochs": 1, "logger": False, "enable_checkpointing": False,
           "enable_progress_bar": False, "enable_model_summary": False, "callbacks": list(callbacks), **trainer_kwargs},
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=None))
    return trainer


class Recorder(Callback):
    """Records the optimizer LR seen at every optimizer step and after every turn."""

    def __init__(self) -> None:
        self.step_lrs: list[float] = []
        self.after_lrs: list[float] = []
        self.ce: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        opt = trainer.optimizers[0]
        opt.register_step_pre_hook(lambda o, args, kwargs: self.step_lrs.append(o.param_groups[0]["lr"]))

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.after_lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.ce.append(pl_module.last.ce)


@pytest.fixture
def model(tiny_model_dir) -> OnlineLM:
    torch.manual_seed(0)
    return OnlineLM(base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3))


def lora_and_base(model: OnlineLM) -> tuple[dict, dict]:
    lora, base = {}, {}
    for name, p in model.model.named_parameters():
        (lora if "lora_" in name else base)[name] = p.detach().clone()
    return lora, base


def test_turn_changes_only_lora_and_base_stays_bit_identical(model):
    lora0, base0 = lora_and_base(model)
    fit(model, turns(("Hello there.", "Hi!"), ("Zara is my sister.", "Got it. Zara is your sister."), ("Who is Zara?", None)))
    lora1, base1 = lora_and_base(model)
    assert all(torch.equal(base0[k], base1[k]) for k in base0)
    assert any(not torch.equal(lora0[k], lora1[k]) for k in lora0)
    assert model.turns_trained == 3


def test_kl_is_zero_on_first_step(model):
    fit(model, turns(("Hello there.", "Hi!")))
    assert model.last.kl == pytest.approx(0.0, abs=1e-7)  # LoRA B starts at 0: adapter == base


def test_repeated_training_lowers_the_turn_loss(tiny_model_dir):
    model = OnlineLM(base_model=tiny_model_dir, optim=OptimSettings(lr=1e-2, grad_clip=1.0))
    rec = Recorder()
    fit(model, turns(*[("Hello there, how are you today?", "Oslo is a city.")] * 12), callbacks=[rec])
    assert rec.ce[-1] < 0.9 * rec.ce[0]


def test_lr_is_base_times_multiplier_during_step_and_base_after(tiny_model_dir):
    model = OnlineLM(base_model=tiny_model_dir, optim=OptimSettings(lr=1e-4))
    rec = Recorder()
    fit(model, turns(("Hello there.", "Hi!"), ("Who is Zara?", "I don't know."), ("Zara is my sister.", "Got it.")), callbacks=[rec])
    policy = model.policy
    expected = [1e-4 * lr_multiplier(Context(k), policy) for k in ("chat", "question", "fact")]
    assert rec.step_lrs == pytest.approx(expected)
    assert rec.after_lrs == pytest.approx([1e-4] * 3)


def test_fact_turn_uses_fact_lr_and_dynamic_kl(tiny_model_dir):
    model = OnlineLM(base_model=tiny_model_dir, optim=OptimSettings(lr=1e-4, steps_per_fact=3))
    rec = Recorder()
    fit(model, turns(("Zara is my sister.", "Got it. Zara is your sister."), ("Zara is my sister.", "Got it. Zara is your sister.")), callbacks=[rec])
    p = model.policy
    first = 1e-4 * lr_multiplier(Context("fact", repetition=1), p)
    second = 1e-4 * lr_multiplier(Context("fact", repetition=2), p)
    assert second > first
    assert rec.step_lrs == pytest.approx([first] * 3 + [second] * 3)  # steps_per_fact = 3
    assert model.last.kind == "fact" and model.last.fact == "Zara | relation | sister"
    stored = model.memory.get("Zara", "relation")
    assert stored is not None and stored.count == 2
    ctx = Context("fact", repetition=2, importance=model.memory.importance_of(model.detector.detect("Zara is my sister."), 1))
    assert kl_lambda(ctx, p) <= p.kl_lambdas["fact"]


def test_replay_steps_run_at_interval_and_count_in_global_step(tiny_model_dir):
    model = OnlineLM(base_model=tiny_model_dir, optim=OptimSettings(lr=1e-4))
    data = turns(("Zara is my sister.", "Got it. Zara is your sister."), *[("Hello there.", "Hi!")] * 5)
    trainer = fit(model, data, callbacks=[FactReplay(interval=2)])
    # replays are queued after turns 2 and 4 and learned at the start of turns 3 and 5;
    # the one queued after turn 6 has no next turn to run in.
    assert trainer.global_step == len(data) + 2
    assert model.replay_queue == [("Zara", "relation")]


def test_nonfinite_loss_skips_step_and_leaves_adapter(model, monkeypatch):
    fit(model, turns(("Hello there.", "Hi!")))
    lora0, _ = lora_and_base(model)
    real = olm.module.online_loss

    def nan_loss(*args, **kwargs):
        out = real(*args, **kwargs)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(olm.module, "online_loss", nan_loss)
    before = model.nonfinite_steps
    fit(model, turns(("Hello again.", "Hi!")))
    lora1, _ = lora_and_base(model)
    assert model.nonfinite_steps == before + 1
    assert all(torch.equal(lora0[k], lora1[k]) for k in lora0)


@pytest.mark.parametrize("value", [float("nan"), 1e20], ids=["nan", "destroyed"])
def test_a_destroyed_adapter_is_never_saved_and_stops_the_run(model, tmp_path, value):
    from olm.callbacks import AdapterCheckpoint, TurnCheckpoint
    from olm.errors import AdapterDestroyed

    adapter, ckpt = AdapterCheckpoint(dirpath=str(tmp_path / "adapter")), TurnCheckpoint(dirpath=str(tmp_path / "ckpt"))
    trainer = fit(model, turns(("Hello there.", "Hi!")), callbacks=[adapter, ckpt], enable_checkpointing=True)
    good = (tmp_path / "adapter" / "latest" / "adapter_model.safetensors").read_bytes()
    last = (tmp_path / "ckpt" / "last.ckpt").read_bytes()
    with torch.no_grad():
        next(p for n, p in model.model.named_parameters() if "lora_B" in n).fill_(value)
    with pytest.raises(AdapterDestroyed, match="lora_B.*(NaN/inf|over its bound).*not saved"):
        adapter.save(trainer, model)
    with pytest.raises(AdapterDestroyed):
        ckpt.save_now(trainer)
    assert (tmp_path / "adapter" / "latest" / "adapter_model.safetensors").read_bytes() == good
    assert (tmp_path / "ckpt" / "last.ckpt").read_bytes() == last  # neither rotated nor replaced
    assert not (tmp_path / "ckpt" / "previous.ckpt").exists()


def test_checkpoint_of_another_base_or_adapter_shape_fails_with_one_sentence(tiny_model_dir, tmp_path):
    from olm.backbone import LoRASettings
    from conftest import build_tiny_model

    saved: dict = {"state_dict": {}}
    OnlineLM(base_model=tiny_model_dir).on_save_checkpoint(saved)
    OnlineLM(base_model=tiny_model_dir).on_load_checkpoint(saved)  # the same model and shape: accepted
    with pytest.raises(ValueError, match=r"LoRA r 4 alpha 16 .* this run's has r 8 alpha 16"):
        OnlineLM(base_model=tiny_model_dir, lora=LoRASettings(r=8)).on_load_checkpoint(saved)
    with pytest.raises(ValueError, match="alpha 16.*alpha 32"):
        OnlineLM(base_model=tiny_model_dir, lora=LoRASettings(alpha=32)).on_load_checkpoint(saved)
    other = build_tiny_model(tmp_path / "other", seed=1)  # same shape, other weights
    with pytest.raises(ValueError, match="trained on base model"):
        OnlineLM(base_model=other).on_load_checkpoint(saved)
    del saved["olm"]["identity"]  # a checkpoint from before the record: accepted
    OnlineLM(base_model=other).on_load_checkpoint(saved)


def test_generated_reply_reaches_the_listener_before_the_learning_step(model):
    chunks: list[tuple[str, bool]] = []
    model.reply_listener = lambda text, end: chunks.append((text, end))
    seen_at_learn: list[list] = []
    learn = model.learn
    model.learn = lambda *a, **k: (seen_at_learn.append(list(chunks)), learn(*a, **k))[1]
    fit(model, turns(("Hello there", None)))
    [before] = seen_at_learn
    assert before and before[-1][1] is True  # the whole reply was out before the step began
    assert "".join(t for t, _ in before).strip() == model.last.reply
    assert 0 < model.last.timings["reply_first_s"] <= model.last.timings["reply_s"]


def test_respond_skip_passes_unanswered_turns_without_learning(tiny_model_dir):
    torch.manual_seed(0)
    model = OnlineLM(base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3), respond="skip")
    model.generate = lambda *a, **k: pytest.fail("respond=skip must never generate")
    lora0, _ = lora_and_base(model)
    trainer = fit(model, turns(("Who is Zara?", None), ("Is Oslo a city?", None)))
    assert (model.turns_trained, model.no_reply_skipped, trainer.global_step) == (0, 2, 0)
    assert all(torch.equal(v, lora_and_base(model)[0][k]) for k, v in lora0.items())  # nothing learned
    fit(model, turns(("Hello there.", "Hi!"), ("Who is Zara?", None)))
    assert (model.turns_trained, model.no_reply_skipped) == (1, 3) and model.last.reply == "Hi!"
    saved: dict = {"state_dict": {}}
    model.on_save_checkpoint(saved)
    assert saved["olm"]["no_reply_skipped"] == 3


def test_tool_steps_are_context_and_cut_renderings_are_counted_and_warned(tiny_model_dir, monkeypatch, caplog):
    from olm.module import ObjectiveSettings

    model = OnlineLM(base_model=tiny_model_dir, objective=ObjectiveSettings(max_tokens=64, max_warnings=2))
    rendered = []
    real = olm.module.render_exchange
    monkeypatch.setattr(olm.module, "render_exchange", lambda *a, **k: rendered.append(real(*a, **k)) or rendered[-1])
    call = '[tool call] {"name": "f"}'
    tool_turn = Turn("c", "Cancel it.", f"{call}\nDone.", (), "t", 0, 0, context_spans=((0, len(call)),))
    with caplog.at_level("WARNING", logger="olm.module"):
        fit(model, [tool_turn] + turns(*[("Hello there, how are you today? " * 8, "Hi!")] * 4)[1:])
    trained = ["".join(e.text[s:t] for (s, t), m in zip(e.offsets, e.loss_mask.tolist()) if m) for e in rendered]
    assert rendered[0].cut_tokens == 0 and call in rendered[0].text  # the call is in view ...
    assert "Done." in trained[0] and '"name"' not in trained[0]  # ... but not a target
    assert model.truncated_tokens == 3 and caplog.text.count("cut to objective.max_tokens=64") == 2
    assert "further cuts are only counted" in caplog.text


def test_every_fact_of_a_message_is_learned_and_stored(tiny_model_dir):
    """"My name is Sam and I live in Lisbon.": each fact gets fact steps of its own, as if stated alone (the
    exchange with the most confident fact's Q/A rows, then the other's Q/A rows), both are remembered, the turn's
    record names both; max_facts=1 keeps one."""
    from olm.augment import AugmentSettings
    from olm.facts import DetectorConfig

    def run(detector: DetectorConfig) -> tuple[OnlineLM, list]:
        torch.manual_seed(0)
        model = OnlineLM(base_model=tiny_model_dir, augment=AugmentSettings(qa_pairs=1, paraphrases=0), detector=detector)
        seen, learn = [], model.learn
        model.learn = lambda examples, ctx, contexts=None, *a: seen.append((examples, ctx, contexts)) or learn(examples, ctx, contexts, *a)
        fit(model, turns(("My name is Sam and I live in Lisbon.", "Nice to meet you, Sam!")))
        return model, seen

    model, [(lead, ctx, _), (other, ctx2, _)] = run(DetectorConfig())
    assert ctx.kind == ctx2.kind == "fact" and [c.fact.pattern for c in (ctx, *ctx.more)] == ["i_live_in", "my_name_is"]
    assert ctx2 == ctx.more[0]
    assert len(lead) == 2 and "Where do I live?" in lead[1].text  # the exchange + its Q/A row
    assert len(other) == 1 and "What is my name?" in other[0].text
    assert {(f.relation, f.object) for f in model.memory} == {("lives_in", "Lisbon"), ("name", "Sam")}
    assert model.last.fact == "me | lives_in | Lisbon; me | name | Sam"
    assert model.global_step == 2 * model.optim.steps_per_fact

    model, [(lead, ctx, _)] = run(DetectorConfig(max_facts=1))
    assert ctx.more == () and len(lead) == 2
    assert [(f.relation, f.object) for f in model.memory] == [("lives_in", "Lisbon")]


def test_she_in_the_next_message_of_the_conversation_is_the_person_named_before(tiny_model_dir):
    """"Zara is my sister." then "She lives in Rome.": the second message's pronoun is Zara, in the same
    conversation (and only the message right after a named fact); another conversation's "she" is no one;
    the antecedent survives a checkpoint."""
    model = OnlineLM(base_model=tiny_model_dir)
    data = turns(("Zara is my sister.", "Got it."), ("She lives in Rome.", "Nice."), ("Hello there.", "Hi!"),
                 ("She works as a nurse.", "Oh."), ("Tom is my brother.", "Noted."))  # fmt: skip
    data.append(Turn(conversation_id="other", user="He has a red kite.", assistant="Nice.", history=(), source="test",
                     offset=len(data), skipped=0))  # fmt: skip
    fit(model, data)
    assert {(f.subject, f.relation, f.object) for f in model.memory} == {
        ("Zara", "sister", "sister"), ("Zara", "lives_in", "Rome"), ("Tom", "brother", "brother")}
    assert model.antecedent == ("other", None, None)
    saved: dict = {"state_dict": {}}
    model.antecedent = ("c", None, "Tom")
    model.on_save_checkpoint(saved)
    fresh = OnlineLM(base_model=tiny_model_dir)
    fresh.on_load_checkpoint(saved)
    assert fresh.antecedent == ("c", None, "Tom") and fresh.antecedent_for(data[0]) == "Tom"
    assert fresh.antecedent_for(data[-1]) is None  # another conversation
    saved["olm"]["antecedent"] = ["c", None, {"not": "a name"}]  # a damaged checkpoint: forgotten, not trusted
    fresh.on_load_checkpoint(saved)
    assert fresh.antecedent is None


def test_a_replay_of_two_facts_from_one_message_learns_its_exchange_once(tiny_model_dir):
    from olm.augment import AugmentSettings

    torch.manual_seed(0)
    model = OnlineLM(base_model=tiny_model_dir, augment=AugmentSettings(qa_pairs=1, paraphrases=0, on_replay=True))
    seen, learn = [], model.learn
    model.learn = lambda examples, ctx, contexts=None, *a: seen.append((examples, ctx, contexts)) or learn(examples, ctx, contexts, *a)
    fit(model, turns(("My name is Sam and I live in Lisbon.", "Nice to meet you, Sam!"), ("Hello there.", "Hi!")),
        callbacks=[FactReplay(interval=1)])
    [(examples, ctx, contexts)] = [s for s in seen if s[1].kind == "replay"]
    texts = [e.text for e in examples]
    assert sum("I live in Lisbon." in t for t in texts) == 1  # the stored exchange once, then one Q/A row per fact
    assert len(examples) == 3 and {c.fact.object for c in contexts} == {"Sam", "Lisbon"}


def test_routing_calibrates_on_the_speakers_questions_apart(tiny_model_dir):
    model = OnlineLM(base_model=tiny_model_dir)
    fit(model, turns(("Zara is my sister.", "Got it."), ("I live in Lisbon.", "Nice.")))
    everyone, speaker = model.recent_fact_questions(8), model.recent_fact_questions(8, speaker=True)
    assert "Where do I live?" in speaker and "Who is Zara?" in everyone
    assert set(speaker) < set(everyone) and not any("Zara" in q for q in speaker)
    assert model.router.speaker_questions(8) == speaker
