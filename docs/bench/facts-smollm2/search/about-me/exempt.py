"""Experiment: exempt the taught facts' own keys (the base's layer inputs where the object is predicted)
from the protected subspace, then teach the about-me stream. Facts known in advance: experiment only."""
import json, sys, math, time, torch, yaml
import olm
from olm.nullspace import NullSpace, lora_layers
from olm.probes import answer_before, object_scores
from olm.render import messages_for, render_prompt
torch.set_num_threads(1)
cfg = yaml.safe_load(open("configs/default.yaml"))
cfg["model"]["routing"]["shift_margin"] = 2.0
lm = olm.open(base_model="smollm2-135m", config=cfg)
m = lm.module; model, tok = m.model, m.tokenizer
facts = [("What is my name?", "Your name is Ilsabet.", "Ilsabet"), ("Where do I live?", "You live in Tromsø.", "Tromsø"),
         ("Where do I work?", "You work at Brightwell Labs.", "Brightwell Labs"), ("What am I allergic to?", "You are allergic to sesame.", "sesame"),
         ("What is my favourite colour?", "Your favourite colour is mauve.", "mauve"), ("When is my birthday?", "Your birthday is in November.", "November")]
mode = sys.argv[1]  # "lead" (last lead token only) or "all" (lead's last token and the object's tokens but the last)
spaces = m.locality.projectors(model)
keys = {n: [] for n in spaces}
layers = lora_layers(model)
for q, a, o in facts:
    lead = answer_before(a, o)
    prompt = render_prompt(tok, messages_for(q))
    ids_lead = tok(prompt + lead, add_special_tokens=False).input_ids
    ids_full = tok(prompt + lead + " " + o, add_special_tokens=False).input_ids
    pos = list(range(len(ids_lead) - 1, len(ids_full) - 1)) if mode == "all" else [len(ids_lead) - 1]
    got = {}
    hs = [layers[n].base_layer.register_forward_pre_hook(lambda mod, args, n=n: got.__setitem__(n, args[0][0, pos].float())) for n in spaces]
    with torch.no_grad(), model.disable_adapter():
        model.eval(); model(input_ids=torch.tensor([ids_full])); model.train()
    for h in hs: h.remove()
    for n in spaces: keys[n].append(got[n])
new, done, freed = {}, {}, []
for n, ns in spaces.items():
    x = torch.cat(keys[n])  # (n_keys, d)
    u = ns.basis
    y = u @ (u.T @ x.T)  # in-U part of each key (d, n)
    qb, _ = torch.linalg.qr(y)
    rest = u - qb @ (qb.T @ u)
    uu, s, _ = torch.linalg.svd(rest, full_matrices=False)
    k = int((s > 0.5).sum())
    new[n] = NullSpace(uu[:, :k].contiguous())
    share = float((x @ u).pow(2).sum() / x.pow(2).sum())
    freed.append((n.split("model.")[-1], u.shape[1], k, round(share, 3)))
m.locality._projectors = new
m._null_seen.clear() if hasattr(m, "_null_seen") else None
print("protected dims before -> after, keys' in-U energy share (first 6 layers):", freed[:6], flush=True)
turns = [(json.loads(l)["messages"][0]["content"], json.loads(l)["messages"][1]["content"]) for l in open("olm/assets/logs/about-me.jsonl")]
t = time.perf_counter(); lm.learn(turns); print(f"learned in {time.perf_counter()-t:.0f}s", flush=True)
sc = object_scores(model, tok, [q for q, _, _ in facts], [answer_before(a, o) for _, a, o in facts], [o for *_, o in facts])
for (q, a, o), s in zip(facts, sc):
    print(f"{q:32} p {math.exp(s.log_p):.3f} rank {s.rank} -> {lm.ask(q)[:70]!r}", flush=True)
for q in ["Do you remember my name?", "Which town is my home?", "Who is my employer?", "What is the capital of France?", "I live in a small flat. Any decorating tips?", "Where do you live?", "How many legs does a spider have?"]:
    print(f"{q:45} -> {lm.ask(q)[:90]!r} on={m.router.last_on.tolist() if m.router.last_on is not None else None}", flush=True)
