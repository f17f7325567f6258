"""The speed benchmark's reference: a minimal hand-written PyTorch loop doing OnlineLM's arithmetic
(base forward with the adapter disabled, adapter forward + backward on KL + CE, one AdamW step per
step; on a fact turn the augmentation rows in one padded batch and the locality rows in another; optional
generation) on the same model and tokens, timed per phase."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from olm.augment import AugmentSettings, fact_rows, sibling_rows, statement_loss_on
from olm.bench.memory import tensor_storages
from olm.facts import FactPattern
from olm.locality import LocalityBatch, LocalityRow, LocalitySettings, locality_batch
from olm.losses import online_loss, top_k_kl
from olm.memory import StoredFact
from olm.nullspace import NullSpace, project_lora_a
from olm.prefix import shared_prefix_forward
from olm.render import Example, LossOn, render_exchange

MS = 1e3


@dataclass
class Sibling:
    """A remembered fact a fact turn rehearses (`olm.augment.sibling_rows`) and the rotation of its row."""

    fact: StoredFact
    pattern: FactPattern | None
    rotation: int


@dataclass
class FactTurn:
    """What a fact turn adds to the exchange: the fact (its augmentation is built from the pattern's
    templates by `olm.augment.fact_rows`) and the locality prompts of its steps (cached base
    outputs, as OnlineLM caches them)."""

    subject: str
    obj: str
    relation: str
    pattern: FactPattern | None
    rotation: int
    """Which templates the augmentation starts from (OnlineLM: the statement count − 1)."""
    kl_lambda: float
    """Weight of the KL term of its steps (OnlineLM's: the fact λ scaled by the fact's importance)."""
    locality: list[LocalityRow] = field(default_factory=list)
    siblings: list[Sibling] = field(default_factory=list)
    """Remembered facts of the same kind its step rehearsed (`augment.siblings`), one Q/A row each."""
    steps: int | None = None
    """Optimizer steps OnlineLM took on the turn (`optim.steps_per_update` for an update); None = `steps_per_fact`."""


@dataclass
class Batch:
    """The n rendered rows right-padded into one batch; the locality rows in a batch of their own."""

    ids: torch.Tensor
    attn: torch.Tensor
    weights: torch.Tensor
    """(n, width) task-loss weight of each token as a target (the loss mask)."""
    locality: LocalityBatch | None


class MinimalLoop:
    """One OnlineLM turn's arithmetic in plain PyTorch: no Lightning, no module, no callbacks.

    The rows are built with olm's pure functions (`olm.render.render_exchange`, `olm.augment`) and
    the loss is `olm.losses.online_loss` (+ `top_k_kl` on the locality rows), so both arms compute
    the same thing. Per turn: (generate exactly `generate_tokens` tokens,) render and pad the rows
    (the exchange; a fact turn adds its Q/A pairs, paraphrases and locality prompts), base logits of
    the rendered rows with the adapter disabled under no_grad, then per step (`steps_per_turn`,
    `steps_per_fact` on a fact turn): adapter logits of the whole batch, λ·KL(base ‖ adapter) + task
    CE weighted by the loss mask (+ λ_loc · top-k KL on the locality positions), backward, clip,
    AdamW step (then, with `null_spaces`, each LoRA A projected back into its null space).

    Args:
        model: the peft model (shared with OnlineLM: the same base and adapter).
        tokenizer: its tokenizer with a chat template.
        optim: OnlineLM's `OptimSettings` (lr, betas, eps, weight decay, clip, steps).
        kl_lambda: weight of the KL term on a plain turn.
        task_lambda: weight of the CE term.
        max_tokens: longer renderings keep their last max_tokens tokens.
        generate_tokens: tokens generated per turn (0: learn the given reply).
        loss_on: task-loss targets (`olm.render.LossOn`).
        augment: a fact turn's augmentation counts.
        locality: the locality term's settings (its λ and lead weights) on a fact turn; None = no term.
        null_spaces: OnlineLM's null spaces (`LocalityTerm.projectors`), projected into after every step
            as OnlineLM does (`olm.nullspace.project_lora_a`); None or empty = no constraint.
    """

    def __init__(
        self, model, tokenizer, optim, kl_lambda: float, task_lambda: float, max_tokens: int, generate_tokens: int = 0,
        loss_on: LossOn = "exchange", augment: AugmentSettings | None = None, locality: LocalitySettings | None = None,
        null_spaces: dict[str, NullSpace] | None = None,
    ) -> None:  # fmt: skip
        self.model, self.tokenizer = model, tokenizer
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            self.params, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay
        )
        self.grad_clip, self.kl_lambda, self.task_lambda = optim.grad_clip, kl_lambda, task_lambda
        self.steps_per_turn, self.steps_per_fact = optim.steps_per_turn, optim.steps_per_fact
        self.share_prefix = optim.share_prefix
        self.augment = augment or AugmentSettings(qa_pairs=0, paraphrases=0)
        self.max_tokens, self.generate_tokens, self.loss_on = max_tokens, generate_tokens, loss_on
        self.locality_settings = locality or LocalitySettings()
        self.null_spaces = null_spaces or {}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.device = next(model.parameters()).device

    def render(self, user: str, reply: str, end_target: bool = True, loss_on: LossOn | None = None) -> Example:
        """The exchange rendered as OnlineLM renders it (no history); `loss_on` default the loop's."""
        loss_on = loss_on or self.loss_on
        return render_exchange(self.tokenizer, user, reply, (), loss_on, self.max_tokens, end_target=end_target)

    def rows(self, user: str, reply: str, fact: FactTurn | None) -> list[Example]:
        """The exchange, then (on a fact turn) its augmentation, each rendered."""
        if fact is None:
            return [self.render(user, reply)]
        f, said = fact, statement_loss_on(self.augment, self.loss_on)
        extra = fact_rows(f.subject, f.obj, f.relation, f.pattern, self.augment, f.rotation, user)
        end = self.augment.train_end
        extra += [row for sib in f.siblings for row in sibling_rows(sib.fact, sib.pattern, sib.rotation)]
        return [self.render(user, reply, loss_on=said)] + [
            self.render(u, a, end, said if is_statement else None) for u, a, is_statement in extra
        ]

    def batch(self, rows: list[Example], locality: list[LocalityRow]) -> Batch:
        """`rows` right-padded into one batch, the `locality` rows into another (as `OnlineLM.learn`)."""
        n, width = len(rows), max(r.num_tokens for r in rows)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attn, weights = torch.zeros_like(ids), torch.zeros(n, width)
        for i, r in enumerate(rows):
            ids[i, : r.num_tokens], attn[i, : r.num_tokens], weights[i, : r.num_tokens] = r.input_ids, 1, r.loss_mask
        dev = self.device
        loc = locality_batch(locality, self.locality_settings, self.pad_id, dev) if locality else None
        return Batch(ids.to(dev), attn.to(dev), weights.to(dev), loc)

    @torch.no_grad()
    def generate(self, user: str) -> str:
        """Greedy reply of exactly `generate_tokens` tokens (eval mode, then back to train)."""
        msgs, n = [{"role": "user", "content": user}], self.generate_tokens
        prompt = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.device)
        self.model.eval()
        out = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        self.model.train()
        return self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()

    def base_logits(self, b: Batch) -> torch.Tensor:
        """(n, width, V) logits of the rendered rows with the adapter disabled."""
        with torch.no_grad(), self.model.disable_adapter():
            return shared_prefix_forward(self.model, b.ids, b.attn, self.share_prefix)

    def loss(self, b: Batch, base: torch.Tensor, kl_lambda: float) -> torch.Tensor:
        """λ_KL·KL(base ‖ adapter) + λ_task·weighted CE on the rows (+ λ_loc·top-k KL on the locality rows)."""
        logits = shared_prefix_forward(self.model, b.ids, b.attn, self.share_prefix)
        kl_mask = b.attn.to(b.weights.dtype)
        loss = online_loss(logits, base, b.ids, b.weights, kl_mask, kl_lambda, self.task_lambda)["loss"]
        if (loc := b.locality) is not None:
            loc_logits = shared_prefix_forward(self.model, loc.ids, loc.attention, self.share_prefix, loc.positions)
            kl = top_k_kl(loc_logits, loc.top_log_p, loc.top_ids, loc.weights)
            loss = loss + self.locality_settings.weight * kl
        return loss

    def step(self, user: str, reply: str, fact: FactTurn | None = None) -> dict[str, float]:
        """One turn (a fact turn when `fact` is given); returns the seconds of each phase, ``turn``
        (the total, freeing the turn's tensors included, as in OnlineLM's turn) and ``tokens``."""
        start = time.perf_counter()
        laps = self._phases(user, reply, fact)
        return {**laps, "turn": time.perf_counter() - start}

    def _phases(self, user: str, reply: str, fact: FactTurn | None) -> dict[str, float]:
        laps: dict[str, float] = {}
        last = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal last
            _sync(self.device)
            now = time.perf_counter()
            laps[name], last = laps.get(name, 0.0) + now - last, now

        if self.generate_tokens:
            reply = self.generate(user)
            lap("generate")
        rows = self.rows(user, reply, fact)
        b = self.batch(rows, fact.locality if fact is not None else [])
        lap("render")
        base = self.base_logits(b)
        lap("base_forward")
        steps, lam = (self.steps_per_turn, self.kl_lambda) if fact is None else (
            fact.steps or self.steps_per_fact, fact.kl_lambda)
        for _ in range(steps):
            self.loss(b, base, lam).backward()
            lap("adapter_forward_backward")
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            project_lora_a(self.model, self.null_spaces)
            lap("optimizer_step")
        return {**laps, "tokens": rows[0].num_tokens}

    def activation_bytes(self, user: str, reply: str, fact: FactTurn | None = None) -> int:
        """Bytes of the distinct non-parameter storages saved for backward in one turn's adapter
        forward + loss, plus the base logits (no optimizer step is taken)."""
        params = set(tensor_storages(self.model.parameters()))
        saved: list[torch.Tensor] = []
        b = self.batch(self.rows(user, reply, fact), fact.locality if fact is not None else [])
        base = self.base_logits(b)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            loss = self.loss(b, base, fact.kl_lambda if fact is not None else self.kl_lambda)
        held = {k: v for k, v in tensor_storages(saved + [base]).items() if k not in params}
        loss.backward()
        self.opt.zero_grad(set_to_none=True)
        return sum(held.values())


def adapter_toggle_ms(model, reps: int) -> float:
    """Median milliseconds of entering and leaving ``model.disable_adapter()`` (peft walks every
    module each time: a cost of the base forward in both arms that no arithmetic needs)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        with model.disable_adapter():
            pass
        times.append(time.perf_counter() - start)
    return statistics.median(times) * MS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
