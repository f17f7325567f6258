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
