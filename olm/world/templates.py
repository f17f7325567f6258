"""The toy world's vocabulary and sentence templates.

Everything the chat world can say lives here as plain tables: relations to the speaker,
attribute values (cities, jobs, owned things, likes, colours, months), fact statements in
their canonical forms (the fact detector in `olm.facts` parses exactly these), questions per
fact kind split into *teaching-side* phrasings (used by the teaching stream and the sample
logs; the first one is the recall probe) and *held-out* phrasings (kept for the generalization
probe), acknowledgements and second-person answers.

Templates use ``{s}`` for the subject (a name), ``{o}`` for the object and ``{a}`` for the
indefinite article of the object ("a" / "an").
"""

from __future__ import annotations

FAMILY = (
    "sister", "brother", "mother", "father", "cousin", "aunt", "uncle", "son", "daughter",
    "grandmother", "grandfather", "partner",
)  # fmt: skip
SOCIAL = ("friend", "best friend", "neighbour", "roommate", "classmate")
WORK = ("boss", "colleague", "teacher", "doctor", "mentor", "dentist")
PETS = ("dog", "cat", "parrot", "horse")
RELATIONS: tuple[str, ...] = FAMILY + SOCIAL + WORK + PETS

CITIES = (
    "Oslo", "Lisbon", "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Dublin", "Cairo",
    "Tokyo", "Lima", "Quito", "Nairobi", "Sydney", "Toronto", "Boston", "Denver", "Kyoto", "Seoul",
    "Athens", "Warsaw", "Helsinki", "Zurich",
)  # fmt: skip
JOBS = (
    "nurse", "baker", "pilot", "engineer", "architect", "farmer", "lawyer", "painter", "plumber",
    "chef", "electrician", "journalist", "librarian", "mechanic", "musician", "pharmacist",
    "photographer", "scientist", "accountant", "actor", "carpenter", "firefighter", "gardener",
    "translator",
)  # fmt: skip
THING_ADJECTIVES = ("red", "blue", "green", "yellow", "old", "new", "small", "big", "black", "white", "silver")
THING_ITEMS = (
    "bicycle", "car", "boat", "guitar", "piano", "camera", "telescope", "kayak", "laptop", "tent",
    "scooter", "violin", "motorbike", "drum",
)  # fmt: skip
LIKES = (
    "chess", "jazz", "tennis", "hiking", "pizza", "painting", "gardening", "football", "poetry",
    "swimming", "cycling", "cooking", "sushi", "opera", "knitting", "skiing", "yoga", "baking",
    "climbing", "fishing",
)  # fmt: skip
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "black", "white", "grey", "brown", "teal")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip

KINDS: tuple[str, ...] = ("relation", "lives_in", "works_as", "has", "likes", "favourite_colour", "birthday")
"""Fact kinds; the names match the fact detector's relations."""
ATTRIBUTE_KINDS: tuple[str, ...] = KINDS[1:]

STATEMENTS: dict[str, tuple[str, ...]] = {
    "relation": ("{s} is my {o}.", "My {o} is {s}.", "My {o}'s name is {s}."),
    "lives_in": ("{s} lives in {o}.",),
    "works_as": ("{s} works as {a} {o}.",),
    "has": ("{s} has {a} {o}.",),
    "likes": ("{s} likes {o}.",),
    "favourite_colour": ("{s}'s favourite colour is {o}.", "{s}'s favorite color is {o}."),
    "birthday": ("{s}'s birthday is in {o}.",),
}
"""Fact statements by kind (canonical forms, several per kind where English has them)."""

ANSWERS: dict[str, str] = {
    "relation": "{s} is your {o}.",
    "lives_in": "{s} lives in {o}.",
    "works_as": "{s} works as {a} {o}.",
    "has": "{s} has {a} {o}.",
    "likes": "{s} likes {o}.",
    "favourite_colour": "{s}'s favourite colour is {o}.",
    "birthday": "{s}'s birthday is in {o}.",
}
"""The assistant's second-person answer to any question about a known fact."""

ACKNOWLEDGEMENT = "Got it. {answer}"
"""The assistant's reply to a fact statement: it restates the fact in the answer form."""
UNKNOWN_ANSWER = "I don't know who {s} is."
"""The honest answer about anyone the model has never heard of, whatever the question."""

TEACHING_QUESTIONS: dict[str, tuple[str, ...]] = {
    "relation": ("Who is {s}?", "Do you know who {s} is?", "Can you tell me who {s} is?"),
    "lives_in": ("Where does {s} live?", "Which city does {s} live in?", "Do you know where {s} lives?"),
    "works_as": ("What does {s} do for a living?", "What is {s}'s job?", "What does {s} work as?"),
    "has": ("What does {s} have?", "What does {s} own?", "Do you know what {s} has?"),
    "likes": ("What does {s} like?", "What does {s} enjoy?", "Do you know what {s} likes?"),
    "favourite_colour": (
        "What is {s}'s favourite colour?", "Which colour does {s} like best?", "Do you know {s}'s favourite colour?",
    ),  # fmt: skip
    "birthday": ("When is {s}'s birthday?", "In which month is {s}'s birthday?", "Do you know when {s}'s birthday is?"),
}
"""Teaching-side questions; the first of each kind is the recall probe."""

HELD_OUT_QUESTIONS: dict[str, tuple[str, ...]] = {
    "relation": ("Who's {s}?", "What is {s} to me?", "Remind me, who is {s}?"),
    "lives_in": ("In which city does {s} live?", "Where is {s}'s home?", "Remind me, where does {s} live?"),
    "works_as": ("What is {s}'s profession?", "What kind of work does {s} do?", "Remind me, what does {s} do?"),
    "has": ("What is {s}'s prized possession?", "What belongs to {s}?", "Remind me, what does {s} have?"),
    "likes": ("What is {s} into?", "What is {s} fond of?", "Remind me, what does {s} like?"),
    "favourite_colour": (
        "What is {s}'s favorite color?", "Which color does {s} love most?", "Remind me, what colour does {s} prefer?",
    ),  # fmt: skip
    "birthday": ("When was {s} born?", "What month was {s} born in?", "Remind me, when is {s}'s birthday?"),
}
"""Held-out phrasings: never used by the teaching stream or the sample logs."""


def article(word: str) -> str:
    """The indefinite article for `word` ("an" before a vowel letter, else "a")."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def fill(template: str, subject: str, obj: str = "") -> str:
    """Fill a template with a subject, an object and the object's article."""
    return template.format(s=subject, o=obj, a=article(obj))


def answer_for(kind: str, subject: str, obj: str) -> str:
    """The second-person answer stating a fact, e.g. "Zara is your sister."."""
    return fill(ANSWERS[kind], subject, obj)


def acknowledgement_for(kind: str, subject: str, obj: str) -> str:
    """The reply to a fact statement, e.g. "Got it. Zara is your sister."."""
    return ACKNOWLEDGEMENT.format(answer=answer_for(kind, subject, obj))


def unknown_answer_for(subject: str) -> str:
    """The reply to any question about someone never heard of."""
    return UNKNOWN_ANSWER.format(s=subject)


def all_questions(kind: str) -> tuple[str, ...]:
    """Teaching-side followed by held-out question templates of a kind."""
    return TEACHING_QUESTIONS[kind] + HELD_OUT_QUESTIONS[kind]
