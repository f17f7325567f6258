"""First-token shifts (olm.routing.first_token_shift) against read shares, on an adapter taught facts about
the speaker: how `routing.shift_margin` separates the first-person questions from unrelated prompts.

    python cli.py fit --config configs/default.yaml --data.source olm/assets/logs/about-me.jsonl \
        --trainer.default_root_dir runs/about-me
    PYTHONPATH=. python docs/bench/routing/shifts.py runs/about-me/version_0/adapter > docs/bench/routing/shifts-about-me.txt

Prints τ and the calibration prompts' largest shift, the shifts of the benchmark's held-out general prompts
and GK questions (quantiles, how many exceed 1×, 2× and 4× the calibration maximum, the five largest), and
each first-person question's shift and read share (ON: r > τ). The questions are the stream's canonical
ones and six other phrasings of them.
"""

import json
import sys

import torch
import yaml

import olm
from olm.routing import first_token_shift, left_padded
from olm.render import messages_for, render_prompt
torch.set_num_threads(1)
cfg = yaml.safe_load(open("configs/default.yaml"))
cfg["model"]["adapter"] = sys.argv[1]
lm = olm.open(base_model="smollm2-135m", config=cfg)
m = lm.module; r = m.router
tau = r.tau(m.model)
cal_s = r.calibration_shifts(m.model)[:, 0]; cal_r = r.calibration_scores(m.model)
gen = [l.strip() for l in open("olm/bench/data/general_prompts.txt") if l.strip() and not l.startswith("#")]
gk = [json.loads(l)["question"] for l in open("olm/bench/data/gk_questions.jsonl")]
fp = ["What is my name?", "Where do I live?", "Where do I work?", "What am I allergic to?", "What is my favourite colour?", "When is my birthday?",
      "Do you remember my name?", "Which town is my home?", "Who is my employer?", "Which food should I avoid?", "What colour do I like?", "What month was I born in?"]
def both(ps):
    return r.calibration_shifts(m.model, ps)[:, 0], r.calibration_scores(m.model, ps)
print(f"tau {tau:.4f}  calib shift max {cal_s.max():.4f} median {cal_s.median():.4f}  calib r max {cal_r.max():.4f}")
for name, ps in (("general(held-out)", gen), ("gk", gk)):
    s, rr = both(ps)
    q = torch.quantile(s, torch.tensor([0.5, 0.9, 0.99]))
    print(f"{name}: n {len(ps)} shift median/90/99/max {q.tolist()} {s.max():.4f}; >1x {int((s > cal_s.max()).sum())} >2x {int((s > 2*cal_s.max()).sum())} >4x {int((s > 4*cal_s.max()).sum())}; r>tau {int((rr > tau).sum())}")
    top = s.argsort(descending=True)[:5]
    for i in top: print("   ", f"{s[i]:.4f}", ps[i][:70])
s, rr = both(fp)
for p, a, b in zip(fp, s.tolist(), rr.tolist()): print(f"  {a:8.4f} r {b:.4f} {'ON' if b > tau else '  '} {p}")
