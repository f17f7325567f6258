"""Loss functions of the online step: pure tensor functions, no Lightning.

    loss = λ_KL · KL(base ‖ adapter) + λ_task · Σ w·ℓ / Σ w

KL(base ‖ adapter) is self-distillation towards the frozen base (the same network with the
adapter disabled); the task term is a token-weighted next-token cross-entropy. Every function
returns 0 (not NaN) when its mask selects nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_to_base(adapter_logits: torch.Tensor, base_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-token KL(base ‖ adapter) over the masked positions.

    Args:
        adapter_logits: (B, T, V) logits of the adapted model.
        base_logits: (B, T, V) logits of the base model (no grad needed).
        mask: (B, T) bool or 0/1; positions to average over.

    Returns:
        Scalar tensor: Σ_t mask_t · Σ_v p_base (log p_base − log p_adapter) / Σ_t mask_t, 0 if the
        mask is empty.
    """
    log_q = F.log_softmax(adapter_logits.float(), dim=-1)
    log_p = F.log_softmax(base_logits.float(), dim=-1)
    per_token = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)  # (B, T)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp_min(1.0)


def weighted_token_ce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Token-weighted cross-entropy Σ w·ℓ / Σ w.

    Args:
        logits: (B, T, V) predictions for `targets` (already shifted: logits[:, t] predicts targets[:, t]).
        targets: (B, T) token ids.
        weights: (B, T) non-negative weights; 0 excludes a token (the loss mask folded in).

    Returns:
        Scalar tensor, 0 when every weight is 0.
    """
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    w = weights.to(nll.dtype)
    # the clamp keeps an all-zero weight vector at 0/eps = 0 without a host sync
    return (nll * w).sum() / w.sum().clamp_min(torch.finfo(nll.dtype).tiny)


def online_loss(
    adapter_logits: torch.Tensor,
    base_logits: torch.Tensor,
    input_ids: torch.Tensor,
    loss_weights: torch.Tensor,
    kl_mask: torch.Tensor,
    kl_lambda: float,
    task_lambda: float,
) -> dict[str, torch.Tensor]:
    """The online objective on one rendered sequence.

    Args:
        adapter_logits: (B, T, V) adapted-model logits over `input_ids`.
        base_logits: (B, T, V) base-model logits over `input_ids`.
        input_ids: (B, T) token ids.
        loss_weights: (B, T) weight of each token *as a target* (0 = not a target).
        kl_mask: (B, T) positions whose next-token distributions are pulled to the base.
        kl_lambda: weight of the KL term.
        task_lambda: weight of the task (cross-entropy) term.

    Returns:
        {"loss", "kl", "ce"} scalar tensors; "loss" carries the gradient.
    """
    kl = kl_to_base(adapter_logits[:, :-1], base_logits[:, :-1], kl_mask[:, :-1])
    ce = weighted_token_ce(adapter_logits[:, :-1], input_ids[:, 1:], loss_weights[:, 1:])
    return {"loss": kl_lambda * kl + task_lambda * ce, "kl": kl, "ce": ce}


def top_k_log_probs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` most likely tokens of each distribution: (N, k) log-probabilities and (N, k) ids.

    Args:
        logits: (N, V) logits.
        k: tokens kept (clamped to V).
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    return log_p.topk(min(k, log_p.shape[-1]), dim=-1)


def top_k_kl(
    adapter_logits: torch.Tensor,
    base_top_log_p: torch.Tensor,
    base_top_ids: torch.Tensor,
    position_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean KL(base ‖ adapter) with the base stored as its top-k tokens plus one "rest" bucket.

    The base distribution is coarsened to k + 1 outcomes (its k most likely tokens and all the
    others together) and the adapter's distribution to the same outcomes; the KL of the coarsened
    distributions is a lower bound of the full one, equal to it when k = V. Storing k values per
    position instead of V is what lets the base's outputs on the locality prompts be cached.

    Args:
        adapter_logits: (N, V) adapted-model logits at the compared positions.
        base_top_log_p: (N, k) base log-probabilities of its top-k tokens (`top_k_log_probs`).
        base_top_ids: (N, k) their token ids.
        position_weights: (N,) how many times each position counts (default 1 each); the sum is
            still divided by N, so a weight above 1 adds to the term instead of diluting the rest.

    Returns:
        Scalar tensor: Σ weight × KL over the N positions, divided by N (0 if N = 0).
    """
    if adapter_logits.shape[0] == 0:
        return adapter_logits.sum() * 0.0
    log_q = F.log_softmax(adapter_logits.float(), dim=-1)
    log_q_top = log_q.gather(-1, base_top_ids)  # (N, k)
    p_top = base_top_log_p.exp()
    tiny = torch.finfo(log_q.dtype).tiny
    p_rest = (1.0 - p_top.sum(-1)).clamp_min(0.0)  # (N,)
    q_rest = (1.0 - log_q_top.exp().sum(-1)).clamp_min(tiny)
    top = (p_top * (base_top_log_p - log_q_top)).sum(-1)
    rest = torch.xlogy(p_rest, p_rest) - p_rest * q_rest.log()
    kl = top + rest
    if position_weights is not None:
        return (kl * position_weights.to(kl.dtype)).sum() / kl.shape[0]
    return kl.mean()
