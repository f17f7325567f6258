"""StabilityMonitor, ForgettingMonitor, Transcript and DriftGuard on short fits of a tiny Qwen2
with a TensorBoardLogger: the tags they log and at which steps, recall plumbing, state round
trips, and a tripped guard restoring the adapter bit for bit."""

from __future__ import annotations

import io

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, IterableDataset

import olm.callbacks.monitors as monitors
from olm.callbacks.drift import DriftGuard, lora_snapshot, restore_lora
from olm.callbacks.monitors import ForgettingMonitor, StabilityMonitor
from olm.callbacks.transcript import Transcript, markdown_cell
from olm.data import Turn
from olm.module import OnlineLM, OptimSettings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PAIRS = [
    ("Zara is my sister.", "Got it. Zara is your sister."),
    ("Hello there.", "Hi!"),
    ("Who is Zara?", None),
    ("Xiomara lives in Lisbon.", "Got it. Xiomara lives in Lisbon."),
]


def turns(n: int) -> list[Turn]:
    pairs = (PAIRS * n)[:n]
    return [Turn(conversation_id="c", user=u, assistant=a, history=(), source="t", offset=i, skipped=0)
            for i, (u, a) in enumerate(pairs)]  # fmt: skip


class Stream(IterableDataset):
    """Turns with no __len__, like ChatTurnStream: Lightning then runs one more step that finds
    the stream ended, and still calls the batch-end hooks for it."""

    def __init__(self, items: list[Turn]) -> None:
        self.items = items

    def __iter__(self):
        return iter(self.items)


def fit(model: OnlineLM, n: int, callbacks, logger=False, **kwargs) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=list(callbacks), **kwargs,
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=DataLoader(Stream(turns(n)), batch_size=None))
    return trainer


def events(log_dir: str) -> EventAccumulator:
    ea = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def steps(ea: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in ea.Scalars(tag)]


def texts(ea: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in ea.Tensors(tag)]


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    """12 turns with every monitor; log_every_n_steps=5 matches no monitor cadence on purpose."""
    torch.manual_seed(0)
    model = OnlineLM(base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3))
    logger = TensorBoardLogger(tmp_path_factory.mktemp("tb"), name="run")
    cbs = [DriftGuard(max_kl=10.0, every_n_turns=3), StabilityMonitor(every_n_turns=2, window=10),
           ForgettingMonitor(every_n_turns=4), Transcript(every_n_turns=1)]  # fmt: skip
    fit(model, 12, cbs, logger=logger, log_every_n_steps=5)
    return model, cbs, events(logger.log_dir)


STABILITY = ["ppl_adapter", "ppl_base", "ppl_ratio", "kl", "top1_agreement", "ppl_drift"]
FACTS = ["recall", "forgetting", "ever_recalled", "turns_since_first_recall", "reps_to_first_recall", "probed"]


def test_monitors_log_every_group_at_the_turn_steps(run):
    _, _, ea = run
    tags = set(ea.Tags()["scalars"])
    for name in STABILITY:  # checks after turns 2, 4, ..., 12 -> steps 1, 3, ..., 11
        assert steps(ea, f"stability/{name}") == [1, 3, 5, 7, 9, 11], name
    for name in ("anchor_regression", "anchor_rate"):
        assert steps(ea, f"forgetting/{name}") == [1, 3, 5, 7, 9, 11]
    for name in ("recent_loss", "improvement", "slope"):
        assert steps(ea, f"plasticity/{name}") == list(range(12))
    for name in FACTS:
        assert steps(ea, f"facts/{name}") == [3, 7, 11], name
    assert {"facts/recall_by_reps/01", "facts/recall_by_reps/02", "facts/recall_by_reps/03"} <= tags
    assert {"facts/forgetting/Zara.relation", "facts/forgetting/Xiomara.lives_in"} <= tags
    assert steps(ea, "stability/guard_kl") == [2, 5, 8, 11]
    assert {"time/monitor_stability", "time/monitor_forgetting", "time/monitor_drift_guard"} <= tags
    assert steps(ea, "turn/loss") == list(range(12))  # the module logs every turn, straight to the logger


def test_the_step_that_ends_the_stream_is_not_counted(run):
    _, cbs, _ = run
    assert len(cbs[1].plasticity_window.values) == 12  # one loss per trained turn (capacity 2 × window = 20)


def test_logged_values_are_consistent(run):
    _, _, ea = run
    last = {t: ea.Scalars(t)[-1].value for t in ea.Tags()["scalars"]}
    assert last["stability/ppl_ratio"] == pytest.approx(last["stability/ppl_adapter"] / last["stability/ppl_base"], rel=1e-5)
    base = [e.value for e in ea.Scalars("stability/ppl_base")]
    assert max(base) == min(base)  # the base never changes (cached pass)
    assert last["stability/kl"] > 0 and 0 <= last["stability/top1_agreement"] <= 1
    assert last["facts/probed"] == 2.0  # Zara and Xiomara
    assert [e.value for e in ea.Scalars("stability/guard_rollbacks")] == [0.0] * 4


def test_module_keeps_the_latest_value_of_every_logged_scalar(run):
    model, _, ea = run
    latest = model.latest_scalars  # what chat's /stats shows
    for tag in ("turn/loss", "stability/kl", "facts/recall", "plasticity/slope", "stability/guard_kl"):
        assert latest[tag] == pytest.approx(ea.Scalars(tag)[-1].value, rel=1e-6), tag


def test_transcript_and_hparams_text(run):
    _, _, ea = run
    entries = texts(ea, "transcript/text_summary")
    assert [s for s, _ in entries] == list(range(12))
    step0 = entries[0][1]
    assert "Zara is my sister." in step0 and "Got it. Zara is your sister." in step0 and "| **kind** | fact |" in step0
    assert "Zara \\| relation \\| sister" in step0  # pipes escaped inside the table
    hp = texts(ea, "hparams/text_summary")
    assert len(hp) == 1 and "| model.optim.lr | 0.001 |" in hp[0][1]


def test_markdown_cell_escapes_and_shortens():
    assert markdown_cell("a|b\nc", 100) == "a\\|b<br>c"
    assert markdown_cell("x" * 50, 20) == "x" * 19 + "…"


def test_forgetting_monitor_counts_recalled_answers(tiny_model_dir, tmp_path, monkeypatch):
    def fake_answers(model, tokenizer, questions, settings, router=None):  # Zara recalled, everyone else not
        return ["Zara is your sister." if "Zara" in q else "I don't know." for q in questions]

    monkeypatch.setattr(monitors, "recall_answers", fake_answers)
    model = OnlineLM(base_model=tiny_model_dir)
    logger = TensorBoardLogger(tmp_path, name="r")
    monitor = ForgettingMonitor(every_n_turns=4)
    fit(model, 8, [monitor], logger=logger)
    ea = events(logger.log_dir)
    assert [e.value for e in ea.Scalars("facts/recall")] == [0.5, 0.5]
    assert [e.value for e in ea.Scalars("facts/turns_since_first_recall")] == pytest.approx([0.0, 4.0])  # first recalled at turn 4
    assert ea.Scalars("facts/reps_to_first_recall")[-1].value == pytest.approx(1.0)
    assert monitor.last_answers["Zara|relation"] == "Zara is your sister."


def test_forgetting_monitor_round_robin_over_many_facts():
    monitor = ForgettingMonitor(max_facts=2)

    class F:
        def __init__(self, i):
            self.first_turn, self.subject, self.key_slot = i, f"s{i}", "r"

    facts = [F(i) for i in range(5)]
    picked = [[f.first_turn for f in monitor._select(facts)] for _ in range(3)]
    assert picked == [[0, 1], [2, 3], [4, 0]]


def test_monitor_state_round_trips_and_keeps_the_run_start(run, tiny_model_dir):
    model, cbs, _ = run
    stability, forgetting = cbs[1], cbs[2]
    for cb, fresh in ((stability, StabilityMonitor(every_n_turns=2, window=10)), (forgetting, ForgettingMonitor(every_n_turns=4))):
        buf = io.BytesIO()
        torch.save(cb.state_dict(), buf)
        buf.seek(0)
        fresh.load_state_dict(torch.load(buf, weights_only=True))
        assert fresh.last_check_turn == cb.last_check_turn
        if isinstance(cb, StabilityMonitor):
            assert fresh.regression.first.item() == cb.regression.first.item()
            assert fresh.drift.compute().item() == pytest.approx(cb.drift.compute().item())
            a, b = fresh.plasticity_window.compute(), cb.plasticity_window.compute()
            assert {k: v.item() for k, v in a.items()} == pytest.approx({k: v.item() for k, v in b.items()})
        else:
            assert fresh.recall.keys == cb.recall.keys
            assert fresh.recall.compute() == cb.recall.compute()


def test_stability_state_from_before_one_plasticity_metric_loads(run):
    """Checkpoints written when plasticity was three metrics (RunningMean "recent", LossImprovement
    "improvement", LossSlope "slope") resume with the same window: the improvement's buffer is it."""
    _, cbs, _ = run
    state = cbs[1].state_dict()
    window = state["metrics"].pop("plasticity")
    state["metrics"].update(improvement=window, slope=window, recent={"states": {}, "update_count": 0})
    fresh = StabilityMonitor(every_n_turns=2, window=10)
    fresh.load_state_dict(state)
    assert len(fresh.plasticity_window.values) == 12
    a, b = fresh.plasticity_window.compute(), cbs[1].plasticity_window.compute()
    assert {k: v.item() for k, v in a.items()} == pytest.approx({k: v.item() for k, v in b.items()})


def test_callback_settings_are_validated():
    with pytest.raises(ValueError, match="every_n_turns must be >= 1, got 0.*window must be >= 2, got 1"):
        StabilityMonitor(every_n_turns=0, window=1)
    with pytest.raises(ValueError, match="max_facts must be >= 1, got 0"):
        ForgettingMonitor(max_facts=0)
    with pytest.raises(ValueError, match="both are None"):
        DriftGuard(max_kl=None, max_ppl_ratio=None)
    with pytest.raises(ValueError, match="max_ppl_ratio must be > 1 or None, got 0.9"):
        DriftGuard(max_ppl_ratio=0.9)
    with pytest.raises(FileNotFoundError):
        StabilityMonitor(anchors="/no/such/anchors.txt")


# ----------------------------------------------------------------------------- drift guard
def test_snapshot_and_restore_are_exact(tiny_model_dir):
    model = OnlineLM(base_model=tiny_model_dir).model
    snap = lora_snapshot(model)
    assert snap and all("lora_" in k for k in snap)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p))
    restore_lora(model, snap)
    assert all(torch.equal(p, snap[n]) for n, p in model.named_parameters() if "lora_" in n)


class TightenAt(Callback):
    """Before the guard: records the adapter after each turn and tightens the bound at one turn."""

    def __init__(self, guard: DriftGuard, turn: int) -> None:
        self.guard, self.turn = guard, turn
        self.before: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.before[pl_module.turns_trained] = lora_snapshot(pl_module.model)
        if pl_module.turns_trained == self.turn:
            self.guard.max_kl = 1e-30  # any drift at all trips it


class After(Callback):
    """After the guard: records the adapter and the optimizer state after each turn."""

    def __init__(self) -> None:
        self.lora: dict[int, dict[str, torch.Tensor]] = {}
        self.exp_avg: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.lora[pl_module.turns_trained] = lora_snapshot(pl_module.model)
        state = trainer.optimizers[0].state
        self.exp_avg[pl_module.turns_trained] = [state[p]["exp_avg"].clone() for p in trainer.optimizers[0].param_groups[0]["params"]]


def test_tripped_guard_restores_adapter_bit_for_bit(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    model = OnlineLM(base_model=tiny_model_dir, optim=OptimSettings(lr=1e-2))
    guard = DriftGuard(max_kl=10.0, max_ppl_ratio=None, every_n_turns=2)
    before, after = TightenAt(guard, turn=4), After()
    logger = TensorBoardLogger(tmp_path, name="g")
    monitor = StabilityMonitor(every_n_turns=2)  # after the guard: measures the restored adapter
    fit(model, 5, [before, guard, monitor, after], logger=logger)
    # turn 2: in bounds -> snapshot; turn 4: tripped -> back to the turn-2 adapter and optimizer state
    assert guard.rollbacks == 1 and guard.last_good_turn == 2
    assert any(not torch.equal(before.before[4][k], after.lora[2][k]) for k in after.lora[2])  # it had moved
    assert all(torch.equal(after.lora[4][k], after.lora[2][k]) for k in after.lora[2])
    assert all(torch.equal(a, b) for a, b in zip(after.exp_avg[4], after.exp_avg[2]))
    assert any(not torch.equal(after.lora[5][k], after.lora[4][k]) for k in after.lora[4])  # learning goes on
    ea = events(logger.log_dir)
    assert [e.value for e in ea.Scalars("stability/guard_rollbacks")] == [0.0, 1.0]
    (step, message), = texts(ea, "drift_guard/text_summary")
    assert step == 3 and "restored to its state after turn 2" in message and "max_kl" in message
    kl = [e.value for e in ea.Scalars("stability/kl")]  # turns 2, 4 (rolled back to turn 2), 5 (end)
    assert kl[1] == kl[0] and kl[0] > 0  # not the guard's cached pass on the drifted adapter


def test_guard_and_monitor_share_one_anchor_pass(tiny_model_dir):
    model = OnlineLM(base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3))
    anchor_batch = len(StabilityMonitor().prompts)
    calls = []
    model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append(kwargs["input_ids"].shape[0]) if "input_ids" in kwargs else None,
        with_kwargs=True,
    )
    fit(model, 4, [DriftGuard(max_kl=10.0, every_n_turns=2), StabilityMonitor(every_n_turns=2)])
    # one base pass (cached) + one adapter pass at the start and after turns 2 and 4, not two of each
    assert calls.count(anchor_batch) == 4


def test_callback_states_load_from_a_real_checkpoint_with_weights_only(tiny_model_dir, tmp_path):
    model = OnlineLM(base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3))
    cbs = [DriftGuard(max_kl=10.0, every_n_turns=2), StabilityMonitor(every_n_turns=2), ForgettingMonitor(every_n_turns=2)]
    trainer = fit(model, 4, cbs)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    # the module's hyper_parameters hold config dataclasses; the callbacks' part must be plain
    torch.save(torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"], tmp_path / "callbacks.pt")
    states = torch.load(tmp_path / "callbacks.pt", weights_only=True)
    fresh = [DriftGuard(max_kl=10.0, every_n_turns=2), StabilityMonitor(every_n_turns=2), ForgettingMonitor(every_n_turns=2)]
    for cb in fresh:
        cb.load_state_dict(states[cb.state_key])
    assert fresh[0].last_good_turn == 4 and fresh[1].last_check_turn == 4 and fresh[2].last_check_turn == 4
    assert fresh[1].regression.first.item() == cbs[1].regression.first.item()  # the run's start survives
    assert fresh[2].recall.keys == ["Zara|relation", "Xiomara|lives_in"]
