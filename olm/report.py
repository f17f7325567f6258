"""Figures and a short markdown summary of an olm run, from its TensorBoard event files.

    python -m olm.report runs/default/version_0          # one run: writes runs/default/version_0/report/
    python -m olm.report runs/default --out figures/      # a folder of runs: one comparison

For one run directory (event files), reads the scalars with TensorBoard's `EventAccumulator` and
writes (each only when its tags were logged):

    loss.png            turn/loss, turn/ce, plasticity/recent_loss; fact turns marked (turn/is_fact)
    kl.png              turn/kl (per turn, on the turn's text) and stability/kl (on the anchors)
    ppl_ratio.png       stability/ppl_ratio, with DriftGuard rollbacks marked
    recall.png          facts/recall, facts/ever_recalled, facts/forgetting (axis 0–1)
    recall_vs_reps.png  facts/recall_by_reps/<k>: recall by times a fact was taught (values written on the bars)
    summary.md          the run in numbers (final / min / max / mean per metric) and the figures

For a folder holding several runs it writes one comparison instead (`write_comparison`): one line
per run in compare_loss.png, compare_recall.png, compare_kl.png, compare_ppl_ratio.png, and a
summary.md with one row per run.

The x axis is the turn (TensorBoard step + 1: the module logs turn k at step k − 1). Per-turn curves
of long runs are smoothed (a moving average over turns/50 turns past 200 turns; ``--smooth``) over
the raw values drawn faintly. A metric that is constant (e.g. all zero) gets an axis around it and
says so, and lines that coincide stay visible (each drawn in its own dash pattern).
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
AUTO_SMOOTH_TURNS = 200
SHARE_TAGS = ("facts/recall", "facts/ever_recalled", "facts/forgetting")
"""Metrics that are shares in [0, 1]: their axis is 0–1 whatever the values."""
LINE_STYLES = (("-", 2.6), ("--", 2.0), (":", 1.6), ("-.", 1.3))
"""(dash pattern, width) per line of a figure: coinciding lines stay visible."""


@dataclass
class ReportSettings:
    """How the figures look."""

    dpi: int = 120
    """Resolution of the PNG files."""
    width: float = 7.0
    """Figure width in inches."""
    height: float = 3.6
    """Figure height in inches."""
    smooth: int | None = None
    """Moving-average window over per-turn curves (turn/*); 1 plots the raw values; None: automatic
    (raw up to `AUTO_SMOOTH_TURNS` turns, else a window of turns / 50)."""

    def __post_init__(self) -> None:
        problems = []
        if self.dpi < 10:
            problems.append(f"dpi must be >= 10, got {self.dpi!r}")
        if self.width <= 0 or self.height <= 0:
            problems.append(f"width and height must be > 0, got {self.width!r} x {self.height!r}")
        if self.smooth is not None and self.smooth < 1:
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


def smoothing_window(turns: int, smooth: int | None) -> int:
    """The moving-average window for a per-turn curve of `turns` points (`ReportSettings.smooth`)."""
    if smooth is not None:
        return smooth
    return 1 if turns <= AUTO_SMOOTH_TURNS else max(2, turns // 50)


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


def _plot_curve(ax, series: Series, label: str, index: int, settings: ReportSettings, per_turn: bool,
                marker: bool = False) -> list[float]:  # fmt: skip
    """One curve in its own dash pattern; a smoothed per-turn curve goes over its raw values drawn
    faintly. Returns the values drawn (for the axis limits)."""
    style, width = LINE_STYLES[index % len(LINE_STYLES)]
    turns, values = _turns(series), _values(series)
    window = smoothing_window(len(values), settings.smooth) if per_turn else 1
    color = f"C{index}"
    if window > 1:
        ax.plot(turns, values, color=color, alpha=0.2, linewidth=0.6)
        label = f"{label} (mean of {window} turns)"
        values = moving_average(values, window)
    ax.plot(turns, values, label=label, color=color, linestyle=style, linewidth=width,
            marker="o" if marker else None, markersize=3)  # fmt: skip
    return values


def _set_ylim(ax, values: Sequence[float], share: bool) -> None:
    """0–1 for shares; for a constant metric an axis around the value (matplotlib's would be ±0.04),
    with a note saying it is constant."""
    finite = [v for v in values if math.isfinite(v)]
    if share:
        ax.set_ylim(-0.03, 1.03)
    if finite and max(finite) == min(finite):
        v = finite[0]
        if not share:
            half = abs(v) * 0.5 or 1.0
            ax.set_ylim(v - half, v + half)
        ax.text(0.5, 0.5, f"every value is {v:g}", transform=ax.transAxes, ha="center", va="center",
                color="gray", fontsize="large")  # fmt: skip


def _lines(scalars: dict[str, Series], tags: Sequence[str], out: Path, settings: ReportSettings,
           title: str, ylabel: str, marker_tags: Sequence[str] = ()) -> Path | None:  # fmt: skip
    present = [t for t in tags if scalars.get(t)]
    if not present:
        return None
    fig, ax = _figure(settings, title, ylabel)
    drawn: list[float] = []
    for i, tag in enumerate(present):
        drawn += _plot_curve(ax, scalars[tag], tag, i, settings, tag.startswith("turn/"), tag in marker_tags)
    _set_ylim(ax, drawn, all(t in SHARE_TAGS for t in present))
    ax.legend(fontsize="small")
    return _save(fig, out, settings)


def fact_turns(scalars: dict[str, Series]) -> list[int]:
    """The turns (x axis) that stated a fact: turn/is_fact == 1, else turn/kind == 2."""
    if scalars.get("turn/is_fact"):
        return [step + 1 for step, v in scalars["turn/is_fact"] if v >= 0.5]
    return [step + 1 for step, v in scalars.get("turn/kind", []) if round(v) == 2]


def plot_loss(scalars: dict[str, Series], out: Path, settings: ReportSettings) -> Path | None:
    """Per-turn loss, task cross-entropy and the plasticity window average; the loss of each fact
    turn marked, so that spikes can be told to be fact statements or not."""
    tags = ("turn/loss", "turn/ce", "plasticity/recent_loss")
    present = [t for t in tags if scalars.get(t)]
    if not present:
        return None
    fig, ax = _figure(settings, "Loss per turn", "loss (nats/token)")
    for i, tag in enumerate(present):
        _plot_curve(ax, scalars[tag], tag, i, settings, tag.startswith("turn/"))
    facts = set(fact_turns(scalars))
    loss = scalars.get("turn/loss") or scalars[present[0]]
    marked = [(turn, v) for turn, v in zip(_turns(loss), _values(loss)) if turn in facts]
    if marked:
        ax.scatter([t for t, _ in marked], [v for _, v in marked], s=14, color="red", zorder=3,
                   label=f"fact turn ({len(marked)}), raw loss")  # fmt: skip
    ax.legend(fontsize="small")
    return _save(fig, out, settings)


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
    for k, v in pairs:  # a recall of 0 is a bar of no height: the value says it
        ax.text(k, v + 0.02, f"{v:.2f}", ha="center", va="bottom", fontsize="small")
    ax.set_xticks([k for k, _ in pairs])
    ax.set_ylim(0, 1.08)
    if all(v == 0 for _, v in pairs):
        ax.text(0.5, 0.6, "no fact recalled at any repetition count", transform=ax.transAxes, ha="center",
                color="gray", fontsize="large")  # fmt: skip
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


COMPARISONS: dict[str, tuple[str, str, str]] = {
    "compare_loss.png": ("turn/loss", "Loss per turn", "loss (nats/token)"),
    "compare_recall.png": ("facts/recall", "Fact recall (fresh context, greedy)", "share of facts"),
    "compare_kl.png": ("stability/kl", "Anchor KL(base ‖ adapter)", "KL (nats/position)"),
    "compare_ppl_ratio.png": ("stability/ppl_ratio", "Anchor perplexity ratio (adapter / base)", "ratio"),
}
"""Comparison figure → (tag, title, y label): one line per run."""


def _final(series: Series | None, fmt: str) -> str:
    return fmt.format(series[-1][1]) if series else "—"


def write_comparison(runs: Sequence[Path], root: str | Path, out_dir: str | Path | None = None,
                     settings: ReportSettings | None = None) -> list[Path]:  # fmt: skip
    """One comparison of several runs: a line per run in each `COMPARISONS` figure whose tag some
    run logged, and summary.md with a row per run. Default output: ``<root>/report``.

    Returns:
        The files written (figures, then summary.md).
    """
    settings = settings or ReportSettings()
    root = Path(root)
    out = Path(out_dir) if out_dir is not None else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    runs_scalars = {(str(r.relative_to(root)) if r != root else r.name): load_scalars(r) for r in runs}
    figures = []
    for name, (tag, title, ylabel) in COMPARISONS.items():
        present = {label: scalars[tag] for label, scalars in runs_scalars.items() if scalars.get(tag)}
        if not present:
            continue
        fig, ax = _figure(settings, f"{title}, {len(present)} runs", ylabel)
        drawn: list[float] = []
        for i, (label, series) in enumerate(present.items()):
            per_turn = tag.startswith("turn/")
            drawn += _plot_curve(ax, series, label, i, settings, per_turn, marker=not per_turn)
        _set_ylim(ax, drawn, tag in SHARE_TAGS)
        ax.legend(fontsize="small")
        figures.append(_save(fig, out / name, settings))
    lines = [f"# olm runs compared: `{root}`", "",
             "| run | turns | facts (memory) | mean loss | final recall | final anchor KL | final ppl ratio |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, sc in runs_scalars.items():
        loss = [v for v in _values(sc.get("turn/loss", [])) if math.isfinite(v)]
        mean_loss = f"{sum(loss) / len(loss):.4g}" if loss else "—"
        lines.append(
            f"| {_escape_cell(label)} | {_turn_count(sc)} | {_final(sc.get('facts/memory_size'), '{:.0f}')} | {mean_loss} "
            f"| {_final(sc.get('facts/recall'), '{:.2f}')} | {_final(sc.get('stability/kl'), '{:.4g}')} "
            f"| {_final(sc.get('stability/ppl_ratio'), '{:.4g}')} |"
        )
    lines += [""] + [f"![{f.stem}]({f.name})" for f in figures]
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return figures + [summary]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m olm.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", help="a run directory, or a folder of runs to compare (TensorBoard event files)")
    parser.add_argument("--out", default=None, help="output folder (default: <logdir>/report)")
    parser.add_argument("--smooth", type=int, default=ReportSettings.smooth,
                        help="moving-average window over turn/* curves (1: raw; default: automatic)")  # fmt: skip
    parser.add_argument("--dpi", type=int, default=ReportSettings.dpi, help="PNG resolution")
    args = parser.parse_args(argv)
    try:
        settings = ReportSettings(dpi=args.dpi, smooth=args.smooth)
        runs = find_runs(args.logdir)
    except (ValueError, FileNotFoundError) as err:
        print(f"olm.report: {err}", file=sys.stderr)
        return 2
    if len(runs) == 1:
        written = write_report(runs[0], args.out, settings)
        print(f"{runs[0]}: wrote {len(written)} files to {written[-1].parent}")
    else:
        written = write_comparison(runs, args.logdir, args.out, settings)
        print(f"{args.logdir}: compared {len(runs)} runs, wrote {len(written)} files to {written[-1].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
