"""The locality term: KL(base ‖ adapter) on unrelated prompts, in the same step as the fact.

The KL of the online loss covers only the tokens of the exchange being learned; nothing stops a
fact step from changing how the model answers everything else. Following the locality loss of
knowledge-editing methods (EasyEdit) and Learning without Forgetting, each step of the configured
kinds (fact and replay by default) also pulls the adapter towards the base on `per_step` prompts
drawn in rotation from a bundled, configurable file of varied general prompts (247: chit-chat,
arithmetic, general knowledge, science, writing, advice, technology, language:
``olm/assets/locality.txt``), weighted by its own λ.

What is compared: each prompt rendered as a fresh chat followed by the *base* model's greedy reply
(up to `reply_tokens`); at every position that predicts a reply token (and the end of the turn),
the base's next-token distribution. The base never changes, so both are computed once per prompt,
all at the first step that needs them (one batched generation), and cached as the top-`top_k` log-probabilities plus a "rest" bucket
(`olm.losses.top_k_kl`): ~k × 12 bytes per position instead of a full vocabulary row.

The cache is also kept on disk (``$OLM_CACHE/locality/<key>.pt``, `disk_cache`): the key is a hash of
everything the cached outputs depend on — every base weight, the model's config, the tokenizer and
its chat template, the prompts, `reply_tokens`, `top_k`, dtype, device type and the torch and
transformers versions — so a later run on the same base skips the generation (~80 s on 2 CPU cores
for smollm2-135m), and a different base, prompt file or setting never reads another's outputs. A
cache file that cannot be read is logged and recomputed; one that cannot be written is logged.

The benchmark measures locality on *other* prompts (``olm/bench/general_prompts.txt``); a test
checks the two files share no prompt.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import transformers

from olm.context import KINDS
from olm.durable import atomic_write
from olm.generation import GenerationSettings, generate_replies
from olm.losses import top_k_log_probs
from olm.nullspace import NullSpace, input_moments, lora_layers, protected_basis
from olm.probes import load_anchors
from olm.render import messages_for, render_prompt
from olm.smollm2 import cache_root

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = Path(__file__).parent / "assets" / "locality.txt"
FILL_BATCH = 32
"""Prompts per batched generation when the cache is filled."""
DISK_FORMAT = 1
"""Version of the on-disk cache layout (part of the key)."""


def _default_kinds() -> list[str]:
    return ["fact", "replay"]


@dataclass
class LocalitySettings:
    """KL to the base on unrelated prompts, added to the steps of `kinds`."""

    weight: float = 0.0
    """λ of the locality KL (0 turns the term off)."""
    prompts: str | None = None
    """File of prompts, one per line ('#' comments); None = the bundled ``olm/assets/locality.txt``."""
    per_step: int = 2
    """Prompts per step, drawn in rotation."""
    kinds: list[str] = field(default_factory=_default_kinds)
    """Turn kinds whose steps carry the term (chat, question, fact, replay)."""
    reply_tokens: int = 24
    """Tokens of the base's greedy reply whose predictions are compared."""
    top_k: int = 64
    """Base tokens kept per position in the cache (the rest is one bucket)."""
    lead_tokens: int = 0
    """The first this many compared positions of each reply (the ones that pick the reply's first
    tokens, hence its form: a one-line answer or a worked solution) count `lead_weight` times in the
    term (`lead_weights`); 0 = every position counts once."""
    lead_weight: float = 1.0
    """How many times each of the `lead_tokens` first positions counts."""
    null_space_energy: float = 0.0
    """AlphaEdit-style constraint (`olm.nullspace`): keep every LoRA A orthogonal to the eigen-directions
    holding this share of the adapted layers' input energy on these prompts and the base's replies, so the
    adapter adds (almost) nothing on such text; 0 = off. Applies to every step, whatever its kind."""
    exempt_facts: int = 0
    """With the null-space constraint: exempt the keys of this many remembered facts (most important
    first, plus the step's own) from it, one direction per fact and layer (`olm.exemption`), so contexts
    that unrelated text shares ("You live in") can still be written; 0 = none. Not under DDP (the ranks'
    memories differ, their adapters must not)."""
    exempt_about: Literal["speaker", "all"] = "speaker"
    """Whose facts `exempt_facts` exempts: the speaker's only ("speaker": their keys are common words, inside
    the protected subspace) or every fact ("all": on smollm2's fact benchmark, made-up people whose names the
    adapter reads anyway, retention fell to 0.65 on one seed of three; README, Facts about the speaker)."""
    exempt_frames: bool = False
    """With `exempt_facts`: exempt each such fact's key in every answer frame of its pattern too (the lead of
    "Your employer is …" as well as of "You work at …": `olm.exemption.key_texts`), one more direction per
    frame, so the object can be written where a reply in another frame predicts it."""
    disk_cache: bool = True
    """Keep the base's cached outputs on the prompts under ``$OLM_CACHE/locality/`` (keyed by the base's
    weights, tokenizer, prompts and these settings) so later runs skip their generation."""

    def __post_init__(self) -> None:
        problems = []
        if self.weight < 0:
            problems.append(f"locality.weight must be >= 0, got {self.weight!r}")
        if self.exempt_facts < 0:
            problems.append(f"locality.exempt_facts must be >= 0, got {self.exempt_facts!r}")
        if self.exempt_about not in ("speaker", "all"):
            problems.append(f"locality.exempt_about must be 'speaker' or 'all', got {self.exempt_about!r}")
        for name in ("per_step", "reply_tokens", "top_k"):
            if getattr(self, name) < 1:
                problems.append(f"locality.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.lead_tokens < 0:
            problems.append(f"locality.lead_tokens must be >= 0, got {self.lead_tokens!r}")
        if not self.lead_weight >= 0 or self.lead_weight == float("inf"):
            problems.append(f"locality.lead_weight must be a finite number >= 0, got {self.lead_weight!r}")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            problems.append(f"locality.kinds has unknown kinds {unknown} (known: {list(KINDS)})")
        if not 0 <= self.null_space_energy < 1:
            problems.append(f"locality.null_space_energy must be in [0, 1), got {self.null_space_energy!r}")
        if self.prompts is not None and not Path(self.prompts).is_file():
            problems.append(f"locality.prompts: file not found: {self.prompts!r}")
        if problems:
            raise ValueError("invalid locality settings: " + "; ".join(problems))


@dataclass
class LocalityRow:
    """One cached locality prompt.

    Attributes:
        input_ids: (T,) prompt + the base's greedy reply.
        positions: (T,) bool; positions whose next-token distribution is compared.
        top_log_p: (N, k) the base's top-k log-probabilities at those positions.
        top_ids: (N, k) their token ids.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    top_log_p: torch.Tensor
    top_ids: torch.Tensor


@dataclass
class LocalityBatch:
    """Locality rows right-padded into one batch of their own width (`locality_batch`).

    Attributes:
        ids: (R, T) token ids (pad after each row).
        attention: (R, T) 1 on real tokens.
        positions: (R, T) bool; the compared positions.
        top_log_p: (N, k) the base's cached top-k log-probabilities at those positions, row by row.
        top_ids: (N, k) their token ids.
        weights: (N,) how many times each compared position counts (`lead_weights`), or None (once each).
    """

    ids: torch.Tensor
    attention: torch.Tensor
    positions: torch.Tensor
    top_log_p: torch.Tensor
    top_ids: torch.Tensor
    weights: torch.Tensor | None


def locality_batch(
    rows: list[LocalityRow], settings: LocalitySettings, pad_id: int, device, row_weights: list[float] | None = None
) -> LocalityBatch:
    """The rows as one right-padded batch on `device`. The rows get a forward of their own, apart from
    the examples being learned: a locality row (prompt + the base's reply, median 69 tokens with
    smollm2-135m) is longer than a fact's examples (~47), and one width for both would pad every
    example to the longest prompt. `row_weights` (one per row, default 1 each) multiplies every
    compared position of its row, on top of the lead weights."""
    if row_weights is not None and len(row_weights) != len(rows):
        raise ValueError(f"row_weights: {len(row_weights)} weights for {len(rows)} rows")
    width = max(r.input_ids.numel() for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    positions = torch.zeros(len(rows), width, dtype=torch.bool)
    for j, r in enumerate(rows):
        t = r.input_ids.numel()
        ids[j, :t], attention[j, :t], positions[j, :t] = r.input_ids, 1, r.positions
    weights = lead_weights(rows, settings.lead_tokens, settings.lead_weight, row_weights)
    return LocalityBatch(
        ids.to(device), attention.to(device), positions.to(device),
        torch.cat([r.top_log_p for r in rows]).to(device), torch.cat([r.top_ids for r in rows]).to(device),
        weights.to(device) if weights is not None else None,
    )  # fmt: skip


def lead_weights(
    rows: list[LocalityRow], lead_tokens: int, lead_weight: float, row_weights: list[float] | None = None
) -> torch.Tensor | None:
    """(N,) weight of every compared position of `rows`, in their order (row by row, left to right):
    `lead_weight` for each row's first `lead_tokens`, 1 for the rest, times the row's `row_weights` entry
    (default 1); None when every weight is 1."""
    leads = lead_tokens > 0 and lead_weight != 1.0
    if not leads and (row_weights is None or all(w == 1.0 for w in row_weights)):
        return None
    parts = []
    for j, r in enumerate(rows):
        w = torch.full((int(r.positions.sum()),), 1.0 if row_weights is None else float(row_weights[j]))
        if leads:
            w[:lead_tokens] *= lead_weight
        parts.append(w)
    return torch.cat(parts) if parts else torch.ones(0)


class LocalityTerm:
    """The rotating prompts and the cache of the base's outputs on them.

    Args:
        settings: the term's settings.
        tokenizer: the model's tokenizer (with a chat template).
    """

    def __init__(self, settings: LocalitySettings, tokenizer) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.prompts = load_anchors(settings.prompts if settings.prompts is not None else DEFAULT_PROMPTS)
        self.position = 0
        """Index of the next prompt in the rotation (saved in checkpoints)."""
        self._cache: dict[int, LocalityRow] = {}
        self._extra: dict[tuple[str, str | None], LocalityRow] = {}  # `rows_for`'s (prompt, given reply or None)
        self._projectors: dict[str, NullSpace] | None = None
        self._key: str | None = None  # the disk cache's key, computed on first use

    def applies(self, kind: str) -> bool:
        return self.settings.weight > 0 and kind in self.settings.kinds

    def next_rows(self, model) -> list[LocalityRow]:
        """The next `per_step` prompts of the rotation, their base outputs computed on first use.

        Args:
            model: the peft model; its base (adapter disabled) gives the cached outputs.
        """
        n = min(self.settings.per_step, len(self.prompts))
        idx = [(self.position + i) % len(self.prompts) for i in range(n)]
        self.position = (self.position + n) % len(self.prompts)
        if any(i not in self._cache for i in idx):  # first use: every prompt at once (batched generation)
            self._fill(model, [i for i in range(len(self.prompts)) if i not in self._cache])
        return [self._cache[i] for i in idx]

    def projectors(self, model) -> dict[str, NullSpace]:
        """Per LoRA layer, the null space A is kept in (`olm.nullspace.NullSpace`), computed once from the base's
        inputs on every prompt + greedy reply of the cache (its protected bases kept on disk beside
        the rows, with `disk_cache`); empty when `null_space_energy` is 0."""
        energy = self.settings.null_space_energy
        if energy == 0:
            return {}
        if self._projectors is None:
            names = sorted(lora_layers(model))
            path = self.disk_path(model, f"null {energy!r} {names}") if self.settings.disk_cache else None
            bases = load_bases(path, names) if path is not None and path.is_file() else None
            if bases is None:
                bases = self._protected_bases(model, energy)
                if path is not None:
                    save_bases(path, bases)
            shared: dict[int, NullSpace] = {}  # layers with one basis (gate/up) share one NullSpace
            self._projectors = {n: shared.setdefault(id(u), NullSpace(u)) for n, u in bases.items()}
        return self._projectors

    def _protected_bases(self, model, energy: float) -> dict[str, torch.Tensor]:
        missing = [i for i in range(len(self.prompts)) if i not in self._cache]
        if missing:
            self._fill(model, missing)
        was_training = model.training
        model.eval()
        try:
            with model.disable_adapter():
                moments = input_moments(model, [self._cache[i].input_ids for i in range(len(self.prompts))])
        finally:
            model.train(was_training)
        done: dict[int, torch.Tensor] = {}  # a moment shared by layers is decomposed once
        for c in moments.values():
            if id(c) not in done:
                done[id(c)] = protected_basis(c, energy)
        return {n: done[id(c)] for n, c in moments.items()}

    def disk_path(self, model, part: str = "rows") -> Path:
        """Where this cache's `part` ("rows", or the null-space bases) lives on disk for `model` (the
        peft model; its base weights enter the key, computed once per term)."""
        if self._key is None:
            self._key = cache_key(model, self.tokenizer, self.prompts, self.settings)
        suffix = "" if part == "rows" else "-" + hashlib.sha256(part.encode()).hexdigest()[:12]
        return cache_root() / "locality" / f"{self._key}{suffix}.pt"

    def _fill(self, model, indices: list[int]) -> None:
        """Compute the rows of `indices`; when they are all the prompts (the first fill), read them
        from the disk cache if it has them, else compute and store them there."""
        whole = self.settings.disk_cache and sorted(indices) == list(range(len(self.prompts)))
        path = self.disk_path(model) if whole else None
        if path is not None and path.is_file():
            rows = load_rows(path, len(self.prompts))
            if rows is not None:
                self._cache.update(enumerate(rows))
                return
        self._compute(model, indices)
        if path is not None:
            save_rows(path, [self._cache[i] for i in range(len(self.prompts))])

    def _compute(self, model, indices: list[int]) -> None:
        self._cache.update(zip(indices, self._rows(model, [self.prompts[i] for i in indices])))

    def rows_for(self, model, prompts: list[str], replies: list[str] | None = None) -> list[LocalityRow]:
        """Rows for prompts outside the rotation, each computed on first use like the rotation's and kept in memory
        (not on disk): the contrast questions of `olm.augment.contrast_questions` (the base's own greedy replies), or
        with `replies` each prompt compared along its given reply (`olm.augment.forget_rows`: "What do I like?" →
        "You like jazz.", the answer a contradicted fact was trained with)."""
        if replies is not None and len(replies) != len(prompts):
            raise ValueError(f"rows_for: {len(replies)} replies for {len(prompts)} prompts")
        keys = list(zip(prompts, replies if replies is not None else [None] * len(prompts)))
        missing = list(dict.fromkeys(k for k in keys if k not in self._extra))
        if missing:
            given = [r for _, r in missing] if replies is not None else None
            self._extra.update(zip(missing, self._rows(model, [p for p, _ in missing], given)))
        return [self._extra[k] for k in keys]

    @torch.no_grad()
    def _rows(self, model, prompts: list[str], replies: list[str] | None = None) -> list[LocalityRow]:
        """The base's greedy reply to each prompt (or the given `replies`) and its top-k next-token
        log-probabilities along it."""
        tok = self.tokenizer
        gen = GenerationSettings(max_new_tokens=self.settings.reply_tokens)
        device = next(model.parameters()).device
        out = []
        with model.disable_adapter():
            if replies is None:
                replies = []
                for start in range(0, len(prompts), FILL_BATCH):
                    chunk = prompts[start : start + FILL_BATCH]
                    replies += generate_replies(model, tok, [messages_for(p) for p in chunk], gen)
            was_training = model.training
            model.eval()
            try:
                for prompt, reply in zip(prompts, replies):
                    prompt_ids = tok(render_prompt(tok, messages_for(prompt)), add_special_tokens=False).input_ids
                    reply_ids = tok(reply, add_special_tokens=False).input_ids[: self.settings.reply_tokens]
                    end = [tok.eos_token_id] if tok.eos_token_id is not None else []
                    ids = torch.tensor(prompt_ids + reply_ids + end, dtype=torch.long)
                    positions = torch.zeros(len(ids), dtype=torch.bool)
                    positions[len(prompt_ids) - 1 : len(ids) - 1] = True  # each predicts a reply token / the end
                    logits = model(input_ids=ids[None].to(device)).logits[0]
                    top_log_p, top_ids = top_k_log_probs(logits[positions.to(device)], self.settings.top_k)
                    out.append(LocalityRow(ids, positions, top_log_p, top_ids))
            finally:
                model.train(was_training)
        return out


def base_fingerprint(model) -> str:
    """A hash of every base weight of a peft model (float64 sum and sum of squares per tensor, LoRA excluded)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                continue
            x = p.detach()
            name = name.replace(".base_layer", "")  # the same base whichever layers carry LoRA
            h.update(f"{name}:{tuple(x.shape)}:{x.dtype}:".encode())
            stats = (torch.sum(x, dtype=torch.float64).item(), torch.linalg.vector_norm(x, dtype=torch.float64).item())
            h.update(repr(stats).encode())
    return h.hexdigest()


def cache_key(model, tokenizer, prompts: list[str], settings: LocalitySettings) -> str:
    """The disk cache's key: a hash of everything the cached base outputs depend on (module docstring)."""
    param = next(model.parameters())
    config = getattr(model, "config", None)
    parts = {
        "format": DISK_FORMAT, "weights": base_fingerprint(model),
        "config": config.to_json_string(use_diff=False) if config is not None else type(model).__name__,
        "tokenizer": [type(tokenizer).__name__, len(tokenizer), getattr(tokenizer, "chat_template", None),
                      tokenizer.eos_token_id, tokenizer.pad_token_id],
        "prompts": prompts, "reply_tokens": settings.reply_tokens, "top_k": settings.top_k, "batch": FILL_BATCH,
        "dtype": str(param.dtype), "device": param.device.type,
        "versions": [torch.__version__, transformers.__version__],
    }  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _write(path: Path, what: str, payload: dict) -> None:
    """Write `payload` (with the layout's format) atomically (`olm.durable.atomic_write`); a failure only warns."""
    try:
        atomic_write(path, lambda fh: torch.save({"format": DISK_FORMAT, **payload}, fh))
    except OSError as err:
        log.warning("could not write the %s %s (%s): the next run recomputes it", what, path, err)


def _read(path: Path, what: str, parse):
    """`parse(payload)` of the file at `path`, or None (logged) when it is unreadable, of another format,
    or `parse` rejects it (raises)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != DISK_FORMAT:
            raise ValueError(f"format {payload.get('format')}, expected {DISK_FORMAT}")
        return parse(payload)
    except Exception as err:  # noqa: BLE001 - any broken file is recomputed, never fatal
        log.warning("%s %s is unreadable (%s): recomputing it", what, path, err)
        return None


def save_rows(path: Path, rows: list[LocalityRow]) -> None:
    """Store the rows (`_write`)."""
    _write(path, "locality cache", {"rows": [vars(r) for r in rows]})


def load_rows(path: Path, count: int) -> list[LocalityRow] | None:
    """The `count` rows stored at `path`, or None (logged) when the file is unreadable or does not fit."""

    def parse(payload) -> list[LocalityRow]:
        rows = [LocalityRow(**r) for r in payload["rows"]]
        if len(rows) != count:
            raise ValueError(f"holds {len(rows)} rows, expected {count}")
        for r in rows:
            n = int(r.positions.sum())
            if r.positions.shape != r.input_ids.shape or r.top_log_p.shape[0] != n or r.top_ids.shape != r.top_log_p.shape:
                raise ValueError("a row's shapes do not match")
        return rows

    return _read(path, "locality cache", parse)


def save_bases(path: Path, bases: dict[str, torch.Tensor]) -> None:
    """Store the protected bases of the LoRA layers (`_write`; one copy of a basis layers share)."""
    unique: dict[int, str] = {}
    stored, same = {}, {}
    for name, u in bases.items():
        first = unique.setdefault(id(u), name)
        if first == name:
            stored[name] = u.contiguous()
        else:
            same[name] = first
    _write(path, "null-space cache", {"bases": stored, "same": same})


def load_bases(path: Path, names: list[str]) -> dict[str, torch.Tensor] | None:
    """The stored bases of exactly the layers `names`, or None (logged) when unreadable or another layout."""

    def parse(payload) -> dict[str, torch.Tensor]:
        bases = dict(payload["bases"])
        bases.update({n: bases[first] for n, first in payload["same"].items()})
        if sorted(bases) != names:
            raise ValueError("the stored layers differ from this adapter's")
        for name, u in bases.items():
            if u.dim() != 2 or u.shape[1] > u.shape[0] or not torch.isfinite(u).all():
                raise ValueError(f"basis of {name} has shape {tuple(u.shape)} or non-finite values")
        return bases

    return _read(path, "null-space cache", parse)
