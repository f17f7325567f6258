"""Where a fact turn's time goes: every forward of `OnlineLM.learn` (batch shape, real tokens, shared prefix, positions read
by the LM head, with or without grad, ms) and the turn's timers, for three fact and three chat turns and one
first-person fact through `olm.open` with configs/default.yaml, one thread.

    OMP_NUM_THREADS=1 PYTHONPATH=. python docs/bench/speed/fact-turn-profile/profile.py

A quick look, not the speed benchmark (profile.txt: from 8257899, nothing else running at the start).
"""
import time, torch, sys, yaml, collections
import olm, olm.module as M, olm.prefix as P
torch.set_num_threads(1)
cfg = yaml.safe_load(open("configs/default.yaml"))
lm = olm.open(base_model="smollm2-135m", config=cfg)
rec = []
orig = P.shared_prefix_forward
def spf(model, ids, attention, enabled=True, positions=None):
    pre = P.common_prefix_length(ids, attention) if enabled else 0
    t = time.perf_counter(); out = orig(model, ids, attention, enabled, positions)
    rec.append((tuple(ids.shape), int(attention.sum()), pre, None if positions is None else int(positions.sum()), torch.is_grad_enabled(), time.perf_counter()-t))
    return out
M.shared_prefix_forward = spf
for u, a in [("Mira Okafor lives in Tallinn.", "Got it."), ("Hello, how are you?", "I'm fine, thanks!"), ("Borin Vale lives in Quito.", "Noted."), ("What is 2+2?", "4."), ("Talia Kress lives in Oslo.", "Got it."), ("Tell me a joke.", "Why did the chicken cross the road? To get to the other side."), ("I live in Lisbon.", "Nice!")]:
    rec.clear()
    t = time.perf_counter(); lm.tell(u, a); dt = time.perf_counter()-t
    print("turn", u, f"{dt:.2f}s", dict(lm.module._timings))
    for r in rec: print("   shape", r[0], "real", r[1], "prefix", r[2], "pos", r[3], "grad", r[4], f"{r[5]*1000:.0f}ms")
