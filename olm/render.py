"""Render a chat exchange into training tensors: token ids, loss mask and char offsets.

The chat template of the tokenizer renders the messages; the loss mask is built here because
Qwen-style templates carry no assistant mask; it also keeps context out of the loss: a system
prompt, history, and the tool calls / results inside a logged reply (its context spans). Offsets (from the fast tokenizer) let the
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
        cut_tokens: leading tokens dropped to fit ``max_tokens`` (0: none).
        answer_mask: (T,) bool, the target tokens that spell a fact's answer in a templated Q/A pair
            whose question does not contain it (`olm.gate.answer_mask`); None for other examples.
            The known-fact gate measures these.
    """

    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    offsets: list[tuple[int, int]]
    text: str
    cut_tokens: int = 0
    answer_mask: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())


def messages_for(
    user: str, history: tuple[tuple[str, str], ...] = (), system: str | None = None
) -> list[dict[str, str]]:
    """Chat messages for a user message with earlier (user, assistant) exchanges and a system prompt before it."""
    msgs: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
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
    system: str | None = None,
    context_spans: tuple[tuple[int, int], ...] = (),
    end_target: bool = True,
) -> Example:
    """Render system prompt + history + user message + reply and mark the task-loss targets.

    Args:
        tokenizer: a fast tokenizer with a chat template.
        user: the current user message.
        reply: the assistant reply to learn (logged or generated).
        history: earlier exchanges of the conversation, shown as context only.
        loss_on: "exchange" trains on the current user message and the reply (the original
            design); "reply" only on the reply.
        max_tokens: longer renderings keep their last `max_tokens` tokens (the reply end); how
            many were dropped is `Example.cut_tokens`.
        system: a system prompt rendered first, as context.
        context_spans: (start, end) character spans of `reply` that are context (tool calls and
            results): no token starting inside one is a target.
        end_target: whether the template's end-of-turn markup after the reply (``<|im_end|>``...)
            is a target. False trains only the reply's own tokens (`augment.train_end` for the fact
            augmentation's templated answers, whose length is an artifact of the template).

    Returns:
        The rendered `Example`.
    """
    before = messages_for(user, history, system)
    context = tokenizer.apply_chat_template(before[:-1], tokenize=False) if len(before) > 1 else ""
    prompt = render_prompt(tokenizer, before)
    full = tokenizer.apply_chat_template(before + [{"role": "assistant", "content": reply}], tokenize=False)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
    start_char = len(prompt) if loss_on == "reply" else len(context)
    spans = _reply_spans(full, prompt, reply, context_spans)
    mask = [s >= start_char and not any(a <= s < b for a, b in spans) for s, _ in offsets]
    if not end_target:
        end = _reply_end(full, prompt, reply)
        mask = [m and s < end for m, (s, _) in zip(mask, offsets)]
    cut = max(len(ids) - max_tokens, 0)
    ids, offsets, mask = ids[cut:], offsets[cut:], mask[cut:]
    return Example(
        input_ids=torch.tensor(ids, dtype=torch.long),
        loss_mask=torch.tensor(mask, dtype=torch.bool),
        offsets=offsets,
        text=full,
        cut_tokens=cut,
    )


def _reply_end(full: str, prompt: str, reply: str) -> int:
    """Character index in `full` where the reply's own text ends (before the end-of-turn markup).
    Templates may strip the reply; should the reply not be found, the whole tail after the
    prompt counts as reply (nothing is dropped)."""
    text = reply.strip()
    at = full.find(text, len(prompt)) if text else -1
    return at + len(text) if at >= 0 else len(full)


def _reply_spans(
    full: str, prompt: str, reply: str, spans: tuple[tuple[int, int], ...]
) -> list[tuple[int, int]]:
    """`spans` of the reply as spans of the rendering `full`. The reply is looked for after the
    prompt (where templates put it); should a template change it, everything after the prompt is
    context: a tool step is never trained as speech."""
    if not spans:
        return []
    at = full.find(reply, len(prompt)) if full.startswith(prompt) else -1
    if at < 0:
        return [(len(prompt), len(full))]
    return [(at + a, at + b) for a, b in spans]
