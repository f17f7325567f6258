"""Short-session recall: one fact stated three times within five turns, as a person would in the chat,
then asked in a fresh context. No replay is due yet (`FactReplay` interval 10), so only the fact
turns' own steps can teach it.

    PYTHONPATH=. python docs/bench/short-session/run.py --out docs/bench/short-session/default.json \
        [--facts 10] [--per-session 1] [--config configs/default.yaml] [--set model.optim.steps_per_fact=4 ...]

Each of `--facts` facts (fact i: a held-out name of the benchmark's world, the i-th fact kind of
`olm.world.templates.KINDS` (cycling), a random object, its first three statement phrasings, each
acknowledged as in the benchmark, and two small-talk turns placed at random among the five; all drawn
with seed i) is taught to a **fresh** adapter through the Python
API (`olm.open`: the same `training_step` as ``cli.py fit``). After each statement the fact's probe is
asked in a fresh context (`OnlineSession.ask`, routed as configured); after the last one also its
held-out phrasings. An answer counts when it contains the object (`olm.probes.is_recalled`), as in
`python -m olm.bench facts`. Prints one line per fact and the shares; `--out` keeps every answer.

With `--per-session K`, K consecutive facts share one adapter: their five-turn blocks follow each
other in one session (a person telling several facts), each asked as above after its own statements,
and every fact's probe is asked once more at the session's end ("recall_at_end"). The summary also
splits recall after the third statement by the fact's place in its session ("by_place").
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import lightning as L
import torch
import yaml

import olm
from olm.api import load_config
from olm.bench.facts import world_for
from olm.probes import is_recalled
from olm.world import templates as T
from olm.world.generator import random_fact
from olm.world.smalltalk import distractor


def with_sets(config: dict, sets: list[str]) -> dict:
    """`config` with each ``a.b.c=VALUE`` (VALUE parsed as YAML) set in place."""
    for item in sets:
        key, _, value = item.partition("=")
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return config


def session(world, i: int):
    """Fact i and its five turns ``[(user, reply, statement number or 0), ...]``."""
    rng = random.Random(i)
    fact = random_fact(rng, rng.choice(world.teaching_names), T.KINDS[i % len(T.KINDS)])
    small_talk = set(rng.sample(range(5), 2))
    turns, k = [], 0
    for t in range(5):
        if t in small_talk:
            turns.append((*distractor(rng), 0))
        else:
            turns.append((fact.statements[k % len(fact.statements)], fact.acknowledgement, k + 1))
            k += 1
    return fact, turns


def routed_on(lm) -> bool | None:
    router = lm.module.router
    return bool(router.last_on.all()) if router.enabled and router.last_on is not None else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--facts", type=int, default=10)
    ap.add_argument("--per-session", type=int, default=1, help="facts taught to one adapter, one after the other")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")
    args = ap.parse_args()
    if args.per_session < 1 or args.facts < 1:
        ap.error("--facts and --per-session must be >= 1")
    torch.set_num_threads(args.threads)
    config = with_sets(load_config(args.config), args.sets)
    world = world_for((config.get("model") or {}).get("base_model", "smollm2-135m"))
    rows = []
    for first in range(0, args.facts, args.per_session):
        facts = list(range(first, min(first + args.per_session, args.facts)))
        L.seed_everything(first, verbose=False)
        lm = olm.open(config=config)
        session_rows = []
        for place, i in enumerate(facts):
            fact, turns = session(world, i)
            started, after, routed = time.perf_counter(), [], []
            for user, reply, statement in turns:
                lm.tell(user, reply)
                if statement:
                    after.append(lm.ask(fact.probe))
                    routed.append(routed_on(lm))
            held_out = [lm.ask(q) for q in fact.held_out_questions]
            row = {
                "seed": i, "place": place, "kind": fact.kind, "turns": [u for u, _, _ in turns],
                "probe": fact.probe, "expected": fact.object, "answers": after,
                "recalled": [is_recalled(a, fact.object) for a in after],
                "held_out": [{"question": q, "answer": a, "recalled": is_recalled(a, fact.object)}
                             for q, a in zip(fact.held_out_questions, held_out)],
                "routed": routed,  # per probe: answered by the adapter (True), the base (False), routing off (None)
                "seconds": round(time.perf_counter() - started, 1),
            }  # fmt: skip
            session_rows.append((fact, row))
            print(f"{i} {fact.kind:16s} recalled after 1/2/3: {row['recalled']}  held-out "
                  f"{sum(h['recalled'] for h in row['held_out'])}/{len(held_out)}  | {after[-1][:70]!r}", flush=True)
        for fact, row in session_rows:  # every fact of the session, asked once more at its end
            row["answer_at_end"] = lm.ask(fact.probe)
            row["recalled_at_end"] = is_recalled(row["answer_at_end"], fact.object)
            rows.append(row)
    summary = {
        "recall_after": [statistics.mean(r["recalled"][k] for r in rows) for k in range(3)],
        "generalization": statistics.mean(h["recalled"] for r in rows for h in r["held_out"]),
        "recall_at_end": statistics.mean(r["recalled_at_end"] for r in rows),
        "by_place": {p: statistics.mean(r["recalled"][2] for r in rows if r["place"] == p)
                     for p in sorted({r["place"] for r in rows})},
        "facts": len(rows), "per_session": args.per_session, "config": args.config, "sets": args.sets,
    }
    print(json.dumps(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
