"""Is a set of expert outputs on the Stiefel manifold? A check, not evidence of diversity.

OMoE's ``"stiefel"`` mode makes the orthogonalized outputs q_1..q_E of every token orthonormal
(OMOE_SPEC §3, §6). Stacking them as the columns of ``Q_t ∈ R^{d × E}``, that means
``Q_tᵀ Q_t = I``. This holds by construction, so it checks the implementation (and its
numerics), it does not show that the experts learned different things — use
``similarity`` on the raw outputs for that.

Layout: tensors here are ``[..., E, d]`` — the expert axis before the feature axis, as every
adapter layer returns them — so the math's column ``q_i`` is ``Q[..., i, :]`` and the math's
``QᵀQ`` is ``Q @ Q.mT`` here.
"""
from __future__ import annotations

import numpy as np
import torch

from ._tensors import as_bool, as_float64

# Round-off of Gram–Schmidt grows roughly with the number of vectors; a factor 10 leaves room
# for the Gram-based fast path (OMOE_SPEC §6: ~10·E·eps).
_TOLERANCE_FACTOR = 10.0


def stiefel_error_per_token(Q, active=None) -> torch.Tensor:
    """``‖Q_tᵀQ_t − diag(active_t)‖_F`` for every token t: [..., E, d] → float64 [...].

    The Frobenius norm sums the deviation of all E² inner products, so it bounds both the
    worst column norm and the worst pairwise overlap. Computed in float64 after upcasting, so the
    measured error is the input's, not this function's.

    Without ``active`` the target is the identity: every column must be a unit vector and
    orthogonal to the others. With ``active`` ([..., E] bool, e.g. the routing mask) the target
    is ``diag(active)``: active columns orthonormal, inactive columns exactly zero — which is what
    OMoE produces for unselected experts, and what it produces for *redundant* experts too (an
    expert in the span of the earlier ones gets q = 0). To check "the non-zero columns are
    orthonormal" pass ``active = Q.norm(dim=-1) > 0``.
    """
    q = as_float64(Q, "Q")
    if q.ndim < 2:
        raise ValueError(f"Q must be [..., E, d], got shape {tuple(q.shape)}")
    if q.shape[:-2].numel() == 0:
        raise ValueError("Q has no tokens")
    num_experts = q.shape[-2]
    if active is None:
        target = torch.eye(num_experts, dtype=torch.float64)
    else:
        mask = as_bool(active, "active")
        if mask.shape != q.shape[:-1]:
            raise ValueError(f"active must have shape {tuple(q.shape[:-1])} (Q without d), got {tuple(mask.shape)}")
        target = torch.diag_embed(mask.to(torch.float64))
    return torch.linalg.matrix_norm(q @ q.mT - target, ord="fro")


def stiefel_error(Q, active=None) -> float:
    """``max_t ‖Q_tᵀQ_t − diag(active_t)‖_F``: the worst token's departure from orthonormality.

    See ``stiefel_error_per_token`` for the layout and the meaning of ``active``.
    """
    return float(stiefel_error_per_token(Q, active).max())


def default_stiefel_tolerance(dtype, num_experts: int) -> float:
    """``10 · E · eps(dtype)``: float32 with 4 experts → 4.8e-6; bfloat16 → 0.31."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"Q must be floating point, got {dtype}")
        eps = torch.finfo(dtype).eps
    else:
        np_dtype = np.dtype(dtype)
        if np_dtype.kind != "f":
            raise ValueError(f"Q must be floating point, got {np_dtype}")
        eps = float(np.finfo(np_dtype).eps)
    return _TOLERANCE_FACTOR * num_experts * eps


def assert_on_stiefel(Q, active=None, tol: float | None = None) -> float:
    """Raise AssertionError unless ``stiefel_error(Q, active) ≤ tol``; return the error.

    ``tol`` defaults to ``default_stiefel_tolerance`` of Q's own dtype (before upcasting): a
    float32 Q cannot be orthonormal to better than float32 round-off.
    """
    error = stiefel_error(Q, active)
    if tol is None:
        dtype = Q.dtype if isinstance(Q, torch.Tensor) else np.asarray(Q).dtype
        tol = default_stiefel_tolerance(dtype, np.shape(Q)[-2])
    if not error <= tol:
        raise AssertionError(f"expert outputs are not orthonormal: Stiefel error {error:.3g} > tolerance {tol:.3g}")
    return error


def direction_stiefel_error(orthogonal_outputs) -> float:
    """Stiefel error of the directions ``q_k / ‖q_k‖`` over the live (non-zero) experts.

    Only ``"stiefel"`` also makes the q_k unit length; the raw q_k of ``"orthogonal"`` and
    ``"norm_preserving"`` keep their lengths, which ``stiefel_error`` would report as error, so
    orthogonality of those modes is checked on their directions.
    """
    q = as_float64(orthogonal_outputs, "orthogonal_outputs")
    norms = q.norm(dim=-1, keepdim=True)
    return stiefel_error(q / norms.clamp_min(1e-300), active=norms[..., 0] > 0)
