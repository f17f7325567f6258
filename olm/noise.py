"""Noisy input embeddings while the adapter trains (NEFTune, Jain et al. 2023).

A fact is taught through a few templated questions; the held-out phrasings the benchmark asks are
other words around the same subject. NEFTune adds uniform noise to the token embeddings of the
training forward only — ``U(-1, 1) · α / sqrt(T · d)`` per element, T the batch's padded width and
d the embedding size, the scale of ``transformers``' ``neftune_noise_alpha`` — so the adapter cannot
lean on the exact embedding of each template word and has to key on what survives the noise.

`embedding_noise` is a context manager: inside it every forward of `model` sees noisy embeddings
(the adapter's training forwards of `OnlineLM.learn`); the base's reference forward and the
locality prompts run outside it, on clean inputs. α = 0 adds nothing (no hook is registered).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch


def noise_scale(alpha: float, width: int, dim: int) -> float:
    """Bound of the uniform noise per embedding element: α / sqrt(width · dim)."""
    return alpha / math.sqrt(max(width, 1) * dim)


@contextmanager
def embedding_noise(model, alpha: float, width: int, generator: torch.Generator | None = None):
    """Add ``U(-s, s)`` noise, s = `noise_scale`, to the input embeddings of every forward of `model` inside.

    Args:
        model: a transformers (or peft) model with ``get_input_embeddings()``.
        alpha: NEFTune's α; 0 = no noise.
        width: the padded width of the batch (the T of the scale), fixed across the forwards of a
            step (a shared-prefix forward runs the prefix and the rest as two calls).
        generator: random source of the noise (default: torch's global one).
    """
    if alpha <= 0:
        yield
        return
    embeddings = model.get_input_embeddings()

    def hook(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
        s = noise_scale(alpha, width, output.shape[-1])
        noise = torch.rand(output.shape, generator=generator, dtype=output.dtype, device=output.device)
        return output + (noise * 2 - 1) * s

    handle = embeddings.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
