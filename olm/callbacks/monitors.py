"""StabilityMonitor and ForgettingMonitor: the research metrics of `olm.metrics`, logged to the
trainer's loggers at a configurable cadence.

StabilityMonitor (every `every_n_turns` turns: one batched anchor forward with the adapter; the
base pass is cached once per run) logs
    stability/ppl_adapter, ppl_base, ppl_ratio, kl, top1_agreement, ppl_drift
    forgetting/anchor_regression, anchor_rate
and, every turn (cheap: floats the module already computed),
    plasticity/recent_loss, improvement, slope.
ForgettingMonitor (every `every_n_turns` turns: batched greedy answers to the remembered facts'
questions in a fresh context) logs
    facts/recall, forgetting, ever_recalled, turns_since_first_recall, reps_to_first_recall,
    facts/probed, facts/recall_by_reps/<k> (pooled over the run; the last bin also holds facts
    taught more often), facts/forgetting/<subject.slot> (the first few facts; slot = the memory key, e.g. "relation").
Both log their own cost as time/monitor_stability (every turn) and time/monitor_forgetting (at
each round), in seconds (DriftGuard: time/monitor_drift_guard); `python -m olm.report` sums
time/monitor_* into the monitors' share of turn time. The metrics fed with Python floats stay
on the CPU; only the anchor metrics, which take the log-probabilities, follow the module's device.

Scalars go straight to `trainer.loggers` at the step of the turn just trained (the module logs
turn k, 1-based, at step k − 1), so they line up with the module's `turn/` curves and appear
whatever `log_every_n_steps` is. `self.log` from a callback does not suit a cadence: values are
dropped on steps that `log_every_n_steps` skips, and a key logged on some steps only is written
again, stale, on every later step of the epoch (Lightning 2.6, checked on a run).

Config (``trainer.callbacks``)::

    - class_path: olm.callbacks.StabilityMonitor
      init_args: {every_n_turns: 25}
    - class_path: olm.callbacks.ForgettingMonitor
      init_args: {every_n_turns: 50, max_facts: 32}
"""

from __future__ import annotations

import re
import time
from collections.abc import Hashable
from typing import Any, Literal
from weakref import WeakKeyDictionary

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torchmetrics.aggregation import MeanMetric
from torchmetrics.regression import KLDivergence

from olm.generation import GenerationSettings
from olm.metrics import (
    AnchorPerplexity,
    FactRecall,
    Plasticity,
    RecallByRepetitions,
    Regression,
    ValueStd,
    load_metric_state_dict,
    metric_state_dict,
)
from olm.probes import AnchorProbe, is_recalled, load_anchors, recall_answers
from olm.turns import log_scalars, trained_turn, turn_step

_TAG_UNSAFE = re.compile(r"[^\w\-]+")


def fact_tag(key: str) -> str:
    """A fact key "subject|slot" as a tag name: "subject.slot", other symbols as "_"."""
    subject, _, relation = key.partition("|")
    return f"{_TAG_UNSAFE.sub('_', subject)}.{_TAG_UNSAFE.sub('_', relation)}"


_PROBES: WeakKeyDictionary = WeakKeyDictionary()


def shared_probe(pl_module: L.LightningModule, prompts: list[str], cache_base: bool) -> AnchorProbe:
    """The run's `AnchorProbe` for these prompts, shared by every callback that asks for it: a
    DriftGuard and a StabilityMonitor checking the same weights then run one anchor pass, and the
    base log-probabilities are held once."""
    probes = _PROBES.setdefault(pl_module.model, {})
    key = (tuple(prompts), cache_base)
    if key not in probes:
        probes[key] = AnchorProbe(pl_module.tokenizer, prompts, cache_base)
    return probes[key]


def weights_version(trainer: L.Trainer) -> tuple[int, int]:
    """Identifies the adapter weights within a run: they change only with an optimizer step
    (DriftGuard, which changes them otherwise, invalidates the probe) or, with per-user learning,
    when another user's adapter becomes the active one."""
    users = getattr(trainer.lightning_module, "users", None)
    return id(trainer), trainer.global_step, users.active if users is not None else None


def _due(turn: int, every: int) -> bool:
    return turn > 0 and turn % every == 0


class AnchorMetrics:
    """The anchor metrics of one check: perplexities (adapter, base), KL(base ‖ adapter) and
    top-1 agreement, reset before every measurement."""

    def __init__(self) -> None:
        self.ppl_adapter, self.ppl_base = AnchorPerplexity(), AnchorPerplexity()
        self.kl = KLDivergence(log_prob=True)
        self.agreement = MeanMetric()

    def to(self, device: torch.device) -> AnchorMetrics:
        for m in (self.ppl_adapter, self.ppl_base, self.kl, self.agreement):
            m.to(device)
        return self

    def measure(self, probe: AnchorProbe, model, version: Hashable | None = None) -> dict[str, float]:
        """One anchor pass with the adapter (the base pass is the probe's cache; so is the adapter
        pass when the probe already ran on this `version` of the weights).

        Returns:
            ppl_adapter, ppl_base, ppl_ratio (adapter / base), kl, top1_agreement (share of
            compared positions where both models' argmax agree).
        """
        base, adapted = probe.log_probs(model, adapter=False), probe.log_probs(model, version=version)  # (N, V)
        targets, has = probe.targets(adapted.device)
        for m in (self.ppl_adapter, self.ppl_base, self.kl, self.agreement):
            m.reset()
        self.ppl_adapter.update(adapted[has][None], targets[has][None])
        self.ppl_base.update(base[has][None], targets[has][None])
        self.kl.update(base, adapted)
        self.agreement.update((base.argmax(-1) == adapted.argmax(-1)).float())
        ppl_a, ppl_b = self.ppl_adapter.compute(), self.ppl_base.compute()
        values = torch.stack([ppl_a, ppl_b, ppl_a / ppl_b, self.kl.compute(), self.agreement.compute()])
        keys = ("ppl_adapter", "ppl_base", "ppl_ratio", "kl", "top1_agreement")
        return dict(zip(keys, values.float().tolist()))  # one host sync per check


class StabilityMonitor(Callback):
    """Anchor stability and regression every `every_n_turns` turns; plasticity every turn.

    Args:
        every_n_turns: trained turns between anchor checks (one reference check also runs when
            training starts, unlogged: it is the "start of the run" of the regression).
        anchors: anchor prompts, a file with one per line, or None for the bundled set.
        window: turns in the plasticity window (recent loss and slope over `window`,
            improvement of the last `window` turns over the `window` before).
        loss: which per-turn loss feeds plasticity: the task cross-entropy or the total loss.
        cache_base: keep the base model's anchor log-probabilities after the first pass.
    """

    def __init__(
        self,
        every_n_turns: int = 25,
        anchors: str | list[str] | None = None,
        window: int = 20,
        loss: Literal["ce", "loss"] = "ce",
        cache_base: bool = True,
    ) -> None:
        problems = []
        if every_n_turns < 1:
            problems.append(f"every_n_turns must be >= 1, got {every_n_turns!r}")
        if window < 2:
            problems.append(f"window must be >= 2, got {window!r}")
        if loss not in ("ce", "loss"):
            problems.append(f"loss must be 'ce' or 'loss', got {loss!r}")
        if problems:
            raise ValueError("invalid StabilityMonitor settings: " + "; ".join(problems))
        self.every_n_turns, self.window, self.loss, self.cache_base = every_n_turns, window, loss, cache_base
        self.prompts = load_anchors(anchors)
        self.anchor = AnchorMetrics()
        self.drift, self.regression = ValueStd(), Regression()
        self.plasticity_window = Plasticity(window)
        self.probe: AnchorProbe | None = None
        self.latest: dict[str, float] = {}
        self.last_check_turn = -1

    def _tracked(self) -> dict[str, Any]:
        return {"drift": self.drift, "regression": self.regression, "plasticity": self.plasticity_window}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.probe = shared_probe(pl_module, self.prompts, self.cache_base)
        self.probe.invalidate()  # a new trainer restarts global_step: no pass of an earlier fit is reused

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.anchor.to(pl_module.device)  # the other metrics take Python floats and stay on the CPU
        self.check(trainer, pl_module)  # reference at the start of the run (kept across resumes by Regression)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        if not trained_turn(outputs):  # the step that found the stream ended
            return
        start = time.perf_counter()
        scalars = self.plasticity(pl_module)
        turn = pl_module.turns_trained
        if _due(turn, self.every_n_turns) and turn != self.last_check_turn:
            scalars.update(self.check(trainer, pl_module))
        scalars["time/monitor_stability"] = time.perf_counter() - start
        self.latest.update(scalars)
        log_scalars(trainer, scalars, turn_step(pl_module))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.turns_trained != self.last_check_turn:  # the final state, whatever the cadence
            scalars = self.check(trainer, pl_module)
            self.latest.update(scalars)
            log_scalars(trainer, scalars, turn_step(pl_module))

    def plasticity(self, pl_module: L.LightningModule) -> dict[str, float]:
        """Feed the last turn's loss to the window metrics; their current values."""
        if pl_module.last is None:
            return {}
        self.plasticity_window.update(float(getattr(pl_module.last, self.loss)))
        values = self.plasticity_window.compute()
        return dict(zip((f"plasticity/{k}" for k in values), torch.stack(list(values.values())).tolist()))

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """One anchor check: stability values and the anchor regression since the start."""
        assert self.probe is not None, "check() runs after on_fit_start"
        stats = self.anchor.measure(self.probe, pl_module.model, weights_version(trainer))
        self.drift.update(stats["ppl_adapter"])
        self.regression.update(stats["ppl_adapter"], pl_module.turns_trained)
        reg = self.regression.compute()
        self.last_check_turn = pl_module.turns_trained
        out = {f"stability/{k}": v for k, v in stats.items()}
        out["stability/ppl_drift"] = float(self.drift.compute())
        out["forgetting/anchor_regression"] = float(reg["regression"])
        out["forgetting/anchor_rate"] = float(reg["rate"])
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "metrics": {name: metric_state_dict(m) for name, m in self._tracked().items()},
            "last_check_turn": self.last_check_turn,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        tracked, states = self._tracked(), dict(state_dict["metrics"])
        if "plasticity" not in states and "improvement" in states:
            # checkpoints before one Plasticity metric: LossImprovement held the same buffer (last
            # 2·window losses); RunningMean ("recent") and LossSlope ("slope") are derived from it
            states = {"drift": states["drift"], "regression": states["regression"], "plasticity": states["improvement"]}
        for name, state in states.items():
            load_metric_state_dict(tracked[name], state)
        self.last_check_turn = int(state_dict["last_check_turn"])


class ForgettingMonitor(Callback):
    """Per-fact recall of the remembered facts every `every_n_turns` turns.

    Each check asks every fact's question (`StoredFact.question`) alone in a fresh chat, greedy,
    and counts the fact recalled when the normalized answer contains the normalized object.
    With more than `max_facts` facts in memory, successive checks take the next `max_facts`
    facts in order of first statement, round robin.

    Args:
        every_n_turns: trained turns between probe rounds.
        max_facts: facts probed per round.
        batch_size: questions per generation batch.
        max_new_tokens: answer length bound.
        max_reps: last bin of recall-by-repetitions (more repetitions count there).
        per_fact_tags: facts whose own forgetting curve is logged (facts/forgetting/<key>); 0: none.
    """

    def __init__(
        self,
        every_n_turns: int = 50,
        max_facts: int = 32,
        batch_size: int = 32,
        max_new_tokens: int = 24,
        max_reps: int = 10,
        per_fact_tags: int = 8,
    ) -> None:
        problems = []
        for name, value, low in (("every_n_turns", every_n_turns, 1), ("max_facts", max_facts, 1),
                                 ("batch_size", batch_size, 1), ("max_new_tokens", max_new_tokens, 1),
                                 ("max_reps", max_reps, 1), ("per_fact_tags", per_fact_tags, 0)):  # fmt: skip
            if value < low:
                problems.append(f"{name} must be >= {low}, got {value!r}")
        if problems:
            raise ValueError("invalid ForgettingMonitor settings: " + "; ".join(problems))
        self.every_n_turns, self.max_facts, self.batch_size = every_n_turns, max_facts, batch_size
        self.per_fact_tags = per_fact_tags
        self.generation = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=False)
        self.recall, self.by_reps = FactRecall(), RecallByRepetitions(max_reps)
        self.cursor, self.last_check_turn = 0, -1
        self.latest: dict[str, float] = {}
        self.last_answers: dict[str, str] = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        if not trained_turn(outputs):  # the step that found the stream ended
            return
        turn = pl_module.turns_trained
        if _due(turn, self.every_n_turns) and turn != self.last_check_turn and len(pl_module.memory):
            self.run_probe(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.turns_trained != self.last_check_turn and len(pl_module.memory):
            self.run_probe(trainer, pl_module)  # the final recall, whatever the cadence

    def run_probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Probe the next facts, update the metrics and log them; returns the scalars."""
        start = time.perf_counter()
        facts = self._select(list(pl_module.memory))
        users = getattr(pl_module, "users", None)  # per-user learning: the active user's facts, keys apart
        who = f"{users.active}:" if users is not None and users.active is not None else ""
        keys = [f"{who}{f.subject}|{f.key_slot}" for f in facts]
        answers: list[str] = []
        for i in range(0, len(facts), self.batch_size):
            chunk = [f.question for f in facts[i : i + self.batch_size]]
            answers += recall_answers(
                pl_module.model, pl_module.tokenizer, chunk, self.generation, getattr(pl_module, "router", None)
            )
        correct = torch.tensor([is_recalled(a, f.object) for a, f in zip(answers, facts)])
        reps = torch.tensor([max(int(f.count), 1) for f in facts])
        self.recall.update(keys, correct, reps, pl_module.turns_trained)
        self.by_reps.update(reps, correct)
        self.last_answers = dict(zip(keys, answers))
        self.last_check_turn = pl_module.turns_trained
        scalars = self._scalars(len(facts))
        scalars["time/monitor_forgetting"] = time.perf_counter() - start
        self.latest = scalars
        log_scalars(trainer, scalars, turn_step(pl_module))
        return scalars

    def _select(self, facts: list) -> list:
        facts = sorted(facts, key=lambda f: (f.first_turn, f.subject, f.key_slot))
        if len(facts) <= self.max_facts:
            return facts
        start = self.cursor % len(facts)
        self.cursor = start + self.max_facts
        return (facts[start:] + facts[:start])[: self.max_facts]

    def _scalars(self, probed: int) -> dict[str, float]:
        out = {f"facts/{k}": float(v) for k, v in self.recall.compute().items()}
        out["facts/probed"] = float(probed)
        rates, counts = self.by_reps.compute().tolist(), self.by_reps.counts().tolist()
        for k, (rate, n) in enumerate(zip(rates, counts), start=1):
            if n > 0:  # the last bin also holds facts taught more often
                out[f"facts/recall_by_reps/{k:02d}"] = rate
        per_fact = list(self.recall.per_fact_forgetting().items())[: self.per_fact_tags]
        out.update({f"facts/forgetting/{fact_tag(key)}": v for key, v in per_fact})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "recall": metric_state_dict(self.recall),
            "by_reps": metric_state_dict(self.by_reps),
            "cursor": self.cursor,
            "last_check_turn": self.last_check_turn,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_metric_state_dict(self.recall, state_dict["recall"])
        load_metric_state_dict(self.by_reps, state_dict["by_reps"])
        self.cursor = int(state_dict["cursor"])
        self.last_check_turn = int(state_dict["last_check_turn"])
