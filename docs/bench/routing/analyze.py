"""Read shares (olm.routing's score) of the prompt sets recorded by record_scores.py, and how a
threshold from the locality prompts separates them.

    PYTHONPATH=. python docs/bench/routing/record_scores.py OUT --out BENCH --rows tuned --seeds 0 \
        --facts 20 --reps 3 --unrelated 0 --threads 2 --gk-long-tokens 128     # ~20 min on 2 cores
    PYTHONPATH=. python docs/bench/routing/analyze.py OUT > docs/bench/routing/scores-seed0.txt

record_scores.py (written before olm/routing.py, run on 750ae77) hooks every LoRA layer at the end of
teaching and stores, per prompt and token, ‖x‖², ‖A·x‖² and ‖B·A·x‖² per layer, for the recall probes,
the held-out phrasings, the GK questions, the benchmark's general prompts and the locality prompts.
The scores here are olm.routing's own (`token_shares`, `prompt_scores`, the template prefix left out).
"""
import glob
import sys

import torch

from olm.backbone import load_base
from olm.routing import prompt_scores, template_prefix, token_shares

d = torch.load(glob.glob(sys.argv[1] + "/scores-*.pt")[0])
_, tok = load_base("smollm2-135m")
P = len(template_prefix(tok))
print(f"template prefix: {P} tokens (left out of every score)")


def score(r, kind="ax"):
    x, a = torch.tensor(r["x"]).sum(1), torch.tensor(r[kind]).sum(1)  # (T,) summed over the adapted layers
    own = torch.arange(x.shape[0]) >= P
    return float(prompt_scores(token_shares(a[None], x[None]), own[None])[0])


s = {k: torch.tensor([score(r) for r in v]) for k, v in d.items()}
print("read share r per set:", {k: len(v) for k, v in s.items()})
for k, v in s.items():
    print(f"  {k:9s} min {float(v.min()):.4f}  median {float(v.median()):.4f}  max {float(v.max()):.4f}")
loc = s["locality"]
for n, q in ((64, 1.0), (247, 1.0), (247, 0.99), (247, 0.95)):
    tau = float(torch.quantile(loc[:n], q))
    print(f"tau = q{q:.2f} of the first {n} locality prompts = {tau:.4f}: share routed to the adapter: "
          + "  ".join(f"{k} {float((v > tau).float().mean()):.2f}" for k, v in s.items()))
top = loc.argsort(descending=True)[:5]
print("highest locality prompts:", [(d["locality"][int(j)]["text"], round(float(loc[j]), 4)) for j in top])
