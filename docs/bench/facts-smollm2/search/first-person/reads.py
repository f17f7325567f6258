"""A saved chat adapter (argv[1]): τ_0, κ, and per question its read share, shift reads and whether it names the speaker.

    OMP_NUM_THREADS=1 PYTHONPATH=. python docs/bench/facts-smollm2/search/first-person/reads.py ADAPTER_DIR

olm.open loads the adapter, not the memory: τ here is τ_0 (no facts), and τ_S is not computed."""
import sys, torch, yaml
import olm
from olm.routing import left_padded
from olm.render import render_prompt, messages_for
torch.set_num_threads(1)
cfg = yaml.safe_load(open("configs/chat.yaml"))
cfg["model"]["adapter"] = sys.argv[1]
lm = olm.open(base_model="smollm2-135m", config=cfg)
m = lm.module; r = m.router; tok = m.tokenizer
print("tau0", r.tau(m.model), "kappa", r.kappa(m.model).tolist())
cs = r.calibration_scores(m.model)
print("calibration read top", cs.topk(3).values.tolist())
qs = ["What am I allergic to?", "Are you allergic to anything?", "What are you allergic to?", "Do you have any allergies?", "What is the capital of France?", "I am allergic to cats, what pets can I keep?"]
b = left_padded(tok, [render_prompt(tok, messages_for(q)) for q in qs], "cpu")
sc = r.scores(m.model, b["input_ids"], b["attention_mask"])
sh = r.shift(m.model, b["input_ids"], b["attention_mask"])
me = r.mentions(b["input_ids"], b["attention_mask"])
for q, s, h, w in zip(qs, sc.tolist(), sh.tolist(), me.tolist()):
    print(f"{q:45} read {s:.4f} shift {[round(x,2) for x in h]} speaker {w}")
