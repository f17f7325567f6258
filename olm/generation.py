"""Reply generation: the one way olm turns chat messages into a model's answer.

Used by the module (turns with no logged reply), the recall probes, the built-in model's
quality script and the benchmarks. Generation runs in eval mode (LoRA dropout off) under
no_grad and restores the previous train/eval mode afterwards.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from olm.render import render_prompt
from olm.routing import gated, left_padded


@dataclass
class GenerationSettings:
    """How replies are generated."""

    max_new_tokens: int = 32
    """Upper bound on generated tokens per reply."""
    do_sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: float = 0.7
    """Sampling temperature (only with do_sample)."""
    top_p: float = 0.9
    """Nucleus sampling mass (only with do_sample)."""

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens!r}")
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if problems:
            raise ValueError("invalid generation settings: " + "; ".join(problems))


class CallbackStreamer:
    """Sends the decoded text of a single reply to `on_text(text, end)` as tokens are generated
    (a transformers streamer: `put` gets token ids, `end` closes the reply); prompt tokens are skipped."""

    def __init__(self, tokenizer, on_text) -> None:
        from transformers import TextStreamer

        outer = self

        class _Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                outer.on_text(text, stream_end)

        self.on_text = on_text
        self.streamer = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


@torch.no_grad()
def generate_replies(
    model, tokenizer, conversations: list[list[dict[str, str]]], settings: GenerationSettings, streamer=None,
    router=None,
) -> list[str]:
    """Generate one assistant reply per conversation, batched with left padding.

    Args:
        model: a causal LM (plain or peft-wrapped).
        tokenizer: its fast tokenizer with a chat template and a pad token.
        conversations: each a list of {"role", "content"} messages ending with a user message.
        settings: decoding settings.
        streamer: a `CallbackStreamer` for a single conversation: its text is sent as it is generated.
        router: an `olm.routing.Router`: each conversation is answered with the adapter on or off by
            its prompt's score (None, or routing disabled: the adapter as it is).

    Returns:
        The decoded replies, special tokens removed and whitespace stripped.
    """
    if not conversations:
        return []
    prompts = [render_prompt(tokenizer, msgs) for msgs in conversations]
    batch = left_padded(tokenizer, prompts, next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        on = router.route(model, batch["input_ids"], batch["attention_mask"]) if router is not None else None
        sampling = {"temperature": settings.temperature, "top_p": settings.top_p} if settings.do_sample else {}
        with gated(model, on) if on is not None else nullcontext():
            out = model.generate(
                **batch,
                max_new_tokens=settings.max_new_tokens,
                do_sample=settings.do_sample,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **({"streamer": streamer.streamer} if streamer is not None and len(prompts) == 1 else {}),
                **sampling,
            )
    finally:
        model.train(was_training)
    new = out[:, batch["input_ids"].shape[1] :]
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def generate_reply(
    model, tokenizer, messages: list[dict[str, str]], settings: GenerationSettings, streamer=None, router=None
) -> str:
    """Generate the assistant reply to one conversation (see `generate_replies`)."""
    return generate_replies(model, tokenizer, [messages], settings, streamer, router)[0]
