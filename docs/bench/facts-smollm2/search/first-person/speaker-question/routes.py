"""Saved chat adapters (argv[2:], each with its memory.json) opened with configs/chat.yaml and `routing.speaker_shift`
as argv[1] says ("off", "all": κ_S for every prompt naming the speaker last — the rule before —, "question": κ_S
only where the message's asking sentence names the speaker, `olm.routing.asked_sentence`): for each adapter, its
facts' trained questions, other phrasings of them, first-person small talk and how-to questions, questions put to
the assistant and general ones — where routing sends each, and the answer.

    OMP_NUM_THREADS=2 PYTHONPATH=. python docs/bench/facts-smollm2/search/first-person/speaker-question/routes.py \
        question /tmp/olmwork/chat-dislike/version_0/adapter/v2 ...
"""
import os, sys, torch, yaml
import olm
import olm.routing as routing

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
mode, dirs = sys.argv[1], sys.argv[2:]
if mode == "all":  # the rule before: the whole message's addressee
    routing.asked_sentence = lambda text: text
SMALL_TALK = [
    "I live in a small flat. Any decorating tips?", "I'm tired today. Any tips for sleeping better?",
    "My kids are bored. What games could we play?", "I have a job interview tomorrow. How should I prepare?",
    "I want to cook something tonight. Any ideas?", "I'm going to Paris next week. What should I see?",
    "Can you help me write an email to my boss?", "What should I eat for dinner?", "How do I make pancakes?",
    "Should I learn Python or JavaScript?", "What do I need for a picnic?", "How can I improve my sleep?",
    "My friend is sad. What can I say to her?", "I love this weather! What should we do outside?",
]
ASSISTANT = ["What do you like?", "Where do you live?", "What is your name?", "What languages do you speak?",
             "Are you vegetarian?", "What do you dislike?"]
GENERAL = ["What is the capital of France?", "How many legs does a spider have?", "Who wrote Romeo and Juliet?",
           "Tell me a joke.", "What is 12 times 3?"]
for d in dirs:
    cfg = yaml.safe_load(open("configs/chat.yaml"))
    cfg["model"]["adapter"] = d
    cfg["model"]["routing"]["speaker_shift"] = mode != "off"
    lm = olm.open(base_model="smollm2-135m", config=cfg)
    m = lm.module
    trained = m.recent_fact_questions(m.router.settings.facts)
    print(f"## {d} ({mode}): memory {[(f.subject, f.slot or f.relation, f.object) for f in m.memory]}")
    print(f"tau {m.router.tau(m.model):.4f} kappa {[round(x, 2) for x in m.router.kappa(m.model).tolist()]} "
          f"kappa_s {[round(x, 2) for x in m.router.speaker_kappa(m.model).tolist()]}")
    for kind, qs in (("trained", trained), ("small_talk", SMALL_TALK), ("assistant", ASSISTANT), ("general", GENERAL)):
        for q in qs:
            a = lm.ask(q)
            on = bool(m.router.last_on.all())
            print(f"{kind:10} {'ADAPTER' if on else 'base   '} {q[:50]:50} -> {a[:90]!r}")
