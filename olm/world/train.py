"""Pretraining of the built-in model: Qwen2 config, corpus encoding and packing, the training loop.

Conversations are rendered with the chat template and tokenized; every token gets a loss
weight (1 on assistant replies and their ``<|im_end|>``, `prompt_loss_weight` elsewhere), so the
model spends its small capacity on answering. Conversations are packed whole into rows of
`seq_len` tokens (padding at the row end, weight 0) and trained with AdamW, linear warm-up and
cosine decay, deterministically on CPU for a fixed thread count.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from olm.world.corpus import Conversation
from olm.world.tokenizer import IM_END, IM_START

log = logging.getLogger(__name__)

Encoded = tuple[list[int], list[float]]
"""Token ids of one conversation and the loss weight of each token as a target."""


@dataclass
class ModelConfig:
    """Shape of the Qwen2 model."""

    hidden_size: int = 256
    """Width of the residual stream."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention (query) heads."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention, as in Qwen2.5)."""
    intermediate_size: int = 768
    """Width of the SwiGLU MLP."""
    max_position_embeddings: int = 2048
    """Longest context (RoPE; no parameters depend on it)."""
    rope_theta: float = 10000.0
    """RoPE base."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.num_heads >= 1 and self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size!r} must be divisible by num_heads {self.num_heads!r}")
        if self.num_kv_heads >= 1 and self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads {self.num_heads!r} must be divisible by num_kv_heads {self.num_kv_heads!r}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))


@dataclass
class TrainConfig:
    """Optimisation of the pretraining run."""

    seq_len: int = 256
    """Tokens per packed row."""
    batch_size: int = 16
    """Rows per optimizer step."""
    epochs: int = 1
    """Passes over the corpus (each with a fresh packing order)."""
    lr: float = 2e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.05
    """Final learning rate as a share of the peak (cosine decay)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    beta2: float = 0.99
    """AdamW second-moment decay (beta1 is 0.9)."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    prompt_loss_weight: float = 0.3
    """Loss weight of non-reply tokens (user messages, role headers). Above 0 the model also
    learns the user's statements, the only place the facts of `World.statement_people` occur."""
    threads: int = 2
    """torch CPU threads, fixed for reproducibility (results differ bitwise between thread counts).
    One thread is reproducible on any machine and the fastest when the cores are shared; two are
    ~1.6x faster on an idle 2-core machine."""
    log_every: int = 50
    """Log loss and throughput every this many steps."""
    max_minutes: float | None = None
    """Stop early after this much training time (the run is then not reproducible); None = no cap."""
    bf16: bool = True
    """bfloat16 autocast for the forward pass (weights and optimizer stay float32): ~1.6x faster on
    CPUs with AVX512-BF16 / AMX; set False elsewhere."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("seq_len", "batch_size", "epochs", "threads", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            problems.append(
                f"need warmup_steps >= 0, weight_decay >= 0, grad_clip > 0, got "
                f"{self.warmup_steps!r}, {self.weight_decay!r}, {self.grad_clip!r}"
            )
        if not 0 <= self.beta2 < 1 or not 0 <= self.prompt_loss_weight <= 1:
            problems.append(f"need beta2, prompt_loss_weight in [0, 1), got {self.beta2!r}, {self.prompt_loss_weight!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            problems.append(f"max_minutes must be > 0 or None, got {self.max_minutes!r}")
        if problems:
            raise ValueError("invalid train config: " + "; ".join(problems))


@dataclass
class TrainStats:
    """What a training run did."""

    steps: int
    planned_steps: int
    tokens: int
    seconds: float
    final_loss: float
    stopped_early: bool


def build_model(config: ModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen2ForCausalLM:
    """A freshly initialised Qwen2ForCausalLM for `tokenizer`, eos = <|im_end|>, pad = <|endoftext|>."""
    torch.manual_seed(seed)
    qwen = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=config.rope_theta,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(qwen)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    return model


def render_with_spans(conv: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """The chat-template text of `conv` and the char spans of each assistant reply + <|im_end|>.

    Identical to ``tokenizer.apply_chat_template(conv, tokenize=False)`` for the template of
    `olm.world.tokenizer` (checked in the tests), but without Jinja, so the corpus encodes fast.
    """
    text, spans = "", []
    for m in conv:
        text += f"{IM_START}{m['role']}\n"
        start = len(text)
        text += m["content"] + IM_END
        if m["role"] == "assistant":
            spans.append((start, len(text)))
        text += "\n"
    return text, spans


def encode_corpus(
    tokenizer: PreTrainedTokenizerFast, conversations: list[Conversation], prompt_loss_weight: float
) -> list[Encoded]:
    """Tokenize conversations and weight each token as a training target."""
    rendered = [render_with_spans(c) for c in conversations]
    enc = tokenizer([t for t, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for (_, spans), ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
        weights = [1.0 if any(a <= s < b for a, b in spans) else prompt_loss_weight for s, _ in offsets]
        out.append((ids, weights))
    return out


def pack(encoded: list[Encoded], seq_len: int, pad_id: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack whole conversations, in a shuffled order, into rows of `seq_len` tokens.

    Returns:
        ids (N, seq_len) long and weights (N, seq_len) float; padding has weight 0. A
        conversation longer than a row is cut to `seq_len` tokens.
    """
    order = list(range(len(encoded)))
    rng.shuffle(order)
    rows: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    for i in order:
        conv_ids, conv_w = encoded[i][0][:seq_len], encoded[i][1][:seq_len]
        if len(ids) + len(conv_ids) > seq_len:
            rows.append((ids, weights))
            ids, weights = [], []
        ids, weights = ids + conv_ids, weights + conv_w
    if ids:
        rows.append((ids, weights))
    id_t = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    w_t = torch.zeros((len(rows), seq_len), dtype=torch.float32)
    for r, (row_ids, row_w) in enumerate(rows):
        id_t[r, : len(row_ids)] = torch.tensor(row_ids)
        w_t[r, : len(row_w)] = torch.tensor(row_w)
    return id_t, w_t


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to `lr * min_lr_ratio` at `total` steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def weighted_lm_loss(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy weighted per target token; 0 when every weight is 0.

    Args:
        logits: (B, T, V) model outputs.
        ids: (B, T) input ids (targets are ids shifted by one).
        weights: (B, T) weight of each token as a target.
    """
    vocab = logits.shape[-1]
    ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), ids[:, 1:].reshape(-1), reduction="none")
    w = weights[:, 1:].reshape(-1)
    total = w.sum()
    return (ce * w).sum() / total if total > 0 else ce.sum() * 0.0


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, config.beta2))


def set_determinism(config: TrainConfig, seed: int) -> None:
    """Fixed threads, seeds and deterministic kernels."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def train_model(
    model: Qwen2ForCausalLM,
    encoded: list[Encoded],
    pad_id: int,
    config: TrainConfig,
    seed: int = 0,
    on_log: Callable[[int], None] | None = None,
) -> TrainStats:
    """Pretrain `model` in place on the encoded corpus.

    Args:
        model: the freshly built model.
        encoded: the corpus, one (ids, weights) per conversation.
        pad_id: id used to pad rows.
        config: optimisation settings.
        seed: seed of the packing order (and of torch's RNG; the init has its own, see `build_model`).
        on_log: called with the step number at every log step (e.g. a quick quality probe).

    Returns:
        `TrainStats` of the run.
    """
    set_determinism(config, seed)
    rng = random.Random(seed)
    rows_per_epoch = pack(encoded, config.seq_len, pad_id, random.Random(seed))[0].shape[0]
    total = config.epochs * math.ceil(rows_per_epoch / config.batch_size)
    opt = make_optimizer(model, config)
    model.train()
    step, tokens, loss_value, start = 0, 0, float("nan"), time.perf_counter()
    for _ in range(config.epochs):
        ids, weights = pack(encoded, config.seq_len, pad_id, rng)
        for b in range(0, ids.shape[0], config.batch_size):
            if config.max_minutes is not None and time.perf_counter() - start > 60 * config.max_minutes:
                log.warning("stopping after %d of %d steps: max_minutes=%s reached", step, total, config.max_minutes)
                return TrainStats(step, total, tokens, time.perf_counter() - start, loss_value, True)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, config)
            batch_ids, batch_w = ids[b : b + config.batch_size], weights[b : b + config.batch_size]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                logits = model(input_ids=batch_ids).logits
            loss = weighted_lm_loss(logits, batch_ids, batch_w)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step, tokens, loss_value = step + 1, tokens + batch_ids.numel(), loss.item()
            if step % config.log_every == 0 or step == total:
                elapsed = time.perf_counter() - start
                log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s", step, total, loss_value, lr_at(step, total, config), tokens / elapsed)
                if on_log is not None:
                    on_log(step)
                    model.train()
    model.eval()
    return TrainStats(step, total, tokens, time.perf_counter() - start, loss_value, False)
