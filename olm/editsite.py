"""Where a fact step may edit: everywhere, or only at the subject's tokens (ROME's locus).

A fact is taught through a few templated questions; the benchmark's held-out phrasings are other
words around the same subject. Trained at every position, the adapter can tie the answer to the
template's own words ("What does Ana have?" → "a silver guitar"). ROME (Meng et al. 2022) locates
factual recall in the mid-layer MLPs *at the subject's tokens*: the edited subject representation
is then read by the model's own attention, whatever question names the subject.

`objective.edit_at: subject` asks for that locus during fact and replay steps: each fact row's
LoRA delta (``lora_B(lora_A(x))`` of every adapted module) is kept at the tokens of the row's
subject and zeroed elsewhere, so the task loss can only be lowered through the subject's
representation. The base's reference forward and the locality prompts are untouched (the delta
stays everywhere there, as at inference); a row whose subject does not occur in it as a word (a
first-person fact's "me", a chat row) keeps the delta at every token.

`subject_positions` and `edit_mask` are pure; `lora_delta_mask` is a context manager that scales
the LoRA branch's output by the mask inside it (forward hooks on the ``lora_B`` modules of peft's
LoRA layers; a shared-prefix forward's two calls are both handled).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import torch

from olm.weighting import term_spans, tokens_overlapping

EditAt = Literal["all", "subject"]


def subject_positions(text: str, offsets: list[tuple[int, int]], subject: str) -> torch.Tensor | None:
    """(T,) bool: the tokens overlapping a whole-word, case-insensitive occurrence of `subject` in `text`.

    Args:
        text: the rendered row.
        offsets: (start, end) character span of each token in `text`.
        subject: the fact's subject ("Ana", "Dr. Lee").

    Returns:
        The mask, or None when `subject` is empty or does not occur in `text` as a word.
    """
    spans = term_spans(text, [subject], ignore_case=True)
    if not spans or not offsets:
        return None
    mask = tokens_overlapping(torch.tensor(offsets, dtype=torch.long), spans)
    return mask if bool(mask.any()) else None


def edit_mask(rows: list[tuple[str, list[tuple[int, int]], str | None]], width: int) -> torch.Tensor:
    """(N, width) float mask of where each row's LoRA delta is kept.

    Args:
        rows: per row, its text, token offsets and subject (None: no subject to keep to).
        width: the batch's padded width.

    Returns:
        1 at the subject's tokens of a row whose subject occurs in it; a row without one is 1 at
        every token (its delta is not restricted). Padding is 1 (masked out by attention anyway).
    """
    mask = torch.ones(len(rows), width)
    for i, (text, offsets, subject) in enumerate(rows):
        where = subject_positions(text, offsets, subject) if subject else None
        if where is not None:
            mask[i, : len(offsets)] = where.to(mask.dtype)
    return mask


def agrees_on_prefix(mask: torch.Tensor, prefix: int) -> bool:
    """True if every row of `mask` equals the first on the first `prefix` tokens (the shared prefix
    of a batch can then be computed once, under the first row's mask)."""
    return bool((mask[:, :prefix] == mask[:1, :prefix]).all())


def lora_b_modules(model) -> list[torch.nn.Module]:
    """The ``lora_B`` linear modules of every LoRA layer of a peft model (every adapter)."""
    from peft.tuners.lora import LoraLayer

    return [b for m in model.modules() if isinstance(m, LoraLayer) for b in m.lora_B.values()]


@contextmanager
def lora_delta_mask(model, mask: torch.Tensor | None):
    """Multiply the LoRA branch's output by `mask` ((N, T), per row and token) in every forward inside.

    A forward over the whole batch reads ``mask`` as is; a shared-prefix forward (`olm.prefix`) runs
    the common prefix as one row (its first tokens: ``mask[:1, :L]``, so the rows' masks must agree
    there: `agrees_on_prefix`) and the rest as N rows of the last tokens (``mask[:, -L:]``). None:
    nothing is registered.
    """
    if mask is None:
        yield
        return
    rows = mask.shape[0]

    def hook(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
        b, length = output.shape[0], output.shape[1]
        m = mask[:, -length:] if b == rows else mask[:b, :length]
        return output * m.to(output.dtype)[..., None]

    handles = [b.register_forward_hook(hook) for b in lora_b_modules(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
