"""Keep the adapter blind to the inputs of unrelated text: LoRA down-projections in a null space.

A LoRA layer adds B·A·x to a frozen linear layer. If every row of A is orthogonal to the inputs x
the layer sees on unrelated text, the adapter adds nothing there, whatever B learns: the update
lands only in directions such text does not use. This is the null-space constraint of AlphaEdit
(Fang et al., 2024), applied to a LoRA adapter instead of a rank-one edit: from the uncentred second
moment C = Σ x xᵀ of a layer's inputs on a corpus of unrelated text, the eigen-directions holding
`energy` of its trace are *protected*, and after every optimizer step A ← A·P with P = I − U Uᵀ the
projector onto the rest (`NullSpace.apply`, in its cheaper form). Layers fed the same input (gate_proj
and up_proj) share one moment, one eigendecomposition and one `NullSpace`.

The corpus is the locality term's prompts and the base's greedy replies (`olm.locality`): the
benchmark's general prompts stay held out. These are pure functions; `LocalityTerm` computes the
projectors once (the base never changes) and `OnlineLearner.learn` applies them after each step.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch import nn


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The peft LoRA layers of `model` by name: modules with ``lora_A`` and a ``base_layer``."""
    return {
        name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")
    }


@torch.no_grad()
def input_moments(model: nn.Module, sequences: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Σ x xᵀ (float64) of the inputs of every LoRA layer over all positions of `sequences`.

    Args:
        model: a peft model; run as given (disable the adapter around the call for the base's inputs).
        sequences: 1-D token id tensors, each run on its own (no padding enters the sums).
    """
    layers = lora_layers(model)
    sums: dict[str, torch.Tensor] = {}
    same: dict[str, str] = {}  # layers fed the very same tensor (gate_proj and up_proj): summed once
    seen: list[tuple[torch.Tensor, str]] = []  # this forward's inputs, held so no address is reused

    def hook(name):
        def record(_module, args):
            x = args[0]
            first = next((n for t, n in seen if t is x), None)
            if first is not None and first != name:
                same[name] = first
                return
            seen.append((x, name))
            x = x.reshape(-1, x.shape[-1]).float()
            xx = (x.T @ x).to(torch.float64)  # one sequence's products in float32, summed in float64
            sums[name] = sums[name] + xx if name in sums else xx

        return record

    handles = [m.base_layer.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    device = next(model.parameters()).device
    try:
        for ids in sequences:
            seen.clear()
            model(input_ids=ids[None].to(device))
    finally:
        for h in handles:
            h.remove()
    for name, first in same.items():
        sums[name] = sums[first]  # the same tensor object: `LocalityTerm` decomposes it once
    return sums


def protected_basis(moment: torch.Tensor, energy: float) -> torch.Tensor:
    """U: the fewest top eigenvectors of `moment` holding `energy` of its trace.

    Args:
        moment: (d, d) symmetric positive semi-definite (an uncentred second moment).
        energy: in [0, 1): the share of the trace to protect; 0 gives no direction.

    Returns:
        (d, k) float32 orthonormal columns (k = 0 at energy 0).
    """
    if not 0 <= energy < 1:
        raise ValueError(f"energy must be in [0, 1), got {energy!r}")
    d = moment.shape[0]
    if energy == 0:
        return torch.zeros(d, 0)
    values, vectors = torch.linalg.eigh(moment.to(torch.float64))
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)  # descending
    share = values.cumsum(0) / values.sum().clamp_min(1e-300)
    k = int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype)).item()) + 1
    return vectors[:, : min(k, d)].to(torch.float32)


def projector_from_basis(u: torch.Tensor) -> torch.Tensor:
    """P = I − U Uᵀ (float32) for orthonormal columns U (d, k)."""
    u = u.to(torch.float64)
    return (torch.eye(u.shape[0], dtype=torch.float64) - u @ u.T).to(torch.float32)


def null_projector(moment: torch.Tensor, energy: float) -> torch.Tensor:
    """P = I − U Uᵀ, U the fewest top eigenvectors of `moment` holding `energy` of its trace
    (`protected_basis`); (d, d) float32, the identity at energy 0."""
    return projector_from_basis(protected_basis(moment, energy))


def protected_share(moment: torch.Tensor, projector: torch.Tensor) -> float:
    """The share of Σ‖x‖² a projector removes: 1 − tr(P C P) / tr(C) (diagnostics, tests)."""
    p = projector.to(torch.float64)
    return float(1 - torch.trace(p @ moment @ p) / torch.trace(moment).clamp_min(1e-300))


class NullSpace:
    """Where one layer's A is kept: the complement of the protected directions U (d, k).

    `apply` computes A·P with P = I − U Uᵀ in whichever form costs less: A − (A U) Uᵀ takes 2·r·d·k
    multiply-adds, A·P takes r·d². On smollm2 the MLP down-projections' inputs (d = 1536) keep 95 %
    of their energy in 33–750 directions, so the low-rank form is up to 20× cheaper there; the
    576-wide gate/up inputs need 190–330 of 576, and there A·P is. Same values up to rounding.
    """

    def __init__(self, basis: torch.Tensor) -> None:
        self.basis = basis
        """(d, k) orthonormal columns: the protected directions."""
        self._projector: torch.Tensor | None = None
        self._on: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}  # the operand per device and dtype

    @property
    def projector(self) -> torch.Tensor:
        """P = I − U Uᵀ, (d, d) float32 (`projector_from_basis`), computed on first use."""
        if self._projector is None:
            self._projector = projector_from_basis(self.basis)
        return self._projector

    @property
    def low_rank(self) -> bool:
        """Whether `apply` uses A − (A U) Uᵀ (2k < d) rather than A·P."""
        d, k = self.basis.shape
        return 2 * k < d

    def apply(self, a: torch.Tensor) -> torch.Tensor:
        """A·P for A (r, d)."""
        key = (a.device, a.dtype)
        if key not in self._on:
            self._on[key] = (self.basis if self.low_rank else self.projector).to(device=a.device, dtype=a.dtype)
        m = self._on[key]
        return a - (a @ m) @ m.T if self.low_rank else a @ m


@torch.no_grad()
def project_lora_a(
    model: nn.Module, spaces: dict[str, NullSpace], seen: dict[tuple[str, str], tuple[weakref.ref, int]] | None = None,
    active_only: bool = False,
) -> int:
    """A ← A·P for every LoRA layer with a null space (every adapter of the layer; with `active_only` the
    active one(s) alone: per-user runs keep other users' adapters loaded, whose spaces may differ,
    `olm.exemption`).

    With `seen` (a dict the caller keeps between calls), an A that is the same tensor at the same
    version counter as when this function last projected it (nothing wrote to it since: no optimizer
    step, no loaded state, no new adapter) is left as it is. Returns how many A were projected.
    """
    done = 0
    for name, layer in lora_layers(model).items():
        if name not in spaces:
            continue
        for key, lin in layer.lora_A.items():
            if active_only and key not in layer.active_adapters:
                continue
            w = lin.weight
            mark = seen.get((name, key)) if seen is not None else None
            if mark is not None and mark[0]() is w and mark[1] == w._version:
                continue
            w.copy_(spaces[name].apply(w))
            done += 1
            if seen is not None:
                seen[(name, key)] = (weakref.ref(w), w._version)
    return done


@torch.no_grad()
def inputs_at(model: nn.Module, sequences: Iterable[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    """The input of every LoRA layer at one position of each sequence: (n, d) float32 per layer.

    Args:
        model: a peft model; run as given (disable the adapter around the call for the base's inputs).
        sequences: (1-D token ids, position) pairs, each run on its own.
    """
    layers = lora_layers(model)
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    at = [0]

    def hook(name):
        def record(_module, args):
            rows[name].append(args[0][0, at[0]].float().cpu())

        return record

    handles = [m.base_layer.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    device = next(model.parameters()).device
    try:
        for ids, position in sequences:
            at[0] = position
            model(input_ids=ids[None].to(device))
    finally:
        for h in handles:
            h.remove()
    empty = {name: torch.zeros(0, layer.base_layer.in_features) for name, layer in layers.items()}
    return {name: torch.stack(r) if r else empty[name] for name, r in rows.items()}


def exempt_basis(basis: torch.Tensor, keys: torch.Tensor, tol: float = 1e-4) -> torch.Tensor:
    """The protected directions less the keys': an orthonormal basis of span(U) ∩ (U Uᵀ X)ᵀ⊥.

    A key whose input lies inside the protected subspace (a context that unrelated text also uses, such
    as "You live in") cannot be written by an adapter kept in the null space; exempting its in-U part
    frees exactly those directions and keeps every other protected one.

    Args:
        basis: U (d, k) orthonormal columns.
        keys: X (m, d), the inputs to exempt.
        tol: in-U parts under this share of the longest key's norm are rounding, treated as none.

    Returns:
        (d, k − rank) float32, rank ≤ min(k, m) the number of independent in-U parts.
    """
    k = basis.shape[1]
    if k == 0 or keys.shape[0] == 0:
        return basis
    u = basis.to(torch.float64)
    coords = u.T @ keys.to(torch.float64).T  # (k, m): each key's part inside span(U), in U's coordinates
    left, s, _ = torch.linalg.svd(coords, full_matrices=True)  # left (k, k): the parts' directions first
    rank = int((s > tol * keys.to(torch.float64).norm(dim=1).max()).sum()) if s.numel() else 0
    return (u @ left[:, rank:]).to(torch.float32).contiguous()
