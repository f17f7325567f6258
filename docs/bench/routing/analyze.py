"""Read shares (olm.routing's score) of the prompt sets recorded by record_scores.py, and how each
threshold rule separates them.

    PYTHONPATH=. python docs/bench/routing/record_scores.py OUT --out BENCH --rows tuned --seeds 2 \
        --facts 20 --reps 3 --unrelated 0 --threads 2 --gk-long-tokens 128     # ~20 min on 2 cores
    PYTHONPATH=. python docs/bench/routing/analyze.py OUT > docs/bench/routing/scores-seed2.txt

record_scores.py hooks every LoRA layer at the end of teaching and stores, per prompt and token,
‖x‖², ‖A·x‖² and ‖B·A·x‖² per layer, for the recall probes, the held-out phrasings, the GK questions,
the benchmark's general prompts, the locality prompts, the taught statements and the trained
questions of the facts in memory (`olm.augment.fact_questions`). Two scores are compared:
`sum` = Σ_l ‖A_l x‖² / Σ_l ‖x‖² (olm.routing before 95e6271) and `mean` = mean_l ‖A_l x‖² / ‖x_l‖²
(olm.routing now); both the max over the prompt's own tokens (template prefix left out).
"""
import glob
import sys

import torch

from olm.backbone import load_base
from olm.routing import prompt_scores, template_prefix, threshold, token_shares

d = torch.load(glob.glob(sys.argv[1] + "/scores-*.pt")[0])
_, tok = load_base("smollm2-135m")
P = len(template_prefix(tok))
print(f"template prefix: {P} tokens (left out of every score)")


def score(r, kind):
    x, a = torch.tensor(r["x"]), torch.tensor(r["ax"])  # (T, layers)
    shares = token_shares(a.sum(1), x.sum(1)) if kind == "sum" else token_shares(a, x).mean(1)
    own = torch.arange(x.shape[0]) >= P
    return float(prompt_scores(shares[None], own[None])[0])


for kind in ("sum", "mean"):
    s = {k: torch.tensor([score(r, kind) for r in v]) for k, v in d.items()}
    print(f"\n== score: {kind} ==  prompts per set:", {k: len(v) for k, v in s.items()})
    for k, v in s.items():
        print(f"  {k:9s} min {float(v.min()):.4f}  median {float(v.median()):.4f}  max {float(v.max()):.4f}")
    cal = s["locality"][:64]
    rules = [(f"tau_0 = q{q:.2f} of the first 64 locality prompts", threshold(cal, q, 1.0)) for q in (1.0, 0.95)]
    rules.append(("tau = max(tau_0, sqrt(tau_0 * min trained question))", threshold(cal, 1.0, 1.0, s["trained"])))
    for name, tau in rules:
        print(f"{name} = {tau:.4f}: routed to the adapter: "
              + "  ".join(f"{k} {float((v > tau).float().mean()):.2f}" for k, v in s.items()))
    for k, high in (("locality", True), ("gk", True), ("general", True), ("probe", False), ("para", False)):
        order = s[k].argsort(descending=high)[:4]
        print(f"  {'highest' if high else 'lowest'} {k}:", [(d[k][int(j)]["text"], round(float(s[k][j]), 4)) for j in order])
