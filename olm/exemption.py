"""Remembered facts' keys exempted from the null-space constraint (`olm.nullspace`).

The constraint keeps every LoRA A orthogonal to the directions holding most of unrelated text's input
energy, so the adapter adds (almost) nothing there. A fact is read at its *key*: the layer's input
where the model predicts the object, after its question and the answer's first words ("Where do I
live?" → "You live in"). For facts about the speaker those contexts are common words that unrelated
text uses too: on smollm2 93–99 % of the six about-me facts' key energy lay inside the protected
subspace of the first two adapted blocks, so the object could hardly be written and "You live in"
stayed weak (README, Facts about the speaker).

`KeyExemption` frees, per layer, the in-subspace part of each remembered fact's key (one direction
per fact, `olm.nullspace.exempt_basis`; by default facts about the speaker only: on the fact benchmark's
made-up people, whose rare names the adapter reads anyway, exempting their keys cost retention): of the
33–750 protected directions per layer, as many as there are facts are given back, every other one
stays. The facts are the memory's `limit` most important ones plus those of the step being taken;
when one leaves that set (evicted, replaced by a contradicting statement, pushed out by more important
ones, another user's memory activated), the active adapter is projected again and what it wrote along
that key is removed with it. The keys depend only on the base and the fact's text, so a resumed run
recomputes the same spaces from its memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn

from olm.facts import FactPattern, fill
from olm.nullspace import NullSpace, exempt_basis, inputs_at
from olm.probes import answer_before
from olm.render import messages_for, render_prompt


def key_text(subject: str, obj: str, relation: str, pattern: FactPattern | None) -> tuple[str, str] | None:
    """(question, answer lead) whose last token is where a fact's object is predicted: the pattern's
    first question template and the words of its answer before the object ("Where do I live?", "You live
    in"); None without a pattern, an answer or a question, or when the answer starts with the object."""
    if pattern is None or not pattern.answer or not pattern.questions:
        return None
    lead = answer_before(fill(pattern.answer, subject, obj, relation, listener=True), obj)
    return (fill(pattern.questions[0], subject, obj, relation), lead) if lead else None


def key_texts(
    subject: str, obj: str, relation: str, pattern: FactPattern | None, frames: bool = False
) -> list[tuple[str, str]]:
    """`key_text`, and with `frames` also the first question with the lead of each of the pattern's other
    answer frames (`answers`: "Where do I work?", "Your employer is"), where the object is predicted when
    the reply takes that frame; each pair once, frames whose object comes first left out."""
    first = key_text(subject, obj, relation, pattern)
    if first is None:
        return []
    texts = [first]
    for frame in pattern.answers if frames else ():
        lead = answer_before(fill(frame, subject, obj, relation, listener=True), obj)
        if lead and (first[0], lead) not in texts:
            texts.append((first[0], lead))
    return texts


class KeyExemption:
    """The null spaces with the keys of a set of facts exempted, recomputed when the set changes.

    Args:
        limit: the most remembered facts whose keys are exempted (0: none, the spaces as given).
        about: "speaker": facts about the speaker only (their patterns' `subject` is fixed, "me"); "all": any.
        cache_size: keys kept between calls (each is one base forward to recompute).
        frames: also each fact's keys in its pattern's other answer frames (`key_texts`): one more
            direction per frame.
    """

    def __init__(self, limit: int, about: str = "speaker", cache_size: int = 4096, frames: bool = False) -> None:
        if limit < 0:
            raise ValueError(f"locality.exempt_facts must be >= 0, got {limit!r}")
        if about not in ("speaker", "all"):
            raise ValueError(f"locality.exempt_about must be 'speaker' or 'all', got {about!r}")
        self.limit = limit
        self.about = about
        self.cache_size = cache_size
        self.frames = frames
        self._keys: OrderedDict[tuple[str, str], dict[str, torch.Tensor]] = OrderedDict()
        self._texts: tuple[tuple[str, str], ...] | None = None
        self._base: dict[str, NullSpace] | None = None
        self._spaces: dict[str, NullSpace] = {}
        self.exempted = 0
        """How many facts' keys the current spaces exempt."""

    def chosen(self, step_facts: Iterable, memory: Iterable, patterns) -> list[tuple[str, str]]:
        """The key texts to exempt: the step's facts first, then the memory's most important ones
        (ties: the latest stated), `limit` facts at most, each text once (with `frames` a fact has one per
        answer frame); with `about` "speaker" only facts about the speaker. `patterns` maps a pattern name
        to its `FactPattern` (or None)."""
        ranked = sorted(memory, key=lambda f: (f.importance, f.last_turn), reverse=True)
        texts: list[tuple[str, str]] = []
        facts = 0
        for fact in [*step_facts, *ranked]:
            if facts >= self.limit:
                break
            pattern = patterns(fact.pattern) if fact is not None else None
            if pattern is None or (self.about == "speaker" and not pattern.subject):
                continue
            keys = key_texts(fact.subject, fact.object, fact.relation, pattern, self.frames)
            new = [t for t in keys if t not in texts]
            if new:
                texts += new
                facts += 1
        return texts

    def spaces(
        self, model: nn.Module, tokenizer, base: dict[str, NullSpace], texts: list[tuple[str, str]]
    ) -> tuple[dict[str, NullSpace], bool]:
        """The null spaces `base` with the keys of `texts` exempted, and whether they differ from the
        last call's (the caller then projects every A again).

        Args:
            model: the peft model; its base (adapter disabled) gives the keys.
            tokenizer: its tokenizer (with a chat template).
            base: the constraint's spaces (`LocalityTerm.projectors`); layers sharing one share the result.
            texts: (question, answer lead) pairs (`chosen`).
        """
        if not base or self.limit == 0:
            return base, False
        key = tuple(sorted(texts))
        if key == self._texts and base is self._base:
            return self._spaces, False
        missing = [t for t in key if t not in self._keys]
        if missing:
            self._compute(model, tokenizer, missing)
        names = list(base)
        done: dict[int, NullSpace] = {}
        for name in names:  # gate_proj and up_proj share one space: exempted once
            space = base[name]
            if id(space) not in done:
                rows = [self._keys[t][name] for t in key]
                keys = torch.stack(rows) if rows else torch.zeros(0, space.basis.shape[0])
                done[id(space)] = NullSpace(exempt_basis(space.basis, keys))
        for t in key:
            self._keys.move_to_end(t)
        while len(self._keys) > max(self.cache_size, len(key)):
            self._keys.popitem(last=False)
        self._spaces = {name: done[id(base[name])] for name in names}
        self._texts, self._base, self.exempted = key, base, len(key)
        return self._spaces, True

    def _compute(self, model: nn.Module, tokenizer, texts: list[tuple[str, str]]) -> None:
        sequences = []
        for question, lead in texts:
            prompt = render_prompt(tokenizer, messages_for(question)) + lead
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids[0]
            sequences.append((ids, ids.numel() - 1))  # the lead's last token predicts the object
        was_training = model.training
        model.eval()
        try:
            with model.disable_adapter():
                inputs = inputs_at(model, sequences)
        finally:
            model.train(was_training)
        for i, text in enumerate(texts):
            self._keys[text] = {name: x[i] for name, x in inputs.items()}
