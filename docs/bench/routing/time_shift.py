"""Router calibration and one routed answer, with and without routing.shift_margin (and shift_tokens 6), on a saved
adapter (argv[1]).

    PYTHONPATH=. python docs/bench/routing/time_shift.py <adapter dir> > docs/bench/routing/time_shift.txt

The first calibration with the margin also computes the base's first-token outputs of the calibration prompts,
which later ones reuse."""
import time, torch, yaml, sys
from dataclasses import replace
import olm
torch.set_num_threads(1)
cfg = yaml.safe_load(open("configs/chat.yaml"))
cfg["model"]["adapter"] = sys.argv[1]
lm = olm.open(base_model="smollm2-135m", config=cfg)
m = lm.module; r = m.router
for margin, tokens in ((0.0, 1), (2.0, 1), (2.0, 6)) * 2:
    r.settings = replace(r.settings, shift_margin=margin, shift_tokens=tokens); r._tau = None
    t = time.perf_counter(); r.tau(m.model); cal = time.perf_counter() - t
    t = time.perf_counter(); a = lm.ask("What is the capital of France?"); ask = time.perf_counter() - t
    print(f"shift_margin {margin} shift_tokens {tokens}: calibration {cal:.2f} s, ask (unrelated, base) {ask:.2f} s, facts in memory {len(m.memory)}", flush=True)
