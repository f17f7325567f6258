"""Fact-acquisition benchmark: how many repetitions until a fact is recalled from the weights.

    python -m olm.bench facts --out DIR [--config configs/default.yaml] [--seeds 0 1 2]

The run goes through the same code path as ``cli.py fit``: the config is parsed and instantiated by
the olm CLI (module, data module, trainer and its replay callback), and the stream is a
messages-JSONL file read by the data module. The stream (`olm.world.schedule`): N held-out facts,
each stated k times (one round per repetition, shuffled, phrasings varied) interleaved with
distractors, then K unrelated turns. A probe callback asks questions in a fresh context
(greedy, generated answers; recall = the fact's object appears in the answer, docs/design.md §6):

- recall_at_k     recall of every fact after round k (k = 1..reps); reps_to_recall: median first k
- generalization  recall on held-out question phrasings after the last round
- retention       recall after the K unrelated turns; forgetting = recall_at_k[-1] − retention
- locality        after the last round and again after the unrelated turns ("locality_after"), on
                  general prompts never trained on (`GENERAL_PROMPTS`; the locality term trains on
                  olm/assets/locality.txt): "teacher_forced" top-1 agreement with the base along the
                  base's own greedy reply, share of greedy tokens unchanged ("token_agreement", which
                  collapses on any harmless early rewording), KL(base ‖ adapter) and perplexity ratio;
                  "gk_base" / "gk_adapted": share of `GK_QUESTIONS` (general knowledge) answered correctly;
                  "gk_kept": share of the questions the *base* answers correctly that the adapted model
                  still answers correctly (the issue's measure; gk_adapted can rise above gk_base by
                  questions gained while others are lost); with ``--gk-long-tokens N`` also
                  "gk_kept_long", the same on answers generated up to N tokens instead of the probes'
                  `--probe-tokens` (an answer reworded at more length can be cut before its fact);
                  diagnostics of where top-1 flips happen: "teacher_forced_train" (the same agreement on
                  the locality term's own training prompts: does the term hold where it trains?),
                  "flip_margin" (median base margin, top-1 minus top-2 log-probability, at the flipped
                  positions), "near_tie_flips" (share of flips where that margin is below `NEAR_TIE`) and
                  "near_tie_positions" (share of all positions below it: what a tiny change can flip)
- base_control    the base (adapter disabled) on the same probes
- update          (row "update" only) after teaching, every fact is contradicted ("Zara is my cousin."
                  after "Zara is my sister.") `reps` times: share answered with the new object and
                  not the old; retention is then asked about the new objects

Rows: the config as is ("tuned"), the original design's values, and ablations without replay,
importance weighting or KL. ``--set=--model.optim.lr=1e-3`` (repeatable) changes the config for
every row, before the row's own overrides: how the tuned defaults were searched. Writes
DIR/results.json (row → metric → {"mean", "std"}; "held_out_phrasings": generalization per held-out
question template, pooled over the seeds, worst first; "binding_errors": how many wrong answers hold
another taught fact's object), DIR/results.md (the tables) and DIR/recall.png, and each
row × seed as DIR/runs/<row>-seed<N>.json. A rerun reuses a run file whose settings (model, config
file contents, counts, overrides) match, so seeds can run as separate processes into one DIR and a
last invocation with all the seeds aggregates them; ``--fresh`` recomputes everything.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import random
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from olm.backbone import resolve_model_path
from olm.callbacks import FactReplay
from olm.generation import GenerationSettings
from olm.module import OnlineLM
from olm.probes import AnchorProbe, answer_before, is_recalled, normalize_answer, object_scores, recall_answers
from olm.turns import trained_turn
from olm.probes import load_anchors
from olm.render import messages_for, render_prompt
from olm.routing import gated
from olm.world.generator import Fact, make_world, random_object
from olm.world.quality import WORLD_FILE, load_world
from olm.world.schedule import TeachingSchedule, teaching_schedule, unrelated_turns

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("recall_at_k", "reps_to_recall", "generalization", "retention", "forgetting", "locality", "locality_after",
        "base_control", "update", "fact_turn_ratio", "routed", "object_p_at_k", "base_object_p")
DATA = Path(__file__).parent / "data"
GENERAL_PROMPTS = DATA / "general_prompts.txt"
"""Locality prompts of the benchmark: disjoint from the training locality prompts (tests check)."""
GK_QUESTIONS = DATA / "gk_questions.jsonl"
"""General-knowledge questions with accepted answers: what the base knows must stay known."""
NEAR_TIE = 0.5
"""Base top-1 − top-2 log-probability margin (nats) under which a position counts as a near-tie."""
TOP1_BATCH = 16
"""Rows per teacher-forced forward (bounds the memory of the full-vocabulary logits)."""
ORIGINAL = [  # the original design's values on the same model
    "--model.optim.lr=1e-6", "--model.optim.steps_per_fact=1", "--model.optim.steps_per_turn=1",
    "--model.optim.steps_per_replay=1", "--model.optim.grad_clip=0.1",
    '--model.policy.lr_multipliers={"chat": 1, "question": 2, "fact": 5, "replay": 0.5}',
    '--model.policy.kl_lambdas={"chat": 0.1, "question": 0.1, "fact": 0.01, "replay": 0.01}',
    "--model.lora.r=4", "--model.lora.alpha=16", "--model.lora.target_modules=[q_proj, v_proj]", "--model.policy.max_kl=0.1",
]  # fmt: skip
NO_KL = ['--model.policy.kl_lambdas={"chat": 0, "question": 0, "fact": 0, "replay": 0}', "--model.policy.min_kl=0"]
ROWS: dict[str, tuple[list[str], bool]] = {  # name → (CLI overrides, keep replay)
    "tuned": ([], True),
    "update": ([], True),
    "original": (ORIGINAL, True),
    "no_replay": ([], False),
    "no_weighting": (["--model.weighting.strategies=[]"], True),
    "no_kl": (NO_KL, True),
}


@dataclass
class Reference:
    """What the base model does on the general prompts and questions (computed once per run)."""

    ids: torch.Tensor
    attention: torch.Tensor
    positions: torch.Tensor
    base_top1: torch.Tensor
    base_replies: list[str]
    gk: list[dict[str, Any]]
    gk_base: list[bool]
    gk_answers: list[str]
    """The base's answers to the general-knowledge questions (stored with each run)."""
    base_margin: torch.Tensor
    """(N,) the base's top-1 − top-2 log-probability at each compared position."""
    gk_long: list[str] = field(default_factory=list)
    """The base's whole answers to the general-knowledge questions (`gk_long_tokens`; empty when off)."""


def gk_correct(answers: list[str], gk: list[dict[str, Any]]) -> list[bool]:
    return [any(is_recalled(a, ok) for ok in q["answers"]) for a, q in zip(answers, gk)]


@torch.no_grad()
def reference(pl_module: OnlineLM, prompts: list[str], gk: list[dict[str, Any]], gk_long_tokens: int = 0) -> Reference:
    """The base's greedy replies to `prompts` (rendered with them as one padded batch), its top-1
    token along them, and its answers to the general-knowledge questions (also whole, up to
    `gk_long_tokens`, when not 0)."""
    model, tok, gen = pl_module.model, pl_module.tokenizer, pl_module.generation
    with model.disable_adapter():
        replies = recall_answers(model, tok, prompts, gen)
        gk_answers = recall_answers(model, tok, [q["question"] for q in gk], gen) if gk else []
        gk_long = gk_whole_answers(pl_module, gk, gk_long_tokens)
    rows, spans = [], []
    for prompt, reply in zip(prompts, replies):
        head = tok(render_prompt(tok, messages_for(prompt)), add_special_tokens=False).input_ids
        body = tok(reply, add_special_tokens=False).input_ids
        rows.append(head + body)
        spans.append((len(head) - 1, len(head) + len(body) - 1))  # positions predicting the reply
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    positions = torch.zeros_like(ids, dtype=torch.bool)
    for i, (a, b) in enumerate(spans):
        positions[i, a:b] = True
    with model.disable_adapter():
        base_top1, base_margin = top2(pl_module, ids, attention, positions)
    return Reference(ids, attention, positions, base_top1, replies, gk, gk_correct(gk_answers, gk), gk_answers, base_margin, gk_long)


def gk_whole_answers(pl_module: OnlineLM, gk: list[dict[str, Any]], max_tokens: int, router=None) -> list[str]:
    """Answers to the general-knowledge questions generated up to `max_tokens` (greedy, as the probes;
    [] when 0): the probe answers stop at `probe_tokens`, and an answer reworded at more length can be
    cut before the fact it would state, as can the base's own (a diagnostic beside "gk_kept")."""
    if not max_tokens or not gk:
        return []
    gen = dataclasses.replace(pl_module.generation, max_new_tokens=max_tokens)
    return recall_answers(pl_module.model, pl_module.tokenizer, [q["question"] for q in gk], gen, router)


def top1(
    pl_module: OnlineLM, ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor, router=None
) -> torch.Tensor:
    """(N,) the model's top-1 token at each of `positions` (teacher-forced, eval mode; with `router`,
    each row with the adapter on or off as its prompt is routed, see `top2`)."""
    return top2(pl_module, ids, attention, positions, router)[0]


@torch.no_grad()
def top2(
    pl_module: OnlineLM, ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor, router=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) top-1 token and (N,) its log-probability margin over the top-2 at each of `positions`,
    in forwards of `TOP1_BATCH` rows. With `router` (`olm.routing`), each row runs with the adapter
    on or off as generation would route its prompt (the tokens before its first compared position)."""
    model = pl_module.model
    was_training = model.training
    model.eval()
    tokens, margins = [], []
    try:
        for start in range(0, ids.shape[0], TOP1_BATCH):
            rows = slice(start, start + TOP1_BATCH)
            x, a = ids[rows].to(pl_module.device), attention[rows].to(pl_module.device)
            on = router.route(model, x, a, positions[rows].int().argmax(1) + 1) if router is not None else None
            with gated(model, on) if on is not None else nullcontext():
                logits = model(input_ids=x, attention_mask=a).logits
            best = logits[positions[rows].to(pl_module.device)].float().log_softmax(-1).topk(2, dim=-1)
            tokens.append(best.indices[:, 0].cpu())
            margins.append((best.values[:, 0] - best.values[:, 1]).cpu())
    finally:
        model.train(was_training)
    return torch.cat(tokens), torch.cat(margins)


def flips(adapted: torch.Tensor, ref: Reference) -> dict[str, float]:
    """Agreement of `adapted` top-1 tokens with the base's, and where the flips are (base margins)."""
    flipped = adapted != ref.base_top1
    margin = ref.base_margin[flipped]
    return {
        "teacher_forced": float((~flipped).float().mean()),
        "flip_margin": float(margin.median()) if margin.numel() else math.nan,
        "near_tie_flips": float((margin < NEAR_TIE).float().mean()) if margin.numel() else math.nan,
        "near_tie_positions": float((ref.base_margin < NEAR_TIE).float().mean()),
    }


@dataclass
class Probe(L.Callback):
    """Asks the schedule's probes at the end of each round, of teaching, of the updates and of the stream."""

    schedule: TeachingSchedule
    round_ends: dict[int, int]
    anchors: list[str]
    teaching_turns: int
    updates: list[Fact] = field(default_factory=list)
    update_end: int = 0
    gk: list[dict[str, Any]] = field(default_factory=list)
    gk_long_tokens: int = 0
    """Also answer the general-knowledge questions whole, up to this many tokens (0 = not)."""
    recall: dict[int, list[bool]] = field(default_factory=dict)
    object_p: dict[int, list[float]] = field(default_factory=dict)
    """Per round, each fact's `held` probability: how firmly the object is held, not only whether the
    greedy answer names it (a continuous figure, steadier than recall between settings)."""
    results: dict[str, Any] = field(default_factory=dict)
    answers: dict[str, list[str]] = field(default_factory=dict)
    """The generated answers of each probe round ("round1".., "retention", "generalization"), per fact."""
    ref: Reference | None = None
    ref_train: Reference | None = None
    """The base on the locality term's training prompts (None until first used, or without the term)."""
    turn_times: dict[str, list[float]] = field(default_factory=lambda: {"fact": [], "other": []})
    routed: dict[str, float] = field(default_factory=dict)
    """With routing (`olm.routing`): per probe set ("round1".., "generalization", "retention", "gk_teach",
    "general_teach", …), the share of its prompts answered with the adapter on."""

    def note_routed(self, pl_module: OnlineLM, label: str) -> None:
        router = pl_module.router
        if router.enabled and router.last_on is not None:
            self.routed[label] = mean(router.last_on.tolist())

    def on_train_batch_end(self, trainer, pl_module: OnlineLM, outputs, *args) -> None:
        if not trained_turn(outputs):
            return
        last = pl_module.last
        if last is not None and not last.replayed:
            self.turn_times["fact" if last.kind == "fact" else "other"].append(last.timings.get("turn", 0.0))
        done = pl_module.turns_trained
        if done in self.round_ends.values():
            k = next(k for k, end in self.round_ends.items() if end == done)
            self.recall[k] = self.ask(pl_module, [f.probe for f in self.schedule.facts], label=f"round{k}")
            self.object_p[k] = self.held(pl_module)
        if done == self.teaching_turns:
            self.end_of_teaching(pl_module)
        if self.updates and done == self.update_end:
            self.results["update"] = self.ask_updates(pl_module)

    def on_train_end(self, trainer, pl_module: OnlineLM) -> None:
        if self.updates:
            answers = recall_answers(pl_module.model, pl_module.tokenizer, [f.probe for f in self.updates], pl_module.generation, pl_module.router)
            self.answers["retention"] = answers
            self.results["retention"] = mean([is_recalled(a, f.object) for a, f in zip(answers, self.updates)])
        else:
            self.results["retention"] = mean(self.ask(pl_module, [f.probe for f in self.schedule.facts], label="retention"))
        self.results["locality_after"] = self.locality(pl_module)
        fact, other = (statistics.median(v) if v else math.nan for v in self.turn_times.values())
        self.results["fact_turn_ratio"] = fact / other if other else math.nan

    def ask(self, pl_module: OnlineLM, questions: list[str], facts=None, label: str | None = None, base: bool = False) -> list[bool]:
        facts = facts or self.schedule.facts
        router = None if base else pl_module.router
        answers = recall_answers(pl_module.model, pl_module.tokenizer, questions, pl_module.generation, router)
        if label is not None:
            self.answers[label] = answers
            if not base:
                self.note_routed(pl_module, label)
        return [is_recalled(a, f.expected) for a, f in zip(answers, facts)]

    def held(self, pl_module: OnlineLM) -> list[float]:
        """Each fact's object probability, teacher-forced after its recall question and its expected
        answer's words before the object ("Zara is your" → "sister"; `olm.probes.object_scores`), with
        the model as it is (the adapter on; call inside ``disable_adapter`` for the base)."""
        facts = self.schedule.facts
        leads = [answer_before(f.answer, f.expected) for f in facts]
        questions, objects = [f.probe for f in facts], [f.expected for f in facts]
        scores = object_scores(pl_module.model, pl_module.tokenizer, questions, leads, objects)
        return [math.exp(s.log_p) for s in scores]

    def ask_updates(self, pl_module: OnlineLM) -> float:
        """Share of contradicted facts answered with the new object and without the old one."""
        answers = recall_answers(pl_module.model, pl_module.tokenizer, [f.probe for f in self.updates], pl_module.generation, pl_module.router)
        old = [f.expected for f in self.schedule.facts]
        return mean([is_recalled(a, new.object) and not is_recalled(a, o) for a, new, o in zip(answers, self.updates, old)])

    def end_of_teaching(self, pl_module: OnlineLM) -> None:
        facts = self.schedule.facts
        para = [(q, f) for f in facts for q in f.paraphrases]
        self.results["generalization"] = mean(self.ask(pl_module, [q for q, _ in para], [f for _, f in para], "generalization"))
        self.results["locality"] = self.locality(pl_module)
        with pl_module.model.disable_adapter():
            self.results["base_control"] = mean(self.ask(pl_module, [f.probe for f in facts], base=True))
            self.results["base_object_p"] = mean(self.held(pl_module))

    def locality(self, pl_module: OnlineLM) -> dict[str, float]:
        if self.ref is None:
            self.ref = reference(pl_module, self.anchors, self.gk, self.gk_long_tokens)
        ref = self.ref
        out = locality(pl_module, self.anchors, ref.base_replies)
        self.note_routed(pl_module, "general_teach" if "gk_teach" not in self.answers else "general_after")
        out.update(flips(top1(pl_module, ref.ids, ref.attention, ref.positions, pl_module.router), ref))
        out["teacher_forced_train"] = None
        if pl_module.locality.settings.weight > 0:
            if self.ref_train is None:
                self.ref_train = reference(pl_module, pl_module.locality.prompts, [])
            train = self.ref_train
            out["teacher_forced_train"] = flips(top1(pl_module, train.ids, train.attention, train.positions, pl_module.router), train)["teacher_forced"]
        answers = recall_answers(pl_module.model, pl_module.tokenizer, [q["question"] for q in ref.gk], pl_module.generation, pl_module.router)
        point = "gk_teach" if "gk_teach" not in self.answers else "gk_after"
        self.answers[point] = answers
        self.note_routed(pl_module, point)
        if self.gk_long_tokens:
            self.answers[point + "_long"] = gk_whole_answers(pl_module, ref.gk, self.gk_long_tokens, pl_module.router)
        out["gk_base"], out["gk_adapted"] = mean(ref.gk_base), mean(gk_correct(answers, ref.gk))
        return out


def mean(values: list[bool] | list[float]) -> float:
    return float(sum(values)) / max(1, len(values))


@torch.no_grad()
def locality(pl_module: OnlineLM, anchors: list[str], base: list[str] | None = None) -> dict[str, float]:
    """Greedy-token agreement with the base, anchor KL(base ‖ adapter) and perplexity ratio."""
    model, tok = pl_module.model, pl_module.tokenizer
    adapted = recall_answers(model, tok, anchors, pl_module.generation, pl_module.router)
    if base is None:
        with model.disable_adapter():
            base = recall_answers(model, tok, anchors, pl_module.generation)
    same = total = 0
    for a, b in zip(adapted, base):
        ta, tb = tok(a, add_special_tokens=False).input_ids, tok(b, add_special_tokens=False).input_ids
        same += sum(x == y for x, y in zip(ta, tb))
        total += max(len(ta), len(tb), 1)
    probe = AnchorProbe(tok, anchors, cache_base=False)
    lp_a, lp_b = probe.log_probs(model, adapter=True), probe.log_probs(model, adapter=False)
    targets, has = probe.targets(lp_a.device)
    kl = F.kl_div(lp_a, lp_b, reduction="none", log_target=True).sum(-1)[has].mean()
    nll_a = -lp_a[has].gather(-1, targets[has, None]).mean()
    nll_b = -lp_b[has].gather(-1, targets[has, None]).mean()
    return {"token_agreement": same / total, "anchor_kl": float(kl), "ppl_ratio": float(torch.exp(nll_a - nll_b))}


def contradictions(facts: list[Fact], reps: int, seed: int) -> tuple[list[Fact], list[dict[str, str]]]:
    """A new object for every fact (same subject and kind), and `reps` rounds of turns stating it."""
    rng = random.Random(seed)
    updates = []
    for f in facts:
        obj = random_object(rng, f.kind)
        while obj == f.object:
            obj = random_object(rng, f.kind)
        updates.append(Fact(f.subject, f.kind, obj))
    turns = []
    for r in range(reps):
        order = list(range(len(updates)))
        rng.shuffle(order)
        for i in order:
            u = updates[i]
            turns.append({"user": u.statements[r % len(u.statements)], "assistant": u.acknowledgement})
    return updates, turns


def write_stream(path: Path, schedule: TeachingSchedule, unrelated: list[dict[str, str]], extra=()) -> None:
    """Each turn as its own conversation (fresh context) in messages-JSONL: teaching, `extra`, unrelated."""
    with path.open("w") as f:
        for i, turn in enumerate([*schedule.turns, *extra, *unrelated]):
            messages = [{"role": "user", "content": turn["user"]}, {"role": "assistant", "content": turn["assistant"]}]
            f.write(json.dumps({"id": f"t{i}", "messages": messages}) + "\n")


def round_ends(schedule: TeachingSchedule) -> dict[int, int]:
    """Repetition k → number of turns trained when every fact has been stated k times."""
    reps = max(schedule.repetition_of_turn)
    return {k: 1 + max(i for i, r in enumerate(schedule.repetition_of_turn) if r == k) for k in range(1, reps + 1)}


def world_for(model: str):
    path = Path(resolve_model_path(model))
    return load_world(path) if (path / WORLD_FILE).is_file() else make_world(0)


def run_once(args, row: str, seed: int, workdir: Path) -> dict[str, Any]:
    """One row × seed through the olm CLI; returns the metrics of that run."""
    from cli import OlmCLI  # the same entry point as `python cli.py fit`
    from olm.data import ChatStreamDataModule

    overrides, keep_replay = ROWS[row]
    world = world_for(args.model)
    schedule = teaching_schedule(world, args.facts, args.reps, seed=seed)
    stream = workdir / f"{row}-{seed}.jsonl"
    updates, update_turns = contradictions([f.fact for f in schedule.facts], args.reps, seed + 2000) if row == "update" else ([], [])
    write_stream(stream, schedule, unrelated_turns(args.unrelated, seed=seed + 1000), update_turns)
    cli = OlmCLI(
        OnlineLM, ChatStreamDataModule, run=False, auto_configure_optimizers=False,
        args=["--config", str(args.config), f"--model.base_model={args.model}", f"--data.source={stream}",
              f"--seed_everything={seed}", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
              f"--threads={args.threads}", *args.overrides, *overrides],
    )  # fmt: skip
    gk = [json.loads(line) for line in GK_QUESTIONS.read_text().splitlines() if line.strip()]
    probe = Probe(schedule, round_ends(schedule), load_anchors(GENERAL_PROMPTS), len(schedule.turns),
                  updates, len(schedule.turns) + len(update_turns), gk, args.gk_long_tokens)  # fmt: skip
    # keep the research callbacks, drop file output (checkpoints, adapters) from the benchmark
    cli.trainer.callbacks[:] = [c for c in cli.trainer.callbacks if isinstance(c, FactReplay) and keep_replay]
    cli.trainer.callbacks.append(probe)
    # every bench turn has a logged reply, so generation serves only the probes: short answers suffice
    cli.model.generation = GenerationSettings(max_new_tokens=args.probe_tokens)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return summarize(probe, args.reps)


def summarize(probe: Probe, reps: int) -> dict[str, Any]:
    per_k = [mean(probe.recall[k]) for k in range(1, reps + 1)]
    firsts = []
    for i in range(len(probe.schedule.facts)):
        hit = [k for k in range(1, reps + 1) if probe.recall[k][i]]
        firsts.append(hit[0] if hit else math.inf)
    median = statistics.median(firsts)
    return {
        "recall_at_k": per_k, "reps_to_recall": None if math.isinf(median) else float(median),
        "generalization": probe.results["generalization"], "retention": probe.results["retention"],
        "forgetting": per_k[-1] - probe.results["retention"], "locality": probe.results["locality"],
        "locality_after": probe.results["locality_after"], "base_control": probe.results["base_control"],
        "update": probe.results.get("update"), "fact_turn_ratio": probe.results["fact_turn_ratio"],
        "facts": per_fact(probe, reps), "gk": per_gk_question(probe), "routed": probe.routed or None,
        "object_p_at_k": [mean(probe.object_p[k]) for k in range(1, reps + 1)],
        "base_object_p": probe.results["base_object_p"],
    }  # fmt: skip


def per_gk_question(probe: Probe) -> list[dict[str, Any]]:
    """Each general-knowledge question with the base's answer and the adapted model's after teaching and
    after the unrelated turns (what a GK share above or below the base's is made of); not aggregated."""
    if probe.ref is None:
        return []
    ref, blank = probe.ref, [""] * len(probe.ref.gk)
    teach, after = probe.answers.get("gk_teach", blank), probe.answers.get("gk_after", blank)
    out = [
        {"question": q["question"], "accepted": q["answers"], "base": b, "adapted": t, "adapted_after": a,
         "correct": [ok, *gk_correct([t, a], [q, q])]}
        for q, b, ok, t, a in zip(ref.gk, ref.gk_answers, ref.gk_base, teach, after)
    ]  # fmt: skip
    if ref.gk_long:  # the whole answers (`gk_long_tokens`), judged alike
        teach, after = probe.answers.get("gk_teach_long", blank), probe.answers.get("gk_after_long", blank)
        for rec, q, b, t, a in zip(out, ref.gk, ref.gk_long, teach, after):
            rec.update({"base_long": b, "adapted_long": t, "adapted_after_long": a,
                        "correct_long": gk_correct([b, t, a], [q, q, q])})  # fmt: skip
    return out


def per_fact(probe: Probe, reps: int) -> list[dict[str, Any]]:
    """Each taught fact with its answer after every round and at the end (which facts fail, and how);
    stored with the run, not aggregated."""
    facts = probe.schedule.facts
    blank = [""] * len(facts)
    rounds = [probe.answers.get(f"round{k}", blank) for k in range(1, reps + 1)]
    held_out: list[list[dict[str, str]]] = [[] for _ in facts]
    para = [(i, q) for i, f in enumerate(facts) for q in f.paraphrases]  # the order end_of_teaching asked them
    for (i, q), a in zip(para, probe.answers.get("generalization", [""] * len(para))):
        held_out[i].append({"question": q, "answer": a})
    out = []
    for i, f in enumerate(facts):
        after = probe.updates[i].object if probe.updates else f.expected  # what retention is judged against
        out.append({
            "subject": f.fact.subject, "kind": f.fact.kind, "object": f.expected, "question": f.probe,
            "recalled": [bool(probe.recall[k][i]) for k in range(1, reps + 1)],
            "object_p": [probe.object_p[k][i] for k in range(1, reps + 1)],
            "answers": [answers[i] for answers in rounds],
            "answer_after": probe.answers.get("retention", blank)[i], "object_after": after,
            "generalization": held_out[i],
        })  # fmt: skip
    return out


MISSING = {"mean": None, "std": None, "n": 0}
"""An aggregate with no values (a row without updates, a run written before a metric existed)."""


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every number (recursing into lists and dicts)."""

    def agg(values: list[Any]) -> Any:
        present = [v for v in values if v is not None]
        if present and isinstance(present[0], dict):  # a key a run lacks (older code) counts as missing there
            keys = dict.fromkeys(k for v in present for k in v)
            return {k: agg([v.get(k) for v in present]) for k in keys}
        if present and isinstance(present[0], list):
            return [agg([v[i] for v in present]) for i in range(len(present[0]))]
        nums = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if not nums:
            return dict(MISSING)
        return {"mean": statistics.fmean(nums), "std": statistics.pstdev(nums), "n": len(nums)}

    runs = [with_gk_kept(r) for r in runs]
    return {k: agg([r.get(k) for r in runs]) for k in KEYS}  # a run from before a key existed: missing there


def with_gk_kept(run: dict[str, Any]) -> dict[str, Any]:
    """`run` with "gk_kept" in its locality dicts, from its per-question GK records (so runs stored
    before the measure existed get it too): of the questions the base answers correctly, the share
    the adapted model still answers correctly, after teaching and after the unrelated turns; and
    "gk_kept_long", the same on the whole answers, when the run has them (`gk_long_tokens`)."""
    out = dict(run)
    for name, field_ in (("gk_kept", "correct"), ("gk_kept_long", "correct_long")):
        held = [q[field_] for q in run.get("gk") or [] if field_ in q and q[field_][0]]
        if not held:
            continue
        for key, col in (("locality", 1), ("locality_after", 2)):
            if isinstance(out.get(key), dict):
                out[key] = {**out[key], name: mean([c[col] for c in held])}
    return out


def held_out_phrasings(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Generalization per held-out phrasing, pooled over the runs (seeds): for each question template
    (the subject written ``{subject}``), its fact kind and how many of the times it was asked the
    adapted model's answer held the object (`is_recalled`, as the generalization figure judges it).
    Worst first: where generalization fails, not only how much. Runs without per-fact records add nothing."""
    asked: dict[tuple[str, str], list[bool]] = {}
    for run in runs:
        for fact in run.get("facts") or []:
            for held in fact.get("generalization") or []:
                template = held["question"].replace(fact["subject"], "{subject}")
                asked.setdefault((template, fact["kind"]), []).append(is_recalled(held["answer"], fact["object"]))
    rows = [{"question": q, "kind": k, "recalled": sum(v), "asked": len(v)} for (q, k), v in asked.items()]
    return sorted(rows, key=lambda r: (r["recalled"] / r["asked"], r["kind"], r["question"]))


def binding_errors(runs: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """How many wrong answers hold *another* taught fact's object, pooled over the runs: interference
    between the facts of one run ("What does Ana have?" → "Ana has a silver guitar.", Ben's guitar),
    as against answers that miss the fact some other way (a wrong frame, a made-up object). Per probe
    set — "recall" (the last round), "generalization", "retention" — {"asked", "wrong", "other_fact"}.
    Judged as the figures are (`is_recalled`); retention against each fact's `object_after` (the update
    row's new object; older records without it: the taught object); runs without per-fact records add nothing."""
    out = {name: {"asked": 0, "wrong": 0, "other_fact": 0} for name in ("recall", "generalization", "retention")}
    for run in runs:
        facts = run.get("facts") or []
        taught = [f["object"] for f in facts]
        after = [f.get("object_after", f["object"]) for f in facts]
        for i, fact in enumerate(facts):
            answers = {
                "recall": (fact["answers"][-1:], taught), "retention": ([fact["answer_after"]], after),
                "generalization": ([held["answer"] for held in fact.get("generalization") or []], taught),
            }  # fmt: skip
            for name, (given, objects) in answers.items():
                for answer in given:
                    out[name]["asked"] += 1
                    if is_recalled(answer, objects[i]):
                        continue
                    out[name]["wrong"] += 1
                    others = (o for o in objects if normalize_answer(o) != normalize_answer(objects[i]))
                    out[name]["other_fact"] += any(is_recalled(answer, o) for o in others)
    return out


def binding_markdown(errors: dict[str, dict[str, dict[str, int]]]) -> str:
    """`binding_errors` of each row as a markdown table (empty when no row asked anything)."""
    lines = []
    for row, per_set in errors.items():
        if any(c["asked"] for c in per_set.values()):
            if not lines:
                lines += ["\nWrong answers holding another taught fact's object (interference between facts; all seeds):\n",
                          "| row | probes | asked | wrong | another fact's object |", "|---|---|---|---|---|"]  # fmt: skip
            lines += [f"| {row} | {name} | {c['asked']} | {c['wrong']} | {c['other_fact']} |" for name, c in per_set.items()]
    return "\n".join(lines) + "\n" if lines else ""


def held_out_markdown(phrasings: dict[str, list[dict[str, Any]]]) -> str:
    """`held_out_phrasings` of each row as a markdown table (empty when no row has any)."""
    lines = []
    for row, rows in phrasings.items():
        if rows:
            lines += [f"\nGeneralization by held-out phrasing, row `{row}` (all seeds, worst first):\n",
                      "| held-out question | kind | recalled / asked | share |", "|---|---|---|---|"]  # fmt: skip
            lines += [f"| {r['question']} | {r['kind']} | {r['recalled']} / {r['asked']} | {r['recalled'] / r['asked']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n" if lines else ""


def fmt(stat: dict[str, Any]) -> str:
    return "–" if stat["mean"] is None else f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def object_p_cell(r: dict[str, Any]) -> str:
    """Mean object probability after each round and, in brackets, the base's ("–" for runs stored
    before the figure existed)."""
    rounds, base = r.get("object_p_at_k"), r.get("base_object_p") or MISSING
    if not isinstance(rounds, list):
        return "–"
    def num(stat: dict[str, Any]) -> str:
        return "–" if stat["mean"] is None else f"{stat['mean']:.2f}"

    return " / ".join(num(s) for s in rounds) + f" ({num(base)})"


def markdown(results: dict[str, Any], reps: int) -> str:
    ks = sorted({1, 2, 3, reps} & set(range(1, reps + 1)))
    head = ["row", *[f"recall@{k}" for k in ks], "reps→recall", "object p by round (base)", "generalization",
            "retention", "update",
            "locality TF (teach / after)", "TF on the training locality prompts (teach / after)",
            "flips at base near-ties (teach)", "GK kept (teach / after)", "GK kept, whole answers (teach / after)", "GK adapted (teach / after)", "GK base", "token agreement", "anchor KL",
            "ppl ratio", "base control", "fact/plain turn time"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, r in results.items():
        loc, after = r["locality"], r["locality_after"]
        cells = [row, *[fmt(r["recall_at_k"][k - 1]) for k in ks], fmt(r["reps_to_recall"]), object_p_cell(r),
                 fmt(r["generalization"]),
                 fmt(r["retention"]), fmt(r["update"]),
                 f"{fmt(loc['teacher_forced'])} / {fmt(after['teacher_forced'])}",
                 f"{fmt(loc.get('teacher_forced_train', MISSING))} / {fmt(after.get('teacher_forced_train', MISSING))}",
                 fmt(loc.get("near_tie_flips", MISSING)),
                 f"{fmt(loc.get('gk_kept', MISSING))} / {fmt(after.get('gk_kept', MISSING))}",
                 f"{fmt(loc.get('gk_kept_long', MISSING))} / {fmt(after.get('gk_kept_long', MISSING))}",
                 f"{fmt(loc['gk_adapted'])} / {fmt(after['gk_adapted'])}", fmt(loc["gk_base"]),
                 fmt(loc["token_agreement"]), fmt(loc["anchor_kl"]), fmt(loc["ppl_ratio"]), fmt(r["base_control"]),
                 fmt(r["fact_turn_ratio"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], reps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ks = list(range(1, reps + 1))
    for row, r in results.items():
        means = [s["mean"] for s in r["recall_at_k"]]
        stds = [s["std"] for s in r["recall_at_k"]]
        ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=row)
    ax.set(xlabel="repetitions of each fact", ylabel="recall (fresh context, generated)", ylim=(-0.02, 1.02))
    ax.set_xticks(ks)  # repetitions are whole statements
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m olm.bench facts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml", help="the tuned config")
    p.add_argument("--model", default="smollm2-135m", help="base model (built-in name, directory or hub id)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="rows to run")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (mean ± spread over them)")
    p.add_argument("--facts", type=int, default=20, help="held-out facts taught (N)")
    p.add_argument("--reps", type=int, default=8, help="repetitions of each fact (k)")
    p.add_argument("--unrelated", type=int, default=100, help="unrelated turns before the retention probe (K)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--probe-tokens", type=int, default=32, help="most tokens generated per probe answer")
    p.add_argument("--gk-long-tokens", type=int, default=0, metavar="N",
                   help="also answer the general-knowledge questions up to N tokens and report 'GK kept, whole "
                        "answers' (0 = not; 128 is ample for smollm2-135m's answers)")
    p.add_argument("--fresh", action="store_true", help="recompute runs stored under DIR/runs/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="=--KEY=VALUE",
                   help="a `cli.py fit` override for every row, before the row's own (repeatable; write it "
                        "with '=': --set=--model.optim.lr=1e-3)")  # fmt: skip
    args = p.parse_args(argv)
    if args.gk_long_tokens < 0:
        p.error(f"--gk-long-tokens must be >= 0, got {args.gk_long_tokens}")
    return args


def run_settings(args: argparse.Namespace, row: str, seed: int) -> dict[str, Any]:
    """What determines a run's result: a stored run is reused only when all of it matches."""
    config = hashlib.sha256(Path(args.config).read_bytes()).hexdigest()
    return {"row": row, "seed": seed, "model": str(args.model), "config_sha256": config, "facts": args.facts,
            "reps": args.reps, "unrelated": args.unrelated, "probe_tokens": args.probe_tokens,
            "overrides": list(args.overrides),
            **({"gk_long_tokens": args.gk_long_tokens} if args.gk_long_tokens else {})}  # fmt: skip


def stored_or_run(args: argparse.Namespace, row: str, seed: int) -> dict[str, Any]:
    """The run's metrics from DIR/runs/ when its settings match (and not ``--fresh``), else run it and store them."""
    path = args.out / "runs" / f"{row}-seed{seed}.json"
    settings = run_settings(args, row, seed)
    if path.is_file() and not args.fresh:
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            stored = {}
        if stored.get("settings") == settings and isinstance(stored.get("metrics"), dict):
            print(f"{row} seed {seed}: reusing {path}", flush=True)
            return stored["metrics"]
    started = time.perf_counter()
    metrics = run_once(args, row, seed, args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "seconds": round(time.perf_counter() - started, 1),
                               "metrics": metrics}, indent=2))  # fmt: skip
    tmp.replace(path)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results, phrasings, binding, started = {}, {}, {}, time.perf_counter()
    for row in args.rows:
        runs = [stored_or_run(args, row, seed) for seed in args.seeds]
        results[row] = aggregate(runs)
        phrasings[row] = held_out_phrasings(runs)
        results[row]["held_out_phrasings"] = phrasings[row]
        binding[row] = results[row]["binding_errors"] = binding_errors(runs)
        print(
            f"[{time.perf_counter() - started:.0f}s] {row}: recall@k {[round(r['mean'], 2) for r in [s for s in results[row]['recall_at_k']]]}",
            flush=True,
        )
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results, args.reps)
    command = "python -m olm.bench facts " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / "results.md").write_text(f"`{command}`\n\n{table}{held_out_markdown(phrasings)}{binding_markdown(binding)}")
    plot(results, args.reps, args.out / "recall.png")
    print(table)
    return 0
