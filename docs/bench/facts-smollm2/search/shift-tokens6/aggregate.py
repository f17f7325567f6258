"""Seeds 0-2 of the fact benchmark's tuned row with routing.shift_tokens 6, aggregated as `olm.bench facts` does.

    PYTHONPATH=. python docs/bench/facts-smollm2/search/shift-tokens6/aggregate.py

Seed 0 is `search/shift-tokens6-seed0/`'s run (default.yaml of 0e07560 + `--set=--model.routing.shift_tokens=6`);
seeds 1 and 2 ran with today's default.yaml, which sets shift_tokens 6 itself and also `augment.contrasts: 2`
(first-person facts only, none in this benchmark), from 5973a7a:

    python -m olm.bench facts --out DIR --rows tuned --seeds N --facts 20 --reps 3 --unrelated 100 --threads 1 --gk-long-tokens 128

The benchmark reuses a stored run only when its config file's hash matches, which these two configs' do not.
"""
import json
from pathlib import Path

from olm.bench.facts import (
    aggregate, binding_errors, binding_markdown, held_out_markdown, held_out_phrasings, markdown, plot,
)

here = Path(__file__).parent
runs = [json.loads((here / "runs" / f"tuned-seed{s}.json").read_text())["metrics"] for s in (0, 1, 2)]
results = {"tuned": aggregate(runs)}
phrasings = {"tuned": held_out_phrasings(runs)}
results["tuned"]["held_out_phrasings"] = phrasings["tuned"]
binding = {"tuned": binding_errors(runs)}
results["tuned"]["binding_errors"] = binding["tuned"]
(here / "results.json").write_text(json.dumps(results, indent=2))
table = markdown(results, 3)
doc = f"`PYTHONPATH=. python {here}/aggregate.py` (see its docstring)\n\n"
(here / "results.md").write_text(doc + table + held_out_markdown(phrasings) + binding_markdown(binding))
plot(results, 3, here / "recall.png")
print(table)
