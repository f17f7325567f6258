"""First-person facts with random objects: teach one speaker's six facts (3 statements each, the
detector patterns' own statement templates, between the about-me stream's small talk), then ask in a
fresh context (a) each fact's trained question, (b) a held-out phrasing (never a training template),
(c) general prompts, comparing the answer with the base's and noting where routing sent each.

    OMP_NUM_THREADS=1 PYTHONPATH=. python docs/bench/facts-smollm2/search/first-person/run.py SEED OUT.json [key=value ...]

key=value: model settings overrides, dotted under `model` (locality.exempt_facts=64).
--extra: two more facts, of the patterns added with `max_facts` (i_work_as / i_am_a_x_by_trade, i_am_from).
--open: two more facts of the open patterns (my_favourite_x: a favourite food; my_age).
--others: two facts about a person the speaker names (a relation, the city), said as "My sister X lives in C." /
"X is my sister and she lives in C.": the apposition and the pronoun; their questions name no speaker.
--kin: three more facts (since 6ffd9ba): the speaker's unnamed relatives ("My mom lives in C.": subject "my mom", asked
"Where does my mom live?"; "My brother works at X.") and a known job said after "a" ("I'm a nurse.").
--likes: one more fact (since i_like): what the speaker likes ("I love {o}.", asked "What do I like?").
--pastimes: instead of the six, five facts of the patterns added with i_like: likes, a language (i_speak), a game or
instrument (i_play), a subject of study (i_study), a hobby (my_hobby).
--many: instead of the six, two things the speaker likes, two languages, two games (patterns of many objects: each
kept beside the other, answered together, "You like jazz and chess.") and a subject of study and a hobby; a fact of
many objects is recalled when its own object is in the answer to the shared question.
--everyday: instead of the six, a like and a dislike ("I hate {o}.", i_dislike: the two kept apart), a diet ("I'm vegan.",
i_am_diet), an origin said with "originally" / "hometown" / "raised" and a subject being learned ("I'm learning {o}."):
the forms added with i_dislike (since its commit).
--pairs: state the facts two to a message ("My name is Lojois. I live in Zurich."), each round's six in three
messages: every fact of a message is learned since `detector.max_facts` (default 3; detector.max_facts=1: as before).
Since 5973a7a `olm.open` seeds torch as default.yaml's `seed_everything` (0) says, so a rerun repeats a run; the runs
before were unseeded (LoRA init and dropout drawn afresh: seed 0 trained 6/6 in one run, 4/6 in another).
"""
import json, random, sys, time
import torch, yaml
import olm
from olm.probes import is_recalled
from olm.world import templates as T

torch.set_num_threads(1)
FLAGS = ("--pairs", "--extra", "--open", "--others", "--kin", "--likes", "--pastimes", "--many", "--everyday")
pairs, extra, opened, others, kin, likes, pastimes, many, everyday = (flag in sys.argv for flag in FLAGS)
args = [a for a in sys.argv if a not in FLAGS]
seed, out = int(args[1]), args[2]
cfg = yaml.safe_load(open("configs/default.yaml"))
for kv in args[3:]:
    key, value = kv.split("=", 1)
    node = cfg["model"]
    *path, last = key.split(".")
    for p in path:
        node = node.setdefault(p, {})
    node[last] = yaml.safe_load(value)
rng = random.Random(seed)
syll = ["ka", "lo", "mi", "ren", "sa", "tor", "vel", "yu", "bri", "dan", "el", "fo", "gar", "hil", "is", "jo"]
name = "".join(rng.sample(syll, 3)).capitalize()
company = rng.choice(["Brightwell", "Northgate", "Kelmor", "Ashdown", "Veridian", "Tallis", "Orvane", "Castel"]) + " " + \
    rng.choice(["Labs", "Systems", "Foods", "Logistics", "Media", "Partners"])
facts = [  # (statements, trained question, held-out question, object)
    (["My name is {o}.", "Call me {o}.", "My name is {o}, by the way."], "What is my name?", "Do you remember what I'm called?", name),
    (["I live in {o}.", "My home is in {o}.", "I'm living in {o}."], "Where do I live?", "Which town is my home?", rng.choice(T.CITIES)),
    (["I work at {o}.", "My employer is {o}.", "I work for {o}."], "Where do I work?", "Who is my employer?", company),
    (["I am allergic to {o}.", "I have an allergy to {o}.", "I'm allergic to {o}."], "What am I allergic to?",
     "Which food should I avoid because of my allergy?", rng.choice(["sesame", "peanuts", "shellfish", "walnuts", "kiwi", "celery", "mustard"])),
    (["My favourite colour is {o}.", "I like the colour {o} best.", "My favorite color is {o}."], "What is my favourite colour?",
     "Which colour do I love most?", rng.choice(T.COLOURS)),
    (["My birthday is in {o}.", "I celebrate my birthday in {o}.", "My birthday is in {o}."], "When is my birthday?",
     "In what month was I born?", rng.choice(T.MONTHS)),
]
if extra:  # drawn after the six, so that the six objects stay those of the runs without --extra
    facts += [
        (["I work as a {o}.", "I'm a {o} by trade.", "I work as a {o}, by the way."], "What do I do for a living?",
         "What's my profession?", rng.choice(["nurse", "plumber", "baker", "pilot", "dentist", "carpenter"])),
        (["I'm from {o}.", "I come from {o}.", "I am from {o}."], "Where am I from?", "What is my country of origin?",
         rng.choice(["Portugal", "Canada", "Kenya", "Norway", "Chile", "Vietnam"])),
    ]
if opened:  # drawn after the others, so that their objects stay those of the runs without --open
    facts += [
        (["My favourite food is {o}.", "My favourite food: {o}.", "My favorite food is {o}, by the way."],
         "What is my favourite food?", "Which dish do I like most?",
         rng.choice(["sushi", "lasagne", "ramen", "paella", "tacos", "curry", "dumplings"])),
        (["I'm {o} years old.", "My age is {o}.", "I am {o} years old."], "How old am I?", "What age am I?",
         str(rng.randint(19, 80))),
    ]
if others:  # drawn last, so that the objects above stay those of the runs without --others
    who = "".join(rng.sample(syll, 2)).capitalize() + "a"
    rel, pron = rng.choice([("sister", "she"), ("cousin", "she"), ("aunt", "she"), ("brother", "he"), ("uncle", "he")])
    city = rng.choice([c for c in T.CITIES if c != facts[1][3]])
    facts += [  # the relation said in an apposition / before a pronoun, the city after them
        ([f"{who} is my {{o}}.", f"My {{o}} {who} says hello.", f"{who} is my {{o}}, by the way."],
         f"Who is {who}?", f"Who's {who}?", rel),
        ([f"My {rel} {who} lives in {{o}}.", f"{who} is my {rel} and {pron} lives in {{o}}.", f"{who} lives in {{o}}."],
         f"Where does {who} live?", f"In which city does {who} live?", city),
    ]
if kin:  # drawn last, so that the objects above stay those of the runs without --kin
    r1, r2 = rng.sample(["mom", "dad", "sister", "brother", "wife", "husband", "aunt", "uncle"], 2)
    city = rng.choice([c for c in T.CITIES if c != facts[1][3]])
    firm = rng.choice(["Halden", "Corvane", "Mirelle", "Stanmore", "Quillby", "Ostrava"]) + " " + \
        rng.choice(["Bank", "Motors", "Studios", "Pharma", "Energy"])
    facts += [
        ([f"My {r1} lives in {{o}}.", f"My {r1} is living in {{o}}.", f"My {r1} lives in {{o}}, by the way."],
         f"Where does my {r1} live?", f"In which city does my {r1} live?", city),
        ([f"My {r2} works at {{o}}.", f"My {r2} works for {{o}}.", f"My {r2}'s employer is {{o}}."],
         f"Where does my {r2} work?", f"Which company employs my {r2}?", firm),
        (["I'm a {o}.", "I am a {o}.", "I'm a {o}, by the way."], "What do I do for a living?", "What's my profession?",
         rng.choice(["nurse", "plumber", "baker", "pilot", "dentist", "carpenter"])),
    ]
if likes:  # drawn last, so that the objects above stay those of the runs without --likes
    facts += [(["I love {o}.", "I really enjoy {o}.", "I like {o} very much."], "What do I like?", "What am I fond of?",
               rng.choice(["hiking", "jazz", "chess", "gardening", "painting", "cycling", "pottery", "origami"]))]
if pastimes:  # drawn last; replaces the six
    facts = [
        (["I love {o}.", "I really enjoy {o}.", "I like {o} very much."], "What do I like?", "What am I fond of?",
         rng.choice(["hiking", "jazz", "gardening", "cycling", "pottery", "origami"])),
        (["I speak {o}.", "I'm fluent in {o}.", "I speak {o} fluently."], "What language do I speak?",
         "Which tongue am I fluent in?", rng.choice(["Portuguese", "Finnish", "Swahili", "Korean", "Dutch", "Greek"])),
        (["I play {o}.", "I often play {o}.", "I play {o} a lot."], "What do I play?", "Which instrument or sport is mine?",
         rng.choice(["cello", "chess", "badminton", "harp", "rugby", "banjo"])),
        (["I study {o}.", "I'm studying {o}.", "I am majoring in {o}."], "What do I study?", "What is my field at university?",
         rng.choice(["geology", "linguistics", "astronomy", "architecture", "pharmacy", "economics"])),
        (["My hobby is {o}.", "My favourite pastime is {o}.", "My favorite hobby is {o}."], "What is my hobby?",
         "How do I spend my free time?", rng.choice(["knitting", "birdwatching", "fishing", "baking", "climbing", "sketching"])),
    ]
if many:  # drawn last; replaces the six
    liked = rng.sample(["hiking", "jazz", "gardening", "cycling", "pottery", "origami"], 2)
    spoken = rng.sample(["Portuguese", "Finnish", "Swahili", "Korean", "Dutch", "Greek"], 2)
    played = rng.sample(["cello", "chess", "badminton", "harp", "rugby", "banjo"], 2)
    facts = [(["I love {o}.", "I really enjoy {o}.", "I like {o} very much."], "What do I like?", "What am I fond of?", o)
             for o in liked]
    facts += [(["I speak {o}.", "I'm fluent in {o}.", "I speak {o} fluently."], "What language do I speak?",
               "Which tongue am I fluent in?", o) for o in spoken]
    facts += [(["I play {o}.", "I often play {o}.", "I play {o} a lot."], "What do I play?",
               "Which instrument or sport is mine?", o) for o in played]
    facts += [
        (["I study {o}.", "I'm studying {o}.", "I am majoring in {o}."], "What do I study?", "What is my field at university?",
         rng.choice(["geology", "linguistics", "astronomy", "architecture", "pharmacy", "economics"])),
        (["My hobby is {o}.", "My favourite pastime is {o}.", "My favorite hobby is {o}."], "What is my hobby?",
         "How do I spend my free time?", rng.choice(["knitting", "birdwatching", "fishing", "baking", "climbing", "sketching"])),
    ]
if everyday:  # drawn last; replaces the six
    facts = [
        (["I love {o}.", "I really enjoy {o}.", "I like {o} very much."], "What do I like?", "What am I fond of?",
         rng.choice(["hiking", "jazz", "gardening", "cycling", "pottery", "origami"])),
        (["I hate {o}.", "I can't stand {o}.", "I really don't like {o}."], "What do I dislike?",
         "Is there anything I hate?", rng.choice(["olives", "karaoke", "traffic", "camping", "opera", "mushrooms"])),
        (["I'm {o}.", "I am a {o}.", "I follow a {o} diet."], "What is my diet?", "Which diet am I on?",
         rng.choice(["vegetarian", "vegan", "pescatarian"])),
        (["I'm originally from {o}.", "My hometown is {o}.", "I was raised in {o}."], "Where am I from?",
         "Where did I grow up?", rng.choice(["Portugal", "Canada", "Kenya", "Norway", "Chile", "Vietnam"])),
        (["I'm learning {o}.", "I am learning {o}.", "I'm learning {o} at the moment."], "What do I study?",
         "What am I learning?", rng.choice(["Japanese", "Arabic", "calculus", "Python", "welding", "sailing"])),
    ]
chat = [json.loads(l)["messages"] for l in open("olm/assets/logs/about-me.jsonl")]
small = [(m[0]["content"], m[1]["content"]) for m in chat if "?" in m[0]["content"] or not any(
    w in m[0]["content"] for w in ("my ", "My ", "I ", "I'm", "Call"))]
acks = ["Good to know!", "Thanks for telling me.", "Noted.", "Got it!", "I'll remember that."]
turns = []
for r in range(3):
    order = rng.sample(range(len(facts)), len(facts))
    said = [facts[i][0][r].format(o=facts[i][3]) for i in order]
    for text in ([" ".join(said[k:k + 2]) for k in range(0, len(said), 2)] if pairs else said):
        turns.append((text, rng.choice(acks)))
        if rng.random() < 0.5:
            turns.append(rng.choice(small))
general = ["What is the capital of France?", "How many legs does a spider have?", "Where do you live?",
           "What is your name?", "Can you suggest a quick breakfast idea?", "I live in a small flat. Any decorating tips?",
           "What is 12 times 3?", "Who wrote Romeo and Juliet?",
           # the assistant asked about itself in words no training row or contrast question uses
           "Where are you based?", "What should I call you?", "Who do you work for?", "Are you allergic to anything?",
           "Do you have a favourite colour?", "When were you born?"]
general += ["What do you do for a living?", "Where are you from?"] if extra else []  # the new facts' contrasts
general += ["What is your favourite food?", "How old are you?"] if opened else []
general += ["Where does my neighbour live?", "Where does my boss work?", "What do you do for a living?"] if kin else []
general += ["What do you like?", "What do you enjoy doing?"] if likes or pastimes or many else []
general += ["What languages do you speak?", "Do you play any games?", "What is your hobby?"] if pastimes or many else []
general += ["What do you like?", "What do you dislike?", "Are you vegetarian?", "Where are you from?",
            "What are you learning?"] if everyday else []
lm = olm.open(base_model="smollm2-135m", config=cfg)
m = lm.module
before = {g: lm.ask(g) for g in general}  # the adapter starts at zero (B = 0): the base's answers
t = time.perf_counter()
lm.learn(turns)
took = time.perf_counter() - t
rows = []
for stm, q, held, o in facts:
    for kind, question in (("trained", q), ("held_out", held)):
        a = lm.ask(question)
        rows.append({"kind": kind, "q": question, "object": o, "answer": a, "recalled": is_recalled(a, o),
                     "routed": bool(m.router.last_on.all()) if m.router.last_on is not None else None})
for g in general:
    a = lm.ask(g)
    on = bool(m.router.last_on.all()) if m.router.last_on is not None else None
    rows.append({"kind": "general", "q": g, "answer": a, "routed": on, "same_as_base": a == before[g]})
res = {"seed": seed, "overrides": args[3:] + ["--pairs"] * pairs + ["--extra"] * extra + ["--open"] * opened + ["--others"] * others + ["--kin"] * kin + ["--likes"] * likes + ["--pastimes"] * pastimes + ["--many"] * many + ["--everyday"] * everyday, "turns": len(turns), "learn_s": round(took, 1), "rows": rows,
       "trained": sum(r["recalled"] for r in rows if r["kind"] == "trained") / len(facts),
       "held_out": sum(r["recalled"] for r in rows if r["kind"] == "held_out") / len(facts),
       "general_routed": sum(bool(r["routed"]) for r in rows if r["kind"] == "general"),
       "general_same": sum(r["same_as_base"] for r in rows if r["kind"] == "general")}
json.dump(res, open(out, "w"), indent=1, ensure_ascii=False)
for r in rows:
    print(f"{r['kind']:9} {r['q'][:44]:44} -> {r['answer'][:70]!r} {'ok' if r.get('recalled') else ''} routed={r['routed']}")
print(f"seed {seed}: trained {res['trained']:.2f} held-out {res['held_out']:.2f} general routed {res['general_routed']}/{len(general)}, same as the base {res['general_same']}/{len(general)}")
