"""Ask a saved about-me adapter (argv[1], an adapter/ directory) seven questions, routed with shift_margin 2.0:
three other phrasings of its facts, two unrelated ones and two near its keys ("Where do you live?").
Compare with the last seven lines of exempt.py's output."""
import sys, torch, yaml
import olm
torch.set_num_threads(1)
cfg = yaml.safe_load(open("configs/default.yaml"))
cfg["model"]["adapter"] = sys.argv[1]
cfg["model"]["routing"]["shift_margin"] = 2.0
lm = olm.open(base_model="smollm2-135m", config=cfg)
m = lm.module
for q in ["Do you remember my name?", "Which town is my home?", "Who is my employer?", "What is the capital of France?", "I live in a small flat. Any decorating tips?", "Where do you live?", "How many legs does a spider have?"]:
    print(f"{q:45} -> {lm.ask(q)[:90]!r} on={m.router.last_on.tolist()}", flush=True)
