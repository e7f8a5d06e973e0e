"""How different are a layer's experts? The diversity measures of OMOE_SPEC §6, in one place.

Measured on the *raw* expert outputs ``e_i`` across tokens (never on OMoE's q_i, which are
orthogonal per token by construction): mean pairwise |cosine| per token, linear CKA between the
experts' T × d output matrices (biased and debiased estimators, off-diagonal mean), and the
effective rank of the stacked outputs (E = every expert distinct, 1 = collapsed). The run
analysis and the diversity-over-training probe both call :func:`layer_diversity`.
"""
from __future__ import annotations

from typing import Iterable

import torch

from .capture import capture_experts
from .routing_stats import expert_effective_rank
from .similarity import cka_matrix, mean_pairwise_cosine

MEASURES = ("mean_abs_cosine", "mean_cka", "mean_cka_debiased", "effective_rank")


def off_diagonal_mean(matrix: torch.Tensor) -> float:
    """Mean of the off-diagonal entries of a square [E, E] matrix (E ≥ 2)."""
    n = matrix.shape[0]
    return float((matrix.sum() - matrix.diagonal().sum()) / (n * (n - 1)))


def layer_diversity(expert_outputs: torch.Tensor) -> dict:
    """The measures of one layer's outputs [T, E, d] (E ≥ 2; the debiased CKA needs T ≥ 4)."""
    cka = cka_matrix(expert_outputs)
    return {
        "mean_abs_cosine": mean_pairwise_cosine(expert_outputs),
        "cka": cka.tolist(),
        "mean_cka": off_diagonal_mean(cka),
        "mean_cka_debiased": off_diagonal_mean(cka_matrix(expert_outputs, debiased=True)),
        "effective_rank": expert_effective_rank(expert_outputs),
    }


def mean_over_layers(rows: Iterable[dict]) -> dict[str, float]:
    """Each measure averaged over the layers that have it."""
    rows = [row for row in rows if "mean_cka" in row]
    return {m: sum(row[m] for row in rows) / len(rows) for m in MEASURES} if rows else {}


def measure_diversity(model, batches: list[dict], max_tokens: int = 256, seed: int = 0) -> dict:
    """Diversity of every mixture layer on fixed probe batches: the means over layers plus
    ``per_layer`` {name: {block, measures}} (compact enough to record every K steps).

    Layers whose measures are undefined are left out: at the start of vanilla MoE-LoRA (B = 0)
    every expert outputs zero, which has no direction and no variance. Without any defined layer
    the result is empty.
    """
    captured = capture_experts(model, batches, max_tokens=max_tokens, seed=seed, progress=False)
    per_layer = {}
    for name, layer in captured.layers.items():
        if layer.num_experts > 1 and bool(layer.expert_outputs.abs().amax(dim=(0, 2)).gt(0).all()):
            measures = layer_diversity(layer.expert_outputs)
            per_layer[name] = {"block": layer.layer_index, **{m: measures[m] for m in MEASURES}}
    return {**mean_over_layers(per_layer.values()), "per_layer": per_layer} if per_layer else {}
