"""Probes that feed the metrics, without Lightning: the anchor prompts and fact recall.

- `AnchorProbe`: one batched forward of the anchor prompts (`load_anchors`, default
  `DEFAULT_ANCHORS`), with the adapter or with it disabled (the base), giving log-probs at the
  compared positions; stability metrics and the drift guard share it.
- `recall_answers` + `is_recalled`: generated answers to fact questions, each asked alone in a
  fresh chat, checked by normalized containment (`normalize_answer`) of the fact's object.
- `object_scores`: how firmly a fact is held, teacher-forced: the question asked alone, the reply
  begun with the answer's words before the object (`answer_before`), the log-probability of
  the object's tokens and the rank of its first. Greedy recall is a yes/no that flips on a small
  margin; this shows the margin.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from olm.generation import GenerationSettings, generate_replies
from olm.render import messages_for, render_prompt

DEFAULT_ANCHORS = Path(__file__).parent / "assets" / "anchors.txt"
"""The bundled anchor prompts: short, varied chat messages unrelated to any taught fact."""


def load_anchors(anchors: str | Sequence[str] | None = None) -> list[str]:
    """The anchor prompts: a list as given, or the lines of a file (blank lines and lines
    starting with '#' skipped); None reads the bundled `DEFAULT_ANCHORS`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: no prompt is left.
    """
    if anchors is None or isinstance(anchors, (str, Path)):
        path = Path(anchors) if anchors is not None else DEFAULT_ANCHORS
        if not path.is_file():
            raise FileNotFoundError(f"anchors file not found: {str(path)!r}")
        lines = path.read_text(encoding="utf-8").splitlines()
        prompts = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    else:
        prompts = [str(s).strip() for s in anchors if str(s).strip()]
    if not prompts:
        raise ValueError(f"anchors must hold at least one non-empty prompt, got {anchors!r}")
    return prompts


@dataclass
class AnchorBatch:
    """The anchor prompts as one right-padded batch.

    Attributes:
        input_ids: (B, T) rendered prompts (chat template + generation prompt).
        attention_mask: (B, T) 1 on real tokens.
        positions: (B, T) bool; positions whose next-token distribution is compared: from the token
            before the user message to the last one (which predicts the reply's first token).
        targets: (N,) next token at each compared position (0 where there is none).
        has_target: (N,) bool; False at the last position of each prompt.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    has_target: torch.Tensor


def build_anchor_batch(tokenizer, prompts: Sequence[str]) -> AnchorBatch:
    """Render each prompt as a fresh single-message chat and batch them (see `AnchorBatch`)."""
    rows, masks = [], []
    for prompt in prompts:
        text = render_prompt(tokenizer, messages_for(prompt))
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        start = text.find(prompt)  # -1 (template rewrote the text): every position is compared
        first = next(i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > start)
        rows.append(enc["input_ids"])
        masks.append([i >= max(first - 1, 0) for i in range(len(enc["input_ids"]))])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    attn = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    positions = torch.tensor([m + [False] * (width - len(m)) for m in masks], dtype=torch.bool)
    nxt = torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], dim=1)  # (B, T) token after each position
    has_next = torch.cat([attn[:, 1:], torch.zeros_like(attn[:, :1])], dim=1).bool()
    return AnchorBatch(ids, attn, positions, nxt[positions], has_next[positions])


class AnchorProbe:
    """Log-probabilities of the anchor prompts under the adapted model and under the base.

    One batched forward per call, under no_grad in eval mode (train mode restored). The base
    (adapter disabled) never changes during a run, so its log-probabilities are cached after the
    first call when `cache_base` is set: that keeps N × V float32 values on the device (N = compared
    positions, ~10-20 per anchor). The adapter's are cached under a caller-given `version` of the
    weights (e.g. the optimizer step), so callbacks checking the same weights share one pass;
    `invalidate()` after changing the weights any other way.

    Args:
        tokenizer: the model's tokenizer (with a chat template).
        prompts: the anchor prompts.
        cache_base: keep the base log-probabilities after the first pass.
    """

    def __init__(self, tokenizer, prompts: Sequence[str], cache_base: bool = True) -> None:
        self.batch = build_anchor_batch(tokenizer, prompts)
        self.cache_base = cache_base
        self._base: torch.Tensor | None = None
        self._adapted: tuple[Hashable, torch.Tensor] | None = None

    @property
    def num_positions(self) -> int:
        return int(self.batch.targets.numel())

    @torch.no_grad()
    def log_probs(self, model, adapter: bool = True, version: Hashable | None = None) -> torch.Tensor:
        """(N, V) float32 log-probabilities at the compared positions.

        Args:
            model: the peft model (its `disable_adapter()` gives the base when adapter=False).
            adapter: with the adapter (True) or with it disabled (False; cached if cache_base).
            version: identifies the adapter weights; a second call with the same version returns
                the cached result. None: always recompute.
        """
        if not adapter and self._base is not None:
            return self._base
        if adapter and version is not None and self._adapted is not None and self._adapted[0] == version:
            return self._adapted[1]
        device = next(model.parameters()).device
        ids, attn = self.batch.input_ids.to(device), self.batch.attention_mask.to(device)
        was_training = model.training
        model.eval()
        try:
            if adapter:
                logits = model(input_ids=ids, attention_mask=attn).logits
            else:
                with model.disable_adapter():
                    logits = model(input_ids=ids, attention_mask=attn).logits
        finally:
            model.train(was_training)
        out = F.log_softmax(logits[self.batch.positions.to(device)].float(), dim=-1)  # (N, V)
        if not adapter and self.cache_base:
            self._base = out
        if adapter:
            self._adapted = (version, out) if version is not None else None
        return out

    def invalidate(self) -> None:
        """Forget the cached adapter pass (the weights changed outside the versioning)."""
        self._adapted = None

    def targets(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) next-token ids and (N,) bool has-target mask on `device`."""
        return self.batch.targets.to(device), self.batch.has_target.to(device)


_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """Lowercase, NFKC, punctuation to spaces, whitespace collapsed (for recall matching)."""
    text = _PUNCT.sub(" ", unicodedata.normalize("NFKC", text).casefold())
    return _SPACE.sub(" ", text).strip()


def is_recalled(answer: str, obj: str) -> bool:
    """Whether the normalized answer contains the normalized object as whole words."""
    target = normalize_answer(obj)
    return bool(target) and f" {target} " in f" {normalize_answer(answer)} "


def recall_answers(
    model, tokenizer, questions: Sequence[str], settings: GenerationSettings, router=None
) -> list[str]:
    """Generated answers to each question asked alone in a fresh chat (no history), batched; with
    `router` (`olm.routing.Router`), each with the adapter on or off as the router decides."""
    return generate_replies(model, tokenizer, [messages_for(q) for q in questions], settings, router=router)


def answer_before(answer: str, obj: str) -> str:
    """The words of a filled answer before its object ("Yelka's favourite colour is teal." →
    "Yelka's favourite colour is"; "Tom owns a red kite." → "Tom owns a"): the text up to the object's
    last occurrence; "" when the object is not in it or comes first."""
    at = answer.rfind(obj) if obj else -1
    return answer[:at].rstrip() if at >= 0 else ""


@dataclass(frozen=True)
class ObjectScore:
    """A fact's object, teacher-forced after its question and the answer's lead (`object_scores`)."""

    log_p: float
    """Summed log-probability of the object's tokens (0 = certain)."""
    rank: int
    """Rank of the object's first token among the vocabulary (1: greedy decoding picks it)."""


@torch.no_grad()
def object_scores(
    model, tokenizer, questions: Sequence[str], leads: Sequence[str], objects: Sequence[str]
) -> list[ObjectScore]:
    """Each question asked alone in a fresh chat, the reply begun with its lead, scored on its object.

    One right-padded forward of ``prompt + lead + " " + object`` per batch, in eval mode (no dropout;
    the model's mode is put back), with the adapter as it is: call it inside ``model.disable_adapter()``
    for the base. The object's tokens are those ending after the lead's text (a token straddling the
    boundary counts as the object's).

    Args:
        model: a causal LM.
        tokenizer: its fast tokenizer (offsets are read).
        questions: the questions, e.g. "What is Yelka's favourite colour?".
        leads: the reply's words before the object (`answer_before`), "" to score it first.
        objects: the expected objects ("teal").
    """
    if not (len(questions) == len(leads) == len(objects)):
        raise ValueError("object_scores needs as many leads and objects as questions")
    rows, spans = [], []
    for q, lead, obj in zip(questions, leads, objects):
        context = render_prompt(tokenizer, messages_for(q)) + lead
        text = context + (" " if lead else "") + obj.strip()
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        after = [i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > len(context)]
        first = after[0] if after else len(enc["input_ids"])
        rows.append(enc["input_ids"])
        spans.append((max(first, 1), len(enc["input_ids"])))
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], attention[i, : len(r)] = torch.tensor(r), 1
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no LoRA dropout: the figure is the model's, not one noisy draw of it
    try:
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
    finally:
        model.train(was_training)
    scores = []
    for i, (start, end) in enumerate(spans):
        if start >= end:  # an empty object: nothing to score
            scores.append(ObjectScore(0.0, 1))
            continue
        # the softmax at the object's positions only, not over every position of the batch
        log_p = F.log_softmax(logits[i, start - 1 : end - 1].float(), -1).cpu()
        targets = ids[i, start:end]
        picked = log_p[torch.arange(end - start), targets]
        scores.append(ObjectScore(float(picked.sum()), int((log_p[0] > log_p[0, targets[0]]).sum()) + 1))
    return scores
