"""A saved about-me adapter (argv[1]): τ, κ per shift read with routing.shift_tokens argv[2] (default 4), the
calibration prompts with the largest shifts, and the six questions' read shares and KL(base ‖ adapter) at each of
the first 6 tokens of the adapter's greedy reply.

    OMP_NUM_THREADS=1 PYTHONPATH=. python docs/bench/facts-smollm2/search/about-me/shifts.py ADAPTER_DIR [N]
"""
import sys, torch, yaml
import olm
from olm.routing import left_padded
from olm.render import render_prompt, messages_for
torch.set_num_threads(1)
cfg = yaml.safe_load(open("configs/default.yaml"))
cfg["model"]["adapter"] = sys.argv[1]
cfg["model"].setdefault("routing", {})["shift_tokens"] = int(sys.argv[2]) if len(sys.argv) > 2 else 4
lm = olm.open(base_model="smollm2-135m", config=cfg)
m = lm.module; r = m.router; tok = m.tokenizer
print("tau", r.tau(m.model), "kappa", r.kappa(m.model).tolist())
cal = r.calibration_shifts(m.model)
print("calibration top first", cal[:, 0].topk(3).values.tolist(), "top largest", cal[:, 1].topk(3).values.tolist())
top = cal[:, 1].argsort(descending=True)[:3]
for i in top: print("   ", cal[i].tolist(), r.prompts[i])
qs = ["What is my name?", "Where do I live?", "Where do I work?", "What am I allergic to?", "What is my favourite colour?", "When is my birthday?"]
from olm.routing import reply_shifts
b = left_padded(tok, [render_prompt(tok, messages_for(q)) for q in qs], "cpu")
kl = reply_shifts(m.model, b["input_ids"], b["attention_mask"], None, 6, frozenset({tok.eos_token_id}), tok.pad_token_id)
sc = r.scores(m.model, b["input_ids"], b["attention_mask"])
for q, k, s in zip(qs, kl.tolist(), sc.tolist()):
    print(f"{q:32} r {s:.4f} kl {[round(x, 2) for x in k]}")
