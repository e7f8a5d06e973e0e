"""Where do tokens go, and how many distinct directions do the experts span? (OMOE_SPEC §6)

Routing measures take gates ``g`` [..., E] (one row per token, non-negative, rows sum to 1,
zeros for unselected experts, as every adapter layer's ``route`` returns them). Effective-rank
measures take expert outputs. All compute in float64 and return Python floats or float64
tensors; undefined cases raise ValueError.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd
import torch

from ._tensors import as_float64, require_ndim

if TYPE_CHECKING:
    from .capture import Captured

# Gates come from a float32 (or bf16-autocast) softmax and renormalization; rows that miss 1 by
# more than this are not gates (logits or unnormalized scores passed by mistake).
_GATE_SUM_TOL = 1e-3


def _gate_rows(gates) -> torch.Tensor:
    """Gates flattened to float64 [N, E], checked to be probability rows."""
    g = as_float64(gates, "gates")
    if g.ndim < 1:
        raise ValueError(f"gates must be [..., E], got shape {tuple(g.shape)}")
    g = g.reshape(-1, g.shape[-1])
    if g.shape[0] == 0 or g.shape[1] == 0:
        raise ValueError(f"gates has no tokens or no experts: shape {tuple(g.shape)}")
    if (g < 0).any():
        raise ValueError("gates must be non-negative (pass routing gates, not router logits)")
    # a row of zeros is a token that chose only null experts (AdaMoE): it uses no real expert
    sums = g.sum(dim=1)
    worst = float(torch.minimum((sums - 1.0).abs(), sums.abs()).max())
    if worst > _GATE_SUM_TOL:
        raise ValueError(f"gate rows must sum to 1, or to 0 for a token routed only to null experts (worst row is off by {worst:.3g})")
    return g


def routing_entropy(gates, normalized: bool = False) -> float:
    """Mean over tokens of the routing entropy ``H_t = −Σ_i g_ti log g_ti`` (nats, 0 log 0 = 0).

    0 = every token uses one expert (top-1, or a collapsed router); ``log E`` = uniform gates.
    ``normalized=True`` divides by ``log E`` so layers with different E compare on [0, 1];
    top-k routing caps it at ``log k / log E``. Undefined (ValueError) for a single expert.
    """
    g = _gate_rows(gates)
    entropy = -torch.special.xlogy(g, g).sum(dim=1).mean()
    if not normalized:
        return float(entropy)
    num_experts = g.shape[1]
    if num_experts < 2:
        raise ValueError("normalized routing entropy needs at least 2 experts (log 1 = 0)")
    return float(entropy / math.log(num_experts))


def expert_load(gates) -> torch.Tensor:
    """Mean gate per expert, ``load_i = (1/T) Σ_t g_ti``: float64 [E], sums to 1.

    The share of the adapter's mixing mass each expert carries; ``1/E`` each when balanced.
    """
    return _gate_rows(gates).mean(dim=0)


def topk_frequency(gates) -> torch.Tensor:
    """Fraction of tokens for which each expert is active (``g_ti > 0``): float64 [E].

    Under top-k routing the frequencies sum to k; under soft routing every expert is always
    active (all ones), so only ``expert_load`` tells the experts apart there.
    """
    return (_gate_rows(gates) > 0).to(torch.float64).mean(dim=0)


def _effective_rank_of_batch(matrices: torch.Tensor) -> torch.Tensor:
    """Roy & Vetterli (2007): ``exp(−Σ_k p_k log p_k)`` with ``p_k = σ_k / Σ_j σ_j``, per matrix."""
    singular_values = torch.linalg.svdvals(matrices)
    totals = singular_values.sum(dim=-1, keepdim=True)
    if (totals == 0).any():
        raise ValueError(f"{int((totals == 0).sum())} matrices are all zero; their effective rank is undefined")
    p = singular_values / totals
    return torch.exp(-torch.special.xlogy(p, p).sum(dim=-1))


def effective_rank(matrix) -> float:
    """Effective rank of a matrix [n, d] (Roy & Vetterli 2007).

    With singular values σ_1..σ_m and ``p_k = σ_k / Σ_j σ_j``::

        erank = exp(H(p)),  H(p) = −Σ_k p_k log p_k

    A continuous count of directions: 1 for a rank-1 matrix, m when all singular values are
    equal, in between when a few directions dominate. Applied to expert outputs stacked as rows
    it measures how many distinct directions the experts actually use.
    """
    x = as_float64(matrix, "matrix")
    require_ndim(x, 2, "matrix", "[n, d]")
    if x.numel() == 0:
        raise ValueError(f"matrix is empty: shape {tuple(x.shape)}")
    return float(_effective_rank_of_batch(x))


def expert_effective_rank(expert_outputs) -> float:
    """Mean over tokens of the effective rank of the E expert outputs of that token.

    For each token, the E × d matrix whose rows are ``e_1..e_E`` has effective rank 1 when the
    experts are collapsed (parallel outputs) and E when they are orthogonal *with equal norms*
    (OMoE's ``"stiefel"`` q_i give exactly E). It mixes direction and size: one expert much
    larger than the rest pulls it towards 1 even if all are orthogonal. Raises ValueError if any
    token has all expert outputs zero (e.g. an untrained MoE-LoRA, B = 0).
    """
    e = as_float64(expert_outputs, "expert_outputs")
    require_ndim(e, 3, "expert_outputs", "[T, E, d]")
    if e.shape[0] == 0:
        raise ValueError("expert_outputs has no tokens")
    return float(_effective_rank_of_batch(e).mean())


def routing_summary(captured: "Captured", by_task: bool = True) -> pd.DataFrame:
    """Load, active frequency and entropy per (layer, task, expert) from a capture.

    One row per expert of every routed layer (E ≥ 2; LoRA layers have no router and are left
    out), per task when ``by_task`` and the capture knows the tasks (else task ``"all"``).
    Columns: ``layer`` (module name), ``block`` (transformer block index), ``method``, ``task``,
    ``expert``, ``tokens`` (rows in the group), ``load`` (mean gate), ``frequency`` (fraction
    active), ``entropy`` (mean routing entropy of the group, nats) and ``entropy_normalized``
    (divided by log E) — the last two repeat across the experts of a group.
    """
    groups: list[tuple[str, torch.Tensor]]
    tasks = captured.tasks if by_task else None
    if tasks is None:
        groups = [("all", torch.ones(len(captured), dtype=torch.bool))]
    else:
        groups = [(task, torch.as_tensor(tasks == task)) for task in sorted(set(tasks.tolist()))]
    rows = []
    for name, layer in captured.layers.items():
        if layer.num_experts < 2:
            continue
        for task, rows_of_task in groups:
            gates = layer.gates[rows_of_task]
            load, frequency = expert_load(gates), topk_frequency(gates)
            entropy = routing_entropy(gates)
            for expert in range(layer.num_experts):
                rows.append({
                    "layer": name, "block": layer.layer_index, "method": layer.method, "task": task,
                    "expert": expert, "tokens": int(rows_of_task.sum()),
                    "load": float(load[expert]), "frequency": float(frequency[expert]),
                    "entropy": entropy, "entropy_normalized": entropy / math.log(layer.num_experts),
                })
    if not rows:
        raise ValueError("the capture has no routed layers (LoRA layers have a single expert and no router)")
    return pd.DataFrame(rows)
