"""Fact augmentation: what a fact step trains on besides the exchange itself (pure, no tensors).

A fact seen as one statement is memorised but not *extractable*: asked "Who is Zara?" in a fresh
context, the model does not answer from it (Allen-Zhu & Li, "Physics of Language Models 3.1").
Seeing the fact in several forms fixes that. So when a fact is stated — and when it is replayed —
the step trains on a small batch:

- the exchange itself (the user's statement and the reply), rendered by `olm.render`;
- `qa_pairs` question → answer pairs from the detector pattern's templates
  (`FactPattern.questions` → `FactPattern.answer`): "Who is Zara?" → "Zara is your sister.";
  With `short_answers`, that many of them are answered with the pattern's `short_answer` instead
  ("Who is Zara?" → "Your sister."): the answer's first token is then the fact's object itself, not
  the sentence frame ("Zara is your …") that a question phrased another way can pull toward another
  kind of fact's frame;
- `answer_frames` more question → answer pairs answered in the pattern's other answer frames
  (`FactPattern.answers`: "Your sister is Zara.", "Your sister's name is Zara."), so the object is
  learned after several frames, not only the one the canonical answer puts before it;
- `about_pairs` subject-only questions from `about_questions` ("What do you know about Zara?") →
  the same answer: they tie the fact to its subject, not to one question's wording, which is what
  a question phrased any other way shares with them. Third-person facts only (for first-person
  facts every fact would share "What do you know about me?");
- `paraphrases` restatements from `FactPattern.statements` ("My sister is Zara."), each answered
  with `acknowledgement` ("Got it. Zara is your sister.");
- `siblings`: one question → answer pair for each of that many *remembered facts of the same kind*
  about other subjects (`sibling_facts`: "Who is Ali?" → "Ali is your uncle." in the step that teaches
  "Zara is my sister."). A step on one fact pulls the relation's frame toward its object for every
  subject ("What does Ana have?" → the guitar just taught about Ben); rows that keep the other
  subjects' answers in the same batch make the edit depend on the subject (interference-aware
  rehearsal). Fact turns only; replay batches already hold several facts.

With `train_statements` the statement rows (the stated exchange, a replay's stored one, the
paraphrases) are targets on their user side too: the fact is then also learned as text, in several
forms that each start from its subject, which is what Allen-Zhu & Li find makes a fact extractable
by questions phrased any way. The question rows stay answer-only (`statement_loss_on`).

Templates rotate with `rotation` (the fact's statement count or replay count), so successive steps
on one fact see different phrasings. The benchmark's held-out question phrasings are never among the
templates (tests/test_augment.py), so generalization stays a measurement.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from olm.facts import FactPattern, fill
from olm.memory import StoredFact, fact_key
from olm.render import LossOn

Exchange = tuple[str, str]
"""(user message, assistant reply)."""


@dataclass
class AugmentSettings:
    """How many extra examples a fact step trains on, beside the exchange itself."""

    qa_pairs: int = 2
    """Question → answer pairs per fact step."""
    paraphrases: int = 1
    """Paraphrased statements per fact step."""
    short_answers: int = 0
    """Of the `qa_pairs` rows, how many are answered with the pattern's `short_answer` ("In Lisbon.")
    instead of its full `answer`; which rows moves with the rotation, so questions get both forms (with
    3 pairs drawn from 4 templates, one template always keeps the full answer)."""
    answer_frames: int = 0
    """More question → answer rows per fact step, answered in the pattern's other answer frames
    (`FactPattern.answers`, rotated: "Tom owns a red kite.", "Tom has got a red kite."), so the object is
    also learned after frames other than the one `answer` puts before it. Added to the `qa_pairs` rows,
    which keep `answer`: answering those in the other frames instead made a short stream's facts slower
    to recall (README, Fact acquisition). 0 = none."""
    answer_frames_on: Literal["all", "replay"] = "all"
    """Which steps get the `answer_frames` rows: "all" (fact turns and replays) or "replay" only. A fact
    turn then trains the object in its canonical frame alone and the replays, which come back to each fact
    later, add the other frames: on the main job's stream the frame rows in the fact turns held a slowly
    learned object (Yelka's "teal") below the canonical answer's competitors (README, Fact acquisition). Since
    siblings of any kind (`sibling_kinds: any`) the main job recalls it with the frames in every step too (p 0.60),
    and "all" gave the fact benchmark's held-out phrasings 0.86 against 0.79 on seeds 0-2, 0.85 against 0.82 on seeds
    0-3: within the noise (default.yaml and chat.yaml: "all")."""
    about_pairs: int = 0
    """Subject-only question → answer pairs per fact step (third-person facts; 0 = none)."""
    about_questions: list[str] = field(
        default_factory=lambda: ["What do you know about {subject}?", "Tell me about {subject}."]
    )
    """Subject-only question templates (field: ``{subject}``), rotated like the pattern's questions.
    Never the benchmark's held-out phrasings (tests/test_augment.py checks)."""
    siblings: int = 0
    """Remembered facts of the same kind (slot) about other subjects rehearsed in a fact step, one
    question → answer row each (`sibling_facts`; 0 = none)."""
    sibling_kinds: Literal["same", "any"] = "same"
    """Which remembered facts `siblings` draws from: "same" — the fact's own kind alone; "any" — its own kind first,
    then facts of other kinds (other slots, the fact's subject's too), newest first. In a stream of a few facts of
    different kinds "same" finds none; with "any", a third-person stream of four such facts was recalled 4 / 4 on
    two seeds against 1 / 4 (README: siblings of any kind). "any" in default.yaml and chat.yaml."""
    contrasts: int = 0
    """Contrast questions per fact or replay step with facts about the speaker: the step's questions
    put to the assistant instead ("Where do I live?" → "Where do you live?", `contrast_questions`),
    added to the step's locality rows, so their answers are pulled to the base's (the learned "You live
    in …" otherwise answers the assistant's own questions too). 0 = none; needs `locality.weight` > 0."""
    contrast_weight: float = 1.0
    """How many times each compared position of a contrast row counts in the locality term (1 = like
    any locality prompt's). The term is a mean over every compared position of the step's rows, so at 1
    the two contrast rows' first reply tokens, where "You are allergic to …" and the base's "As an AI …"
    part, are 2 positions of ~190 against the fact rows' whole cross-entropy (README, Facts about the speaker)."""
    forget: int = 0
    """When a statement contradicts a remembered fact ("I hate jazz." after "I love jazz.",
    `FactMemory.drop_contradicted`) and no fact is left in its slot to answer its questions (a heir, "I like chess.",
    which the step rehearses first among its `siblings`), that many of the dropped fact's questions, each with its old
    answer ("What do I like?" → "You like jazz.", `forget_rows`, rotated), are rows of the locality term (like
    `contrasts`; needs `locality.weight` > 0): the adapter is pulled to the base's next-token distributions along the
    old answer — the base, which never learned jazz, does not put it after "You like" —, in that step and in the
    contradicting fact's later statements and replays for as long as no heir is remembered (`StoredFact.forgets`), so
    the weights drop the old object as the memory does. 0 = none (README, Facts about the speaker)."""
    forget_weight: float = 1.0
    """How many times each compared position of a `forget` row counts in the locality term (as `contrast_weight`)."""
    forget_apart: bool = False
    """Compare the `forget` rows with the base in optimizer steps of their own (as many as the fact's: the step's
    locality rows and the `forget` rows weighted `forget_weight`, no task loss) taken before the fact's steps, which
    then run without them.
    False: they are rows of the fact steps' own locality term. In one step, their KL outweighs the step's other rows
    under the gradient clip, rehearsals included (README, Facts about the speaker). Under DDP, whose ranks step in
    lockstep, the rows stay in the fact steps."""
    heir_steps: bool = False
    """When a statement drops a remembered fact (`FactMemory.drop_contradicted`) and another fact of its subject and
    slot is still remembered (its heir: "I like opera." after "I love chess.", "I hate chess."), the turn also takes
    the heir's fact steps after the statement's own, as if it were stated again: its stored exchange and Q/A rows,
    answered with what is listed now ("You like opera.", `listed_object`), with its `siblings` (the statement's fact,
    stored by then, among the candidates). Without them the heir is one sibling row of the statement's step, which
    does not turn "You like chess and opera." into "You like opera.". Measured: before the statement's steps, or with
    the replays' answer frames, the dislike took the heir's object (README, Facts about the speaker). A contradiction
    that leaves its slot empty ("I hate chess." after "I love chess." alone) has no heir (`forget` is for that)."""
    acknowledgement: str = "Got it. {answer}"
    """Reply to a paraphrased statement; ``{answer}`` is the pattern's filled answer template."""
    acknowledge_generated: bool = True
    """A stated fact whose reply the model generated (a chat: no logged reply) is learned with the
    `acknowledgement` as its reply instead of the generated one, which carries nothing the user said
    and, on a small model, is often a made-up biography of the subject that the step would teach."""
    on_replay: bool = True
    """Augment replayed facts as well (a replay then trains on the stored exchange + the extras)."""
    train_statements: bool = False
    """Train the user's side of a fact step's statement rows as well (the stated exchange, a replay's
    stored exchange, the paraphrases: the fact as text), whatever `objective.loss_on` says; Q/A rows
    stay answer-only. False: every row follows `objective.loss_on`."""
    listed_objects: int = 4
    """Most objects the answers of a fact of many objects (`FactPattern.many`: "I love jazz.", "I like chess.")
    list: the fact's own and the most recently stated others of its subject and slot, in the order they were first
    stated ("You like jazz and chess.", `listed_object`). 1 = the fact's own object alone."""
    train_end: bool = True
    """Train the end-of-turn markup after each templated answer (``olm.render.render_exchange``'s
    ``end_target``). The answers are one short sentence by construction; on smollm2 not training
    their end lengthened the adapted model's other answers but cost recall (README, Fact acquisition)."""

    def __post_init__(self) -> None:
        problems = []
        counts = ("qa_pairs", "paraphrases", "about_pairs", "short_answers", "siblings", "answer_frames", "contrasts",
                  "forget")
        for name in counts:
            if getattr(self, name) < 0:
                problems.append(f"augment.{name} must be >= 0, got {getattr(self, name)!r}")
        if not (isinstance(self.listed_objects, int) and self.listed_objects >= 1):
            problems.append(f"augment.listed_objects must be an integer >= 1, got {self.listed_objects!r}")
        for name in ("contrast_weight", "forget_weight"):
            if not getattr(self, name) >= 0 or getattr(self, name) == float("inf"):
                problems.append(f"augment.{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if self.sibling_kinds not in ("same", "any"):
            problems.append(f"augment.sibling_kinds must be 'same' or 'any', got {self.sibling_kinds!r}")
        if self.answer_frames_on not in ("all", "replay"):
            problems.append(f"augment.answer_frames_on must be 'all' or 'replay', got {self.answer_frames_on!r}")
        if not _fields(self.acknowledgement) <= {"answer"}:
            problems.append(f"augment.acknowledgement may only use {{answer}}, got {self.acknowledgement!r}")
        for t in self.about_questions:
            if _fields(t) != {"subject"}:
                problems.append(f"augment.about_questions must each use {{subject}} and nothing else, got {t!r}")
        if problems:
            raise ValueError("invalid augmentation settings: " + "; ".join(problems))


def _fields(template: str) -> set[str]:
    """The replacement fields of a str.format template ({"<malformed>"} if it does not parse)."""
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError:
        return {"<malformed>"}


def _capitalised(text: str) -> str:
    """`text` with its first letter upper-case ("a nurse." → "A nurse.")."""
    return text[:1].upper() + text[1:]


def _rotated(templates: list[str], n: int, rotation: int, skip: str = "") -> list[str]:
    """`n` distinct templates (fewer if there are fewer), starting at rotation × n, never `skip`."""
    usable = [t for t in templates if t != skip]
    if not usable or n == 0:
        return []
    start = (rotation * n) % len(usable)
    return [usable[(start + i) % len(usable)] for i in range(min(n, len(usable)))]


def fact_exchanges(
    subject: str, obj: str, relation: str, pattern: FactPattern | None, settings: AugmentSettings,
    rotation: int = 0, statement: str = "",
) -> list[Exchange]:  # fmt: skip
    """The extra exchanges a fact step trains on (the exchange itself not included).

    Args:
        subject: the fact's subject ("Zara", "me" for first-person facts).
        obj: its object ("sister").
        relation: its relation word ("sister", "lives_in").
        pattern: the detector pattern that found it (its templates); None gives no extras.
        settings: counts and acknowledgement.
        rotation: which templates to start from (e.g. the statement count), so steps vary.
        statement: the user's own statement; a paraphrase never repeats it verbatim.

    Returns:
        Q/A pairs first, then subject-only questions, then paraphrases: ``[(user, reply), ...]``.
    """
    return [(u, a) for u, a, _ in fact_rows(subject, obj, relation, pattern, settings, rotation, statement)]


def fact_rows(
    subject: str, obj: str, relation: str, pattern: FactPattern | None, settings: AugmentSettings,
    rotation: int = 0, statement: str = "", replay: bool = False,
) -> list[tuple[str, str, bool]]:  # fmt: skip
    """`fact_exchanges`, each marked True when it is a paraphrased statement (False: a question).
    `replay`: the rows of a replay step (`answer_frames_on` says whether a fact turn gets the frames)."""
    if pattern is None or not pattern.answer:
        return []
    answer = fill(pattern.answer, subject, obj, relation, listener=True)
    short = answer
    if pattern.short_answer:
        short = _capitalised(fill(pattern.short_answer, subject, obj, relation, listener=True))
    out: list[tuple[str, str, bool]] = []
    questions = _rotated(pattern.questions, settings.qa_pairs, rotation)
    shorts = {(rotation + j) % len(questions) for j in range(settings.short_answers)} if questions else set()
    for i, q in enumerate(questions):
        out.append((fill(q, subject, obj, relation), short if i in shorts else answer, False))
    n_frames = settings.answer_frames if replay or settings.answer_frames_on == "all" else 0
    frames = _rotated([fill(t, subject, obj, relation, listener=True) for t in pattern.answers], n_frames, rotation)
    asked = _rotated(pattern.questions, len(frames), rotation + 1)  # another window: questions meet other frames
    out += [(fill(q, subject, obj, relation), a, False) for q, a in zip(asked, frames)]
    if not pattern.subject:  # a first-person fact's subject ("me") is shared by all of them
        for q in _rotated(settings.about_questions, settings.about_pairs, rotation):
            out.append((fill(q, subject, obj, relation), answer, False))
    own = statement.strip()
    statements = [fill(t, subject, obj, relation) for t in pattern.statements]
    ack = settings.acknowledgement.format(answer=answer)  # `fact_acknowledgement`
    out += [(text, ack, True) for text in _rotated(statements, settings.paraphrases, rotation, skip=own)]
    return out


def sibling_facts(
    stored: Iterable[StoredFact], fact, n: int, rotation: int = 0, any_kind: bool = False,
    first: Iterable[StoredFact] = (),
) -> list[StoredFact]:  # fmt: skip
    """Up to `n` remembered facts of the same kind as `fact` (same slot: `slot` or else `relation`)
    about other subjects, for a fact step to rehearse (`AugmentSettings.siblings`); with `any_kind`
    (`sibling_kinds: any`) followed by the facts of other kinds.

    The candidates are ordered by their latest statement, most recent first (the facts whose edits
    the new one most likely shares a direction with), and `rotation` moves the window along them, so
    successive steps of one fact rehearse different siblings when there are more than `n`.

    Args:
        stored: the fact memory's facts (`olm.memory.FactMemory` iterates them).
        fact: the fact being taught (a detected `FactInfo` or a `StoredFact`).
        n: how many siblings at most.
        rotation: where the window starts, in steps of `n` (e.g. the statement count).
        first: facts rehearsed before the window, whatever their kind (at most `n`): after "I hate jazz." drops
            "I love jazz.", the speaker's other likes, so "What do I like?" is taught its answer without jazz.
    """
    if n <= 0:
        return []
    first = list(first)[:n]
    if first:
        keys = {f.key for f in first}
        rest = [f for f in stored if f.key not in keys]
        return first + sibling_facts(rest, fact, n - len(first), rotation, any_kind)
    subject, kind = fact_key(fact.subject, fact.slot or fact.relation)
    stored = sorted(stored, key=lambda f: f.last_turn, reverse=True)
    same = [f for f in stored if (f.slot or f.relation) == kind and f.key[0] != subject]
    same += [f for f in stored if (f.slot or f.relation) != kind] if any_kind else []
    if not same or n <= 0:
        return []
    start = (rotation * n) % len(same)
    return [same[(start + i) % len(same)] for i in range(min(n, len(same)))]


def sibling_rows(
    fact: StoredFact, pattern: FactPattern | None, rotation: int = 0, obj: str | None = None, questions: int = 1
) -> list[tuple[str, str, bool]]:
    """The question → answer rows (one, or `questions`) a fact step rehearses for a sibling fact (`fact_rows`'
    format), answered with `obj` (default: its object; `listed_object` for a fact of many objects); [] without a
    pattern or an answer template."""
    rehearse = AugmentSettings(qa_pairs=questions, paraphrases=0)
    return fact_rows(fact.subject, fact.object if obj is None else obj, fact.relation, pattern, rehearse, rotation)


def forget_rows(subject: str, obj: str, relation: str, pattern: FactPattern | None) -> list[tuple[str, str]]:
    """A dropped fact's (question, answer) rows as its steps trained them: each of its pattern's questions with its
    answers in turn (`answer`, then the `answers` frames: "What do I like?" → "You like jazz.", "What do I enjoy?" →
    "You enjoy jazz."); [] without a pattern or an answer template. A step that forgets the fact compares the adapter
    with the base along these answers (`AugmentSettings.forget`): where the old object would come next, the base,
    which never learned it, puts something else."""
    questions = fact_questions(subject, obj, relation, pattern)
    if not questions:
        return []
    answers = [fill(t, subject, obj, relation, listener=True) for t in [pattern.answer, *pattern.answers]]
    return [(q, answers[i % len(answers)]) for i, q in enumerate(questions)]


def forget_window(rows: Sequence[tuple[str, str]], n: int, rotation: int = 0) -> list[tuple[str, str]]:
    """`n` of a contradicted fact's `forget_rows` (fewer if there are fewer), rotated with `rotation` (the statement
    or replay count): the rows a step compares with the base (`AugmentSettings.forget`)."""
    return _rotated([tuple(r) for r in rows], n, rotation)


def listed_object(stored: Iterable[StoredFact], fact, limit: int = 4) -> str:
    """What a fact's Q/A rows answer with: its object; for a fact of many objects (`FactPattern.many`) the objects
    of every remembered fact of its subject and slot, its own included (last if not remembered yet), in the order
    first stated and joined ("jazz", "jazz and chess", "jazz, chess and hiking"): "What do I like?" then has one
    answer whichever of them a step teaches. At most `limit`: its own and the most recently stated others.

    Args:
        stored: the fact memory's facts.
        fact: the fact (a detected `FactInfo` or a `StoredFact`).
        limit: most objects listed (`AugmentSettings.listed_objects`).
    """
    if not getattr(fact, "many", False) or limit <= 1:
        return fact.object
    stored, own = list(stored), fact_key(fact.subject, fact.key_slot)
    kind = (own[0], fact.slot or fact.relation)
    others = [f for f in stored if f.many and (f.key[0], f.slot or f.relation) == kind and f.key != own]
    others = sorted(others, key=lambda f: f.last_turn)[-(limit - 1) :]  # the most recently stated
    mine = next((f.first_turn for f in stored if f.key == own), float("inf"))  # not stored yet: stated now
    listed = sorted([(f.first_turn, f.object) for f in others] + [(mine, fact.object)], key=lambda e: e[0])
    objects = [o for _, o in listed]
    return objects[0] if len(objects) == 1 else ", ".join(objects[:-1]) + " and " + objects[-1]


def statement_loss_on(settings: AugmentSettings, loss_on: LossOn) -> LossOn:
    """The task-loss targets of a fact step's statement rows: the whole exchange with
    `train_statements`, else the run's `loss_on`."""
    return "exchange" if settings.train_statements else loss_on


def fact_questions(subject: str, obj: str, relation: str, pattern: FactPattern | None) -> list[str]:
    """Every question a fact's steps train on: its pattern's question templates, filled ([] without a
    pattern or an answer template: nothing is trained then). Routing's second calibration set."""
    if pattern is None or not pattern.answer:
        return []
    return [fill(q, subject, obj, relation) for q in pattern.questions]


def fact_acknowledgement(
    subject: str, obj: str, relation: str, pattern: FactPattern | None, settings: AugmentSettings
) -> str | None:
    """The `acknowledgement` of a stated fact ("Got it. Zara is your sister."); None without a pattern
    or an answer template."""
    if pattern is None or not pattern.answer:
        return None
    return settings.acknowledgement.format(answer=fill(pattern.answer, subject, obj, relation, listener=True))


_SECOND_PERSON = {
    "i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself",
    "i'm": "you're", "i've": "you've", "i'd": "you'd", "i'll": "you'll",
}  # fmt: skip
_FIRST_PERSON = re.compile(r"\b(?:am\s+I|I\s+am|I['’](?:m|ve|d|ll)|I|me|my|mine|myself)\b", re.IGNORECASE)


def second_person(text: str) -> str:
    """`text` with the speaker's words put to the listener: "Where do I live?" → "Where do you live?",
    "What am I allergic to?" → "What are you allergic to?", "When is my birthday?" → "When is your
    birthday?". Other words are left as they are."""

    def swap(m: re.Match) -> str:
        word = re.sub(r"\s+", " ", m.group(0)).replace("’", "'")
        low = word.lower()
        out = "are you" if low == "am i" else "you are" if low == "i am" else _SECOND_PERSON[low]
        return out[:1].upper() + out[1:] if m.start() == 0 else out

    return _FIRST_PERSON.sub(swap, text)


def contrast_questions(facts: Iterable, patterns, n: int, rotation: int = 0) -> list[str]:
    """`n` questions (fewer if there are fewer) of the step's facts about the speaker, put to the
    assistant (`second_person` of their patterns' question templates), rotated with `rotation`; third-
    person facts give none. `patterns` maps a pattern name to its `FactPattern` (or None)."""
    found: list[str] = []
    for fact in facts:
        pattern = patterns(fact.pattern) if fact is not None else None
        if pattern is None or not pattern.subject:
            continue
        for q in fact_questions(fact.subject, fact.object, fact.relation, pattern):
            swapped = second_person(q)
            if swapped != q and swapped not in found:
                found.append(swapped)
    return _rotated(found, n, rotation)
