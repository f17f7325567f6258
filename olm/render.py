"""Render a chat exchange into training tensors: token ids, loss mask and char offsets.

The chat template of the tokenizer renders the messages; the loss mask is built here because
Qwen-style templates carry no assistant mask. Offsets (from the fast tokenizer) let the
importance weighter align characters to tokens without decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LossOn = Literal["exchange", "reply"]


@dataclass
class Example:
    """One rendered exchange, ready for `OnlineLM.learn`.

    Attributes:
        input_ids: (T,) token ids of the rendered text.
        loss_mask: (T,) bool; True where the token is a training target of the task loss.
        offsets: (T,) list of (start, end) char spans of each token in `text`.
        text: the rendered text.
    """

    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    offsets: list[tuple[int, int]]
    text: str

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())


def messages_for(user: str, history: tuple[tuple[str, str], ...] = ()) -> list[dict[str, str]]:
    """Chat messages for a user message with earlier (user, assistant) exchanges before it."""
    msgs: list[dict[str, str]] = []
    for u, a in history:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    msgs.append({"role": "user", "content": user})
    return msgs


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The template text of `messages` followed by the assistant generation prompt."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_exchange(
    tokenizer,
    user: str,
    reply: str,
    history: tuple[tuple[str, str], ...] = (),
    loss_on: LossOn = "exchange",
    max_tokens: int = 512,
) -> Example:
    """Render history + user message + reply and mark the task-loss targets.

    Args:
        tokenizer: a fast tokenizer with a chat template.
        user: the current user message.
        reply: the assistant reply to learn (logged or generated).
        history: earlier exchanges of the conversation, shown as context only.
        loss_on: "exchange" trains on the current user message and the reply (the original
            design); "reply" only on the reply.
        max_tokens: longer renderings keep their last `max_tokens` tokens (the reply end).

    Returns:
        The rendered `Example`.
    """
    context = tokenizer.apply_chat_template(messages_for("", history)[:-1], tokenize=False) if history else ""
    prompt = render_prompt(tokenizer, messages_for(user, history))
    full = tokenizer.apply_chat_template(
        messages_for(user, history) + [{"role": "assistant", "content": reply}], tokenize=False
    )
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
    start_char = len(prompt) if loss_on == "reply" else len(context)
    mask = [s >= start_char for s, _ in offsets]
    if len(ids) > max_tokens:
        ids, offsets, mask = ids[-max_tokens:], offsets[-max_tokens:], mask[-max_tokens:]
    return Example(
        input_ids=torch.tensor(ids, dtype=torch.long),
        loss_mask=torch.tensor(mask, dtype=torch.bool),
        offsets=offsets,
        text=full,
    )
