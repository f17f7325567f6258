"""Seconds for one routing calibration (64 and 32 locality prompts, smollm2, 1 thread) and for a routed vs plain reply.

    PYTHONPATH=. python docs/bench/routing/time_calibration.py

The output in time_calibration.txt was taken with four 1-thread benchmarks sharing the 2 cores (a busy core)."""
import time, torch, statistics
torch.set_num_threads(1)
from olm.module import OnlineLM
from olm.routing import RoutingSettings
from olm.locality import LocalitySettings
m = OnlineLM(base_model="smollm2-135m", routing=RoutingSettings(enabled=True, calibration=64),
             lora=__import__("olm.backbone", fromlist=["LoRASettings"]).LoRASettings(r=8, alpha=16, target_modules=["gate_proj","up_proj","down_proj"], lower_fraction=0.67))
with torch.no_grad():
    for n, p in m.model.named_parameters():
        if "lora_B" in n: p.normal_(0, 0.01)
r = m.router
for cal in (64, 32):
    r.prompts = r.prompts if cal == 64 else r.prompts[:32]
    ts = []
    for _ in range(3):
        t = time.perf_counter(); r.calibration_scores(m.model); ts.append(time.perf_counter() - t)
    print(cal, "calibration s", [round(x, 2) for x in ts])
from olm.generation import GenerationSettings
from olm.render import messages_for
t = time.perf_counter(); m.generate("Who is Zara?"); print("generate routed", round(time.perf_counter() - t, 2))
r.settings = RoutingSettings(enabled=False)
t = time.perf_counter(); m.generate("Who is Zara?"); print("generate plain", round(time.perf_counter() - t, 2))
