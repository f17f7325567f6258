"""At the end of teaching, per prompt and token, ‖x‖², ‖A·x‖² and ‖B·A·x‖² of every LoRA layer for the probe
sets, the taught statements and the memory's trained questions (usage: docs/bench/routing/analyze.py)."""
import json, sys, torch
from pathlib import Path
import olm.bench.facts as bf
from olm.render import messages_for, render_prompt
from olm.probes import load_anchors
from olm.facts import fill

OUT = Path(sys.argv[1]); OUT.mkdir(parents=True, exist_ok=True)
orig = bf.Probe.end_of_teaching

@torch.no_grad()
def scores(pl, texts):
    model, tok = pl.model, pl.tokenizer
    mods = [(n, m) for n, m in model.named_modules() if n.endswith("lora_A.default") or n.endswith("lora_B.default")]
    rec = {}
    hooks = []
    for n, m in mods:
        def h(mod, inp, out, n=n):
            rec.setdefault(n, []).append((inp[0][0].float().pow(2).sum(-1), out[0].float().pow(2).sum(-1)))
        hooks.append(m.register_forward_hook(h))
    res = []
    model.eval()
    try:
        for t in texts:
            rec.clear()
            ids = tok(render_prompt(tok, messages_for(t)), add_special_tokens=False, return_tensors="pt")
            model(**ids)
            names = sorted(rec)
            a = [n for n in names if "lora_A" in n]; b = [n for n in names if "lora_B" in n]
            xin = torch.stack([rec[n][0][0] for n in a], 1)   # (T, M) ||x||^2
            ax = torch.stack([rec[n][0][1] for n in a], 1)    # ||Ax||^2
            bax = torch.stack([rec[n][0][1] for n in b], 1)   # ||BAx||^2
            res.append({"text": t, "x": xin.tolist(), "ax": ax.tolist(), "bax": bax.tolist(), "ntok": ids["input_ids"].shape[1]})
    finally:
        for h in hooks: h.remove()
    return res

def patched(self, pl):
    facts = self.schedule.facts
    sets = {
        "probe": [f.probe for f in facts],
        "para": [q for f in facts for q in f.paraphrases],
        "gk": [q["question"] for q in self.gk],
        "general": self.anchors,
        "locality": list(pl.locality.prompts),
        "statement": [m.text for m in pl.memory],
        "trained": sorted({fill(q, m.subject, m.object, m.relation) for m in pl.memory
                           for q in (pl.detector.pattern(m.pattern).questions if pl.detector.pattern(m.pattern) else [])}),
    }
    seed = pl.trainer.callback_metrics  # unused
    out = {k: scores(pl, v) for k, v in sets.items()}
    torch.save(out, OUT / f"scores-{id(self)}.pt")
    orig(self, pl)

bf.Probe.end_of_teaching = patched
sys.exit(bf.main(sys.argv[2:]))
