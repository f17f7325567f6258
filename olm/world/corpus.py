"""The pretraining corpus: chat conversations about the toy world.

The corpus is `blocks` balanced blocks, each shuffled on its own. A block holds, for every
pretraining fact, `questions_per_fact` questions with the second-person answer and
`statements_per_fact` statements with the acknowledgement (for the facts of
`world.statement_people`, that many statements and no question); `unknown_questions` questions about
names of the unknown pool, answered "I don't know who X is."; `told_statements` statements of
random facts about names of the told pool, acknowledged; and `smalltalk` distractor exchanges. Exchanges are grouped into conversations of 1..`max_exchanges` exchanges.

Questions about a pretraining person use the teaching-side phrasings, plus the held-out ones
for people in `world.phrasing_people`; unknown-pool questions use every phrasing. Held-out
names never occur.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from olm.world import templates as T
from olm.world.generator import Fact, World, random_fact
from olm.world.smalltalk import Exchange, distractor

Conversation = list[dict[str, str]]
"""Chat messages: [{"role": "user" | "assistant", "content": ...}, ...]."""


@dataclass
class CorpusConfig:
    """Composition of the pretraining corpus."""

    blocks: int = 10
    """Balanced blocks (each a full pass over the facts)."""
    questions_per_fact: int = 8
    """Question/answer exchanges per pretraining fact and block."""
    statements_per_fact: int = 2
    """Statement/acknowledgement exchanges per pretraining fact and block."""
    unknown_questions: int = 8000
    """Questions about unknown-pool names per block."""
    told_statements: int = 8000
    """Statements about told-pool names per block."""
    smalltalk: int = 2000
    """Distractor exchanges per block."""
    max_exchanges: int = 3
    """Most exchanges per conversation."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("blocks", "max_exchanges"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("questions_per_fact", "statements_per_fact", "unknown_questions", "told_statements", "smalltalk"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if problems:
            raise ValueError("invalid corpus config: " + "; ".join(problems))


def question_exchange(rng: random.Random, fact: Fact, held_out_phrasings: bool) -> Exchange:
    """A question about a known fact and its answer."""
    questions = fact.teaching_questions + (fact.held_out_questions if held_out_phrasings else ())
    return rng.choice(questions), fact.answer


def statement_exchange(rng: random.Random, fact: Fact) -> Exchange:
    """A statement of a known fact and its acknowledgement."""
    return rng.choice(fact.statements), fact.acknowledgement


def unknown_exchange(rng: random.Random, name: str) -> Exchange:
    """A question of any kind and phrasing about `name`, answered "I don't know who X is."."""
    kind = rng.choice(T.KINDS)
    return T.fill(rng.choice(T.all_questions(kind)), name), T.unknown_answer_for(name)


def block_exchanges(world: World, config: CorpusConfig, rng: random.Random) -> list[Exchange]:
    """One balanced, shuffled block of exchanges."""
    out: list[Exchange] = []
    for fact in world.facts:
        if fact.subject in world.statement_people:
            out += [statement_exchange(rng, fact) for _ in range(config.questions_per_fact + config.statements_per_fact)]
            continue
        paraphrase = fact.subject in world.phrasing_people
        out += [question_exchange(rng, fact, paraphrase) for _ in range(config.questions_per_fact)]
        out += [statement_exchange(rng, fact) for _ in range(config.statements_per_fact)]
    out += [unknown_exchange(rng, rng.choice(world.unknown)) for _ in range(config.unknown_questions)]
    out += [statement_exchange(rng, random_fact(rng, rng.choice(world.told))) for _ in range(config.told_statements)]
    out += [distractor(rng) for _ in range(config.smalltalk)]
    rng.shuffle(out)
    return out


def group_conversations(exchanges: list[Exchange], rng: random.Random, max_exchanges: int) -> list[Conversation]:
    """Cut a sequence of exchanges into conversations of 1..max_exchanges exchanges."""
    conversations, i = [], 0
    while i < len(exchanges):
        n = rng.randint(1, max_exchanges)
        conv: Conversation = []
        for user, assistant in exchanges[i : i + n]:
            conv += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        conversations.append(conv)
        i += n
    return conversations


def make_corpus(world: World, config: CorpusConfig | None = None, seed: int = 0) -> list[Conversation]:
    """The pretraining corpus, deterministic from the world, `config` and `seed`.

    Args:
        world: the toy world.
        config: composition; defaults to `CorpusConfig()`.
        seed: seed of the sampling (phrasings, order, grouping).

    Returns:
        Conversations in chat-messages form, block after block.
    """
    config = config or CorpusConfig()
    rng = random.Random(seed)
    conversations: list[Conversation] = []
    for _ in range(config.blocks):
        conversations += group_conversations(block_exchanges(world, config, rng), rng, config.max_exchanges)
    return conversations


def tokenizer_texts(conversations: list[Conversation]) -> list[str]:
    """Plain text of the conversations (role names and contents) to train the tokenizer on."""
    return ["\n".join(f"{m['role']}\n{m['content']}" for m in conv) for conv in conversations]
