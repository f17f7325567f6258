"""Ask a saved chat adapter (argv[1], with its memory.json) questions (argv[2], separated by |) with routing off: what
the adapter itself answers, whatever routing would decide.

    OMP_NUM_THREADS=2 PYTHONPATH=. python docs/bench/facts-smollm2/search/first-person/ask.py ADAPTER_DIR "q1|q2"
"""
import sys, yaml, olm, torch
torch.set_num_threads(2)
cfg = yaml.safe_load(open("configs/chat.yaml"))
cfg["model"]["adapter"] = sys.argv[1]
cfg["model"]["routing"]["enabled"] = False
lm = olm.open(base_model="smollm2-135m", config=cfg)
for q in sys.argv[2].split("|"):
    print(f"{q:32} -> {lm.ask(q)[:100]!r}")
