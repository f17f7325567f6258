"""How many of the locality prompts beyond the 64 calibration ones (many in the first person: "How can I improve my
handwriting?") a saved adapter (argv[1]) gets routed to it, by read share or by first-token shift.

    PYTHONPATH=. python docs/bench/routing/locality_routed.py <adapter dir> > docs/bench/routing/locality_routed-about-me.txt
"""
import sys, torch, yaml
import olm
torch.set_num_threads(1)
cfg = yaml.safe_load(open("configs/default.yaml"))
cfg["model"]["adapter"] = sys.argv[1]
lm = olm.open(base_model="smollm2-135m", config=cfg)
m = lm.module; r = m.router
tau, kappa = r.tau(m.model), r.kappa(m.model)
rest = m.locality.prompts[len(r.prompts):]
s, sc = r.calibration_shifts(m.model, rest), r.calibration_scores(m.model, rest)
on = (sc > tau) | (s > kappa).any(-1)
print(f"tau {tau:.4f} kappa {kappa.tolist()}; locality prompts beyond the calibration: {len(rest)}, routed on {int(on.sum())} (by shift {int((s > kappa).any(-1).sum())}, by read share {int((sc > tau).sum())})")
for i in torch.nonzero(on).flatten().tolist(): print(f"  shift {s[i].tolist()} r {sc[i]:.4f}  {rest[i]}")
