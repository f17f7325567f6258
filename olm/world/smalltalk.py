"""Small talk and other distractor turns: greetings, weather, simple arithmetic, opinions.

Each generator draws a user message with `rng` and returns it with the one right reply, which
is a pure function of the message, so a distractor's expected reply is always defined. No
distractor mentions a person.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from olm.world.templates import CITIES, LIKES

Exchange = tuple[str, str]
"""A (user message, assistant reply) pair."""

GREETINGS: dict[str, str] = {
    "Hello!": "Hello! How can I help you today?",
    "Hi there!": "Hello! How can I help you today?",
    "Good morning!": "Good morning! How can I help you today?",
    "Good evening!": "Good evening! How can I help you today?",
    "How are you?": "I'm doing well, thank you. How are you?",
    "How is it going?": "It is going well, thank you. How are you?",
    "Thank you!": "You're welcome!",
    "Thanks a lot.": "You're welcome!",
    "Goodbye!": "Goodbye! Talk to you soon.",
    "See you later!": "See you later! Take care.",
    "What can you do?": "I can chat with you and remember what you tell me.",
    "Are you a robot?": "I am a small language model that learns while we chat.",
}
"""Fixed social exchanges."""

WEATHER_QUESTIONS = (
    "What is the weather like in {c}?",
    "Is it raining in {c}?",
    "Will it be sunny in {c} tomorrow?",
    "How cold is it in {c} today?",
)
WEATHER_ANSWER = "I can't check the weather in {c}, but I hope it is nice there."

ARITHMETIC_OPS: dict[str, Callable[[int, int], int]] = {
    "plus": lambda a, b: a + b,
    "minus": lambda a, b: a - b,
    "times": lambda a, b: a * b,
}
ARITHMETIC_QUESTIONS = ("What is {a} {op} {b}?", "How much is {a} {op} {b}?", "Can you compute {a} {op} {b}?")
ARITHMETIC_ANSWER = "{a} {op} {b} is {r}."
MAX_OPERAND = 9
"""Operands are 0..MAX_OPERAND; minus never goes below zero."""

OPINION_QUESTIONS = ("What do you think about {h}?", "Do you like {h}?", "Is {h} any good?")
OPINION_ADJECTIVES = ("fun", "relaxing", "interesting", "exciting", "wonderful")
OPINION_ANSWER = "I think {h} is {adj}."


def opinion_of(hobby: str) -> str:
    """The model's fixed opinion adjective for a hobby."""
    return OPINION_ADJECTIVES[LIKES.index(hobby) % len(OPINION_ADJECTIVES)]


def greeting(rng: random.Random) -> Exchange:
    """A greeting, thanks, farewell or question about the assistant."""
    user = rng.choice(sorted(GREETINGS))
    return user, GREETINGS[user]


def weather(rng: random.Random) -> Exchange:
    """A weather question about a city (the model honestly cannot check)."""
    city = rng.choice(CITIES)
    return rng.choice(WEATHER_QUESTIONS).format(c=city), WEATHER_ANSWER.format(c=city)


def arithmetic(rng: random.Random) -> Exchange:
    """A one-operation sum on small numbers with its result."""
    op = rng.choice(sorted(ARITHMETIC_OPS))
    a, b = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)
    if op == "minus" and b > a:
        a, b = b, a
    result = ARITHMETIC_OPS[op](a, b)
    return rng.choice(ARITHMETIC_QUESTIONS).format(a=a, op=op, b=b), ARITHMETIC_ANSWER.format(a=a, op=op, b=b, r=result)


def opinion(rng: random.Random) -> Exchange:
    """An opinion question about a hobby."""
    hobby = rng.choice(LIKES)
    return rng.choice(OPINION_QUESTIONS).format(h=hobby), OPINION_ANSWER.format(h=hobby, adj=opinion_of(hobby))


DISTRACTORS: dict[str, Callable[[random.Random], Exchange]] = {
    "greeting": greeting,
    "weather": weather,
    "arithmetic": arithmetic,
    "opinion": opinion,
}
"""Distractor generators by topic."""


def distractor(rng: random.Random) -> Exchange:
    """A distractor exchange of a random topic."""
    return DISTRACTORS[rng.choice(sorted(DISTRACTORS))](rng)
