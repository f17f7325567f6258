"""Per-user learning (olm/users.py): user ids, isolation between users, LRU eviction, resume.

The isolation tests stream user A's facts interleaved with user B's chat and compare B's adapter,
memory and locality figures, bit for bit, with a run of B's turns alone (LoRA dropout on: each
user draws from its own RNG stream)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from olm.augment import AugmentSettings
from olm.callbacks import FactReplay, TurnCheckpoint
from olm.data import ChatStreamDataModule, ChatTurnStream, Turn
from olm.locality import LocalitySettings
from olm.module import OnlineLM, OptimSettings
from olm.render import render_exchange
from olm.users import DEFAULT_USER, adapter_name, user_id_problem, validate_user_id

A_TURNS = [
    ("Zara is my sister.", "Got it. Zara is your sister."),
    ("Xiomara lives in Lisbon.", "Got it. Xiomara lives in Lisbon."),
    ("Zara is my sister.", "Got it. Zara is your sister."),
    ("Xiomara lives in Lisbon.", "Got it. Xiomara lives in Lisbon."),
    ("Zara is my sister.", "Got it. Zara is your sister."),
    ("Zara is my sister.", "Got it. Zara is your sister."),
]
B_TURNS = [
    ("Hello there, how are you today?", "Hello there, how are you today?"),
    ("Oslo is a city. Nurses work in hospitals.", "Oslo is a city."),
    ("Xiomara lives in Oslo.", "Got it. Xiomara lives in Oslo."),
    ("Hello there, how are you today?", "Hello there, how are you today?"),
    ("Who is Zara?", "Hello there."),
]


def turns_of(*streams: tuple[str, list[tuple[str, str]]], interleave: bool = True) -> list[Turn]:
    """Turns of several users' streams, round robin (or one after another)."""
    order = []
    if interleave:
        for i in range(max(len(s) for _, s in streams)):
            order += [(user, s[i]) for user, s in streams if i < len(s)]
    else:
        order = [(user, pair) for user, s in streams for pair in s]
    return [
        Turn(f"c-{user}", u, a, (), "test", i, 0, user_id=user) for i, (user, (u, a)) in enumerate(order)
    ]


class Figures(Callback):
    """Each trained turn's user, locality KL and loss."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, *args) -> None:
        if outputs:
            s = pl_module.latest_scalars
            self.rows.append((outputs["turn"].user_id, s["turn/locality_kl"], s["turn/loss"]))

    def of(self, user: str) -> list[tuple[float, float]]:
        return [(kl, loss) for u, kl, loss in self.rows if u == user]


def new_model(model_dir: str, max_loaded: int = 8, **kwargs) -> OnlineLM:
    torch.manual_seed(0)
    locality = LocalitySettings(weight=1.0, per_step=2, reply_tokens=4, top_k=8, kinds=["chat", "fact", "replay"])
    return OnlineLM(
        base_model=model_dir, optim=OptimSettings(lr=1e-2, steps_per_fact=2), locality=locality,
        augment=AugmentSettings(qa_pairs=1, paraphrases=0), per_user=True, per_user_max_loaded=max_loaded, **kwargs,
    )  # fmt: skip


def fit(model: OnlineLM, data, root: Path, callbacks=(), **kwargs) -> L.Trainer:
    checkpointing = any(isinstance(c, TurnCheckpoint) for c in callbacks)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=checkpointing, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(root), callbacks=list(callbacks), **kwargs,
    )  # fmt: skip
    if isinstance(data, list):
        trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=None))
    else:
        trainer.fit(model, datamodule=data)
    return trainer


def run(model_dir: str, data: list[Turn], root: Path, max_loaded: int = 8) -> tuple[OnlineLM, Figures]:
    model, figures = new_model(model_dir, max_loaded), Figures()
    fit(model, data, root, [FactReplay(interval=2), figures])
    return model, figures


def assert_same_user(a: OnlineLM, b: OnlineLM, user: str) -> None:
    ta, tb = a.users.adapter_tensors(user), b.users.adapter_tensors(user)
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert a.users.memory_state(user) == b.users.memory_state(user)
    position = lambda m: m.locality.position if m.users.active == user else m.users.users[user].locality_position  # noqa: E731
    assert position(a) == position(b)
    assert a.users.users[user].turns == b.users.users[user].turns


def answer_log_prob(model: OnlineLM, question: str, answer: str) -> float:
    """Sum of log p(answer tokens | question) in a fresh chat, with the model's active adapter."""
    ex = render_exchange(model.tokenizer, question, answer, (), "reply", 512)
    model.eval()
    with torch.no_grad():
        logits = model.model(input_ids=ex.input_ids[None]).logits[0, :-1].float()
    model.train()
    logp = torch.log_softmax(logits, -1).gather(-1, ex.input_ids[1:, None])[:, 0]
    return float((logp * ex.loss_mask[1:]).sum())


# ----------------------------------------------------------------------------- ids (pure)
@pytest.mark.parametrize("bad", ["", "..", "../x", "/etc", "/", "a/b", "a\\b", ".hidden", "x\x00y", "tab\there",
                                 "a" * 65, "a..b", "-lead", "sp ace", None, 5])  # fmt: skip
def test_bad_user_ids_are_rejected_with_a_reason(bad):
    assert user_id_problem(bad) is not None
    with pytest.raises(ValueError, match="invalid user id"):
        validate_user_id(bad)


@pytest.mark.parametrize("good", ["alice", "Bob_2", "a.b@example.com", "x-y", "7", "a" * 64, DEFAULT_USER])
def test_good_user_ids_pass_and_map_to_peft_safe_adapter_names(good):
    assert validate_user_id(good) == good
    name = adapter_name(good)
    assert name.startswith("u_") and "." not in name and len(name) == 14


# ----------------------------------------------------------------------------- isolation
def test_b_learns_the_same_with_or_without_a_and_a_alone_learns_its_facts(tiny_model_dir, tmp_path):
    both, fig_both = run(tiny_model_dir, turns_of(("alice", A_TURNS), ("bob", B_TURNS)), tmp_path / "both")
    alone, fig_alone = run(tiny_model_dir, turns_of(("bob", B_TURNS)), tmp_path / "alone")
    # (a) bob's adapter, memory, locality position and per-turn locality KL / loss: identical
    assert_same_user(both, alone, "bob")
    assert fig_both.of("bob") == fig_alone.of("bob") and any(kl > 0 for kl, _ in fig_alone.of("bob"))
    assert len(both.users.memory_state("bob")["facts"]) == 1  # bob's own fact, aged by bob's turns only
    assert {f["subject"] for f in both.users.memory_state("alice")["facts"]} == {"Zara", "Xiomara"}
    # (b) alice's adapter moved from the init and raises her answer's log-probability in a fresh chat
    init = both.users.template
    alice = both.users.adapter_tensors("alice")
    assert any(not torch.equal(alice[k], init[k]) for k in init)
    question, answer = "Who is Zara?", "Zara is your sister."
    with both.model.disable_adapter():
        base = answer_log_prob(both, question, answer)
    both.users.activate("alice")
    taught = answer_log_prob(both, question, answer)
    both.users.activate("bob")
    bob_with_a = answer_log_prob(both, question, answer)
    alone.users.activate("bob")
    bob_alone = answer_log_prob(alone, question, answer)
    assert taught > base + 1.0, (taught, base)
    assert abs(bob_with_a - bob_alone) <= 1e-6  # alice's teaching moved nothing of bob's
    both.users.activate("carol")  # a user never taught: the base exactly
    assert abs(answer_log_prob(both, question, answer) - base) <= 1e-6


def test_lru_eviction_and_reload_give_the_same_results_as_keeping_everyone(tiny_model_dir, tmp_path):
    c_turns = [("Oslo is a city. Nurses work in hospitals.", "Oslo is a city.")] * 4
    data = turns_of(("alice", A_TURNS[:4]), ("bob", B_TURNS[:4]), ("carol", c_turns))
    small, _ = run(tiny_model_dir, data, tmp_path / "small", max_loaded=2)
    big, _ = run(tiny_model_dir, data, tmp_path / "big", max_loaded=8)
    assert small.users.swaps >= 6 and big.users.swaps == 0
    assert len(small.users.loaded) == 2
    peft_names = set(small.model.peft_config)
    assert len(peft_names) == 3 and "default" in peft_names  # the template and two users, never more
    for user in ("alice", "bob", "carol"):
        assert_same_user(small, big, user)
    files = sorted(p.relative_to(tmp_path / "small") for p in (tmp_path / "small").rglob("*.pt"))
    assert {p.parts[:2] for p in files} <= {("users", "alice"), ("users", "bob"), ("users", "carol")}
    assert len(files) <= 3  # older state files of a user are removed once no checkpoint names them


def test_hostile_user_ids_in_a_log_are_skipped_counted_and_write_nothing_outside(tiny_model_dir, tmp_path):
    log = tmp_path / "log.jsonl"
    records = [
        {"user_id": "alice", "messages": [{"role": "user", "content": "Zara is my sister."}]},
        {"user_id": "../x", "messages": [{"role": "user", "content": "Zara is my sister."}]},
        {"user_id": "/etc", "messages": [{"role": "user", "content": "Zara is my sister."}]},
        {"user_id": "", "messages": [{"role": "user", "content": "Zara is my sister."}]},
        {"user_id": "a" * 65, "messages": [{"role": "user", "content": "Zara is my sister."}]},
        {"user_id": 7, "messages": [{"role": "user", "content": "Zara is my sister."}]},
        {"messages": [{"role": "user", "content": "Hello there, how are you today?"}]},
        {"user_id": "bob", "messages": [{"role": "user", "content": "Hello there, how are you today?"}]},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    stream = ChatTurnStream(str(log), per_user=True)
    turns = list(stream)
    assert [t.user_id for t in turns] == ["alice", DEFAULT_USER, "bob"]
    assert turns[-1].skipped == 5
    assert [t.user_id for t in ChatTurnStream(str(log))] == [None] * 8  # per_user off: ids ignored, nothing skipped
    run_dir = tmp_path / "run"
    model = new_model(tiny_model_dir, max_loaded=1)
    fit(model, ChatStreamDataModule(str(log), per_user=True), run_dir)
    assert sorted(model.users.users) == ["alice", "bob", DEFAULT_USER]
    outside = {p for p in tmp_path.rglob("*") if run_dir not in p.parents and p != run_dir}
    assert outside == {log}
    assert {p.name for p in (run_dir / "users").iterdir()} <= {"alice", "bob", DEFAULT_USER}
    assert not Path("/x").exists() and not (tmp_path / "x").exists()


def test_stream_user_id_setting_is_checked_and_names_turns_without_one(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("Hello there.\n")
    assert [t.user_id for t in ChatTurnStream(str(log), per_user=True, user_id="alice")] == ["alice"]
    shared = tmp_path / "shared.jsonl"  # one conversation id, two users: each sees only their own history
    shared.write_text("".join(json.dumps({"id": "c", "user_id": u, "messages": [{"role": "user", "content": m}]}) + "\n"
                              for u, m in [("alice", "a1"), ("bob", "b1"), ("alice", "a2"), ("bob", "b2")]))  # fmt: skip
    got = [(t.user_id, t.history) for t in ChatTurnStream(str(shared), history_turns=4, per_user=True)]
    assert got == [("alice", ()), ("bob", ()), ("alice", (("a1", ""),)), ("bob", (("b1", ""),))]
    with pytest.raises(ValueError, match="user_id '../x'.*'/'"):
        ChatStreamDataModule(str(log), per_user=True, user_id="../x")
    with pytest.raises(ValueError, match="needs per-user learning"):
        ChatStreamDataModule(str(log), user_id="alice")
    dm = ChatStreamDataModule(str(log), per_user=True)
    dm.set_user("bob")
    assert dm.user_id == "bob"
    with pytest.raises(ValueError, match="invalid user id"):
        dm.set_user("..")


# ----------------------------------------------------------------------------- resume
def write_log(path: Path, turns: list[Turn]) -> None:
    path.write_text("".join(
        json.dumps({"user_id": t.user_id, "messages": [{"role": "user", "content": t.user},
                                                      {"role": "assistant", "content": t.assistant}]}) + "\n"
        for t in turns
    ))  # fmt: skip


def test_resume_restores_every_users_adapter_optimizer_and_memory(tiny_model_dir, tmp_path):
    c_turns = [("Oslo is a city. Nurses work in hospitals.", "Oslo is a city.")] * 3
    data = turns_of(("alice", A_TURNS), ("bob", B_TURNS), ("carol", c_turns))
    log = tmp_path / "log.jsonl"
    write_log(log, data)
    whole = new_model(tiny_model_dir, max_loaded=2)
    fit(whole, ChatStreamDataModule(str(log), per_user=True), tmp_path / "whole", [FactReplay(interval=2)])

    first = new_model(tiny_model_dir, max_loaded=2)
    ckpt = TurnCheckpoint(every_n_turns=0, dirpath=str(tmp_path / "ckpt"))
    fit(first, ChatStreamDataModule(str(log), per_user=True, max_turns=7), tmp_path / "first",
        [FactReplay(interval=2), ckpt])  # fmt: skip
    assert first.users.swaps > 0 and len(first.users.users) == 3
    second = new_model(tiny_model_dir, max_loaded=2)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=-1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(tmp_path / "second"), callbacks=[FactReplay(interval=2)],
    )  # fmt: skip
    trainer.fit(second, datamodule=ChatStreamDataModule(str(log), per_user=True),
                ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), weights_only=False)  # fmt: skip
    assert second.turns_trained == whole.turns_trained == len(data)
    for user in ("alice", "bob", "carol"):
        assert_same_user(whole, second, user)
        wa, sa = whole.users.users[user], second.users.users[user]
        if wa.loaded and sa.loaded:  # the optimizer moments too
            for x, y in zip(wa.optimizer.state.values(), sa.optimizer.state.values()):
                assert all(torch.equal(x[k], y[k]) for k in x)


# ----------------------------------------------------------------------------- outputs
def test_each_user_gets_a_versioned_peft_adapter_with_its_own_memory(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    from olm.backbone import load_base
    from olm.callbacks import AdapterCheckpoint
    from olm.publish import resolve_adapter_dir

    c_turns = [("Oslo is a city. Nurses work in hospitals.", "Oslo is a city.")] * 2
    data = turns_of(("alice", A_TURNS[:2]), ("bob", B_TURNS[:3]), ("carol", c_turns))
    model = new_model(tiny_model_dir, max_loaded=1)  # alice and bob are on disk when the adapters are saved
    saver = AdapterCheckpoint(every_n_turns=4)
    fit(model, data, tmp_path, [saver])
    root = tmp_path / "adapters"
    assert sorted(p.name for p in root.iterdir()) == ["alice", "bob", "carol"]
    # saved at turn 4 and at the end: alice learned nothing after turn 4, so she has no second version
    assert [p.name for p in sorted((root / "alice").glob("v*"))] == ["v1"]
    assert [p.name for p in sorted((root / "bob").glob("v*"))] == ["v1", "v2"]
    assert not (tmp_path / "adapter").exists()
    for user in ("alice", "bob", "carol"):
        version = resolve_adapter_dir(root / user)
        saved = load_file(version / "adapter_model.safetensors")
        mine = model.users.adapter_tensors(user)
        for key, tensor in mine.items():
            peft_key = key.replace(".default.", ".")  # PEFT files name no adapter
            assert torch.equal(saved[peft_key], tensor), key
        memory = json.loads((version / "memory.json").read_text())
        assert memory == model.users.memory_state(user)
        assert json.loads((version / "olm_state.json").read_text())["user_id"] == user
        card = (version / "README.md").read_text()
        assert ("Zara" in card) == (user == "alice")  # a card lists its own user's facts only
    base, _ = load_base(tiny_model_dir)
    peft = PeftModel.from_pretrained(base, str(resolve_adapter_dir(root / "bob")))  # a plain PEFT directory
    got = {n: p for n, p in peft.named_parameters() if "lora_" in n}
    assert all(torch.equal(got[k], v) for k, v in model.users.adapter_tensors("bob").items())
    # a per-user run that continues from alice's adapter: every new user starts from her weights and her facts
    again = new_model(tiny_model_dir, adapter=str(root / "alice"))
    fit(again, turns_of(("dave", B_TURNS[:1])), tmp_path / "again")
    facts = [(f["subject"], f["object"]) for f in again.users.memory_state("dave")["facts"]]
    assert facts == [(f["subject"], f["object"]) for f in model.users.memory_state("alice")["facts"]] and facts


# ----------------------------------------------------------------------------- the chat
def test_chat_user_flag_and_user_command_name_each_line(capsys, monkeypatch):
    import io
    import sys
    from types import SimpleNamespace

    from olm.callbacks.chat import ChatCallback

    datamodule = ChatStreamDataModule(source="-", format="text", per_user=True, user_id="alice")
    callback = ChatCallback()
    callback._trainer = SimpleNamespace(callback_metrics={}, callbacks=[])
    callback._module = SimpleNamespace(latest_scalars={})
    callback._datamodule = datamodule
    text = "Zara is my sister.\n/user\n/user bob\nhello\n/user ../x\n/user a b\nstill bob\n/user alice\nme again\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    turns = list(ChatTurnStream("-", format="text", stdin=callback.lines, per_user=True, user_id="alice",
                                current_user=lambda: datamodule.user_id))  # fmt: skip
    assert [(t.user, t.user_id) for t in turns] == [
        ("Zara is my sister.", "alice"), ("hello", "bob"), ("still bob", "bob"), ("me again", "alice"),
    ]
    out = capsys.readouterr().out
    assert out.startswith("alice> ") and "bob> " in out and "you> " not in out
    assert "You are alice." in out and "You are bob now" in out
    assert "invalid user id '../x'" in out and "you are still bob" in out and "Usage: /user NAME" in out


def test_drift_guard_rolls_back_only_the_active_users_adapter(tiny_model_dir, tmp_path):
    from olm.callbacks import DriftGuard

    data = turns_of(("alice", A_TURNS[:3]), ("bob", B_TURNS[:3]))
    plain, _ = run(tiny_model_dir, data, tmp_path / "plain")
    calm = new_model(tiny_model_dir)
    guard = DriftGuard(max_kl=1e9, max_ppl_ratio=None, every_n_turns=1)
    trainer = fit(calm, data, tmp_path / "calm", [FactReplay(interval=2), guard])
    for user in ("alice", "bob"):  # snapshots taken per user change nothing
        assert_same_user(plain, calm, user)
    assert trainer.global_step >= len(data)  # the users' own optimizers' steps count like the trainer's
    alice_before, bob_before = calm.users.adapter_tensors("alice"), calm.users.adapter_tensors("bob")
    bob = calm.users.state
    assert bob.user_id == "bob" and set(guard.user_snapshots) == {bob.adapter, calm.users.users["alice"].adapter}
    with torch.no_grad():
        for name, p in calm.model.named_parameters():
            if "lora_" in name:
                p.add_(1.0)  # every loaded adapter drifts
    guard.roll_back(trainer, calm, ["test"])
    bob_after, alice_after = calm.users.adapter_tensors("bob"), calm.users.adapter_tensors("alice")
    assert all(torch.equal(bob_after[k], bob_before[k]) for k in bob_before)  # bob's own snapshot
    assert all(torch.equal(alice_after[k], alice_before[k] + 1.0) for k in alice_before)  # not alice's

    tripped = new_model(tiny_model_dir)
    guard = DriftGuard(max_kl=1e-12, max_ppl_ratio=None, every_n_turns=1)
    fit(tripped, data, tmp_path / "tripped", [guard])
    assert guard.rollbacks == len(data)  # every turn's check trips: each user back to its start
    for user in ("alice", "bob"):
        tensors = tripped.users.adapter_tensors(user)
        assert all(torch.equal(tensors[k], tripped.users.template[k]) for k in tensors)


# ----------------------------------------------------------------------------- the real model (slow)
FACTS = [  # (statement, logged reply): fictitious people, as in olm/assets/logs/proof.jsonl
    ("Quillon is my cousin.", "Got it. Quillon is your cousin."),
    ("Maribel Tovar lives in Lisbon.", "Got it. Maribel Tovar lives in Lisbon."),
    ("Osric Vandermeer works as a pharmacist.", "Got it. Osric Vandermeer works as a pharmacist."),
]
CHAT = [
    ("Can you suggest a quick breakfast idea?", "Oatmeal with banana and a spoon of peanut butter is quick and filling."),
    ("It's raining again here, so I'm staying in.", "That sounds cosy. A rainy day is a good excuse for a book."),
    ("What's a good way to start running?", "Start slowly: short easy runs three times a week, walking breaks allowed."),
]


@pytest.mark.slow
def test_smollm2_alice_recalls_her_facts_and_bob_no_better_than_the_base(tmp_path):
    """smollm2-135m with configs/default.yaml's learning settings: alice states 3 facts 3 times each,
    interleaved with bob's chat; asked in a fresh context, alice's adapter recalls >= 2 of 3 and
    bob's no more than the base does."""
    from olm.cli import main
    from olm.generation import GenerationSettings
    from olm.probes import is_recalled, recall_answers

    alice = [FACTS[i % 3] for i in range(9)]
    bob = [CHAT[i % 3] for i in range(9)]
    log = tmp_path / "log.jsonl"
    write_log(log, turns_of(("alice", alice), ("bob", bob)))
    cli = main([
        "fit", "--config", str(Path(__file__).resolve().parents[1] / "configs" / "default.yaml"),
        "--model.per_user", "true", "--data.source", str(log), "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    model = cli.model
    model.users.activate("alice")
    facts = list(model.memory)
    assert len(facts) == 3
    questions, objects = [f.question for f in facts], [f.object for f in facts]
    settings = GenerationSettings(max_new_tokens=32, do_sample=False)

    def recalled() -> int:
        answers = recall_answers(model.model, model.tokenizer, questions, settings)
        return sum(is_recalled(a, o) for a, o in zip(answers, objects))

    with model.model.disable_adapter():
        base = recalled()
    taught = recalled()
    model.users.activate("bob")
    bobs = recalled()
    assert taught >= 2, (taught, base)
    assert bobs <= base, (bobs, base)
    assert any((tmp_path / "runs").rglob("adapters/alice/latest/adapter_model.safetensors"))


def test_recall_report_asks_each_users_facts_to_that_users_adapter(tiny_model_dir, tmp_path):
    from olm.callbacks import RecallReport

    data = turns_of(("alice", A_TURNS[:2]), ("bob", B_TURNS[:3]))
    model, report = new_model(tiny_model_dir, max_loaded=1), RecallReport()
    fit(model, data, tmp_path, [report])
    assert [(r.user, r.expected) for r in report.rows] == [("alice", "sister"), ("alice", "Lisbon"), ("bob", "Oslo")]
    assert model.users.active == "bob" and list(model.users.loaded) == ["bob"]  # the report changed nothing
    assert set(model.model.peft_config) == {"default", model.users.users["bob"].adapter}
    saved = json.loads((tmp_path / "recall_report.json").read_text())
    assert [r["user"] for r in saved] == ["alice", "alice", "bob"]


def test_routing_calibrates_on_the_active_users_adapter_and_facts(tiny_model_dir, tmp_path):
    from olm.routing import Router, RoutingSettings

    settings = RoutingSettings(enabled=True, calibration=4)
    model = new_model(tiny_model_dir, routing=settings)
    fit(model, turns_of(("alice", A_TURNS[:3]), ("bob", B_TURNS[:2])), tmp_path)
    router, net = model.router, model.model
    model.users.activate("alice")
    tau_alice, alice_questions = router.tau(net), router._tau[1][0]  # (all facts' questions, the speaker's)
    assert any("Zara" in q for q in alice_questions)
    model.users.activate("bob")  # weights untouched by the swap: only the active adapter changed
    tau_bob = router.tau(net)
    assert router._tau[1] == ((), ()) and tau_bob != pytest.approx(tau_alice)
    assert tau_bob == pytest.approx(Router(settings, model.tokenizer, router.prompts, model.recent_fact_questions).tau(net))
    model.users.activate("alice")
    assert router.tau(net) == pytest.approx(tau_alice)
    model.users.activate("carol")  # no facts either: only the active adapter tells bob and carol apart
    tau_carol = router.tau(net)
    model.users.activate("bob")
    assert tau_carol != pytest.approx(tau_bob) and router.tau(net) == pytest.approx(tau_bob)


def test_exempted_keys_follow_the_active_user_and_leave_the_others_adapters_alone(tiny_model_dir, tmp_path):
    """With `locality.exempt_facts`, each user's null spaces free that user's facts' keys (`olm.exemption`).
    Bob's steps, under bob's spaces, must not project alice's loaded adapter into them: alice's adapter is
    the same whether bob talks after her or not."""
    from olm.backbone import LoRASettings

    def model() -> OnlineLM:
        torch.manual_seed(0)
        locality = LocalitySettings(weight=1.0, per_step=2, reply_tokens=4, top_k=8, null_space_energy=0.95,
                                    exempt_facts=8, exempt_about="all", disk_cache=False)  # fmt: skip
        return OnlineLM(
            base_model=tiny_model_dir, optim=OptimSettings(lr=1e-2, steps_per_fact=2), locality=locality,
            lora=LoRASettings(target_modules=["gate_proj", "up_proj", "down_proj"]),
            augment=AugmentSettings(qa_pairs=1, paraphrases=0), per_user=True,
        )  # fmt: skip

    both, alone = model(), model()
    fit(both, turns_of(("alice", A_TURNS), ("bob", B_TURNS), interleave=False), tmp_path / "both")
    fit(alone, turns_of(("alice", A_TURNS)), tmp_path / "alone")
    assert both.exemption.exempted == 1  # bob's one fact, last active
    ta, tb = both.users.adapter_tensors("alice"), alone.users.adapter_tensors("alice")
    assert sorted(ta) == sorted(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
