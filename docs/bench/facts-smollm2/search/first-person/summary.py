"""Summarise first-person runs: python summary.py RUN.json ... (one line per run, then means per override set)."""
import json, sys
from collections import defaultdict

HELD = {"Where are you based?", "What should I call you?", "Who do you work for?", "Are you allergic to anything?",
        "Do you have a favourite colour?", "When were you born?"}
groups = defaultdict(list)
for path in sys.argv[1:]:
    r = json.load(open(path))
    gen = [x for x in r["rows"] if x["kind"] == "general"]
    own = [x for x in gen if x["q"] in ("Where do you live?", "What is your name?")]
    held = [x for x in gen if x["q"] in HELD]
    rest = [x for x in gen if x not in own and x not in held]
    line = {"trained": r["trained"], "held_out": r["held_out"],
            "assistant_same": f"{sum(x['same_as_base'] for x in own)}/{len(own)}",
            "assistant_held_out_same": f"{sum(x['same_as_base'] for x in held)}/{len(held)}" if held else "-",
            "general_same": f"{sum(x['same_as_base'] for x in rest)}/{len(rest)}",
            "general_routed": f"{sum(bool(x['routed']) for x in rest)}/{len(rest)}"}
    print(f"{path}: seed {r['seed']} {' '.join(r['overrides'])}: {line}")
    groups[" ".join(r["overrides"])].append(r)
for k, rs in groups.items():
    print(f"{k or 'defaults'}: {len(rs)} seeds, trained {sum(r['trained'] for r in rs) / len(rs):.2f}, "
          f"held-out {sum(r['held_out'] for r in rs) / len(rs):.2f}")
