"""Sum first-person runs per override set (counts over seeds): python summary.py RUN.json ...

trained / held_out: facts recalled by their trained question / a held-out phrasing; assistant: the trained
questions put to the assistant ("Where do you live?", "What is your name?"; with --extra two more) answered word for word as the base
did before learning (--extra, --open: two more each); assistant_held: six other questions about the assistant, the same; general: the other
general prompts, the same; general_routed: of those, how many got the adapter."""
import json, sys
from collections import defaultdict

OWN = {"Where do you live?", "What is your name?", "What do you do for a living?", "Where are you from?",  # --extra
       "What is your favourite food?", "How old are you?"}  # the last two: --open
HELD = {"Where are you based?", "What should I call you?", "Who do you work for?", "Are you allergic to anything?",
        "Do you have a favourite colour?", "When were you born?"}
agg = defaultdict(lambda: defaultdict(lambda: [0, 0]))
for path in sorted(sys.argv[1:]):
    r = json.load(open(path))
    k = " ".join(r["overrides"]) or "defaults"
    agg[k]["seeds"][0] += 1
    for x in r["rows"]:
        if x["kind"] in ("trained", "held_out"):
            parts = [(x["kind"], x["recalled"])]
        elif x["q"] in OWN:
            parts = [("assistant", x["same_as_base"])]
        elif x["q"] in HELD:
            parts = [("assistant_held", x["same_as_base"])]
        else:
            parts = [("general", x["same_as_base"]), ("general_routed", bool(x["routed"]))]
        for name, ok in parts:
            agg[k][name][0] += ok
            agg[k][name][1] += 1
for k, v in agg.items():
    cells = ", ".join(f"{c} {a}/{b}" if c != "seeds" else f"{a} seeds" for c, (a, b) in v.items())
    print(f"{k}: {cells}")
