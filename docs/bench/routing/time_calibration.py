"""Seconds for one routing calibration (τ) with smollm2 on 1 thread: the 64 unrelated prompts alone, and with
the trained questions of 20 facts (70 more prompts); and a routed vs a plain reply.

    PYTHONPATH=. python docs/bench/routing/time_calibration.py > docs/bench/routing/time_calibration.txt

Taken on an otherwise idle machine unless the output says otherwise (medians of 3)."""
import statistics
import time

import torch

from olm.backbone import LoRASettings
from olm.facts import FactDetector
from olm.augment import fact_questions
from olm.module import OnlineLM
from olm.routing import RoutingSettings

torch.set_num_threads(1)
lora = LoRASettings(r=8, alpha=16, target_modules=["gate_proj", "up_proj", "down_proj"], lower_fraction=0.67)
m = OnlineLM(base_model="smollm2-135m", routing=RoutingSettings(enabled=True, calibration=64), lora=lora)
with torch.no_grad():
    for n, p in m.model.named_parameters():
        if "lora_B" in n:
            p.normal_(0, 0.01)
det = FactDetector()
names = ["Zara", "Leo", "Mira", "Tomas", "Ines"]
facts = [(n, o, r, p) for n in names for (o, r, p) in
         (("sister", "sister", "x_is_my_y"), ("Paris", "lives_in", "lives_in"), ("a painter", "works_as", "works_as"),
          ("yoga", "likes", "likes"))]
questions = [q for s, o, r, p in facts for q in fact_questions(s, o, r, det.pattern(p))]
r = m.router


def timed(fn):
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


print(f"tau, 64 unrelated prompts: {timed(lambda: r.calibration_scores(m.model)):.2f} s")
print(f"tau, + {len(questions)} trained questions of {len(facts)} facts: "
      f"{timed(lambda: (r.calibration_scores(m.model), r.calibration_scores(m.model, questions))):.2f} s")
r.tau(m.model)  # τ cached: a reply pays only its own score
print(f"reply, routed (τ cached): {timed(lambda: m.generate('Who is Zara?')):.2f} s")
r.settings = RoutingSettings(enabled=False)
print(f"reply, routing off: {timed(lambda: m.generate('Who is Zara?')):.2f} s")
