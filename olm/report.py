"""Figures and a short markdown summary of an olm run, from its TensorBoard event files.

    python -m olm.report lightning_logs/version_0            # writes lightning_logs/version_0/report/
    python -m olm.report lightning_logs --out figures/        # every run below, one folder each

For every directory below <logdir> that holds event files, reads the scalars with TensorBoard's
`EventAccumulator` and writes (each only when its tags were logged):

    loss.png            turn/loss, turn/ce, plasticity/recent_loss
    kl.png              turn/kl (per turn, on the turn's text) and stability/kl (on the anchors)
    ppl_ratio.png       stability/ppl_ratio, with DriftGuard rollbacks marked
    recall.png          facts/recall, facts/ever_recalled, facts/forgetting
    recall_vs_reps.png  facts/recall_by_reps/<k>: recall by times a fact was taught
    summary.md          the run in numbers (final / min / max / mean per metric) and the figures

The x axis is the turn (TensorBoard step + 1: the module logs turn k at step k − 1).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

Series = list[tuple[int, float]]
EVENT_GLOB = "events.out.tfevents.*"
MONITOR_TIME_PREFIX = "time/monitor_"
SUMMARY_PREFIXES = ("turn/", "stability/", "plasticity/", "forgetting/", "facts/")
_REPS_TAG = re.compile(r"^facts/recall_by_reps/(\d+)$")


@dataclass
class ReportSettings:
    """How the figures look."""

    dpi: int = 120
    """Resolution of the PNG files."""
    width: float = 7.0
    """Figure width in inches."""
    height: float = 3.6
    """Figure height in inches."""
    smooth: int = 1
    """Moving-average window over per-turn curves (turn/*); 1 plots the raw values."""

    def __post_init__(self) -> None:
        problems = []
        if self.dpi < 10:
            problems.append(f"dpi must be >= 10, got {self.dpi!r}")
        if self.width <= 0 or self.height <= 0:
            problems.append(f"width and height must be > 0, got {self.width!r} x {self.height!r}")
        if self.smooth < 1:
            problems.append(f"smooth must be >= 1, got {self.smooth!r}")
        if problems:
            raise ValueError("invalid report settings: " + "; ".join(problems))


def find_runs(logdir: str | Path) -> list[Path]:
    """Directories at or below `logdir` that hold TensorBoard event files, sorted.

    Raises:
        FileNotFoundError: `logdir` does not exist or holds no event file.
    """
    root = Path(logdir)
    if not root.exists():
        raise FileNotFoundError(f"log directory not found: {str(root)!r}")
    runs = sorted({p.parent for p in root.rglob(EVENT_GLOB) if p.is_file()})
    if not runs:
        raise FileNotFoundError(f"no TensorBoard event files ({EVENT_GLOB}) under {str(root)!r}")
    return runs


def load_scalars(run_dir: str | Path) -> dict[str, Series]:
    """Every scalar of one run directory: {tag: [(step, value), ...]} in step order."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: sorted((e.step, e.value) for e in acc.Scalars(tag)) for tag in acc.Tags()["scalars"]}


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (shorter at the start); window 1 returns the values."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _turns(series: Series) -> list[int]:
    return [step + 1 for step, _ in series]


def _values(series: Series) -> list[float]:
    return [v for _, v in series]


def _figure(settings: ReportSettings, title: str, ylabel: str):
    fig, ax = plt.subplots(figsize=(settings.width, settings.height))
    ax.set_title(title)
    ax.set_xlabel("turn")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig, path: Path, settings: ReportSettings) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=settings.dpi)
    plt.close(fig)
    return path


def _lines(scalars: dict[str, Series], tags: Sequence[str], out: Path, settings: ReportSettings,
           title: str, ylabel: str, marker_tags: Sequence[str] = ()) -> Path | None:  # fmt: skip
    present = [t for t in tags if scalars.get(t)]
    if not present:
        return None
    fig, ax = _figure(settings, title, ylabel)
    for tag in present:
        series = scalars[tag]
        values = moving_average(_values(series), settings.smooth) if tag.startswith("turn/") else _values(series)
        ax.plot(_turns(series), values, label=tag, marker="o" if tag in marker_tags else None, markersize=3)
    ax.legend(fontsize="small")
    return _save(fig, out, settings)


def plot_loss(scalars: dict[str, Series], out: Path, settings: ReportSettings) -> Path | None:
    """Per-turn loss, task cross-entropy and the plasticity window average."""
    tags = ("turn/loss", "turn/ce", "plasticity/recent_loss")
    return _lines(scalars, tags, out, settings, "Loss per turn", "loss (nats/token)")


def plot_kl(scalars: dict[str, Series], out: Path, settings: ReportSettings) -> Path | None:
    """KL(base ‖ adapter) on each turn's text and on the anchor prompts."""
    tags = ("turn/kl", "stability/kl", "stability/guard_kl")
    return _lines(scalars, tags, out, settings, "KL(base ‖ adapter)", "KL (nats/position)", ("stability/kl",))


def plot_ppl_ratio(scalars: dict[str, Series], out: Path, settings: ReportSettings) -> Path | None:
    """Anchor perplexity adapter / base, 1 = the base; DriftGuard rollbacks as red lines."""
    series = scalars.get("stability/ppl_ratio") or scalars.get("stability/guard_ppl_ratio")
    if not series:
        return None
    fig, ax = _figure(settings, "Anchor perplexity ratio (adapter / base)", "ratio")
    ax.plot(_turns(series), _values(series), marker="o", markersize=3, label="ppl ratio")
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    rollbacks = scalars.get("stability/guard_rollbacks", [])
    for (step, value), (_, prev) in zip(rollbacks[1:], rollbacks[:-1]):
        if value > prev:
            ax.axvline(step + 1, color="red", alpha=0.5, linewidth=1)
    if any(b[1] > a[1] for a, b in zip(rollbacks[:-1], rollbacks[1:])):
        ax.plot([], [], color="red", alpha=0.5, label="drift-guard rollback")
    ax.legend(fontsize="small")
    return _save(fig, out, settings)


def plot_recall(scalars: dict[str, Series], out: Path, settings: ReportSettings) -> Path | None:
    """Recall of remembered facts over turns, share ever recalled, and mean per-fact forgetting."""
    tags = ("facts/recall", "facts/ever_recalled", "facts/forgetting")
    return _lines(scalars, tags, out, settings, "Fact recall (fresh context, greedy)", "share of facts", tags)


def recall_by_reps(scalars: dict[str, Series]) -> list[tuple[int, float]]:
    """(repetitions, recall) from the latest value of each facts/recall_by_reps/<k> tag."""
    pairs = [(int(m.group(1)), s[-1][1]) for t, s in scalars.items() if (m := _REPS_TAG.match(t)) and s]
    return sorted(pairs)


def plot_recall_vs_reps(scalars: dict[str, Series], out: Path, settings: ReportSettings) -> Path | None:
    """Recall by how many times a fact had been taught (pooled over the run's probes)."""
    pairs = recall_by_reps(scalars)
    if not pairs:
        return None
    fig, ax = _figure(settings, "Recall vs repetitions", "recall")
    ax.set_xlabel("times the fact had been taught when probed")
    ax.bar([k for k, _ in pairs], [v for _, v in pairs], color="tab:green")
    ax.set_xticks([k for k, _ in pairs])
    ax.set_ylim(0, 1)
    return _save(fig, out, settings)


FIGURES = {
    "loss.png": plot_loss,
    "kl.png": plot_kl,
    "ppl_ratio.png": plot_ppl_ratio,
    "recall.png": plot_recall,
    "recall_vs_reps.png": plot_recall_vs_reps,
}


def _turn_count(scalars: dict[str, Series]) -> int:
    return max((s[-1][0] + 1 for t, s in scalars.items() if t.startswith("turn/") and s), default=0)


def monitor_share(scalars: dict[str, Series]) -> float | None:
    """Monitor time per turn / module time per turn (time/monitor_* vs time/turn), None if unknown."""
    turn = _values(scalars.get("time/turn", []))
    turns = _turn_count(scalars)
    monitor = sum(sum(_values(s)) for t, s in scalars.items() if t.startswith(MONITOR_TIME_PREFIX))
    if not turn or not turns or sum(turn) <= 0:
        return None
    return (monitor / turns) / (sum(turn) / len(turn))


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|")


def summary_markdown(run_dir: Path, scalars: dict[str, Series], figures: Sequence[Path]) -> str:
    """The run in numbers: headline values, one table row per metric, and the figures."""
    last = {t: s[-1][1] for t, s in scalars.items() if s}
    lines = [f"# olm run report: `{run_dir}`", "", f"- turns logged: {_turn_count(scalars)}"]
    for label, tag, fmt in (("final fact recall", "facts/recall", "{:.2f}"),
                            ("final anchor KL(base ‖ adapter)", "stability/kl", "{:.4g}"),
                            ("final anchor perplexity ratio", "stability/ppl_ratio", "{:.4g}"),
                            ("anchor regression since start", "forgetting/anchor_regression", "{:+.2%}"),
                            ("drift-guard rollbacks", "stability/guard_rollbacks", "{:.0f}")):  # fmt: skip
        if tag in last:
            lines.append(f"- {label}: {fmt.format(last[tag])}")
    share = monitor_share(scalars)
    if share is not None:
        lines.append(f"- monitor cost (time/monitor_*): {share:.1%} of the module's turn time (time/turn)")
    lines += ["", "| metric | final | min | max | mean | points |", "|---|---|---|---|---|---|"]
    for tag in sorted(t for t in scalars if t.startswith(SUMMARY_PREFIXES) and scalars[t]):
        v = [x for x in _values(scalars[tag]) if math.isfinite(x)] or [float("nan")]
        lines.append(f"| {_escape_cell(tag)} | {v[-1]:.4g} | {min(v):.4g} | {max(v):.4g} | {sum(v) / len(v):.4g} | {len(v)} |")
    lines.append("")
    lines += [f"![{f.stem}]({f.name})" for f in figures]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, settings: ReportSettings | None = None) -> list[Path]:
    """Write the figures and summary.md of one run.

    Args:
        run_dir: a directory holding event files.
        out_dir: where to write; default ``<run_dir>/report``.
        settings: figure settings.

    Returns:
        The files written (figures, then summary.md).
    """
    settings = settings or ReportSettings()
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    scalars = load_scalars(run_dir)
    figures = [p for name, plot in FIGURES.items() if (p := plot(scalars, out / name, settings)) is not None]
    summary = out / "summary.md"
    summary.write_text(summary_markdown(run_dir, scalars, figures), encoding="utf-8")
    return figures + [summary]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m olm.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", help="a run directory or a folder of runs (TensorBoard event files)")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/report)")
    parser.add_argument("--smooth", type=int, default=ReportSettings.smooth, help="moving average over turn/* curves")
    parser.add_argument("--dpi", type=int, default=ReportSettings.dpi, help="PNG resolution")
    args = parser.parse_args(argv)
    try:
        settings = ReportSettings(dpi=args.dpi, smooth=args.smooth)
        runs = find_runs(args.logdir)
    except (ValueError, FileNotFoundError) as err:
        print(f"olm.report: {err}", file=sys.stderr)
        return 2
    root = Path(args.logdir)
    for run in runs:
        out = None
        if args.out is not None:
            rel = run.relative_to(root) if run != root else Path()
            out = Path(args.out) / rel if len(runs) > 1 else Path(args.out)
        written = write_report(run, out, settings)
        print(f"{run}: wrote {len(written)} files to {written[-1].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
