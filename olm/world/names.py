"""Deterministic people names built from syllables, split into disjoint pools.

Names are 2–3 syllables (onset + vowel, an optional final coda), capitalized, with an
occasional accented vowel so that non-ASCII names occur too. The whole set is *prefix-free*
(no name is a prefix of another, of a city or of a month), so a name never hides inside
another name's spelling or tokens, and no name equals a word the world uses.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ONSETS = (
    "b", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "y", "z",
    "ch", "sh", "br", "dr", "kr", "tr", "st", "",
)  # fmt: skip
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ei", "ia", "ou")
SINGLE_VOWELS = ("a", "e", "i", "o", "u")
ACCENTED_VOWELS = ("é", "è", "ö", "ü", "á", "í", "å", "ø")
CODAS = ("", "", "", "n", "l", "r", "s", "m", "k", "x")


@dataclass
class NameSettings:
    """How names are spelled."""

    min_syllables: int = 2
    """Fewest syllables in a name."""
    max_syllables: int = 3
    """Most syllables in a name."""
    accent_probability: float = 0.05
    """Chance that a syllable's vowel is an accented one (non-ASCII names)."""
    min_length: int = 4
    """Shortest name in characters (very short names would block many longer ones as prefixes)."""
    vowel_pairs: bool = True
    """Allow two-letter vowel groups ("ai", "ou", ...) besides single vowels."""
    distinct_bigrams: bool = False
    """Reject names in which a two-letter sequence occurs twice ("Peteifeix": "ei"), which are
    hard for a small model to copy letter-exactly."""
    max_attempts_per_name: int = 200
    """Give up after this many rejected candidates per requested name (the space is exhausted)."""

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.min_syllables <= self.max_syllables:
            problems.append(
                f"need 1 <= min_syllables <= max_syllables, got {self.min_syllables!r}, {self.max_syllables!r}"
            )
        if not 0 <= self.accent_probability <= 1:
            problems.append(f"accent_probability must be in [0, 1], got {self.accent_probability!r}")
        if self.min_length < 1:
            problems.append(f"min_length must be >= 1, got {self.min_length!r}")
        if self.max_attempts_per_name < 1:
            problems.append(f"max_attempts_per_name must be >= 1, got {self.max_attempts_per_name!r}")
        if problems:
            raise ValueError("invalid name settings: " + "; ".join(problems))


def spell_name(rng: random.Random, settings: NameSettings) -> str:
    """One random name, e.g. "Zaren" or "Kötami"."""
    n = rng.randint(settings.min_syllables, settings.max_syllables)
    parts = []
    for i in range(n):
        onset = rng.choice(ONSETS)
        accented = rng.random() < settings.accent_probability and (i > 0 or onset != "")  # ASCII first letter
        vowels = VOWELS if settings.vowel_pairs else SINGLE_VOWELS
        parts.append(onset + rng.choice(ACCENTED_VOWELS if accented else vowels))
    name = "".join(parts) + rng.choice(CODAS)
    return name[:1].upper() + name[1:]


def has_repeated_bigram(name: str) -> bool:
    """Whether some two-letter sequence occurs twice in `name` (case-insensitive)."""
    low = name.lower()
    bigrams = [low[i : i + 2] for i in range(len(low) - 1)]
    return len(bigrams) != len(set(bigrams))


class _PrefixFreeSet:
    """Names accepted so far, with all their prefixes, for O(len) prefix checks (case-insensitive)."""

    def __init__(self) -> None:
        self.words: set[str] = set()
        self.prefixes: set[str] = set()

    def fits(self, word: str) -> bool:
        w = word.lower()
        if w in self.prefixes:  # w is a prefix of (or equal to) an accepted word
            return False
        return not any(w[:i] in self.words for i in range(1, len(w) + 1))

    def add(self, word: str) -> None:
        w = word.lower()
        self.words.add(w)
        self.prefixes.update(w[:i] for i in range(1, len(w) + 1))


def make_names(
    count: int,
    rng: random.Random,
    settings: NameSettings,
    reserved_prefix_free: Iterable[str] = (),
    forbidden: Iterable[str] = (),
    reserved_tails: Iterable[str] = (),
    distinct_tails: bool = False,
) -> list[str]:
    """`count` distinct names forming a prefix-free set, in generation order.

    A name's *tail* is the name without its first letter ("Zara" → "ara"): the tokenizer of the
    built-in model splits the capital off, so the tail's tokens are what tell names apart.

    Args:
        count: how many names.
        rng: the source of randomness (consumed).
        settings: spelling settings.
        reserved_prefix_free: words (e.g. cities, months, names of another pool) that no name
            may be a prefix of or have as a prefix.
        forbidden: words no name may equal (case-insensitive), e.g. every word of the templates.
        reserved_tails: tails no name's tail may be a prefix of or have as a prefix (e.g. the
            pretraining names' tails, so that no other name looks like a known one but for
            its first letter).
        distinct_tails: also keep the tails of the names made here prefix-free among themselves.

    Raises:
        RuntimeError: the syllable space cannot supply `count` names.
    """
    accepted, tails = _PrefixFreeSet(), _PrefixFreeSet()
    for word in reserved_prefix_free:
        accepted.add(word)
    for tail in reserved_tails:
        tails.add(tail)
    banned = {w.lower() for w in forbidden}
    names: list[str] = []
    attempts = 0
    while len(names) < count:
        attempts += 1
        if attempts > settings.max_attempts_per_name * count:
            raise RuntimeError(f"could only spell {len(names)} of {count} prefix-free names")
        name = spell_name(rng, settings)
        if len(name) < settings.min_length or name.lower() in banned or not accepted.fits(name):
            continue
        if settings.distinct_bigrams and has_repeated_bigram(name):
            continue
        if not tails.fits(name[1:]):
            continue
        if distinct_tails:
            tails.add(name[1:])
        accepted.add(name)
        names.append(name)
    return names


def split_pools(names: Sequence[str], sizes: Sequence[int]) -> list[list[str]]:
    """Cut `names` into consecutive pools of the given sizes.

    Raises:
        ValueError: the sizes need more names than there are.
    """
    if sum(sizes) > len(names):
        raise ValueError(f"pools of sizes {list(sizes)} need {sum(sizes)} names, got {len(names)}")
    pools, start = [], 0
    for size in sizes:
        pools.append(list(names[start : start + size]))
        start += size
    return pools
