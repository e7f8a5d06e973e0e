"""How similar are two experts? Per-token cosine and across-token CKA (OMOE_SPEC §6).

Two different questions, two families of measures:

- *per token*: do experts i and j point the same way for this token?  ``pairwise_cosine``.
  After OMoE's Gram–Schmidt the orthogonalized outputs q_i have cosine 0 by construction, so
  this is only informative on the raw outputs e_i.
- *across tokens*: do experts i and j compute the same function of the input, up to a rotation
  and a scale?  Centered kernel alignment (CKA) between the T × d output matrices X_i, X_j whose
  rows are the same T tokens. Per-token orthogonality does not imply CKA = 0.

All measures compute in float64 and raise ValueError where the answer is undefined (constant
inputs, too few tokens) instead of returning NaN.
"""
from __future__ import annotations

import numpy as np
import torch

from ._tensors import as_float64, require_ndim

# Relative size below which centered features count as constant: float64 round-off of the
# mean leaves ~1e-16 relative residue, real variation is many orders above this.
_ZERO_VARIANCE_RTOL = 1e-12


def pairwise_cosine(expert_outputs) -> torch.Tensor:
    """Mean over tokens of the absolute cosine between every pair of experts.

    For expert outputs ``e[t, i] ∈ R^d`` (shape [T, E, d])::

        C[i, j] = (1/T) Σ_t |⟨e_ti, e_tj⟩| / (‖e_ti‖ ‖e_tj‖)

    Cosine is taken per token first, then averaged, so the value reads "how aligned are two
    experts on a typical token". The absolute value counts anti-parallel experts (e_j = −e_i,
    equally redundant) as aligned. Returns a float64 [E, E] tensor with ones on the diagonal.
    Raises ValueError if any expert output is exactly zero (its direction is undefined; this is
    the case for every expert of a MoE-LoRA at initialization, where B = 0).
    """
    e = as_float64(expert_outputs, "expert_outputs")
    require_ndim(e, 3, "expert_outputs", "[T, E, d]")
    if e.shape[0] == 0:
        raise ValueError("expert_outputs has no tokens")
    norms = e.norm(dim=-1)
    zero = norms == 0
    if zero.any():
        raise ValueError(
            f"{int(zero.sum())} expert outputs are exactly zero (e.g. an untrained adapter with B = 0); "
            "cosine similarity is undefined for them"
        )
    directions = e / norms.unsqueeze(-1)
    cosine = (directions @ directions.transpose(-1, -2)).abs().mean(dim=0)
    cosine.fill_diagonal_(1.0)
    return cosine


def mean_pairwise_cosine(expert_outputs) -> float:
    """Mean of ``pairwise_cosine`` over the E(E−1) off-diagonal pairs: 1 = fully collapsed
    experts, ≈ sqrt(2/(π d)) for independent random directions in R^d, 0 = always orthogonal."""
    cosine = pairwise_cosine(expert_outputs)
    num_experts = cosine.shape[0]
    if num_experts < 2:
        raise ValueError("mean pairwise cosine needs at least 2 experts")
    off_diagonal = ~torch.eye(num_experts, dtype=torch.bool)
    return float(cosine[off_diagonal].mean())


def _centered_features(x, name: str) -> torch.Tensor:
    """[T, d] features with the token mean removed, checked for non-zero variance."""
    x = as_float64(x, name)
    require_ndim(x, 2, name, "[tokens, features]")
    if x.shape[0] < 2:
        raise ValueError(f"{name} has {x.shape[0]} token(s); CKA needs at least 2")
    centered = x - x.mean(dim=0, keepdim=True)
    scale = x.norm()
    if scale == 0 or centered.norm() <= _ZERO_VARIANCE_RTOL * scale:
        raise ValueError(f"{name} has zero variance across tokens; CKA is undefined")
    return centered


def _check_same_tokens(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"X and Y must have the same tokens (rows): got {x.shape[0]} and {y.shape[0]}")


def _check_debiased_size(num_tokens: int) -> None:
    if num_tokens < 4:
        raise ValueError(f"the debiased HSIC estimator needs at least 4 tokens, got {num_tokens}")


def _linear_hsic(x: torch.Tensor, y: torch.Tensor, debiased: bool) -> torch.Tensor:
    """HSIC with linear kernels K = XXᵀ, L = YYᵀ for centered X [n, d1], Y [n, d2].

    Computed in feature space, never forming the n × n kernels (cost O(n·d1·d2)):

    - biased: ``tr(K H L H) / (n−1)² = ‖XᵀY‖²_F / (n−1)²`` (X already centered, so HKH = K).
    - debiased (Song et al. 2012), with K̃, L̃ the kernels with zeroed diagonals::

          HSIC₁ = [ tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1 ] / (n(n−3))

      where, with k = diag K (squared row norms) and l = diag L,
      ``tr(K̃L̃) = ‖XᵀY‖²_F − kᵀl``, ``1ᵀK̃1 = ‖Xᵀ1‖² − Σk``, ``K̃1 = X(Xᵀ1) − k``.
    """
    n = x.shape[0]
    cross = (x.T @ y).square().sum()
    if not debiased:
        return cross / (n - 1) ** 2
    k = x.square().sum(dim=1)
    l = y.square().sum(dim=1)
    x_sum = x.sum(dim=0)
    y_sum = y.sum(dim=0)
    trace_kl = cross - k @ l
    sum_k = x_sum @ x_sum - k.sum()
    sum_l = y_sum @ y_sum - l.sum()
    k_rowsums = x @ x_sum - k
    l_rowsums = y @ y_sum - l
    return (trace_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (k_rowsums @ l_rowsums)) / (n * (n - 3))


def _gram_hsic(k: torch.Tensor, l: torch.Tensor, debiased: bool) -> torch.Tensor:
    """HSIC from explicit n × n kernel matrices (same estimators as ``_linear_hsic``)::

        biased:   tr(K H L H) / (n−1)²,  H = I − 11ᵀ/n
        debiased: [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3))
    """
    n = k.shape[0]
    if not debiased:
        # tr(KHLH) = Σ (HKH) ⊙ (HLH) because H is symmetric and idempotent.
        return (_double_center(k) * _double_center(l)).sum() / (n - 1) ** 2
    k_tilde = k.clone().fill_diagonal_(0.0)
    l_tilde = l.clone().fill_diagonal_(0.0)
    k_rowsums = k_tilde.sum(dim=1)
    l_rowsums = l_tilde.sum(dim=1)
    trace_kl = (k_tilde * l_tilde).sum()
    return (
        trace_kl
        + k_rowsums.sum() * l_rowsums.sum() / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (k_rowsums @ l_rowsums)
    ) / (n * (n - 3))


def _double_center(k: torch.Tensor) -> torch.Tensor:
    """H K H: subtract row and column means, add back the grand mean."""
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


# Below this fraction of the biased estimate, a debiased self-HSIC counts as zero. It is exactly
# zero (up to round-off) when all tokens but one coincide: no pair of distinct tokens carries
# any spread, and the unbiased estimator has nothing to measure.
_DEGENERATE_SELF_HSIC_RTOL = 1e-10


def _self_hsic(kernel: torch.Tensor, hsic, debiased: bool, name: str) -> torch.Tensor:
    """HSIC(K, K), checked to be a usable normalizer."""
    value = hsic(kernel, kernel, debiased)
    if debiased and value <= _DEGENERATE_SELF_HSIC_RTOL * hsic(kernel, kernel, False):
        raise ValueError(
            f"debiased HSIC of {name} with itself is {float(value):.3g}, not positive: the tokens' spread "
            "is carried by a single token; use more (distinct) tokens or debiased=False"
        )
    return value


def _cka_from_hsic(hsic_xy: torch.Tensor, hsic_xx: torch.Tensor, hsic_yy: torch.Tensor) -> float:
    """CKA = HSIC(X, Y) / sqrt(HSIC(X, X) · HSIC(Y, Y)), normalizers from ``_self_hsic``."""
    return float(hsic_xy / torch.sqrt(hsic_xx * hsic_yy))


def linear_cka(X, Y, debiased: bool = False) -> float:
    """Linear centered kernel alignment between two representations of the same tokens.

    X [n, d1] and Y [n, d2] have one row per token. With centered features and linear kernels
    K = XXᵀ, L = YYᵀ::

        CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))

    Biased estimator (``debiased=False``, Kornblith et al. 2019): ``HSIC = tr(KHLH)/(n−1)²``,
    which gives ``CKA = ‖XᵀY‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)``, a similarity in [0, 1], invariant to
    orthogonal transforms and isotropic scaling of X or Y. With few tokens relative to the
    feature dimension it is biased upwards (unrelated random features score well above 0).

    Debiased estimator (``debiased=True``, the unbiased HSIC of Song et al. 2012 as used for CKA
    by Nguyen et al. 2021): removes that finite-sample bias, so unrelated features score ≈ 0.
    Because it is an unbiased estimate, not a squared quantity, it can dip slightly below 0 (and,
    rarely, above 1); the value is returned unclipped. Needs n ≥ 4.

    Computed in float64 in feature space (cost O(n·d1·d2), no n × n matrices). Raises
    ValueError if X or Y has zero variance across tokens (CKA would be 0/0), if the row counts
    differ, if there are too few tokens, or (debiased) if a single token carries all of X's or
    Y's spread, which makes the unbiased HSIC(X, X) exactly 0.
    """
    x = _centered_features(X, "X")
    y = _centered_features(Y, "Y")
    _check_same_tokens(x, y)
    if debiased:
        _check_debiased_size(x.shape[0])
    return _cka_from_hsic(
        _linear_hsic(x, y, debiased),
        _self_hsic(x, _linear_hsic, debiased, "X"),
        _self_hsic(y, _linear_hsic, debiased, "Y"),
    )


def median_distance(X) -> float:
    """Median Euclidean distance between distinct tokens (rows) of X, the RBF bandwidth heuristic."""
    x = _centered_features(X, "X")
    return _median_distance(_squared_distances(x), "X")


def _squared_distances(x: torch.Tensor) -> torch.Tensor:
    """‖x_i − x_j‖² = ‖x_i‖² + ‖x_j‖² − 2⟨x_i, x_j⟩, clamped at 0 against round-off."""
    sq_norms = x.square().sum(dim=1)
    distances = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
    return distances.fill_diagonal_(0.0)


def _median_distance(sq_distances: torch.Tensor, name: str) -> float:
    n = sq_distances.shape[0]
    upper = torch.triu_indices(n, n, offset=1)
    median = float(np.median(sq_distances[upper[0], upper[1]].sqrt().numpy()))
    if median <= 0:
        raise ValueError(
            f"more than half of the token pairs in {name} are identical; the median-distance "
            "RBF bandwidth is 0 — pass sigma explicitly"
        )
    return median


def _rbf_gram(x: torch.Tensor, sigma: float | None, bandwidth_factor: float, name: str) -> torch.Tensor:
    """K_ij = exp(−‖x_i − x_j‖² / (2σ²)), σ = bandwidth_factor · median distance unless given."""
    sq_distances = _squared_distances(x)
    if sigma is None:
        sigma = bandwidth_factor * _median_distance(sq_distances, name)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return torch.exp(-sq_distances / (2.0 * sigma**2))


def rbf_cka(
    X, Y, sigma: float | None = None, bandwidth_factor: float = 1.0, debiased: bool = False
) -> float:
    """CKA with Gaussian (RBF) kernels: a non-linear similarity of two representations.

    ``K_ij = exp(−‖x_i − x_j‖² / (2σ_X²))`` and likewise L for Y, then
    ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with the same biased / debiased HSIC
    estimators as ``linear_cka`` (computed here from the explicit n × n kernels).

    Bandwidth: by default ``σ_X = bandwidth_factor × median_{i<j} ‖x_i − x_j‖``, each
    representation with its own median (the usual heuristic; it makes the measure invariant to
    isotropic scaling). ``bandwidth_factor`` ≪ 1 makes the kernel local (only near neighbours
    count), ≫ 1 approaches linear CKA. A given ``sigma`` is used for both X and Y.
    Memory O(n²): keep n to a few thousand tokens. Raises ValueError like ``linear_cka``, and
    when the median distance is 0.
    """
    x = _centered_features(X, "X")
    y = _centered_features(Y, "Y")
    _check_same_tokens(x, y)
    if debiased:
        _check_debiased_size(x.shape[0])
    k = _rbf_gram(x, sigma, bandwidth_factor, "X")
    l = _rbf_gram(y, sigma, bandwidth_factor, "Y")
    return _cka_from_hsic(
        _gram_hsic(k, l, debiased), _self_hsic(k, _gram_hsic, debiased, "X"), _self_hsic(l, _gram_hsic, debiased, "Y")
    )


def cka_matrix(
    expert_outputs,
    kind: str = "linear",
    debiased: bool = False,
    sigma: float | None = None,
    bandwidth_factor: float = 1.0,
) -> torch.Tensor:
    """CKA between every pair of experts of one layer: [T, E, d] → float64 [E, E].

    ``M[i, j] = CKA(X_i, X_j)`` where ``X_i = expert_outputs[:, i, :]`` is expert i's output for
    the T tokens. ``kind`` is ``"linear"`` (see ``linear_cka``) or ``"rbf"`` (see ``rbf_cka``;
    keeps E kernels of T × T in memory). Self-similarities are computed once and the matrix is
    filled symmetrically; the diagonal is exactly 1. Collapsed experts (same function of the
    input up to rotation and scale) give off-diagonal values near 1.
    """
    e = as_float64(expert_outputs, "expert_outputs")
    require_ndim(e, 3, "expert_outputs", "[T, E, d]")
    num_tokens, num_experts = e.shape[0], e.shape[1]
    if debiased:
        _check_debiased_size(num_tokens)
    features = [_centered_features(e[:, i], f"expert {i}'s outputs") for i in range(num_experts)]
    if kind == "linear":
        kernels, hsic = features, _linear_hsic
    elif kind == "rbf":
        kernels = [_rbf_gram(x, sigma, bandwidth_factor, f"expert {i}'s outputs") for i, x in enumerate(features)]
        hsic = _gram_hsic
    else:
        raise ValueError(f"kind must be 'linear' or 'rbf', got {kind!r}")
    self_hsic = [_self_hsic(k, hsic, debiased, f"expert {i}'s outputs") for i, k in enumerate(kernels)]
    matrix = torch.eye(num_experts, dtype=torch.float64)
    for i in range(num_experts):
        for j in range(i + 1, num_experts):
            value = _cka_from_hsic(hsic(kernels[i], kernels[j], debiased), self_hsic[i], self_hsic[j])
            matrix[i, j] = matrix[j, i] = value
    return matrix
