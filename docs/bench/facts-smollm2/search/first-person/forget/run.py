"""A like contradicted by a dislike: is the old object gone from the weights' answers? Two fresh adapters per seed:
(heir) the speaker likes A and B (3 statements each), and Tom likes C; then "I hate A." and "Tom hates C." (3 each);
(heir is also asked after the first "I hate A." alone: `after_hate`)
(alone) the speaker likes A only, then hates A. Between them the about-me stream's small talk. Asked in a fresh
context (routing on, default.yaml) after the first contradiction and after the third: the like questions (trained
templates and held-out phrasings) must not name A (stale), should name B in (heir); the dislike questions should name
A; Tom's like questions must not name C; general prompts are compared with the base's answers.

    OMP_NUM_THREADS=1 PYTHONPATH=. python docs/bench/facts-smollm2/search/first-person/forget/run.py SEED OUT.json [key=value ...]

key=value: model settings overrides, dotted under `model` (augment.forget=3).
"""
import json, random, sys, time
import torch, yaml
import olm
from olm.probes import is_recalled

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
a, b, c = rng.sample(["hiking", "jazz", "gardening", "cycling", "pottery", "origami", "chess", "karaoke", "opera"], 3)
likes = ["I love {o}.", "I really enjoy {o}.", "I like {o} very much."]
hates = ["Actually, I hate {o} now.", "I can't stand {o} any more.", "I really don't like {o}."]
tom_likes, tom_hates = ["Tom loves {o}.", "Tom really enjoys {o}.", "Tom likes {o}."], ["Tom hates {o}.", "Tom can't stand {o}.", "Tom dislikes {o}."]
chat = [json.loads(l)["messages"] for l in open("olm/assets/logs/about-me.jsonl")]
small = [(m[0]["content"], m[1]["content"]) for m in chat if "?" in m[0]["content"] or not any(
    w in m[0]["content"] for w in ("my ", "My ", "I ", "I'm", "Call"))]
acks = ["Good to know!", "Thanks for telling me.", "Noted.", "Got it!", "I'll remember that."]
like_q = [("What do I like?", "trained"), ("What do I enjoy?", "trained"), ("Do you know what I like?", "trained"),
          ("What am I fond of?", "held_out"), ("What are my interests?", "held_out")]
dislike_q = [("What do I dislike?", "trained"), ("Is there anything I hate?", "held_out")]
tom_q = [("What does Tom like?", "trained"), ("What does Tom enjoy?", "trained"), ("What is Tom fond of?", "held_out")]
general = ["What is the capital of France?", "How many legs does a spider have?", "What is your name?",
           "Can you suggest a quick breakfast idea?", "What is 12 times 3?", "Who wrote Romeo and Juliet?",
           "What do you like?", "What do you dislike?", "I love this weather! What should we do outside?"]


def mixed(statements):
    turns = []
    for s in statements:
        turns.append((s, rng.choice(acks)))
        if rng.random() < 0.5:
            turns.append(rng.choice(small))
    return turns


def asked(lm, m, questions, kind, before=None):
    rows = []
    for q, form in questions:
        ans = lm.ask(q)
        on = bool(m.router.last_on.all()) if m.router.last_on is not None else None
        row = {"kind": kind, "form": form, "q": q, "answer": ans, "routed": on}
        if before is not None:
            row["same_as_base"] = ans == before[q]
        rows.append(row)
    return rows


def scenario(name, first, then, split):
    lm = olm.open(base_model="smollm2-135m", config=cfg)
    m = lm.module
    before = {g: lm.ask(g) for g in general}
    lm.learn(first)
    res = {"scenario": name}
    steps = [("after_1", then[:split]), ("after_3", then[split:])]
    if name == "heir":  # also after the speaker's first contradiction alone, before Tom's
        steps = [("after_hate", then[:1]), ("after_1", then[1:split]), ("after_3", then[split:])]
    for when, stream in steps:
        lm.learn(stream)
        rows = asked(lm, m, [(q, f) for q, f in like_q], "like") + asked(lm, m, dislike_q, "dislike")
        rows += asked(lm, m, tom_q, "tom") if name == "heir" else []
        rows += asked(lm, m, [(g, "general") for g in general], "general", before) if when == "after_3" else []
        for r in rows:
            r["stale"] = r["kind"] == "like" and is_recalled(r["answer"], a) or r["kind"] == "tom" and is_recalled(r["answer"], c)
            r["heir"] = r["kind"] == "like" and name == "heir" and is_recalled(r["answer"], b)
            r["dislike"] = r["kind"] == "dislike" and is_recalled(r["answer"], a)
        res[when] = rows
        print(f"--- {name} {when}")
        for r in rows:
            flags = " ".join(k for k in ("stale", "heir", "dislike") if r[k]) + (" DIFF" if r.get("same_as_base") is False else "")
            print(f"{r['kind']:8} {r['form']:8} {r['q'][:40]:40} -> {r['answer'][:70]!r} routed={r['routed']} {flags}")
    return res


t = time.perf_counter()
heir_first = mixed([s.format(o=o) for k in range(3) for s, o in ((likes[k], a), (likes[(k + 1) % 3], b), (tom_likes[k], c))])
heir_then = [x for k in range(3) for x in ((hates[k].format(o=a), "Noted."), (tom_hates[k].format(o=c), "Noted."))]
runs = [scenario("heir", heir_first, heir_then, 2),
        scenario("alone", mixed([likes[k].format(o=a) for k in range(3)]), [(hates[k].format(o=a), "Noted.") for k in range(3)], 1)]
summary = {}
for r in runs:
    for when in [w for w in ("after_hate", "after_1", "after_3") if w in r]:
        rows = r[when]
        mine = [x for x in rows if x["kind"] == "like"]
        summary[f"{r['scenario']}_{when}"] = {
            "stale_like": sum(x["stale"] for x in mine), "likes": len(mine),
            "heir": sum(x["heir"] for x in mine), "dislike": sum(x["dislike"] for x in rows),
            "stale_tom": sum(x["stale"] for x in rows if x["kind"] == "tom"),
            "general_same": sum(x.get("same_as_base", False) for x in rows if x["kind"] == "general"),
        }
res = {"seed": seed, "objects": [a, b, c], "overrides": sys.argv[3:], "took_s": round(time.perf_counter() - t), "runs": runs,
       "summary": summary}
json.dump(res, open(out, "w"), indent=1, ensure_ascii=False)
for k, v in summary.items():
    print(k, v)
