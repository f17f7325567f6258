"""Every fact the detector finds in the bundled logs and the real public logs of ../shared/reallogs.

    PYTHONPATH=. python docs/bench/detector/census.py OUT.tsv

One line per fact: source, pattern, subject, relation, object, message (first 120 characters). DailyDialog's
replies are people talking too: its "assistant" lines are read as well (source marked "+reply"). Compare two
versions' files with `diff` to see what a detector change adds and loses.
"""
import glob, logging, sys
from pathlib import Path

from olm.data import ChatTurnStream
from olm.facts import FactDetector

logging.disable(logging.WARNING)
root = Path(__file__).resolve().parents[3]
sources = sorted(glob.glob(str(root / "olm/assets/logs/*.jsonl"))) + sorted(
    str(p) for p in (root.parent / "shared" / "reallogs").glob("*") if p.suffix in (".json", ".jsonl", ".txt"))
detector, lines, messages = FactDetector(), [], 0
for src in sources:
    for turn in ChatTurnStream(src):
        texts = [(Path(src).name, turn.user or "")]
        if "dailydialog" in src and turn.assistant:
            texts.append((Path(src).name + "+reply", turn.assistant))
        for name, text in texts:
            messages += 1
            for f in detector.detect_many(text):
                msg = " ".join(text.split())[:120]
                lines.append(f"{name}\t{f.pattern}\t{f.subject}\t{f.relation}\t{f.object}\t{msg}")
Path(sys.argv[1]).write_text("\n".join(lines) + "\n", encoding="utf-8")
print(f"{messages} messages in {len(sources)} files: {len(lines)} facts")
