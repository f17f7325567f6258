"""In-context control for the fact benchmark: the *base* model, with the fact's statement and its
acknowledgement in the chat history, asked the recall probe and each held-out phrasing.

    PYTHONPATH=. python docs/bench/facts-smollm2/in_context.py --runs docs/bench/facts-smollm2/tuned \
        --out docs/bench/facts-smollm2/in-context.json

Reads the facts of every ``runs/*.json`` that ``python -m olm.bench facts`` wrote under `--runs` (each
seed's 20 facts: subject, kind, object, held-out questions, and the answers the adapted model gave
from its weights), states each fact once in its first canonical form (`olm.world.templates.STATEMENTS`),
acknowledged as the benchmark's stream does, and asks each question after it with greedy decoding
(the config's generation settings, adapter off: a fresh adapter is the base). An answer counts when it
contains the object (`olm.probes.is_recalled`), as in the benchmark. Prints the shares, overall and per
fact kind, beside the held-out share the adapted model reached from its weights on the same facts.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
from pathlib import Path

import torch

import olm
from olm.api import load_config
from olm.generation import generate_replies
from olm.probes import is_recalled
from olm.render import messages_for
from olm.world import templates as T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, required=True, help="a benchmark output dir with runs/*.json")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    files = sorted(args.runs.glob("runs/*.json"))
    if not files:
        ap.error(f"no runs/*.json under {args.runs}")
    torch.set_num_threads(args.threads)
    module = olm.open(config=load_config(args.config)).module
    rows = []
    for path in files:
        for f in json.loads(path.read_text())["metrics"]["facts"]:
            statement = T.fill(T.STATEMENTS[f["kind"]][0], f["subject"], f["object"])
            history = ((statement, T.acknowledgement_for(f["kind"], f["subject"], f["object"])),)
            questions = [f["question"]] + [g["question"] for g in f["generalization"]]
            with module.model.disable_adapter():
                answers = generate_replies(module.model, module.tokenizer, [messages_for(q, history) for q in questions],
                                           module.generation)  # fmt: skip
            rows.append({
                "run": path.name, "kind": f["kind"], "object": f["object"], "statement": statement,
                "questions": questions, "answers": answers,
                "in_context": [is_recalled(a, f["object"]) for a in answers],
                "from_weights": [is_recalled(g["answer"], f["object"]) for g in f["generalization"]],
            })  # fmt: skip
            print(f"{f['kind']:16s} in context {rows[-1]['in_context']}  from the weights {rows[-1]['from_weights']}",
                  flush=True)  # fmt: skip
    share = lambda xs: statistics.mean(float(x) for x in xs)  # noqa: E731
    kinds = collections.defaultdict(lambda: ([], []))
    for r in rows:
        kinds[r["kind"]][0].extend(r["in_context"][1:])
        kinds[r["kind"]][1].extend(r["from_weights"])
    summary = {
        "facts": len(rows), "runs": [p.name for p in files],
        "in_context_probe": share(r["in_context"][0] for r in rows),
        "in_context_held_out": share(x for r in rows for x in r["in_context"][1:]),
        "from_weights_held_out": share(x for r in rows for x in r["from_weights"]),
        "by_kind": {k: {"in_context_held_out": share(a), "from_weights_held_out": share(b)} for k, (a, b) in kinds.items()},
    }  # fmt: skip
    print(json.dumps(summary, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
