"""Research metrics of olm: stability, plasticity and forgetting, as torchmetrics metrics.

The metrics (all `torchmetrics.Metric`, so they follow the device and reduce across processes):

- stability:  `AnchorPerplexity` (torchmetrics' `Perplexity` computed through log_softmax),
  torchmetrics' `KLDivergence` for KL(base ‖ adapter) and `MeanMetric` for top-1 agreement on the
  anchors, `ValueStd` for the drift (standard deviation over time) of the anchor perplexity;
- plasticity: `Plasticity` (recent loss, improvement and slope over a window of per-turn losses,
  from one buffer);
- forgetting: `Regression` (relative change of a value against its first value, and that change
  per turn), `FactRecall` (per-fact recall, best-so-far, first recall) and `RecallByRepetitions`.

It also holds plain-type state export for checkpoints (`metric_state_dict` /
`load_metric_state_dict`). What feeds the metrics without Lightning (anchor and recall probes) is in
`olm/probes.py`; the callbacks that run them live in `olm/callbacks/monitors.py` and
`olm/callbacks/drift.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.text import Perplexity
from torchmetrics.utilities import dim_zero_cat


# ----------------------------------------------------------------------------- stability
class AnchorPerplexity(Perplexity):
    """torchmetrics' `Perplexity`, with token log-probabilities taken by `log_softmax` in float32.

    `Perplexity` takes `softmax(...).log()`, which underflows to -inf (perplexity inf) once a
    token's probability drops below ~1e-38, exactly when a drifting adapter should be measured.
    States, reduction and `compute` (exp(Σ nll / count)) are the parent's.
    """

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate the negative log-likelihood of `target`.

        Args:
            preds: (B, T, V) logits (or log-probabilities) predicting `target`.
            target: (B, T) token ids; positions equal to `ignore_index` are skipped.
        """
        if preds.shape[:-1] != target.shape:
            raise ValueError(
                f"preds (B, T, V) and target (B, T) disagree: {tuple(preds.shape)} vs {tuple(target.shape)}"
            )
        log_probs = F.log_softmax(preds.float(), dim=-1)
        mask = torch.ones_like(target, dtype=torch.bool) if self.ignore_index is None else target != self.ignore_index
        token_lp = log_probs.gather(-1, torch.where(mask, target, 0)[..., None])[..., 0]  # (B, T)
        self.total_log_probs += -(token_lp * mask).sum()
        self.count += mask.sum()


class ValueStd(Metric):
    """Population standard deviation of every value seen (e.g. anchor perplexity over time)."""

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("n", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor | float) -> None:
        """Add one value, or every element of a tensor."""
        v = torch.as_tensor(value, dtype=torch.float64, device=self.n.device).flatten()
        self.n += v.numel()
        self.total += v.sum()
        self.total_sq += (v * v).sum()

    def compute(self) -> torch.Tensor:
        """sqrt(E[x²] − E[x]²) over all values; 0 before two values."""
        n = self.n.clamp_min(1.0)
        mean = self.total / n
        return (self.total_sq / n - mean * mean).clamp_min(0.0).sqrt()


# ----------------------------------------------------------------------------- plasticity
def window_improvement(values: torch.Tensor, window: int) -> torch.Tensor:
    """Relative improvement (old_avg − new_avg) / old_avg of the newest `window` values over the
    `window` before them (with fewer than 2·window values, the newest half against the older half).
    Positive: the loss is going down. 0 with fewer than two values or old_avg = 0."""
    k = min(window, values.numel() // 2)
    if k == 0:
        return values.new_zeros(())
    old, new = values[-2 * k : -k].mean(), values[-k:].mean()
    return torch.where(old != 0, (old - new) / old, torch.zeros_like(old))


def window_slope(values: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of `values` per step (negative: falling); 0 with fewer than two values."""
    if values.numel() < 2:
        return values.new_zeros(())
    x = torch.arange(values.numel(), dtype=values.dtype, device=values.device)
    dx = x - x.mean()
    return (dx * (values - values.mean())).sum() / (dx * dx).sum()


class Plasticity(Metric):
    """Plasticity over a window of per-turn losses, from one buffer of the last 2·`window` losses.

    `compute()` returns
    - recent_loss: mean of the newest `window` losses (0 before the first);
    - improvement: `window_improvement` of the newest `window` over the `window` before them;
    - slope (adaptation speed): `window_slope` of the newest `window` losses, per turn.

    One update and one compute per turn (StabilityMonitor logs all three every turn): the three
    separate metrics this replaces (torchmetrics' RunningMean, a LossImprovement and a LossSlope)
    cost ~1.7 ms a turn on olm-tiny, most of it RunningMean.compute.

    Args:
        window: losses per window (≥ 2).
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, window: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window!r}")
        self.window, self.capacity = window, 2 * window
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, loss: torch.Tensor | float) -> None:
        """Append one turn's loss (a scalar); only the last 2·window are kept."""
        self.values.append(torch.as_tensor(loss, dtype=torch.float32, device=self.device).reshape(1))
        del self.values[: -self.capacity]

    def compute(self) -> dict[str, torch.Tensor]:
        if isinstance(self.values, torch.Tensor):  # after a distributed sync the list is concatenated
            values = self.values[-self.capacity :]
        else:
            values = dim_zero_cat(self.values)[-self.capacity :] if self.values else torch.zeros(0, device=self.device)
        recent = values[-self.window :]
        return {
            "recent_loss": recent.mean() if recent.numel() else values.new_zeros(()),
            "improvement": window_improvement(values, self.window),
            "slope": window_slope(recent),
        }


# ----------------------------------------------------------------------------- forgetting
class Regression(Metric):
    """Relative change of a value since its first update (e.g. anchor perplexity since the start
    of the run) and that change per turn.

    `compute()` returns {"regression": (last − first) / first, "rate": regression / (last_turn −
    first_turn)}; both 0 before a second update, and regression 0 when first = 0.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        self.add_state("first", default=nan.clone(), dist_reduce_fx="mean")
        self.add_state("first_turn", default=nan.clone(), dist_reduce_fx="min")
        self.add_state("last", default=nan.clone(), dist_reduce_fx="mean")
        self.add_state("last_turn", default=nan.clone(), dist_reduce_fx="max")

    def update(self, value: torch.Tensor | float, turn: int) -> None:
        """Record `value` measured after `turn` trained turns (the first call sets the reference)."""
        v = torch.as_tensor(value, dtype=torch.float64, device=self.first.device).reshape(())
        t = torch.tensor(float(turn), dtype=torch.float64, device=v.device)
        unset = torch.isnan(self.first)  # torch.where keeps this free of host syncs
        self.first = torch.where(unset, v, self.first)
        self.first_turn = torch.where(unset, t, self.first_turn)
        self.last, self.last_turn = v, t

    def compute(self) -> dict[str, torch.Tensor]:
        ok = ~torch.isnan(self.first) & (self.first != 0)
        regression = torch.where(ok, (self.last - self.first) / torch.where(ok, self.first, 1.0), 0.0)
        turns = torch.nan_to_num(self.last_turn - self.first_turn, nan=0.0)
        rate = torch.where(turns > 0, regression / turns.clamp_min(1.0), 0.0)
        return {"regression": regression.float(), "rate": rate.float()}


class FactRecall(Metric):
    """Per-fact recall over probe rounds: current and best-so-far result, first correct recall.

    Facts are keyed by a string (e.g. "Zara|relation"); each `update` is one probe round at a
    turn. `compute()` summarises the facts probed in the latest round:

    - recall: share answered correctly now;
    - forgetting: mean per-fact forgetting, best recall so far − current (0 or 1 per fact);
    - ever_recalled: share recalled correctly in some round;
    - turns_since_first_recall: mean turns since the first correct recall (facts ever recalled);
    - reps_to_first_recall: mean times taught when first recalled (facts ever recalled).
    Means over an empty set are 0.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keys: list[str] = []
        inf = torch.zeros(0, dtype=torch.float64)
        self.add_state("current", default=torch.zeros(0), dist_reduce_fx="max")
        self.add_state("best", default=torch.zeros(0), dist_reduce_fx="max")
        self.add_state("probed", default=torch.zeros(0), dist_reduce_fx="max")
        self.add_state("first_turn", default=inf.clone(), dist_reduce_fx="min")
        self.add_state("first_reps", default=inf.clone(), dist_reduce_fx="min")
        self.add_state("turn", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="max")

    def update(self, keys: Sequence[str], correct: torch.Tensor, reps: torch.Tensor, turn: int) -> None:
        """Record one probe round.

        Args:
            keys: (F,) fact keys probed in this round (distinct).
            correct: (F,) bool or 0/1, whether each answer recalled the fact.
            reps: (F,) times each fact had been taught when probed.
            turn: trained turns at the probe.
        """
        if len(keys) != correct.numel() or len(keys) != reps.numel():
            raise ValueError(f"keys, correct and reps differ in length: {len(keys)}, {correct.numel()}, {reps.numel()}")
        idx = torch.tensor([self._slot(k) for k in keys], dtype=torch.long, device=self.current.device)
        ok = correct.to(device=idx.device, dtype=self.current.dtype).flatten()
        self.probed = torch.zeros_like(self.current).index_fill_(0, idx, 1.0)
        self.current[idx] = ok
        self.best[idx] = torch.maximum(self.best[idx], ok)
        new = (ok > 0) & torch.isinf(self.first_turn[idx])
        self.first_turn[idx] = torch.where(new, float(turn), self.first_turn[idx])
        self.first_reps[idx] = torch.where(new, reps.to(idx.device, torch.float64).flatten(), self.first_reps[idx])
        self.turn = torch.tensor(float(turn), dtype=torch.float64, device=idx.device)

    def compute(self) -> dict[str, torch.Tensor]:
        probed = self.probed > 0
        ever = probed & torch.isfinite(self.first_turn)
        return {
            "recall": _masked_mean(self.current, probed),
            "forgetting": _masked_mean(self.best - self.current, probed),
            "ever_recalled": _masked_mean(ever.float(), probed),
            "turns_since_first_recall": _masked_mean(self.turn - self.first_turn, ever),
            "reps_to_first_recall": _masked_mean(self.first_reps, ever),
        }

    def per_fact_forgetting(self) -> dict[str, float]:
        """{key: best − current} of the facts probed in the latest round (one host sync)."""
        values = (self.best - self.current).tolist()
        return {k: values[i] for i, k in enumerate(self.keys) if self.probed[i] > 0}

    def reset(self) -> None:
        super().reset()
        self.keys = []

    def get_extra_state(self) -> Any:
        return {"keys": list(self.keys)}

    def set_extra_state(self, state: Any) -> None:
        self.keys = list(state["keys"])

    def _slot(self, key: str) -> int:
        if key in self.keys:
            return self.keys.index(key)
        self.keys.append(key)
        for name, fill in (("current", 0.0), ("best", 0.0), ("probed", 0.0), ("first_turn", float("inf")),
                           ("first_reps", float("inf"))):  # fmt: skip
            old = getattr(self, name)
            setattr(self, name, torch.cat([old, old.new_full((1,), fill)]))
        return len(self.keys) - 1


class RecallByRepetitions(Metric):
    """Recall rate pooled over every probe, by how many times the fact had been taught.

    `compute()` returns (max_reps,) rates for 1..max_reps repetitions (more repetitions count in
    the last bin) and NaN for bins with no probe yet; `counts()` gives the probes per bin.

    Args:
        max_reps: the last bin.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, max_reps: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_reps < 1:
            raise ValueError(f"max_reps must be >= 1, got {max_reps!r}")
        self.max_reps = max_reps
        self.add_state("hits", default=torch.zeros(max_reps, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("probes", default=torch.zeros(max_reps, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, reps: torch.Tensor, correct: torch.Tensor) -> None:
        """Add probes: (F,) times taught (≥ 1) and (F,) bool/0-1 recall results."""
        bins = reps.to(self.hits.device, torch.long).flatten().clamp(1, self.max_reps) - 1
        self.hits.index_add_(0, bins, correct.to(self.hits.device, torch.float64).flatten())
        self.probes.index_add_(0, bins, torch.ones_like(bins, dtype=torch.float64))

    def compute(self) -> torch.Tensor:
        return torch.where(self.probes > 0, self.hits / self.probes.clamp_min(1.0), float("nan")).float()

    def counts(self) -> torch.Tensor:
        """(max_reps,) number of probes per bin."""
        return self.probes.clone()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(torch.float64)
    v = torch.where(mask, values.to(torch.float64), 0.0)
    return ((v * m).sum() / m.sum().clamp_min(1.0)).float()


# ----------------------------------------------------------------------------- checkpoint state
def metric_state_dict(metric: Metric) -> dict[str, Any]:
    """A metric's accumulated state as plain lists / numbers (for callback checkpoints).

    Returns:
        {"states": {name: {"dtype", "value"} or {"items": [...]}}, "update_count", "extra"}.
    """
    states: dict[str, Any] = {}
    for name, value in metric.metric_state.items():
        if isinstance(value, list):
            states[name] = {"items": [_plain_tensor(v) for v in value]}
        else:
            states[name] = _plain_tensor(value)
    extra = metric.get_extra_state() if type(metric).get_extra_state is not Metric.get_extra_state else None
    return {
        "states": states,
        "update_count": int(metric._update_count),
        "num_vals_seen": int(getattr(metric, "_num_vals_seen", 0)),  # torchmetrics' Running wrapper
        "extra": extra,
    }


def load_metric_state_dict(metric: Metric, state: dict[str, Any]) -> None:
    """Restore what `metric_state_dict` exported, on the metric's device."""
    metric.reset()
    device = metric.device
    for name, value in state["states"].items():
        if "items" in value:
            setattr(metric, name, [_from_plain(v, device) for v in value["items"]])
        else:
            setattr(metric, name, _from_plain(value, device))
    metric._update_count = int(state["update_count"])
    if hasattr(metric, "_num_vals_seen"):
        metric._num_vals_seen = int(state["num_vals_seen"])
    if state.get("extra") is not None:
        metric.set_extra_state(state["extra"])
    metric._computed = None


def _plain_tensor(t: torch.Tensor) -> dict[str, Any]:
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "value": t.detach().cpu().tolist()}


def _from_plain(value: dict[str, Any], device: torch.device) -> torch.Tensor:
    t = torch.tensor(value["value"], dtype=getattr(torch, value["dtype"]), device=device)
    return t.reshape(value["shape"])
