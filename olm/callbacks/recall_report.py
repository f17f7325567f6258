"""RecallReport: at the end of a run, ask every remembered fact's question in a fresh context,
to the base model (adapter disabled) and to the adapted model, and print both answers.

Each question is asked alone, with no chat history, so a correct adapted answer can only come
from the weights; the base answer shows what the model said before learning. Recall = the fact's
object appears in the answer (`olm.probes.is_recalled`). Beside each answer, how firmly the model
holds the object (`olm.probes.object_scores`): the question asked alone, the reply begun with the
answer template's words before the object ("Yelka's favourite colour is"), the probability of the
object (" teal") and the rank of its first token, for the base and with the adapter on. A recall won
by a small margin shows as a low probability with rank 1; a miss with rank 2 was close. The table
goes to the console (rank 0) and, as ``recall_report.json`` / ``recall_report.md``, to the logger's
run directory (or the trainer's ``default_root_dir`` when there is no logger).

Config (``trainer.callbacks``)::

    - class_path: olm.callbacks.RecallReport
      init_args: {max_facts: 50}
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from olm.facts import fill
from olm.probes import ObjectScore, answer_before, is_recalled, object_scores, recall_answers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecallRow:
    """One remembered fact, asked in a fresh context."""

    question: str
    expected: str
    base_answer: str
    adapted_answer: str
    base_recalled: bool
    adapted_recalled: bool
    statements: int
    user: str | None = None
    """With per-user learning: whose fact, asked to that user's adapter."""
    routed: bool | None = None
    """With routing (`olm.routing`): whether the adapter answered (False: the base did); None without."""
    base_log_p: float | None = None
    """Log-probability of the object after the question and the answer's lead, base (None: the fact's
    pattern has no answer template to lead with)."""
    adapted_log_p: float | None = None
    """The same with the adapter on (whatever routing would choose)."""
    base_rank: int | None = None
    """Rank of the object's first token there, base (1: greedy decoding would pick it)."""
    adapted_rank: int | None = None
    """The same with the adapter on."""


def recall_rows(pl_module, max_facts: int) -> list[RecallRow]:
    """Ask the questions of the first `max_facts` remembered facts to the base and the adapted model.

    With per-user learning: each user's facts, to that user's own adapter (`max_facts` in all)."""
    users = getattr(pl_module, "users", None)
    if users is not None:
        rows: list[RecallRow] = []
        for user_id in list(users.users):
            if len(rows) >= max_facts:
                break
            with users.viewing(user_id) as memory:
                mine = _rows(pl_module, list(memory)[: max_facts - len(rows)])
            rows += [RecallRow(**{**asdict(r), "user": user_id}) for r in mine]
        return rows
    return _rows(pl_module, list(pl_module.memory)[:max_facts])


def _rows(pl_module, facts: list) -> list[RecallRow]:
    if not facts:
        return []
    questions = [f.question for f in facts]
    model, tok, gen = pl_module.model, pl_module.tokenizer, pl_module.generation
    router = getattr(pl_module, "router", None)
    adapted = recall_answers(model, tok, questions, gen, router)
    on = [bool(x) for x in router.last_on] if router is not None and router.enabled else [None] * len(facts)
    leads = [_lead(pl_module, f) for f in facts]
    scored = [i for i, lead in enumerate(leads) if lead is not None]
    pick = ([questions[i] for i in scored], [leads[i] for i in scored], [facts[i].object for i in scored])
    adapted_scores = _spread(object_scores(model, tok, *pick) if scored else [], scored, len(facts))
    with model.disable_adapter():
        base = recall_answers(model, tok, questions, gen)
        base_scores = _spread(object_scores(model, tok, *pick) if scored else [], scored, len(facts))
    return [
        RecallRow(
            q, f.object, b, a, is_recalled(b, f.object), is_recalled(a, f.object), f.count, routed=r,
            base_log_p=bs.log_p if bs else None, adapted_log_p=as_.log_p if as_ else None,
            base_rank=bs.rank if bs else None, adapted_rank=as_.rank if as_ else None,
        )
        for q, f, b, a, r, bs, as_ in zip(questions, facts, base, adapted, on, base_scores, adapted_scores)
    ]  # fmt: skip


def _lead(pl_module, fact) -> str | None:
    """The fact's answer words before its object (`olm.probes.answer_before` of the pattern's filled
    answer); None without a pattern that has an answer template (nothing to score after)."""
    pattern = pl_module.detector.pattern(fact.pattern) if fact.pattern else None
    if pattern is None or not pattern.answer:
        return None
    return answer_before(fill(pattern.answer, fact.subject, fact.object, fact.relation, listener=True), fact.object)


def _spread(scores: list[ObjectScore], at: list[int], n: int) -> list[ObjectScore | None]:
    """`scores` of the rows `at`, placed in a list of `n` (None elsewhere)."""
    out: list[ObjectScore | None] = [None] * n
    for i, s in zip(at, scores):
        out[i] = s
    return out


def _held(log_p: float | None, rank: int | None) -> str:
    """The object's probability and rank as text, e.g. ``p 0.052, rank 2``; "" when it was not scored."""
    return "" if log_p is None else f"p {math.exp(log_p):.3f}, rank {rank}"


def _paren(log_p: float | None, rank: int | None) -> str:
    return f"   ({_held(log_p, rank)})" if log_p is not None else ""


def _routed(row: RecallRow) -> str:
    return "" if row.routed is None else f"; routed to the {'adapter' if row.routed else 'base'}"


def _cell(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_report(rows: list[RecallRow], width: int = 60) -> str:
    """The report as console text: one block per fact, then the recall shares."""
    if not rows:
        return "recall report: no fact was remembered in this run"
    lines = ["recall from the weights (each question asked alone, no chat history):"]
    for r in rows:
        who = f"[{r.user}] " if r.user is not None else ""
        lines += [
            f"  {who}Q: {r.question}   (expected: {r.expected}; stated {r.statements}x{_routed(r)})",
            f"     base    [{'x' if r.base_recalled else ' '}] {_cell(r.base_answer, width)}"
            f"{_paren(r.base_log_p, r.base_rank)}",
            f"     adapted [{'x' if r.adapted_recalled else ' '}] {_cell(r.adapted_answer, width)}"
            f"{_paren(r.adapted_log_p, r.adapted_rank)}",
        ]
    n = len(rows)
    base, adapted = sum(r.base_recalled for r in rows), sum(r.adapted_recalled for r in rows)
    lines.append(f"recall: adapted {adapted}/{n} = {adapted / n:.2f}   base {base}/{n} = {base / n:.2f}")
    return "\n".join(lines)


def markdown_report(rows: list[RecallRow]) -> str:
    """The report as a markdown table; the last column: the object's probability and first-token rank
    after the question and the answer's lead (`olm.probes.object_scores`), base → adapter on."""
    head = "| question | expected | base answer | adapted answer | object held: base → adapted |\n" + "|---" * 5 + "|\n"
    body = "".join(
        f"| {'[' + r.user + '] ' if r.user is not None else ''}{r.question}{' (' + _routed(r)[2:] + ')' if _routed(r) else ''} "
        f"| {r.expected} | {'✓' if r.base_recalled else '✗'} {_cell(r.base_answer, 80)} "
        f"| {'✓' if r.adapted_recalled else '✗'} {_cell(r.adapted_answer, 80)} "
        f"| {_held(r.base_log_p, r.base_rank) or '–'} → {_held(r.adapted_log_p, r.adapted_rank) or '–'} |\n"
        for r in rows
    )
    n = max(len(rows), 1)
    share = f"\nrecall: adapted {sum(r.adapted_recalled for r in rows) / n:.2f}, base {sum(r.base_recalled for r in rows) / n:.2f}\n"
    return head + body + share


class RecallReport(Callback):
    """Print base vs adapted answers to every remembered fact's question at the end of the run.

    Args:
        max_facts: most facts asked (the first remembered).
        answer_width: characters of each answer shown on the console (files keep them whole).
    """

    def __init__(self, max_facts: int = 50, answer_width: int = 60) -> None:
        problems = []
        if max_facts < 1:
            problems.append(f"max_facts must be >= 1, got {max_facts!r}")
        if answer_width < 10:
            problems.append(f"answer_width must be >= 10, got {answer_width!r}")
        if problems:
            raise ValueError("invalid RecallReport settings: " + "; ".join(problems))
        self.max_facts, self.answer_width = max_facts, answer_width
        self.rows: list[RecallRow] = []

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = recall_rows(pl_module, self.max_facts)
        self._write(trainer)

    @rank_zero_only
    def _write(self, trainer: L.Trainer) -> None:
        print(format_report(self.rows, self.answer_width), flush=True)
        out = Path(trainer.log_dir or trainer.default_root_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            rows = [{k: v for k, v in asdict(r).items() if k != "user" or v is not None} for r in self.rows]
            (out / "recall_report.json").write_text(json.dumps(rows, indent=2))
            (out / "recall_report.md").write_text(markdown_report(self.rows))
        except OSError as err:  # the table is on the console; a full disk must not fail the run's end
            log.warning("could not write the recall report to %s: %s", out, err)
