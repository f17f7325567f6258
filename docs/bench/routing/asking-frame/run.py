"""Questions that frame their topic with "Do you know …" / "Can you tell me …": which go to the adapter, and what
they answer, with `olm.routing.addressee` as it is and as it was (the frame's "you" counted: held apart as a
question about the assistant). Three facts about others and one about the speaker, three statements each.

    OMP_NUM_THREADS=1 PYTHONPATH=. python docs/bench/routing/asking-frame/run.py > docs/bench/routing/asking-frame/out.txt
"""
import re

import torch
import yaml

import olm
from olm import routing

torch.set_num_threads(1)


def addressee_before(text, speaker, assistant):  # olm.routing.addressee before the asking frame
    last = {who: max((m.end() for m in rx.finditer(text)), default=-1) for who, rx in
            (("speaker", speaker), ("assistant", assistant))}  # fmt: skip
    if max(last.values()) < 0:
        return None
    return "assistant" if last["assistant"] > last["speaker"] else "speaker"


cfg = yaml.safe_load(open("configs/default.yaml"))
lm = olm.open(base_model="smollm2-135m", config=cfg)
said = [["Zara is my colleague.", "My colleague is Zara.", "Zara is my colleague."],
        ["Pelham Strand lives in Porto.", "Pelham Strand resides in Porto.", "Pelham Strand is living in Porto."],
        ["Ilse Varga works at Orvane.", "Ilse Varga works for Orvane.", "Ilse Varga's employer is Orvane."],
        ["I live in Turin.", "My home is in Turin.", "I'm living in Turin."]]
lm.learn([(s[k], "Got it!") for k in range(3) for s in said])
questions = ["Who is Zara?", "Do you know who Zara is?", "Can you tell me who Zara is?",
             "Where does Pelham Strand live?", "Do you know where Pelham Strand lives?",
             "Where does Ilse Varga work?", "Do you know where Ilse Varga works?",
             "Where do I live?", "Do you know where I live?",
             "Who is Marlow Quint?", "Do you know who Marlow Quint is?", "Can you tell me a joke?", "Do you know any good books?",
             "Can you tell me where you live?", "Do you know your name?", "What is the capital of France?"]
now = routing.addressee
for name, fn in (("before", addressee_before), ("now", now)):
    routing.addressee = fn
    print(f"--- addressee {name}")
    for q in questions:
        answer = lm.ask(q)
        on = bool(lm.module.router.last_on.all())
        print(f"{q:42} adapter={on!s:5} {answer[:70]!r}")
routing.addressee = now
