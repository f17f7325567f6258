"""Every fact the detector finds in the bundled logs and the real public logs of ../shared/reallogs.

    PYTHONPATH=. python docs/bench/detector/census.py OUT.tsv

One line per fact: source, pattern, subject, relation, object, message (first 120 characters). As in
training, "she" / "he" may mean the person named in the facts of the conversation's previous user message. DailyDialog's
replies are people talking too: its "assistant" lines are read as well (source marked "+reply"). Compare two
versions' files with `diff` to see what a detector change adds and loses.
"""
import glob, logging, sys
from pathlib import Path

from olm.data import ChatTurnStream
from olm.facts import FactDetector, named_subject

logging.disable(logging.WARNING)
root = Path(__file__).resolve().parents[3]
sources = sorted(glob.glob(str(root / "olm/assets/logs/*.jsonl"))) + sorted(
    str(p) for p in (root.parent / "shared" / "reallogs").glob("*") if p.suffix in (".json", ".jsonl", ".txt"))
detector, lines, messages = FactDetector(), [], 0
for src in sources:
    previous = (None, None)  # (conversation, named subject of its last user message)
    for turn in ChatTurnStream(src):
        texts = [(Path(src).name, turn.user or "")]
        if "dailydialog" in src and turn.assistant:
            texts.append((Path(src).name + "+reply", turn.assistant))
        for name, text in texts:
            messages += 1
            user = not name.endswith("+reply")
            antecedent = previous[1] if user and previous[0] == turn.conversation_id else None
            facts = detector.detect_many(text, antecedent)
            if user:
                previous = (turn.conversation_id, named_subject(facts))
            for f in facts:
                msg = " ".join(text.split())[:120]
                lines.append(f"{name}\t{f.pattern}\t{f.subject}\t{f.relation}\t{f.object}\t{msg}")
Path(sys.argv[1]).write_text("\n".join(lines) + "\n", encoding="utf-8")
print(f"{messages} messages in {len(sources)} files: {len(lines)} facts")
