"""FactDetector: finds a stated fact ("Zara is my sister.") in a user message.

Pipeline of `FactDetector.detect(text)`:

1. truncate the text to `max_chars` (bounded regex work on any input);
2. question filter: a question mark anywhere, or a question word first → no fact;
3. every configured `FactPattern` is searched; a match gives subject, relation, object;
4. entities come from the pattern groups and/or a capitalized-word regex (`entity_method`);
5. confidence = pattern base + coverage · coverage_boost + entity_boost (if the match holds an
   entity), capped at 1; matches under the pattern's `min_confidence` are dropped; the best
   remaining match wins (highest confidence, then earliest).

Pattern regexes are plain Python regexes with named groups ``subject`` and ``object`` (and, optionally,
``relation``: the words of an open relation such as "food" in "My favourite food is sushi.", filled into the
pattern's ``{relation}`` templates, lower-cased). To keep
them readable in YAML they may use these macros, expanded from the config before compiling:

- ``{NAME}``      a person's name: 1..`max_name_words` capitalized words ("Anna Maria", "O'Brien"),
                  none of them in `non_names` ("It", "This", "Yesterday", ...);
- ``{WHO}``       a ``{NAME}`` or the pronoun "she" / "he": "Zara is my sister and she lives in Rome." A
                  pronoun subject is resolved to the subject of the nearest fact about a named person
                  stated before it in the same message, else to the caller's `antecedent` (the module's:
                  the named subject of the conversation's previous message); with neither, it is dropped;
- ``{PLACE}``     1..`max_name_words` capitalized words ("New York");
- ``{RELATION}``  an optional modifier from `relation_modifiers` and a word from `relation_words`;
- ``{PHRASE}``    1..`max_phrase_words` words ("red bicycle", "software engineer");
- ``{OCCUPATION}`` a word (or word group) from `occupations`, maybe after up to two lower-case words ("nurse",
                  "software engineer", "retired teacher", "high school teacher");
- ``{MONTH}``     an English month name;
- ``{COLOUR}``    one or two lower-case words ("teal", "dark green");
- ``{END}``       lookahead for the end of a clause: punctuation, end of text, or a connector
                  word (and, in, at, ...), so a phrase does not swallow the rest of a sentence.

Every default pattern is linear-time on adversarial input (bounded repetitions, no nested
unbounded quantifiers); `tests/test_facts.py` checks each on 100,000-character inputs.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

EntityMethod = Literal["pattern", "capitalized", "both"]
ENTITY_METHODS: tuple[str, ...] = ("pattern", "capitalized", "both")

# Regex fragments of the macros (language data, not tunable knobs).
_UPPER = "A-ZÀ-ÖØ-Þ"
_CAP_WORD = rf"[{_UPPER}][^\W\d_]*(?:['’-][{_UPPER}][^\W\d_]*)?\b"  # Zara, O'Brien, Anna-Lena
_PHRASE_WORD = r"[^\W\d_][\w'’-]*"
_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_TEMPLATE_FIELDS = {"subject", "object", "relation", "article"}
_PRONOUNS = ("she", "he")  # subject pronouns the {WHO} macro accepts (see `FactDetector.detect_all`)


def _default_question_indicators() -> list[str]:
    return [
        "who", "what", "where", "when", "why", "how", "which", "whose", "whom",
        "is", "are", "am", "was", "were", "do", "does", "did", "can", "could",
        "will", "would", "should", "shall",
    ]  # fmt: skip


def _default_relation_synonyms() -> list[list[str]]:
    return [
        ["mother", "mom", "mum", "mommy", "mummy", "mama"], ["father", "dad", "daddy", "papa"],
        ["grandmother", "grandma", "granny", "gran", "nana"], ["grandfather", "grandpa", "granddad", "grandad"],
        ["neighbour", "neighbor"], ["fiancé", "fiancée", "fiance", "fiancee"], ["roommate", "flatmate", "housemate"],
        ["child", "kid"],
    ]  # fmt: skip


def _default_relation_words() -> list[str]:
    return [
        # family
        "sister", "brother", "mother", "father", "mom", "mum", "dad", "mommy", "mummy", "daddy", "parent", "son",
        "daughter", "child", "kid", "cousin", "aunt", "uncle", "niece", "nephew", "grandmother", "grandfather",
        "grandma", "grandpa", "granny", "grandad", "granddad", "grandson", "granddaughter", "sibling", "twin", "wife",
        "husband",
        "partner", "spouse", "fiancé", "fiancée", "fiance", "fiancee", "girlfriend", "boyfriend",
        "sister-in-law", "brother-in-law", "mother-in-law", "father-in-law", "stepmother", "stepfather",
        "stepsister", "stepbrother", "godmother", "godfather",
        # social
        "friend", "best friend", "neighbour", "neighbor", "roommate", "flatmate", "classmate",
        "housemate", "buddy", "mate", "ex",
        # work and services
        "boss", "manager", "colleague", "coworker", "co-worker", "employee", "assistant", "mentor",
        "teacher", "student", "tutor", "coach", "doctor", "dentist", "therapist", "lawyer",
        "landlord", "landlady", "trainer",
        # pets
        "dog", "cat", "puppy", "kitten", "pet", "horse", "rabbit", "bunny", "hamster", "parrot",
        "bird", "fish", "turtle", "tortoise", "goldfish", "guinea pig", "snake", "lizard",
    ]  # fmt: skip


def _default_occupations() -> list[str]:
    return [
        "nurse", "doctor", "physician", "surgeon", "dentist", "pharmacist", "paramedic", "midwife", "vet",
        "veterinarian", "therapist", "psychologist", "psychiatrist", "physiotherapist", "optician", "caregiver",
        "teacher", "professor", "lecturer", "tutor", "librarian", "researcher", "scientist", "data scientist",
        "engineer", "software engineer", "software developer", "developer", "web developer", "programmer",
        "architect", "designer", "graphic designer", "analyst", "accountant", "auditor", "banker", "economist",
        "lawyer", "attorney", "solicitor", "barrister", "judge", "paralegal", "consultant", "entrepreneur",
        "manager", "product manager", "project manager", "salesperson", "sales rep", "marketer", "recruiter",
        "secretary", "receptionist", "clerk", "cashier", "civil servant", "diplomat", "journalist", "reporter",
        "editor", "writer", "author", "translator", "photographer", "artist", "painter", "illustrator",
        "musician", "singer", "composer", "dancer", "actor", "actress", "chef", "cook", "baker", "butcher",
        "waiter", "waitress", "barista", "bartender", "farmer", "gardener", "fisherman", "carpenter", "plumber",
        "electrician", "mechanic", "welder", "builder", "painter and decorator", "firefighter",
        "police officer", "fireman", "policeman", "presenter", "announcer", "soldier", "pilot",
        "flight attendant", "sailor", "driver", "truck driver", "taxi driver", "bus driver", "courier",
        "postman", "tailor", "hairdresser", "barber", "priest", "pastor", "social worker", "biologist",
        "chemist", "physicist", "mathematician", "geologist", "historian", "student",
    ]  # fmt: skip


def _default_relation_modifiers() -> list[str]:
    return ["older", "younger", "big", "little", "baby", "twin", "step", "half", "old", "new", "late"]


def _default_non_names() -> list[str]:
    return [
        "I", "It", "This", "That", "These", "Those", "He", "She", "They", "We", "You", "There",
        "Here", "Then", "Now", "Today", "Yesterday", "Tomorrow", "Tonight", "And", "But", "So",
        "Also", "Well", "Oh", "Yes", "No", "Hi", "Hello", "Hey", "The", "A", "An", "My", "Your",
        "Our", "Their", "His", "Her", "Its", "Who", "What", "Where", "When", "Why", "How", "Which",
        "Is", "Are", "Was", "Were", "Do", "Does", "Did", "Can", "Actually", "Anyway", "Ok", "Okay",
        "Sure", "Please", "Thanks", "Everyone", "Everybody", "Someone", "Somebody", "Nobody",
        "Nothing", "Something", "Everything", "If", "Maybe", "Just", "Btw", "Fyi", "Mr", "Mrs",
        "Ms", "Dr", "Since", "Because", "After", "Before", "While", "Although", "Though", "Unless", "Until",
        "Once", "Whether", "Whenever", "However", "Meanwhile", "Perhaps", "Sorry", "Sometimes", "Lately", "Recently",
        "Finally", "Unfortunately", "Luckily", "Honestly", "Thank", "Goodbye", "Bye", "Dear", "Cheers",
        "In", "At", "On", "From", "To", "For", "With", "Of", "By",
    ]  # fmt: skip


@dataclass
class FactPattern:
    """One kind of fact statement and how to recognise it."""

    name: str
    """Unique name of the pattern (reported in `FactInfo.pattern`)."""
    regex: str
    """Python regex with named groups ``subject`` and ``object``; may use the module's macros."""
    relation: str
    """Relation recorded for a match: a word ("lives_in") or a template ("{object}" stores the real
    relation word, "sister", for "Zara is my sister."; "favourite {relation}" the regex's ``relation`` group,
    "favourite food" for "My favourite food is sushi.")."""
    question: str
    """Recall probe template, e.g. "Who is {subject}?" (fields: subject, object, relation, article)."""
    confidence: float = 0.8
    """Base confidence of a match, in [0, 1]."""
    min_confidence: float = 0.5
    """Matches whose final confidence is below this are dropped, in [0, 1]."""
    slot: str = ""
    """With the subject, the memory key: a later match of the same slot with another object is an
    update that replaces the old fact ("Zara is my cousin." after "Zara is my sister."). Empty:
    the relation template itself."""
    many: bool = False
    """Many objects per subject ("I love jazz." and "I like chess."): each object is a fact of its own (the memory
    key holds it), so a new one is added, never an update of the old; the Q/A rows of either answer with all of
    them ("You like jazz and chess.", `olm.augment.listed_object`). False: one object, a new one replaces it."""
    opposite: str = ""
    """The slot of the facts it contradicts object by object: "I hate jazz." (`dislikes`) removes a remembered
    "I love jazz." (`likes=jazz`) and vice versa; "Tom hates jazz." removes "Tom likes jazz." but not "Tom likes
    chess.". Empty: none."""
    subject: str = ""
    """Fixed subject for patterns whose regex has no ``subject`` group (first-person facts such as
    "I live in Lisbon.": subject "me")."""
    object: str = ""
    """Fixed object for patterns whose regex has no ``object`` group ("I'm married to Chris.": "spouse")."""
    questions: list[str] = field(default_factory=list)
    """Question templates that fact augmentation trains on (question → `answer`), rotated across
    steps. Never the benchmark's held-out phrasings (tests/test_augment.py checks)."""
    answer: str = ""
    """Answer template, second person: "{subject} is your {object}."."""
    short_answer: str = ""
    """The answer without its sentence frame: "Your {object}.", "In {object}." (first letter capitalised
    when filled). Used by `augment.short_answers`; empty: the full `answer` instead."""
    answers: list[str] = field(default_factory=list)
    """More answer templates (the fields of `answer`), the fact in other sentence frames: "{subject} owns
    {article} {object}.". `augment.answer_frames` adds that many Q/A rows answered in these (rotated), so
    the object is produced after several frames, not one. Never a word of the benchmark's held-out
    phrasings that the training questions lack (tests/test_augment.py checks)."""
    statements: list[str] = field(default_factory=list)
    """Paraphrased statement templates that fact augmentation trains on."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("name", "regex", "relation"):
            if not getattr(self, name).strip():
                problems.append(f"pattern.{name} must be non-empty, got {getattr(self, name)!r}")
        for name in ("confidence", "min_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"pattern {self.name!r}: {name} must be in [0, 1], got {getattr(self, name)!r}")
        if problems:
            raise ValueError("invalid fact pattern: " + "; ".join(problems))


def _default_patterns() -> list[FactPattern]:
    not_possessed = r"(?!['’]s\b)"  # "My sister is Zara's friend" is not about Zara
    participle = (r"[^\W\d_]{2,}ed\b|(?:done|gone|seen|taken|given|made|become|come|left|found|told|said|"
                  r"written|known|shown|begun|won|lost|put|kept|brought|bought|caught|taught|thought|heard|met|paid|"
                  r"sent|spent|grown|driven|eaten|fallen|forgotten|gotten|spoken|chosen|broken|flown|thrown)\b")
    # "favourite food", "favourite TV show": an open relation of 1..3 words (colours have patterns of their own;
    # "my favourite part/thing is ..." says nothing to remember)
    open_thing = (r"(?!(?:colou?r|part|parts|thing|things|bit|one|ones|way|kind|type|moment|memory|line|quote|"
                  r"answer|question|response|example)\b)(?P<relation>[^\W\d_]+(?:\s+[^\W\d_]+){0,2}?)")
    open_object = r"(?:\s+is\s+|:\s*)(?P<object>{PHRASE}|\d{1,6}){END}"  # "... is sushi", "...: 7"
    # "lives in a small flat in Leeds": the dwelling before the place
    dwelling = (r"(?:(?:an?|the|my|our)\s+(?:[a-z]+\s+){0,2}(?:flat|house|apartment|condo|cottage|town|village|"
                r"city|suburb|neighbou?rhood|part|area)\s+(?:in|of)\s+)?")
    # a diet ("vegetarian", "on a keto diet"), then the end of the clause
    diets = (r"(?P<object>(?:strict\s+)?(?:vegetarian|vegan|pescatarian|pescetarian|flexitarian)|keto|paleo|"
             r"gluten[ -]free|low[ -]carb)(?:\s+diet)?{END}")
    # what follows "I like" / "I hate" and is not a standing taste: "it", "you", "how ...", "to ...", "the font" (in
    # front of one), "D.H. Lawrence", "watching it"
    not_liked = (r"(?!(?:it|its|it['’]s|that|this|these|those|them|him|her|you|your|yours|ya|u|me|my|us|our|his|their|"
                 r"to|how|what|when|where|why|who|which|whatever|a\s+lot|lots|all|both|every|everything|anything|"
                 r"something|nothing|some|any|each|being|having|very|so|the)\b)"
                 r"(?![^\W\d_]\.)(?!(?:[^\W\d_]+\s+){1,3}(?:it|them)\b)")
    # the end of a like or a dislike, not its object: "I don't like coffee at all.", "I love jazz so much.", "I hate
    # jazz now.", "Tom doesn't like opera any more." (a degree or a time, up to two: "a lot these days")
    taste_end = (r"(?:\s+(?:very\s+much|so\s+much|that\s+much|a\s+lot|at\s+all|either|too|better|best|"
                 r"(?:the\s+)?most|now|nowadays|these\s+days|lately|any\s*more|again)){0,2}{END}")
    # the subject of a fact about a third person, maybe with an apposition: "Zara, my sister, lives in Rome."
    # (the apposition itself is the `x_my_y` fact)
    # or the speaker's relative, unnamed: "My mom lives in Lyon." (subject "my mom": "Where does my mom live?")
    who = r"(?P<subject>{WHO}|\b(?i:my)\s+{RELATION})(?:,\s+(?i:my)\s+{RELATION},)?"
    # Augmentation templates per kind of fact: training questions, the answer, paraphrased statements.
    # The benchmark's held-out question phrasings (olm.world.templates.HELD_OUT_QUESTIONS) must never
    # appear here: tests/test_augment.py checks the sets are disjoint.
    relative = dict(
        relation="{object}", slot="relation", question="Who is {subject}?",
        questions=["Who is {subject}?", "Do you know who {subject} is?", "Can you tell me who {subject} is?",
                   "How do I know {subject}?"],
        answer="{subject} is your {object}.", short_answer="Your {object}.",
        answers=["Your {object} is {subject}.", "Your {object}'s name is {subject}."],
        statements=["{subject} is my {object}.", "My {object} is {subject}.", "My {object}'s name is {subject}."],
    )  # fmt: skip
    name = dict(
        questions=["What is my name?", "What's my name?", "Do you know my name?", "What am I called?"],
        answer="Your name is {object}.", short_answer="{object}.",
        answers=["You are {object}.", "You're called {object}."],
        statements=["My name is {object}.", "I'm {object}.", "Call me {object}."],
    )  # fmt: skip
    works = dict(
        relation="works_as", question="What does {subject} do for work?",
        questions=["What does {subject} do for work?", "What does {subject} do for a living?",
                   "What is {subject}'s job?", "What does {subject} work as?"],
        answer="{subject} works as {article} {object}.", short_answer="{article} {object}.",
        answers=["{subject} is {article} {object}.", "{subject} is {article} {object} by trade."],
        statements=["{subject} works as {article} {object}.", "{subject} is {article} {object} by trade.",
                    "{subject}'s job: {object}."],
    )  # fmt: skip
    colour = dict(
        relation="favourite_colour", question="What is {subject}'s favourite colour?",
        questions=["What is {subject}'s favourite colour?", "Which colour does {subject} like best?",
                   "Do you know {subject}'s favourite colour?"],
        answer="{subject}'s favourite colour is {object}.", short_answer="{object}.",
        answers=["{subject} likes the colour {object} best.", "The colour {subject} likes best is {object}."],
        statements=["{subject}'s favourite colour is {object}.", "{subject}'s favorite color is {object}.",
                    "{subject} likes the colour {object} best."],
    )  # fmt: skip
    my_colour = dict(
        relation="favourite_colour", question="What is my favourite colour?", subject="me",
        questions=["What is my favourite colour?", "Which colour do I like best?", "Do you know my favourite colour?"],
        answer="Your favourite colour is {object}.", short_answer="{object}.",
        answers=["You like the colour {object} best.", "The colour you like best is {object}."],
        statements=["My favourite colour is {object}.", "My favorite color is {object}.", "I like the colour {object} best."],
    )  # fmt: skip
    my_work = dict(
        relation="works_as", question="What do I do for a living?", subject="me",
        questions=["What do I do for a living?", "What is my job?", "What do I work as?"],
        answer="You work as {article} {object}.", short_answer="{article} {object}.",
        answers=["You are {article} {object}.", "You are {article} {object} by trade."],
        statements=["I work as {article} {object}.", "I'm {article} {object} by trade.",
                    "I am {article} {object} by profession."],
    )  # fmt: skip
    return [
        FactPattern(
            "x_is_my_y",
            r"(?P<subject>{WHO})(?:\s+is|['’]s)\s+(?i:my)\s+(?P<object>{RELATION})(?!['’]\w|-)", **relative,
        ),
        FactPattern(
            "my_ys_name_is_x",
            r"\b(?i:my)\s+(?P<object>{RELATION})['’]s\s+name\s+is\s+(?P<subject>{NAME})" + not_possessed, **relative,
        ),
        FactPattern(
            "my_y_is_x",
            r"\b(?i:my)\s+(?P<object>{RELATION})(?:\s+is|['’]s)\s+(?:(?:called|named)\s+)?(?P<subject>{NAME})"
            + not_possessed, **relative,
        ),
        FactPattern(  # "My sister Zara lives in Rome.": the name is looked at, not matched ("Zara lives in Rome" too)
            "my_y_x",
            r"\b(?i:my)\s+(?P<object>{RELATION}),?\s+(?=(?P<subject>{NAME})\b)" + not_possessed, confidence=0.6,
            **relative,
        ),
        FactPattern(  # "Zara, my sister, lives in Rome.": all looked at, nothing matched (the fact after is Zara's)
            "x_my_y",
            r"(?:^|(?<=[.!;:,]\s)|(?<=\b(?:and|but)\s))\W{0,3}"  # a sentence's or clause's subject, not "in Rome, ..."
            r"(?=(?P<subject>{NAME}),\s+(?i:my)\s+(?P<object>{RELATION}),\s+"
            r"(?!(?:this|his|thus|us|yes)\b)(?:is|was|has|had|will|[a-z]+(?:s|ed))\b)",  # "Listen, my friend, you..."
            confidence=0.7, **relative,
        ),
        FactPattern(
            "i_have_a_y_called_x",
            r"\bI\s+(?:have|have\s+got|got)\s+an?\s+(?P<object>{RELATION})\s+(?:called|named)\s+(?P<subject>{NAME})",
            **relative,
        ),
        FactPattern(  # "I'm married to Chris.": Chris is the speaker's spouse
            "i_am_married_to",
            r"\bI(?:['’]m|\s+am|\s+got)\s+(?:happily\s+)?married\s+to\s+(?P<subject>{NAME})" + not_possessed,
            **{**relative, "object": "spouse"},
        ),
        FactPattern(
            "i_am_engaged_to",
            r"\bI(?:['’]m|\s+am|\s+got)\s+engaged\s+to\s+(?P<subject>{NAME})" + not_possessed,
            **{**relative, "object": "fiancé"},
        ),
        FactPattern(
            "lives_in",
            who + r"(?:(?:\s+(?:lives|is\s+living|resides|is\s+based)|['’]s\s+home\s+is)\s+in"  # "X moved to Y": X lives in Y
            r"|(?:\s+(?:has|just|recently))*\s+moved\s+to)\s+" + dwelling + r"(?P<object>{PLACE})",
            "lives_in", "Where does {subject} live?",
            questions=["Where does {subject} live?", "Which city does {subject} live in?",
                       "Do you know where {subject} lives?", "Where is {subject} based?"],
            answer="{subject} lives in {object}.", short_answer="In {object}.",
            answers=["{subject} is living in {object}.", "{subject} is based in {object}."],
            statements=["{subject} lives in {object}.", "{subject} is living in {object}.", "{subject}'s home is in {object}."],
        ),
        FactPattern(
            "works_as",
            who + r"(?:\s+works\s+as|['’]s\s+job(?:\s+is|:))\s+(?:an?\s+)?(?P<object>{PHRASE}){END}",
            **works,
        ),
        FactPattern(
            "works_as_by_trade", who + r"\s+is\s+an?\s+(?P<object>{PHRASE})\s+by\s+trade{END}", **works,
        ),
        FactPattern(  # "Tom is a nurse.": a known job (`occupations`)
            "x_is_a_job", who + r"(?:\s+is|['’]s)\s+(?:now\s+)?an?\s+(?P<object>{OCCUPATION})(?!['’-]){END}",
            **works,
        ),
        FactPattern(
            "has",
            who + r"\s+(?:has\s+(?:got\s+)?|owns\s+)"
            r"(?:(?:an?|the|one)\s+|(?!" + participle + r"))"  # "has arrived": a tense ("been": the list below)
            r"(?!(?:been|to|got|had|no|not|never|just|already|always|some|any|lot|lots)\b)"
            r"(?P<object>{PHRASE}){END}",
            "has", "What does {subject} have?", confidence=0.7,
            questions=["What does {subject} have?", "What does {subject} own?", "Do you know what {subject} has?"],
            answer="{subject} has {article} {object}.", short_answer="{article} {object}.",
            answers=["{subject} owns {article} {object}.", "{subject} has got {article} {object}."],
            statements=["{subject} has {article} {object}.", "{subject} owns {article} {object}."],
        ),
        FactPattern(
            "likes",
            who + r"\s+(?:really\s+|just\s+|absolutely\s+)?(?:likes|loves|enjoys)\s+"
            r"(?!(?:it|that|this|him|her|me|you)\b)(?P<object>{PHRASE}?)" + taste_end,
            "likes", "What does {subject} like?", confidence=0.7, opposite="dislikes",
            questions=["What does {subject} like?", "What does {subject} enjoy?", "Do you know what {subject} likes?"],
            answer="{subject} likes {object}.", short_answer="{object}.",
            answers=["{subject} enjoys {object}.", "{subject} loves {object}."],
            statements=["{subject} likes {object}.", "{subject} enjoys {object}.", "{subject} loves {object}."],
        ),
        FactPattern(  # "Tom hates olives.", "Tom doesn't like museums."
            "dislikes",
            who + r"\s+(?:really\s+|just\s+|absolutely\s+)?(?:hates|dislikes|detests|can['’]?t\s+stand|cannot\s+stand|"
            r"(?:doesn['’]?t|does\s+not)\s+(?:really\s+)?(?:like|enjoy))\s+" + not_liked + r"(?P<object>{PHRASE}?)"
            + taste_end,
            "dislikes", "What does {subject} dislike?", confidence=0.7, opposite="likes",
            questions=["What does {subject} dislike?", "What doesn't {subject} like?",
                       "Do you know what {subject} dislikes?"],
            answer="{subject} dislikes {object}.", short_answer="{object}.",
            answers=["{subject} doesn't like {object}.", "{subject} can't stand {object}."],
            statements=["{subject} dislikes {object}.", "{subject} doesn't like {object}.",
                        "{subject} can't stand {object}."],
        ),
        FactPattern(  # "Tom is vegetarian.", "Tom is a vegan.", "Tom is on a keto diet."
            "diet",
            who + r"(?:(?:\s+is|['’]s)\s+(?:a\s+|on\s+an?\s+)?|\s+(?:follows|eats|keeps)\s+an?\s+"
            r"|['’]s\s+diet\s+is\s+)"
            + diets,
            "diet", "What is {subject}'s diet?",
            questions=["What is {subject}'s diet?", "What diet does {subject} follow?", "Do you know {subject}'s diet?"],
            answer="{subject}'s diet is {object}.", short_answer="{object}.",
            answers=["{subject} follows {article} {object} diet.", "{subject} eats {object}."],
            statements=["{subject} is {object}.", "{subject}'s diet is {object}.",
                        "{subject} follows {article} {object} diet."],
        ),
        FactPattern(
            "favourite_colour",
            r"(?P<subject>{NAME})['’]s\s+(?i:favou?rite)\s+colou?r\s+is\s+(?P<object>{COLOUR}){END}", **colour,
        ),
        FactPattern(
            "likes_colour_best",
            who + r"\s+likes\s+the\s+colou?r\s+(?P<object>{COLOUR})\s+best{END}", **colour,
        ),
        FactPattern(
            "birthday",
            who + r"(?:['’]s\s+birthday\s+is|\s+celebrates\s+(?:a|his|her|their)\s+birthday"
            r"|\s+was\s+born)"
            r"(?:\s+(?:in|on))?\s+(?:the\s+)?"  # "... is in May", "... is May 3"
            r"(?P<object>{MONTH}(?:\s+\d{1,2}(?:st|nd|rd|th)?)?|\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?{MONTH})\b",
            "birthday", "When is {subject}'s birthday?",
            questions=["When is {subject}'s birthday?", "In which month is {subject}'s birthday?",
                       "Do you know when {subject}'s birthday is?"],
            answer="{subject}'s birthday is in {object}.", short_answer="In {object}.",
            answers=["{subject} celebrates a birthday in {object}.", "{subject}'s birthday falls in {object}."],
            statements=["{subject}'s birthday is in {object}.", "{subject} celebrates a birthday in {object}."],
        ),
        FactPattern(  # a year, not a month ("birthday") or a place ("from")
            "birth_year",
            who + r"(?:\s+was\s+born\s+in|['’]s\s+birth\s?year\s+is)\s+(?P<object>(?:1[89]|20)\d\d)\b(?![.,]?\d)",
            "birth_year", "What year was {subject} born?",
            questions=["What year was {subject} born?", "In which year was {subject} born?",
                       "Do you know what year {subject} was born?"],
            answer="{subject} was born in {object}.", short_answer="In {object}.",
            answers=["{subject}'s birth year is {object}.", "{subject} was born in the year {object}."],
            statements=["{subject} was born in {object}.", "{subject}'s birth year is {object}."],
        ),
        FactPattern(
            "favourite_x",
            r"(?P<subject>{NAME})['’]s\s+(?i:favou?rite)\s+" + open_thing + open_object,
            "favourite {relation}", "What is {subject}'s {relation}?", confidence=0.7,
            questions=["What is {subject}'s {relation}?", "Do you know {subject}'s {relation}?",
                       "Can you tell me {subject}'s {relation}?"],
            answer="{subject}'s {relation} is {object}.", short_answer="{object}.",
            answers=["{subject} likes {object} best.", "{subject}'s {relation}: {object}."],
            statements=["{subject}'s {relation} is {object}.", "{subject}'s {relation}: {object}."],
        ),
        FactPattern(
            "age",
            who + r"(?:\s+is|['’]s)\s+(?P<object>\d{1,3})\s+(?:years?|yrs?)\s+old\b",
            "age", "How old is {subject}?",
            questions=["How old is {subject}?", "What is {subject}'s age?", "Do you know how old {subject} is?"],
            answer="{subject} is {object} years old.", short_answer="{object}.",
            answers=["{subject}'s age is {object}.", "{subject} is {object}."],
            statements=["{subject} is {object} years old.", "{subject}'s {object} years old."],
        ),
        FactPattern(
            "works_at",
            who + r"(?:\s+(?:works|is\s+working)\s+(?:at|for)|\s+is\s+employed\s+(?:at|by)|['’]s\s+employer\s+is)"
            r"\s+(?:the\s+)?(?P<object>{PLACE})",
            "works_at", "Where does {subject} work?",
            questions=["Where does {subject} work?", "Which company does {subject} work for?",
                       "Do you know where {subject} works?"],
            answer="{subject} works at {object}.", short_answer="At {object}.",
            answers=["{subject} works for {object}.", "{subject}'s employer is {object}."],
            statements=["{subject} works at {object}.", "{subject} works for {object}.",
                        "{subject}'s employer is {object}."],
        ),
        FactPattern(
            "from",
            who + r"(?:\s+(?:is|comes)(?:\s+originally)?\s+from|\s+(?:was\s+born|grew\s+up|was\s+raised)\s+in)"
            r"\s+(?:the\s+)?"
            r"(?!(?:{MONTH})\b)(?P<object>{PLACE})",  # "born in May" is a birthday
            "from", "Where is {subject} from?",
            questions=["Where is {subject} from?", "Where does {subject} come from?",
                       "Do you know where {subject} is from?"],
            answer="{subject} is from {object}.", short_answer="From {object}.",
            answers=["{subject} comes from {object}.", "{subject} is originally from {object}."],
            statements=["{subject} is from {object}.", "{subject} comes from {object}.",
                        "{subject} grew up in {object}."],
        ),
        # first person: facts about the speaker ("me")
        FactPattern(
            "my_favourite_x",
            r"\b(?i:my)\s+(?i:favou?rite)\s+" + open_thing + open_object,
            "favourite {relation}", "What is my {relation}?", subject="me", confidence=0.7,
            questions=["What is my {relation}?", "Do you know my {relation}?", "Do you remember my {relation}?"],
            answer="Your {relation} is {object}.", short_answer="{object}.",
            answers=["You like {object} best.", "You told me your {relation} is {object}."],
            statements=["My {relation} is {object}.", "My {relation}: {object}."],
        ),
        FactPattern(
            "my_age",
            r"\b(?:I(?:['’]m|\s+am)\s+(?=\d{1,3}\s+(?:years?|yrs?)\s+old\b)|(?i:my)\s+age\s+is\s+)"
            r"(?P<object>\d{1,3})\b(?![.,]\d)",
            "age", "How old am I?", subject="me",
            questions=["How old am I?", "What is my age?", "Do you know how old I am?"],
            answer="You are {object} years old.", short_answer="{object}.",
            answers=["Your age is {object}.", "You're {object}."],
            statements=["I am {object} years old.", "I'm {object} years old.", "My age is {object}."],
        ),
        FactPattern(
            "i_live_in",
            r"\b(?:(?:I(?:\s+|['’]m\s+|\s+am\s+)(?:live|living|reside|based)|(?i:my)\s+home\s+is)\s+in"
            r"|I(?:['’]ve|\s+have)?(?:\s+just|\s+recently)?\s+moved\s+to)\s+" + dwelling
            + r"(?:the\s+)?(?P<object>{PLACE})",
            "lives_in", "Where do I live?", subject="me",
            questions=["Where do I live?", "Which city do I live in?", "Do you know where I live?"],
            answer="You live in {object}.", short_answer="In {object}.",
            answers=["You are living in {object}.", "You're based in {object}."],
            statements=["I live in {object}.", "My home is in {object}.", "I'm living in {object}."],
        ),
        FactPattern(
            "my_name_is",
            r"\b(?:(?i:my)\s+name(?:\s+is|['’]s)|(?i:call)\s+me|I\s+go\s+by)\s+(?P<object>{NAME})" + not_possessed,
            "name", "What is my name?", subject="me",
            **name,
        ),
        FactPattern(
            "i_am_x",
            r"(?:^|(?<=[.!]\s))\W{0,8}(?:(?:Hi|Hello|Hey)\W{1,3})?"  # at the start, after a sentence or a greeting
            r"(?:I['’]m|I\s+am)\s+(?P<object>{NAME})\s*(?:[.!,]|$|and\s)",  # "I'm Sam and I live in Lisbon."
            "name", "What is my name?", subject="me", confidence=0.6,
            **name,
        ),
        FactPattern(
            "my_favourite_colour",
            r"\b(?i:my)\s+(?i:favou?rite)\s+colou?r\s+is\s+(?P<object>{COLOUR}){END}", **my_colour,
        ),
        FactPattern(
            "i_like_colour_best", r"\bI\s+like\s+the\s+colou?r\s+(?P<object>{COLOUR})\s+best{END}", **my_colour,
        ),
        FactPattern(  # "I love sushi.", "I enjoy hiking (very much)."; not "I like it/you/how .../to ..."
            "i_like",
            r"\bI\s+(?:really\s+|just\s+|absolutely\s+)?(?:like|love|enjoy|adore)\s+" + not_liked +
            r"(?P<object>{PHRASE}?)" + taste_end,
            "likes", "What do I like?", subject="me", confidence=0.6, many=True, opposite="dislikes",
            questions=["What do I like?", "What do I enjoy?", "Do you know what I like?"],
            answer="You like {object}.", short_answer="{object}.",
            answers=["You enjoy {object}.", "You love {object}."],
            statements=["I like {object}.", "I love {object}.", "I enjoy {object}."],
        ),
        FactPattern(  # "I hate mushrooms.", "I don't like museums."; not "I hate it when ...", "I hate to ..."
            "i_dislike",
            r"\bI\s+(?:really\s+|just\s+|absolutely\s+)?(?:hate|dislike|detest|can['’]?t\s+stand|cannot\s+stand|"
            r"(?:don['’]?t|do\s+not)\s+(?:really\s+)?(?:like|enjoy))\s+" + not_liked +
            r"(?P<object>{PHRASE}?)"
            + taste_end,
            "dislikes", "What do I dislike?", subject="me", confidence=0.6, many=True, opposite="likes",
            questions=["What do I dislike?", "What don't I like?", "Do you know what I dislike?"],
            answer="You dislike {object}.", short_answer="{object}.",
            answers=["You don't like {object}.", "You can't stand {object}."],
            statements=["I dislike {object}.", "I don't like {object}.", "I can't stand {object}."],
        ),
        FactPattern(  # "I'm vegetarian.", "I'm a vegan.", "I'm on a keto diet."
            "i_am_diet",
            r"(?:\bI(?:['’]m|\s+am)\s+(?:a\s+|on\s+an?\s+)?|\bI\s+(?:follow|eat|keep)\s+an?\s+"
            r"|\b(?i:my)\s+diet\s+is\s+)"
            + diets,
            "diet", "What is my diet?", subject="me",
            questions=["What is my diet?", "What diet do I follow?", "Do you know my diet?"],
            answer="Your diet is {object}.", short_answer="{object}.",
            answers=["You follow {article} {object} diet.", "You eat {object}."],
            statements=["I'm {object}.", "My diet is {object}.", "I follow {article} {object} diet."],
        ),
        FactPattern(  # "I speak French."
            "i_speak",
            r"\bI(?:\s+speak|(?:['’]m|\s+am)\s+fluent\s+in)\s+(?P<object>{PLACE})(?:\s+fluently)?{END}",
            "speaks", "What language do I speak?", subject="me", many=True,
            questions=["What language do I speak?", "Which language do I speak?", "Do you know what language I speak?"],
            answer="You speak {object}.", short_answer="{object}.",
            answers=["You are fluent in {object}.", "You can speak {object}."],
            statements=["I speak {object}.", "I'm fluent in {object}.", "I speak {object} fluently."],
        ),
        FactPattern(  # "I play the guitar.", "I play tennis."
            "i_play",
            r"\bI\s+(?:often\s+|also\s+|regularly\s+)?play\s+(?:the\s+)?"
            r"(?!(?:it|that|this|them|with|around|along|by|here|there|nice|fair|safe|dumb|my|your|a|an|some|any|"
            r"all|every|online|games?|music|the)\b)"
            r"(?P<object>{PHRASE}?)(?:\s+(?:every\s+\w+|a\s+lot|often|sometimes|well|too))?{END}",
            "plays", "What do I play?", subject="me", confidence=0.6, many=True,
            questions=["What do I play?", "Which game or instrument do I play?", "Do you know what I play?"],
            answer="You play {object}.", short_answer="{object}.",
            answers=["You know how to play {object}.", "You enjoy playing {object}."],
            statements=["I play {object}.", "I often play {object}.", "I play {object} a lot."],
        ),
        FactPattern(  # "I study medicine.", "I'm majoring in physics."
            "i_study",
            r"\bI(?:\s+study|(?:['’]m|\s+am)\s+(?:studying|learning)|\s+major\s+in|(?:['’]m|\s+am)\s+majoring\s+in)\s+"
            r"(?!(?:it|that|this|them|the|my|your|hard|a\s+lot|here|there|at|for|every|all|with|to|on|in|late|well|"
            r"a|an|some|so|how|what|about|from|more|much|fast|quickly|new|things|stuff)\b)"
            r"(?P<object>{PHRASE}){END}",
            "studies", "What do I study?", subject="me", confidence=0.7,
            questions=["What do I study?", "What am I studying?", "Do you know what I study?"],
            answer="You study {object}.", short_answer="{object}.",
            answers=["You are studying {object}.", "Your subject is {object}."],
            statements=["I study {object}.", "I'm studying {object}.", "I am majoring in {object}."],
        ),
        FactPattern(  # "My hobby is painting."
            "my_hobby",
            r"\b(?i:my)\s+(?:favou?rite\s+)?(?:hobby|pastime)\s+is\s+(?P<object>{PHRASE}){END}",
            "hobby", "What is my hobby?", subject="me",
            questions=["What is my hobby?", "What do I do for fun?", "Do you know my hobby?"],
            answer="Your hobby is {object}.", short_answer="{object}.",
            answers=["You like {object} in your free time.", "For fun you do {object}."],
            statements=["My hobby is {object}.", "My favourite pastime is {object}.", "My favorite hobby is {object}."],
        ),
        FactPattern(
            "my_birthday",
            r"\b(?:(?i:my)\s+birthday\s+is|I\s+celebrate\s+my\s+birthday|I\s+was\s+born)"
            r"(?:\s+(?:in|on))?\s+(?:the\s+)?"
            r"(?P<object>{MONTH}(?:\s+\d{1,2}(?:st|nd|rd|th)?)?|\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?{MONTH})\b",
            "birthday", "When is my birthday?", subject="me",
            questions=["When is my birthday?", "In which month is my birthday?", "Do you know when my birthday is?"],
            answer="Your birthday is in {object}.", short_answer="In {object}.",
            answers=["You celebrate your birthday in {object}.", "Your birthday falls in {object}."],
            statements=["My birthday is in {object}.", "I celebrate my birthday in {object}."],
        ),
        FactPattern(
            "my_birth_year",
            r"\b(?:I\s+was\s+born\s+in|(?i:my)\s+birth\s?year\s+is)\s+(?P<object>(?:1[89]|20)\d\d)\b(?![.,]?\d)",
            "birth_year", "What year was I born?", subject="me",
            questions=["What year was I born?", "In which year was I born?", "Do you know what year I was born?"],
            answer="You were born in {object}.", short_answer="In {object}.",
            answers=["Your birth year is {object}.", "You were born in the year {object}."],
            statements=["I was born in {object}.", "My birth year is {object}."],
        ),
        FactPattern(
            "i_work_at",
            r"\b(?:I\s+work\s+(?:at|for)|I(?:['’]m|\s+am)\s+(?:working\s+(?:at|for)|employed\s+(?:at|by))"
            r"|(?i:my)\s+employer\s+is)\s+(?:the\s+)?(?P<object>{PLACE})",
            "works_at", "Where do I work?", subject="me",
            questions=["Where do I work?", "Which company do I work for?", "Do you know where I work?"],
            answer="You work at {object}.", short_answer="At {object}.",
            answers=["You work for {object}.", "Your employer is {object}."],
            statements=["I work at {object}.", "I work for {object}.", "My employer is {object}."],
        ),
        FactPattern("i_work_as", r"\bI\s+work\s+as\s+(?:an?\s+)?(?P<object>{PHRASE}){END}", **my_work),
        FactPattern(  # "I'm a nurse.": a known job (`occupations`)
            "i_am_a_job",
            r"\bI(?:['’]m|\s+am)\s+(?:now\s+)?an?\s+(?P<object>{OCCUPATION})(?!['’-]){END}", **my_work,
        ),
        FactPattern(
            "i_am_a_x_by_trade",
            r"\bI(?:['’]m|\s+am)\s+an?\s+(?P<object>{PHRASE})\s+by\s+(?:trade|profession){END}", **my_work,
        ),
        FactPattern(
            "i_am_from",
            r"(?:\bI(?:(?:['’]m|\s+am|\s+come)(?:\s+originally)?\s+from|\s+(?:was\s+born|grew\s+up|was\s+raised)\s+in)"
            r"|\b(?i:my)\s+home\s?town\s+is)\s+(?:the\s+)?"
            r"(?!(?:{MONTH})\b)(?P<object>{PLACE})",  # "born in May" is a birthday
            "from", "Where am I from?", subject="me",
            questions=["Where am I from?", "Where do I come from?", "Do you know where I'm from?"],
            answer="You are from {object}.", short_answer="From {object}.",
            answers=["You come from {object}.", "You're from {object}."],
            statements=["I'm from {object}.", "I come from {object}.", "I am from {object}."],
        ),
        FactPattern(
            "i_am_allergic_to",
            r"\bI(?:(?:\s+am|['’]m)\s+allergic|\s+have\s+an\s+allergy)\s+to\s+"
            r"(?!(?:it|this|that|these|those|them|something|anything|everything|nothing|stuff)\b)"
            r"(?P<object>{PHRASE}){END}",
            "allergic_to", "What am I allergic to?", subject="me",
            questions=["What am I allergic to?", "Do I have any allergies?", "Do you know what I'm allergic to?"],
            answer="You are allergic to {object}.", short_answer="{object}.",
            answers=["You're allergic to {object}.", "You have an allergy to {object}."],
            statements=["I am allergic to {object}.", "I'm allergic to {object}.", "I have an allergy to {object}."],
        ),
    ]  # fmt: skip


def _default_connectors() -> list[str]:
    return ["and", "but", "in", "at", "for", "with", "since", "near", "from", "because", "who", "which"]


@dataclass
class DetectorConfig:
    """Question filter, fact patterns and confidence scoring of the fact detector."""

    question_indicators: list[str] = field(default_factory=_default_question_indicators)
    """A message whose first word is one of these (case-insensitive) is a question."""
    question_marks: list[str] = field(default_factory=lambda: ["?"])
    """A message containing any of these strings anywhere is a question."""
    patterns: list[FactPattern] = field(default_factory=_default_patterns)
    """Fact patterns, tried in order; the most confident match wins."""
    relation_words: list[str] = field(default_factory=_default_relation_words)
    """Words (or word groups) the ``{RELATION}`` macro accepts: sister, best friend, dog, ..."""
    occupations: list[str] = field(default_factory=_default_occupations)
    """Words (or word groups) the ``{OCCUPATION}`` macro accepts: "I'm a nurse.", "Tom is a software engineer."
    say what one does for work only with a known job (not "I'm a big fan.", "Tom is a genius.")."""
    relation_synonyms: list[list[str]] = field(default_factory=_default_relation_synonyms)
    """Groups of relation words that name the same relative ("mom", "mother", "mum"): routing's
    `unknown_relatives` counts "Where does my mother live?" as asking about a known relative after "My mom lives
    in Lyon." (`relation_key`). A word may be in one group at most."""
    relation_modifiers: list[str] = field(default_factory=_default_relation_modifiers)
    """Optional words before a relation word that stay part of the object ("older sister")."""
    non_names: list[str] = field(default_factory=_default_non_names)
    """Words that are never (part of) a name: pronouns, sentence openers; matched capitalized ("It")."""
    connectors: list[str] = field(default_factory=_default_connectors)
    """Words that end a ``{PHRASE}`` ("nurse" in "works as a nurse in Oslo")."""
    max_name_words: int = 4
    """Most words in a ``{NAME}`` or ``{PLACE}``."""
    max_phrase_words: int = 3
    """Most words in a ``{PHRASE}``."""
    entity_method: EntityMethod = "both"
    """Entities from the pattern groups ("pattern"), from `capitalized_regex` ("capitalized") or both."""
    capitalized_regex: str = rf"\b[{_UPPER}][^\W\d_]+\b(?: [{_UPPER}][^\W\d_]+\b){{0,3}}"
    """Regex of capitalized words taken as entities (leading `non_names` words are dropped)."""
    max_chars: int = 2000
    """Input is truncated to this many characters before any matching."""
    coverage_boost: float = 0.1
    """Confidence added per unit of coverage (match length / stripped message length)."""
    entity_boost: float = 0.1
    """Confidence added when the match contains an entity."""
    max_facts: int = 3
    """Facts taken from one message ("My name is Sam and I live in Lisbon."): the most confident matches
    whose spans do not overlap, one per memory key (subject, slot), at most this many (`FactDetector.detect_many`);
    each is stored and learned in fact steps of its own. 1 = the most confident match alone."""

    def __post_init__(self) -> None:
        problems = []
        if self.entity_method not in ENTITY_METHODS:
            problems.append(f"detector.entity_method must be one of {list(ENTITY_METHODS)}, got {self.entity_method!r}")
        for name in ("max_chars", "max_name_words", "max_phrase_words", "max_facts"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"detector.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("coverage_boost", "entity_boost"):
            if getattr(self, name) < 0:
                problems.append(f"detector.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("relation_words", "question_marks"):
            if not all(w.strip() for w in getattr(self, name)):
                problems.append(f"detector.{name} must not contain empty strings, got {getattr(self, name)!r}")
        if not self.relation_words:
            problems.append("detector.relation_words must not be empty")
        grouped = [w.strip().casefold() for group in self.relation_synonyms for w in group]
        if not all(grouped) or any(not group for group in self.relation_synonyms):
            problems.append(f"detector.relation_synonyms must hold non-empty groups of non-empty words, "
                            f"got {self.relation_synonyms!r}")  # fmt: skip
        elif len(set(grouped)) < len(grouped):
            twice = sorted({w for w in grouped if grouped.count(w) > 1})
            problems.append(f"detector.relation_synonyms: each word may be in one group only, {twice} are in more")
        problems += _regex_problems("detector.capitalized_regex", self.capitalized_regex)
        if not problems:  # the macros need valid sizes
            problems += _pattern_problems(self)
        if problems:
            raise ValueError("invalid fact detector config: " + "; ".join(problems))


@dataclass(frozen=True)
class FactInfo:
    """A fact found in a message."""

    subject: str
    """Who the fact is about ("Zara")."""
    relation: str
    """The relation: the real relation word for relations to the speaker ("sister"), else the
    pattern's relation ("lives_in", ...)."""
    object: str
    """What is stated ("sister", "Oslo")."""
    entities: tuple[str, ...]
    """Entities of the message, in order of appearance."""
    confidence: float
    """Confidence in [0, 1]."""
    span: tuple[int, int]
    """Char span of the match in the (truncated) input. It holds the object; the subject may lie outside it:
    after it ("my sister" of "my sister Zara") or before it (a resolved "she"). An apposition ("Zara, my sister,
    lives in Rome.", pattern `x_my_y`) is only looked at: its span is empty, at the name, so the fact that follows
    ("Zara lives in Rome") is kept beside it."""
    pattern: str
    """Name of the pattern that matched."""
    question_template: str = "Who is {subject}?"
    """The pattern's recall probe template."""
    slot: str = ""
    """With the subject, the memory key (empty: the relation)."""
    many: bool = False
    """From a pattern with many objects per subject (`FactPattern.many`): the object is part of the key."""
    opposite: str = ""
    """The slot whose fact of the same subject and object this one contradicts (`FactPattern.opposite`)."""

    @property
    def key_slot(self) -> str:
        """The slot of the memory key: a new object in the same slot replaces the old fact (`key_slot`)."""
        return key_slot(self.slot or self.relation, self.object, self.many)

    def question(self) -> str:
        """The recall probe for this fact, e.g. "Who is Zara?"."""
        return fill(self.question_template, self.subject, self.object, self.relation)


def key_slot(slot: str, obj: str, many: bool) -> str:
    """The slot part of a fact's memory key: its `slot`, and for a fact of many objects (`FactPattern.many`) its
    object too ("likes=jazz"), so "I like chess." is kept beside "I love jazz." instead of replacing it."""
    return f"{slot}={' '.join(obj.split()).casefold()}" if many else slot


def article(word: str) -> str:
    """The indefinite article for `word` ("an" before a vowel letter, else "a")."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def relatives_regex(config: DetectorConfig) -> re.Pattern:
    """The speaker's relatives named in a message: "my" and a ``{RELATION}`` ("my boss", "My older sister"), the
    relation words in group 1."""
    return re.compile(r"\bmy\s+(" + expand("{RELATION}", config) + ")", re.IGNORECASE)


def relation_key(config: DetectorConfig) -> Callable[[str], str]:
    """A function giving the relative a relation names, for comparing two of them: the last word, case-folded, as
    the first word of its `relation_synonyms` group ("Older  Mother" → "mother", "mum" → "mother", "boss" →
    "boss")."""
    canonical = {w.strip().casefold(): group[0].strip().casefold() for group in config.relation_synonyms for w in group}

    def key(words: str) -> str:
        parts = words.split()
        last = parts[-1].casefold() if parts else ""
        return canonical.get(last, last)

    return key


def unnamed_relative(subject: str) -> bool:
    """Whether a fact's subject is one of the speaker's relatives, unnamed: "my mom" of "My mom lives in Lyon."."""
    return subject.startswith("my ")


def fill(template: str, subject: str, obj: str, relation: str = "", listener: bool = False) -> str:
    """A pattern template with its fields filled: subject, object, relation, article (of the object).

    A subject that is the speaker's relative ("my mom", `FactInfo.subject` of "My mom lives in Lyon.") is
    said as the speaker says it in questions and statements ("Where does my mom live?") and, with `listener`
    (the assistant's answers), as the listener hears it: "Your mom lives in Lyon.". A template that starts
    with the subject starts with a capital."""
    if listener and unnamed_relative(subject):
        subject = "your" + subject[2:]
    out = template.format(subject=subject, object=obj, relation=relation, article=article(obj))
    return out[:1].upper() + out[1:] if template.startswith("{subject}") else out


def _alternation(words: list[str]) -> str:
    """Regex alternation of literal words, longest first (so "best friend" beats "friend")."""
    ordered = sorted({w.strip() for w in words if w.strip()}, key=lambda w: (-len(w), w))
    return "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in ordered)


def _trie(words: list[str]) -> str:
    """Regex matching exactly the given words, factored as a trie: the non-name guard runs at
    every capitalized word, and a trie fails in a few character checks instead of one try per word."""
    tree: dict = {}
    for word in {w.strip() for w in words if w.strip()}:
        node = tree
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # a word ends here

    def render(node: dict) -> str:
        branches = [re.escape(c) + render(child) for c, child in sorted(node.items()) if c]
        if not branches:
            return ""
        body = "(?:" + "|".join(branches) + ")"
        return body + "?" if "" in node else body

    return render(tree)


def macros(config: DetectorConfig) -> dict[str, str]:
    """The regex each ``{MACRO}`` of a pattern expands to under `config`.

    Args:
        config: the detector config (word lists and size bounds).

    Returns:
        Mapping from macro name (without braces) to its regex.
    """
    extra, phrase_extra = config.max_name_words - 1, config.max_phrase_words - 1
    non_names = _trie([w.capitalize() for w in config.non_names])
    guard = rf"(?=[{_UPPER}])(?!{non_names}\b)" if non_names else ""
    name_word = rf"\b{guard}{_CAP_WORD}"
    modifier = rf"(?:(?:{_alternation(config.relation_modifiers)})[ -])?" if config.relation_modifiers else ""
    connector = rf"(?:{_alternation(config.connectors)})\b" if config.connectors else ""
    not_connector = f"(?!{connector})" if connector else ""
    end_at_connector = rf"|\s+{connector}" if connector else ""
    pronoun = "|".join(w for p in _PRONOUNS for w in (p, p.capitalize()))
    return {
        "NAME": rf"{name_word}(?: {name_word}){{0,{extra}}}",
        "WHO": rf"(?:{name_word}(?: {name_word}){{0,{extra}}}|\b(?:{pronoun})\b)",
        "PLACE": rf"\b{_CAP_WORD}(?: {_CAP_WORD}){{0,{extra}}}",
        "RELATION": rf"{modifier}(?:{_alternation(config.relation_words)})\b",
        "OCCUPATION": rf"(?:[a-z]+(?:-[a-z]+)?\s+){{0,2}}(?:{_alternation(config.occupations)})\b"
        if config.occupations else r"(?!)",
        "PHRASE": rf"{_PHRASE_WORD}(?: {not_connector}{_PHRASE_WORD}){{0,{phrase_extra}}}",
        "MONTH": rf"(?:{_MONTHS})",
        "COLOUR": r"[a-z]+(?:[ -][a-z]+)?",
        "END": rf"(?=\s*(?:[.!;,:)]|$){end_at_connector})",
    }


def expand(regex: str, config: DetectorConfig, table: dict[str, str] | None = None) -> str:
    """`regex` with every ``{MACRO}`` replaced by its expansion (see the module docstring).

    Args:
        table: `macros(config)`, when the caller expands many regexes (building it is most of the work).
    """
    for key, value in (macros(config) if table is None else table).items():
        regex = regex.replace("{" + key + "}", value)
    return regex


def _regex_problems(label: str, regex: str) -> list[str]:
    try:
        re.compile(regex)
    except re.error as err:
        return [f"{label} is not a valid regex ({err}): {regex!r}"]
    return []


def _pattern_problems(config: DetectorConfig) -> list[str]:
    problems, seen, table = [], set(), macros(config)
    for p in config.patterns:
        if p.name in seen:
            problems.append(f"detector.patterns: duplicate name {p.name!r}")
        seen.add(p.name)
        label = f"detector.patterns[{p.name!r}].regex"
        errors = _regex_problems(label, expand(p.regex, config, table))
        problems += errors
        if not errors:
            fixed = {g for g, value in (("subject", p.subject), ("object", p.object)) if value.strip()}
            needed = {"subject", "object"} - fixed
            missing = needed - set(re.compile(expand(p.regex, config, table)).groupindex)
            if missing:
                problems.append(f"{label} lacks named groups {sorted(missing)}: {p.regex!r}")
        templates = {"question": [p.question], "relation": [p.relation], "answer": [p.answer],
                     "short_answer": [p.short_answer], "answers": p.answers, "questions": p.questions,
                     "statements": p.statements}  # fmt: skip
        for field_name, values in templates.items():
            for value in values:
                try:
                    fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
                except ValueError:
                    fields = {"<malformed>"}
                if not fields <= _TEMPLATE_FIELDS:
                    problems.append(
                        f"detector.patterns[{p.name!r}].{field_name} may only use {sorted(_TEMPLATE_FIELDS)}, got {value!r}"
                    )
    return problems


class FactDetector:
    """Detects stated facts with the configured question filter and patterns.

    Args:
        config: detector settings; None uses the defaults.
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config if config is not None else DetectorConfig()
        table = macros(self.config)
        self.compiled = [(p, re.compile(expand(p.regex, self.config, table))) for p in self.config.patterns]
        self._by_name = {p.name: p for p in self.config.patterns}
        self._capitalized = re.compile(self.config.capitalized_regex)
        self._first_word = re.compile(r"\W*(\w+)")
        self._indicators = {w.casefold() for w in self.config.question_indicators}
        self._non_names = {w.casefold() for w in self.config.non_names}

    def pattern(self, name: str) -> FactPattern | None:
        """The configured pattern called `name` (None if there is none, e.g. after a config change)."""
        return self._by_name.get(name)

    def is_question(self, text: str) -> bool:
        """True if `text` contains a question mark or starts with a question word.

        Args:
            text: a user message.

        Returns:
            Whether the message is treated as a question (and never as a fact).
        """
        text = text[: self.config.max_chars]
        if any(mark in text for mark in self.config.question_marks):
            return True
        first = self._first_word.match(text)
        return first is not None and first.group(1).casefold() in self._indicators

    def detect(self, text: str) -> FactInfo | None:
        """The most confident fact stated in `text`.

        Args:
            text: a user message.

        Returns:
            The best `FactInfo` (highest confidence, then earliest), or None for a question,
            no match, or matches below their pattern's `min_confidence`.
        """
        facts = self.detect_all(text)
        return max(facts, key=lambda f: (f.confidence, -f.span[0])) if facts else None

    def detect_many(self, text: str, antecedent: str | None = None) -> list[FactInfo]:
        """The facts stated in `text`, most confident first (the first is `detect`'s): at most
        `max_facts`, taken greedily by (confidence, earliest) among the matches whose span overlaps
        none taken before and whose memory key (subject, slot) is not taken yet.

        Args:
            text: a user message.
            antecedent: who "she" / "he" is when no fact of `text` names a person before it (see `detect_all`).

        Returns:
            The facts; empty for a question or no match.
        """
        chosen: list[FactInfo] = []
        for fact in sorted(self.detect_all(text, antecedent), key=lambda f: (-f.confidence, f.span[0])):
            if len(chosen) == self.config.max_facts:
                break
            key = (fact.subject.strip().casefold(), fact.key_slot)
            overlaps = any(fact.span[0] < c.span[1] and c.span[0] < fact.span[1] for c in chosen)
            if overlaps or key in {(c.subject.strip().casefold(), c.key_slot) for c in chosen}:
                continue
            chosen.append(fact)
        return chosen

    def detect_all(self, text: str, antecedent: str | None = None) -> list[FactInfo]:
        """Every match in `text` that passes its pattern's `min_confidence` (none for questions): each
        pattern's first `max_facts` non-overlapping matches. A "she" / "he" subject becomes the subject of the
        nearest fact about a named person before it in `text`, else `antecedent`; with neither, its match is dropped.

        Args:
            text: a user message.
            antecedent: the person a pronoun with no antecedent in `text` refers to (None: no one).

        Returns:
            The facts, in pattern order, then in order of appearance.
        """
        text = text[: self.config.max_chars]
        if self.is_question(text):
            return []
        facts = []
        for pattern, regex in self.compiled:
            for match in itertools.islice(regex.finditer(text), self.config.max_facts):
                fact = self._fact(text, pattern, match)
                if fact.confidence >= pattern.min_confidence:
                    facts.append(fact)
        return _resolve_pronouns(facts, antecedent)

    def entities(self, text: str, match: re.Match | None = None) -> tuple[str, ...]:
        """Entities of `text` by the configured method, deduplicated in order of appearance.

        Args:
            text: the (truncated) message.
            match: a pattern match whose name-like groups count as entities ("pattern", "both").

        Returns:
            Entity strings.
        """
        found: list[tuple[int, str]] = []
        if match is not None and self.config.entity_method in ("pattern", "both"):
            for group in ("subject", "object"):
                value = match.groupdict().get(group)
                if value and value[0].isupper():
                    found.append((match.start(group), value))
        if self.config.entity_method in ("capitalized", "both"):
            for m in self._capitalized.finditer(text):
                words = m.group(0).split(" ")
                while words and words[0].casefold() in self._non_names:
                    words.pop(0)
                if words:
                    found.append((m.end() - len(" ".join(words)), " ".join(words)))
        return tuple(dict.fromkeys(value for _, value in sorted(found)))

    def _fact(self, text: str, pattern: FactPattern, match: re.Match) -> FactInfo:
        entities = self.entities(text, match)
        start, end = match.span()
        coverage = (end - start) / max(len(text.strip()), 1)
        has_entity = any(e in match.group(0) for e in entities)
        confidence = pattern.confidence + min(coverage, 1.0) * self.config.coverage_boost
        confidence += self.config.entity_boost if has_entity else 0.0
        subject = pattern.subject.strip() or re.sub(r"^my\s+", "my ", match.group("subject").strip(), flags=re.I)
        obj = pattern.object.strip() or match.group("object").strip()
        words = (match.groupdict().get("relation") or "").split()  # an open relation: "food", "TV show"
        relation = fill(pattern.relation, subject, obj, " ".join(w if w.isupper() else w.lower() for w in words))
        return FactInfo(
            subject=subject,
            relation=relation,
            object=obj,
            entities=entities,
            confidence=min(confidence, 1.0),
            span=(start, end),
            pattern=pattern.name,
            question_template=pattern.question,
            slot=pattern.slot.strip() or relation,
            many=pattern.many,
            opposite=pattern.opposite,
        )


def named_subject(facts: list[FactInfo]) -> str | None:
    """The subject of the last-stated fact about a named person (not the speaker, not a pronoun): whom a "she" /
    "he" in the next message may mean."""
    named = [f for f in facts if f.subject.casefold() not in _PRONOUNS and f.subject != "me"]
    return max(named, key=lambda f: f.span[0]).subject if named else None


def _resolve_pronouns(facts: list[FactInfo], antecedent: str | None = None) -> list[FactInfo]:
    """`facts` with each "she" / "he" subject replaced by the subject of the nearest fact about a named
    person that starts before it ("Zara is my sister and she lives in Rome." → Zara lives in Rome), else by
    `antecedent`; a pronoun fact with neither is dropped (the pronoun may point anywhere)."""
    out = []
    for fact in facts:
        if fact.subject.casefold() not in _PRONOUNS:
            out.append(fact)
            continue
        subject = named_subject([f for f in facts if f.span[0] < fact.span[0]]) or antecedent
        if subject:
            out.append(replace(fact, subject=subject))
    return out
