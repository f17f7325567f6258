"""The speed benchmark's reference: a minimal hand-written PyTorch loop doing OnlineLM's arithmetic
(base forward with the adapter disabled, adapter forward + backward on KL + CE, one AdamW step;
optional generation) on the same model and tokens, timed per phase."""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from olm.bench.memory import tensor_storages

MS = 1e3


class MinimalLoop:
    """One OnlineLM turn's arithmetic in plain PyTorch: no Lightning, no olm code.

    Per turn: (generate exactly `generate_tokens` tokens,) render with the chat template and
    tokenize, base logits with the adapter disabled under no_grad, adapter logits,
    λ_KL·KL(base ‖ adapter) + λ_task·CE over every next token, backward, clip, AdamW step.

    Args:
        model: the peft model (shared with OnlineLM: the same base and adapter).
        tokenizer: its tokenizer with a chat template.
        optim: OnlineLM's `OptimSettings` (lr, betas, eps, weight decay, clip).
        kl_lambda: weight of the KL term.
        task_lambda: weight of the CE term.
        max_tokens: longer renderings keep their last max_tokens tokens.
        generate_tokens: tokens generated per turn (0: learn the given reply).
    """

    def __init__(
        self, model, tokenizer, optim, kl_lambda: float, task_lambda: float, max_tokens: int, generate_tokens: int = 0
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            self.params, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay
        )
        self.grad_clip, self.kl_lambda, self.task_lambda = optim.grad_clip, kl_lambda, task_lambda
        self.max_tokens, self.generate_tokens = max_tokens, generate_tokens
        self.device = next(model.parameters()).device

    def render(self, user: str, reply: str) -> torch.Tensor:
        """(1, T) token ids of the exchange."""
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        ids = self.tokenizer(self.tokenizer.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)
        return torch.tensor([ids["input_ids"][-self.max_tokens :]], device=self.device)

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

    def base_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """(1, T, V) logits with the adapter disabled."""
        with torch.no_grad(), self.model.disable_adapter():
            return self.model(input_ids=ids).logits

    def loss(self, ids: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """λ_KL·KL(base ‖ adapter) + λ_task·CE on (1, T) ids given the (1, T, V) base logits."""
        logits = self.model(input_ids=ids).logits[:, :-1].float()  # (1, T-1, V)
        log_q, log_p = F.log_softmax(logits, -1), F.log_softmax(base[:, :-1].float(), -1)
        kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1).mean()
        ce = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        return self.kl_lambda * kl + self.task_lambda * ce

    def step(self, user: str, reply: str) -> dict[str, float]:
        """One turn; returns the seconds of each phase, ``turn`` (the total, freeing the turn's
        tensors included, as in OnlineLM's turn) and ``tokens``."""
        start = time.perf_counter()
        laps = self._phases(user, reply)
        return {**laps, "turn": time.perf_counter() - start}

    def _phases(self, user: str, reply: str) -> dict[str, float]:
        laps, last = {}, time.perf_counter()

        def lap(name: str) -> None:
            nonlocal last
            _sync(self.device)
            now = time.perf_counter()
            laps[name], last = now - last, now

        if self.generate_tokens:
            reply = self.generate(user)
            lap("generate")
        ids = self.render(user, reply)
        lap("render")
        base = self.base_logits(ids)
        lap("base_forward")
        self.loss(ids, base).backward()
        lap("adapter_forward_backward")
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        lap("optimizer_step")
        return {**laps, "tokens": ids.shape[1]}

    def activation_bytes(self, user: str, reply: str) -> int:
        """Bytes of the distinct non-parameter storages saved for backward in one turn's adapter
        forward + loss, plus the base logits (no optimizer step is taken)."""
        params = set(tensor_storages(self.model.parameters()))
        saved: list[torch.Tensor] = []
        ids = self.render(user, reply)
        base = self.base_logits(ids)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            loss = self.loss(ids, base)
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
