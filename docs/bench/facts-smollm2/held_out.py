"""Generalization per held-out phrasing, pooled over the stored runs of several benchmark directories
(`olm.bench.facts.held_out_phrasings`, the table each results.md ends with, across directories).
Run: PYTHONPATH=. python docs/bench/facts-smollm2/held_out.py ROW DIR [DIR ...]"""
import json
import sys
from pathlib import Path

from olm.bench.facts import held_out_markdown, held_out_phrasings

row, dirs = sys.argv[1], sys.argv[2:]
runs = [json.loads(f.read_text())["metrics"] for d in dirs for f in sorted(Path(d, "runs").glob(f"{row}-seed*.json"))]
print(f"{len(runs)} runs of row {row!r} from {', '.join(dirs)}")
print(held_out_markdown({row: held_out_phrasings(runs)}))
