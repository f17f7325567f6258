"""Teach as run.py does (same arguments), then print the reply shifts behind `routing.shift_tokens`: per prompt, the
KL(base ‖ adapter) and the adapter/base log-ratio of the adapter's own greedy token at each of the first 6 reply
positions, for the calibration prompts, the trained and held-out questions and the general prompts.

    OMP_NUM_THREADS=1 PYTHONPATH=. python docs/bench/facts-smollm2/search/first-person/shifts.py SEED OUT [key=value ...]

(shifts/s{0,1}-c2.txt: `SEED /tmp/x augment.contrasts=2`, shift_tokens 1, from 4e46c45.)"""
import sys, json, torch
import torch.nn.functional as F
src = open("docs/bench/facts-smollm2/search/first-person/run.py").read()
exec(compile(src, "run.py", "exec"))
from olm.routing import prompt_batch, left_padded
from olm.render import render_prompt, messages_for
tok = m.tokenizer; model = m.model
K = 6
stop = {tok.eos_token_id, tok.pad_token_id}

@torch.no_grad()
def stats(prompts):
    batch = left_padded(tok, [render_prompt(tok, messages_for(p)) for p in prompts], "cpu")
    ids, attn = batch["input_ids"], batch["attention_mask"]
    model.eval()
    seq, mask, lq, ch = ids, attn, [], []
    for j in range(K):
        q = F.log_softmax(model(input_ids=seq, attention_mask=mask).logits[:, -1].float(), -1)
        lq.append(q); y = q.argmax(-1); ch.append(y)
        seq = torch.cat([seq, y[:, None]], 1); mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    with model.disable_adapter():
        p = F.log_softmax(model(input_ids=seq[:, :-1], attention_mask=mask[:, :-1]).logits[:, -K:].float(), -1)
    q = torch.stack(lq, 1); y = torch.stack(ch, 1)
    kl = (p.exp() * (p - q)).sum(-1)
    ratio = q.gather(-1, y[..., None])[..., 0] - p.gather(-1, y[..., None])[..., 0]
    st = torch.isin(y, torch.tensor(sorted(stop)))
    ended = torch.cumsum(st.int(), 1) - st.int() > 0
    kl = kl.masked_fill(ended, 0); ratio = ratio.masked_fill(ended, 0)
    return kl, ratio, y

rows = []
cal = m.router.prompts
groups = {"calibration": cal, "trained": [f[1] for f in facts], "held": [f[2] for f in facts], "general": general}
out = {}
for g, ps in groups.items():
    res = []
    for i in range(0, len(ps), 16):
        kl, ratio, y = stats(ps[i:i+16])
        for k in range(len(ps[i:i+16])):
            res.append({"q": ps[i+k], "kl": [round(float(v), 2) for v in kl[k]], "ratio": [round(float(v), 2) for v in ratio[k]],
                        "text": tok.decode(y[k])})
    out[g] = res
json.dump(out, open(sys.argv[2] + ".diag.json", "w"), indent=1, ensure_ascii=False)
for g, res in out.items():
    for n in (1, 4, 6):
        kls = [max(r["kl"][:n]) for r in res]; rat = [max(r["ratio"][:n]) for r in res]
        print(f"{g:12} n={n} kl max {max(kls):6.2f} median {sorted(kls)[len(kls)//2]:6.2f} | ratio max {max(rat):6.2f} median {sorted(rat)[len(rat)//2]:6.2f}")
for g in ("trained", "held", "general"):
    for r in out[g]:
        print(f"{g:8} {r['q'][:40]:40} kl {r['kl']} ratio {r['ratio']} {r['text']!r}")
