"""Turn times of a few fact and chat turns in float32 and in bfloat16 (base weights, or Lightning bf16-mixed), one thread.

    PYTHONPATH=. python docs/bench/speed/bf16/turns.py {fp32|bf16w|bf16mixed}

A quick look, not the speed benchmark: six turns through `olm.open`, then four questions.
"""
import time, torch, sys, yaml
import olm
torch.set_num_threads(1)
cfg = yaml.safe_load(open("configs/default.yaml"))
mode = sys.argv[1]
if mode == "bf16w":
    cfg["model"]["dtype"] = "bfloat16"
elif mode == "bf16mixed":
    cfg["trainer"]["precision"] = "bf16-mixed"
lm = olm.open(base_model="smollm2-135m", config=cfg)
print(lm.trainer_kwargs)
for u, a in [("Mira Okafor lives in Tallinn.", "Got it."), ("Hello, how are you?", "I'm fine, thanks!"), ("Borin Vale lives in Quito.", "Noted."), ("What is 2+2?", "4."), ("Talia Kress lives in Oslo.", "Got it."), ("Tell me a joke.", "Why did the chicken cross the road? To get to the other side.")]:
    t = time.perf_counter(); lm.tell(u, a); print("turn", u, f"{time.perf_counter()-t:.2f}s", flush=True)
print(lm.ask("Where does Mira Okafor live?"), "|", lm.ask("Where does Borin Vale live?"), "|", lm.ask("Where does Talia Kress live?"), "|", lm.ask("What is the capital of France?"))
