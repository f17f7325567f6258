"""An update said once: after three statements of a fact, one contradicting statement ("I moved to Berlin." after
"I live in Porto." three times). Does the model answer with the new object, in a fresh context, right after it and
after 12 more turns of small talk (a replay among them)? Five facts per seed (the speaker's home and employer, a
third person's home and employer, a relative), objects drawn per seed, and two facts never contradicted (the
speaker's favourite colour, a friend's birthday: still recalled?); small talk from the about-me stream between.

    OMP_NUM_THREADS=1 PYTHONPATH=. python docs/bench/facts-smollm2/search/update-once/run.py SEED OUT.json [key=value ...]

key=value: model settings overrides, dotted under `model` (augment.forget=3).
"""
import json, math, random, sys, time
import torch, yaml
import olm
from olm.probes import is_recalled, object_scores

torch.set_num_threads(1)
seed, out = int(sys.argv[1]), sys.argv[2]
cfg = yaml.safe_load(open("configs/default.yaml"))
for kv in sys.argv[3:]:
    key, value = kv.split("=", 1)
    node = cfg["model"]
    *path, last = key.split(".")
    for p in path:
        node = node.setdefault(p, {})
    node[last] = yaml.safe_load(value)
rng = random.Random(seed)
cities = rng.sample(["Porto", "Tallinn", "Ghent", "Bergen", "Lyon", "Krakow", "Turin", "Malmo", "Leeds", "Graz"], 4)
firms = rng.sample(["Siemens", "Nexora", "Quellbrook", "Vantari", "Brightwell Labs", "Orvane", "Halden Works"], 4)
person, relative = rng.sample(["Thessaly Marwood", "Corwin Ashby", "Ilse Varga", "Pelham Strand", "Odile Brask"], 2)
kin = rng.sample(["sister", "cousin", "aunt", "neighbour", "colleague"], 2)
leads = ["You live in", "You work at", f"{person} lives in", f"{relative} works at", "Zara is your"]
facts = [  # (statements of the old object, the update, question, old, new)
    (["I live in {o}.", "My home is in {o}.", "I'm living in {o}."], "Big news: I moved to {n} last month.",
     "Where do I live?", cities[0], cities[1]),
    (["I work at {o}.", "I work for {o}.", "My employer is {o}."], "I just started a new job, I work at {n} now.",
     "Where do I work?", firms[0], firms[1]),
    ([f"{person} lives in {{o}}.", f"{person} resides in {{o}}.", f"{person} is living in {{o}}."],
     f"{person} moved to {{n}}.", f"Where does {person} live?", cities[2], cities[3]),
    ([f"{relative} works at {{o}}.", f"{relative} works for {{o}}.", f"{relative}'s employer is {{o}}."],
     f"{relative} works at {{n}} now.", f"Where does {relative} work?", firms[2], firms[3]),
    (["Zara is my {o}.", "My {o} is Zara.", "Zara is my {o}."], "Actually, Zara is my {n}.", "Who is Zara?",
     kin[0], kin[1]),
]
others = [  # each fact's other trained questions (olm/facts.py), asked besides the first
    ["Which city do I live in?", "Do you know where I live?"],
    ["Which company do I work for?", "Do you know where I work?"],
    [f"Which city does {person} live in?", f"Do you know where {person} lives?"],
    [f"Which company does {relative} work for?", f"Do you know where {relative} works?"],
    ["Do you know who Zara is?", "Can you tell me who Zara is?"],
]
colour, month = rng.choice(["teal", "mauve", "ochre", "crimson"]), rng.choice(["March", "July", "October"])
friend = rng.choice(["Yelka", "Dagny Holm", "Quillon"])
kept = [  # taught as the others, never contradicted: must still be recalled after the updates
    (["My favourite colour is {o}.", "My favorite color is {o}.", "My favourite colour is {o}."],
     "What is my favourite colour?", "Your favourite colour is", colour),
    ([f"{friend}'s birthday is in {{o}}.", f"{friend} celebrates a birthday in {{o}}.",
      f"{friend}'s birthday is in {{o}}."],
     f"When is {friend}'s birthday?", f"{friend}'s birthday is in", month),
]
chat = [json.loads(l)["messages"] for l in open("olm/assets/logs/about-me.jsonl")]
small = [(m[0]["content"], m[1]["content"]) for m in chat if "?" in m[0]["content"] or not any(
    w in m[0]["content"] for w in ("my ", "My ", "I ", "I'm", "Call"))]
acks = ["Good to know!", "Thanks for telling me.", "Noted.", "Got it!", "I'll remember that."]
general = ["What is the capital of France?", "How many legs does a spider have?", "What is your name?",
           "Can you suggest a quick breakfast idea?", "What is 12 times 3?", "Who wrote Romeo and Juliet?",
           "Where do you live?", "Where do you work?"]


def mixed(statements):
    turns = []
    for s in statements:
        turns.append((s, rng.choice(acks)))
        if rng.random() < 0.5:
            turns.append(rng.choice(small))
    return turns


def asked(lm, when, before=None):
    rows = []
    for _, _, q, old, new in facts:
        ans = lm.ask(q)
        on = bool(lm.module.router.last_on.all()) if lm.module.router.last_on is not None else None
        rows.append({"q": q, "answer": ans, "old": is_recalled(ans, old), "new": is_recalled(ans, new), "routed": on})
    also = []  # the fact's other trained questions ("Which city do I live in?"): the answer a person gets there too
    for (_, _, q, old, new), more in zip(facts, others):
        for o in more:
            ans = lm.ask(o)
            also.append({"q": o, "answer": ans, "old": is_recalled(ans, old), "new": is_recalled(ans, new)})
    m, qs = lm.module, [f[2] for f in facts]
    for key in ("old", "new"):
        scores = object_scores(m.model, m.tokenizer, qs, leads, [f[3 if key == "old" else 4] for f in facts])
        for r, sc in zip(rows, scores):
            r[f"p_{key}"] = round(math.exp(sc.log_p), 4)
    for _, q, lead, obj in kept:
        ans = lm.ask(q)
        [sc] = object_scores(m.model, m.tokenizer, [q], [lead], [obj])
        on = bool(lm.module.router.last_on.all()) if lm.module.router.last_on is not None else None
        p_kept = round(math.exp(sc.log_p), 4)
        rows.append({"q": q, "answer": ans, "kept": is_recalled(ans, obj), "routed": on, "p_kept": p_kept})
    if before is not None:
        rows += [{"q": g, "answer": (a := lm.ask(g)), "general": True, "same_as_base": a == before[g]} for g in general]
    print(f"--- {when}")
    for r in rows:
        flags = " ".join(k for k in ("old", "new", "kept") if r.get(k))
        flags += " DIFF" if r.get("same_as_base") is False else ""
        p = f"p old {r.get('p_old')} new {r.get('p_new')} kept {r.get('p_kept')}"
        print(f"{r['q'][:40]:40} -> {r['answer'][:60]!r} routed={r.get('routed')} {p} {flags}")
    for r in also:
        print(f"  also {r['q'][:35]:35} -> {r['answer'][:60]!r} {'new' if r['new'] else ''}{'old' if r['old'] else ''}")
    memory = [(f.subject, f.slot or f.relation, f.object, f.count, round(f.importance, 2)) for f in lm.module.memory]
    print("memory:", memory)
    return rows + [dict(r, also=True) for r in also]


t = time.perf_counter()
lm = olm.open(base_model="smollm2-135m", config=cfg)
before = {g: lm.ask(g) for g in general}
lm.learn(mixed([says[k].format(o=old) for k in range(3) for says, _, _, old, _ in facts]
               + [says[k].format(o=obj) for k in range(3) for says, _, _, obj in kept]))
res = {"seed": seed, "overrides": sys.argv[3:], "taught": asked(lm, "taught")}
lm.learn(mixed([update.format(n=new) for _, update, _, _, new in facts]))
res["after_update"] = asked(lm, "after_update")
lm.learn([rng.choice(small) for _ in range(12)])
res["later"] = asked(lm, "later", before)
res["summary"] = {w: {k: sum(r[k] for r in res[w] if k in r and not r.get("also")) for k in ("new", "old", "kept")}
                  for w in ("taught", "after_update", "later")}
for w in ("taught", "after_update", "later"):  # the other trained questions, of len(facts) * 2
    res["summary"][w]["also_new"] = sum(r["new"] for r in res[w] if r.get("also"))
res["summary"]["general_same"] = sum(r.get("same_as_base", False) for r in res["later"])
res["took_s"] = round(time.perf_counter() - t)
json.dump(res, open(out, "w"), indent=1, ensure_ascii=False)
print(res["summary"], res["took_s"], "s")
