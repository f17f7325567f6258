"""olm.report on the event files of a short real run (tiny Qwen2, every monitor, a
TensorBoardLogger in tmp_path): PNG figures, summary.md, the command line, and its helpers."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from olm.callbacks.drift import DriftGuard
from olm.callbacks.monitors import ForgettingMonitor, StabilityMonitor
from olm.data import Turn
from olm.module import OnlineLM, OptimSettings
from olm.report import (
    ReportSettings,
    find_runs,
    load_scalars,
    main,
    monitor_share,
    moving_average,
    recall_by_reps,
    write_report,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = {"loss.png", "kl.png", "ppl_ratio.png", "recall.png", "recall_vs_reps.png"}


@pytest.fixture(scope="module")
def logdir(tiny_model_dir, tmp_path_factory):
    torch.manual_seed(0)
    pairs = [("Zara is my sister.", "Got it. Zara is your sister."), ("Hello there.", "Hi!"),
             ("Xiomara lives in Lisbon.", "Got it. Xiomara lives in Lisbon."), ("Who is Zara?", None)] * 2  # fmt: skip
    data = [Turn(conversation_id="c", user=u, assistant=a, history=(), source="t", offset=i, skipped=0)
            for i, (u, a) in enumerate(pairs)]  # fmt: skip
    root = tmp_path_factory.mktemp("logs")
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=TensorBoardLogger(root, name="olm"), log_every_n_steps=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[DriftGuard(max_kl=1e-30, every_n_turns=4), StabilityMonitor(every_n_turns=2),
                   ForgettingMonitor(every_n_turns=4)],
    )  # fmt: skip
    trainer.fit(OnlineLM(base_model=tiny_model_dir, optim=OptimSettings(lr=1e-3)), DataLoader(data, batch_size=None))
    return root


def test_report_writes_every_figure_and_a_summary(logdir, tmp_path):
    (run,) = find_runs(logdir)
    written = write_report(run, tmp_path / "out")
    assert {p.name for p in written} == FIGURES | {"summary.md"}
    for p in written:
        if p.suffix == ".png":
            data = p.read_bytes()
            assert data.startswith(PNG_MAGIC) and len(data) > 5000, p.name
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "- turns logged: 8" in summary
    assert "- drift-guard rollbacks: 2" in summary  # max_kl=1e-30 trips at turns 4 and 8
    assert "| stability/ppl_ratio |" in summary and "| plasticity/slope |" in summary
    assert "| facts/forgetting/Zara.relation |" in summary
    assert "monitor cost (time/monitor_*):" in summary
    assert all(f"]({name})" in summary for name in FIGURES)


def test_cli_defaults_to_report_folder_per_run(logdir, capsys):
    assert main([str(logdir)]) == 0
    (run,) = find_runs(logdir)
    assert FIGURES <= {p.name for p in (run / "report").iterdir()}
    assert "wrote 6 files" in capsys.readouterr().out


def test_cli_reports_missing_logs(tmp_path, capsys):
    assert main([str(tmp_path / "nothing")]) == 2
    assert main([str(tmp_path)]) == 2
    assert "no TensorBoard event files" in capsys.readouterr().err
    assert main([str(tmp_path), "--smooth", "0"]) == 2


def test_missing_tags_skip_their_figures(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(tmp_path / "run") as w:
        for step, v in enumerate([3.0, 2.0, 1.0]):
            w.add_scalar("turn/loss", v, step)
    written = write_report(tmp_path / "run")
    assert {p.name for p in written} == {"loss.png", "summary.md"}
    assert load_scalars(tmp_path / "run") == {"turn/loss": [(0, 3.0), (1, 2.0), (2, 1.0)]}


def test_helpers_against_hand_computation():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([1.0, 2.0], 1) == [1.0, 2.0]
    scalars = {
        "time/turn": [(0, 1.0), (1, 3.0)],  # 2 s per turn
        "turn/loss": [(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0)],  # 4 turns
        "time/monitor_stability": [(1, 0.2), (3, 0.1)],
        "time/monitor_drift_guard": [(3, 0.1)],
        "time/monitor_forgetting": [(3, 0.4)],
    }
    assert monitor_share(scalars) == pytest.approx((0.8 / 4) / 2.0)
    assert monitor_share({"turn/loss": [(0, 1.0)]}) is None
    assert recall_by_reps({"facts/recall_by_reps/02": [(1, 0.0), (5, 0.5)], "facts/recall_by_reps/01": [(5, 1.0)],
                           "facts/recall": [(5, 0.3)]}) == [(1, 1.0), (2, 0.5)]  # fmt: skip
    with pytest.raises(ValueError, match="dpi must be >= 10, got 1.*smooth must be >= 1, got 0"):
        ReportSettings(dpi=1, smooth=0)


@pytest.fixture
def drawn(monkeypatch):
    """The axes of every figure olm.report saves: {file name: matplotlib Axes}."""
    import olm.report as report

    axes = {}
    save = report._save

    def keep(fig, path, settings):
        axes[path.name] = fig.axes[0]
        return save(fig, path, settings)

    monkeypatch.setattr(report, "_save", keep)
    return axes


def write_run(path, turns: int, fact_every: int = 0, recall: float | None = None) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(path) as w:
        for step in range(turns):
            fact = bool(fact_every) and step % fact_every == 0
            w.add_scalar("turn/loss", 5.0 if fact else 1.0 + (step % 7) / 7, step)
            w.add_scalar("turn/is_fact", float(fact), step)
            if recall is not None and step % 10 == 9:
                w.add_scalar("facts/recall", recall, step)
                w.add_scalar("facts/ever_recalled", recall, step)
                w.add_scalar("facts/recall_by_reps/01", recall, step)


def test_all_zero_recall_gets_a_readable_axis_and_says_so(tmp_path, drawn):
    write_run(tmp_path / "run", 30, recall=0.0)
    write_report(tmp_path / "run")
    recall = drawn["recall.png"]
    assert recall.get_ylim() == pytest.approx((-0.03, 1.03))  # not matplotlib's ±0.04 around 0
    assert any("every value is 0" in t.get_text() for t in recall.texts)
    styles = {line.get_linestyle() for line in recall.get_lines()}
    assert len(styles) == 2  # the two coinciding lines are drawn in different dash patterns
    reps = [t.get_text() for t in drawn["recall_vs_reps.png"].texts]
    assert "0.00" in reps and any("no fact recalled" in t for t in reps)  # not empty axes


def test_loss_marks_fact_turns_and_is_smoothed_over_a_long_run(tmp_path, drawn):
    write_run(tmp_path / "short", 40, fact_every=10)
    write_report(tmp_path / "short")
    loss = drawn["loss.png"]
    [facts] = loss.collections
    assert [x for x, _ in facts.get_offsets()] == [1, 11, 21, 31]  # turn = step + 1
    assert "fact turn (4), raw loss" in [t.get_text() for t in loss.get_legend().get_texts()]
    write_run(tmp_path / "long", 1000, fact_every=25)
    write_report(tmp_path / "long")
    labels = [t.get_text() for t in drawn["loss.png"].get_legend().get_texts()]
    assert "turn/loss (mean of 20 turns)" in labels, labels


def test_a_folder_of_runs_gives_one_comparison(tmp_path, drawn, capsys):
    write_run(tmp_path / "runs" / "version_0", 30, recall=0.5)
    write_run(tmp_path / "runs" / "version_1", 20, recall=1.0)
    assert main([str(tmp_path / "runs")]) == 0
    assert "compared 2 runs" in capsys.readouterr().out
    assert not (tmp_path / "runs" / "version_0" / "report").exists()  # no report per version
    assert {"compare_loss.png", "compare_recall.png", "summary.md"} <= {p.name for p in (tmp_path / "runs" / "report").iterdir()}
    assert len(drawn["compare_loss.png"].get_lines()) == 2
    summary = (tmp_path / "runs" / "report" / "summary.md").read_text()
    assert "| version_0 | 30 |" in summary and "| version_1 | 20 |" in summary
