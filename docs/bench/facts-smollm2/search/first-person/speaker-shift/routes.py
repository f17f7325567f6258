"""A saved chat adapter (argv[1]) and its memory.json, opened with configs/chat.yaml: τ, κ, κ_S, τ_S, and per
question (argv[2], separated by |) its read share, shift reads, whether it is held apart or names an unknown relative,
and where routing sends it. SS=1 turns `routing.speaker_shift` on.

    SS=1 OMP_NUM_THREADS=2 PYTHONPATH=. python docs/bench/facts-smollm2/search/first-person/speaker-shift/routes.py \
        /tmp/olmwork/chat-likes/version_0/adapter "What language do I speak?|What do you like?"
"""
import sys, torch, yaml
import olm
from olm.routing import left_padded
from olm.render import render_prompt, messages_for
torch.set_num_threads(2)
cfg = yaml.safe_load(open("configs/chat.yaml"))
cfg["model"]["adapter"] = sys.argv[1]
import os
if os.environ.get("SS"): cfg["model"]["routing"]["speaker_shift"] = True
lm = olm.open(base_model="smollm2-135m", config=cfg)
m = lm.module; r = m.router; tok = m.tokenizer
print("memory", [(f.subject, f.slot or f.relation, f.object, f.question) for f in m.memory])
print("fact qs", m.recent_fact_questions(r.settings.facts), "speaker qs", m.recent_fact_questions(r.settings.facts, speaker=True))
print("kappa_s", r.speaker_kappa(m.model).tolist()); print("tau", r.tau(m.model), "kappa", r.kappa(m.model).tolist(), "tau_s", r.speaker_tau(m.model), "rule", r.speaker_rule(m.model))
qs = sys.argv[2].split("|")
b = left_padded(tok, [render_prompt(tok, messages_for(q)) for q in qs], "cpu")
sc = r.scores(m.model, b["input_ids"], b["attention_mask"])
sh = r.shift(m.model, b["input_ids"], b["attention_mask"])
held = r.held_apart(b["input_ids"], b["attention_mask"], None)
unk = r.unknown_relative(b["input_ids"], b["attention_mask"], None)
on = r.route(m.model, b["input_ids"], b["attention_mask"])
for q, s, h, he, u, o in zip(qs, sc.tolist(), sh.tolist(), held.tolist(), unk.tolist(), on.tolist()):
    print(f"{q:40} read {s:.4f} shift {[round(x,3) for x in h]} held {he} unknown_rel {u} -> {'ADAPTER' if o else 'base'}")
