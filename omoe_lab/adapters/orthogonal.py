"""Gram–Schmidt over expert outputs, twice: the readable reference and the rank-space fast path.

For the active experts in index order (OMOE_SPEC §3),

    u_k = e_k − Σ_{j<k} ⟨e_k, q̂_j⟩ q̂_j,        q̂_k = u_k / ‖u_k‖,

and the mode decides what each expert contributes:
``"stiefel"`` ``q_k = q̂_k``; ``"orthogonal"`` ``q_k = u_k``; ``"norm_preserving"`` ``q_k = ‖e_k‖ q̂_k``.

Redundant experts. An expert with ``‖u_k‖ ≤ tol·‖e_k‖`` (zero, duplicated, or in the span of the
experts before it, one or several, with any coefficients) has no direction of its own: it gets
``q̂_k = 0`` and contributes nothing. An additive ``u/(‖u‖+eps)`` would instead turn float round-off
into a vector of arbitrary length and direction, which is neither orthonormal nor small.

Precision. The fast path decides redundancy from a Gram matrix, whose round-off (~eps of its
dtype) sets how small a threshold it can resolve: ``resolvable_tol(dtype)``, 1.49e-6 in float64
but 3.45e-2 in float32. A smaller ``tol`` is refused with a ValueError, never silently raised.
The same round-off bounds the coefficients with which an expert can lie in the span of earlier
ones and still be recognized as redundant (``live_experts``: ``‖β‖ ≲ tol/(c·√eps)`` in the
cosine metric, c ≈ 1.5–5: ~4500 in float64 at the default tol, 20–67 in float32 at its floor).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

MODES = ("stiefel", "orthogonal", "norm_preserving")


def gram_schmidt(
    vectors: torch.Tensor,
    active: torch.Tensor | None = None,
    mode: str = "stiefel",
    tol: float = 1e-4,
) -> torch.Tensor:
    """Reference Gram–Schmidt on materialized vectors [..., E, d] → q [..., E, d].

    Classical Gram–Schmidt with one re-orthogonalization ("twice is enough": the second pass
    removes what round-off left along earlier directions, so near-collinear experts still give
    orthonormal columns). Inactive experts (``active`` [..., E] False) are skipped: zero output,
    no influence on later experts. This is the slow, readable definition the fast path is tested
    against; it loops over experts and holds every ``e_k``.
    """
    _check_mode(mode)
    num_experts = vectors.shape[-2]
    if active is None:
        active = torch.ones(vectors.shape[:-1], dtype=torch.bool, device=vectors.device)
    directions: list[torch.Tensor] = []  # the unit q̂_j, zero for skipped experts
    outputs = []
    for k in range(num_experts):
        e_k = vectors[..., k, :]
        u = e_k
        for _ in range(2):
            for q_hat in directions:
                u = u - (u * q_hat).sum(-1, keepdim=True) * q_hat
        norm_u = u.norm(dim=-1, keepdim=True)
        norm_e = e_k.norm(dim=-1, keepdim=True)
        live = active[..., k : k + 1] & (norm_u > tol * norm_e)
        q_hat = torch.where(live, u / torch.where(live, norm_u, 1.0), 0.0)
        directions.append(q_hat)
        scale = {"stiefel": 1.0, "orthogonal": norm_u, "norm_preserving": norm_e}[mode]
        outputs.append(q_hat * scale)
    return torch.stack(outputs, dim=-2)


def expert_gram(a: torch.Tensor, lora_B: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Gram matrix of the expert outputs, computed in rank space: [N, E, r] → [N, E, E].

    ``G_ij = e_iᵀ e_j = a_iᵀ (B_iᵀ B_j) a_j`` with ``a_i = A_i x`` and ``e_i = B_i a_i``.
    ``M = B_catᵀ B_cat`` ((E·r)²) is built once per call from the weights; per token the Gram
    costs O(E²·r²) instead of the O(E·r·d_out) of materializing the experts.
    Float64 by default: the Gram squares the experts' condition number, and its rounding error is
    what limits how well the implicit columns are orthonormal (it is a tiny tensor).
    """
    a = a.to(dtype)
    return gram_of_product(metric_product(a, expert_metric(lora_B, dtype)[1]), a)


def expert_metric(lora_B: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B_cat, M)``: ``B_cat`` [d_out, E·r] and ``M = B_catᵀ B_cat`` viewed [E, r, E·r] (block rows)."""
    num_experts, d_out, rank = lora_B.shape
    b_cat = lora_B.to(dtype).permute(1, 0, 2).reshape(d_out, num_experts * rank)
    return b_cat, (b_cat.T @ b_cat).view(num_experts, rank, num_experts * rank)


def metric_product(a: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
    """``T[i, t, j, q] = (a_tiᵀ M_ij)_q`` [E, N, E, r]: one batched matmul over the experts i."""
    num_experts, rank = metric.shape[:2]
    return torch.bmm(a.transpose(0, 1), metric).view(num_experts, -1, num_experts, rank)


def gram_of_product(product: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``G[t, i, j] = Σ_q T[i, t, j, q] a[t, j, q]`` [N, E, E]."""
    return (product.transpose(0, 1) * a.unsqueeze(1)).sum(-1)


def cosine_penalty(gram: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Per-token mean squared cosine between the active experts' outputs, from their Gram matrix.

    ``gram`` [N, E, E] (``expert_gram``: rank space, no e_i formed), ``active`` [N, E] → [N]:

        pen_t = Σ_{i≠j} act_i act_j · cos²_ij / Σ_{i≠j} act_i act_j,   cos²_ij = G_ij² / (G_ii G_jj).

    Squared, so it is smooth at the orthogonal optimum and cannot be lowered by anti-aligning
    experts (a signed mean of cosines could). A token with fewer than two active experts has no
    pair and gets 0. A zero expert (``G_ii = 0``: MoE-LoRA's B = 0 start) has no direction: its
    cosines count as 0 and give no gradient, where ``0/0`` would give NaN.
    """
    squared_norms = gram.diagonal(dim1=-2, dim2=-1)
    nonzero = squared_norms > 0
    inv_norm = torch.where(nonzero, torch.where(nonzero, squared_norms, 1.0).rsqrt(), 0.0)
    cosines = gram * inv_norm[..., :, None] * inv_norm[..., None, :]
    off_diagonal = ~torch.eye(gram.shape[-1], dtype=torch.bool, device=gram.device)
    pairs = active[..., :, None] & active[..., None, :] & off_diagonal
    count = pairs.sum(dim=(-2, -1)).clamp_min(1)
    return (cosines.square() * pairs).sum(dim=(-2, -1)) / count


def resolvable_tol(dtype: torch.dtype) -> float:
    """Smallest redundancy ``tol`` a Gram matrix in ``dtype`` resolves: ``100·√eps`` (float64 1.49e-6,
    float32 3.45e-2).

    The Gram's round-off leaves ``≈ c·√eps·‖β‖`` in the relative residual that ``live_experts``
    measures for a redundant expert (``β``: its coefficients on earlier ones in the cosine metric,
    1 for a duplicate; c ≈ 1.5 in float64, up to 5 in float32, measured for E = 3–16). At this
    ``tol`` a duplicate measures 20–67× below it, and an expert in the span of earlier ones is
    recognized up to ``‖β‖ ≈ 20–67``; a larger ``tol`` resolves larger coefficients. An expert kept
    live at the threshold makes the implicit columns lose orthogonality as ``eps/tol² ≤ 1e-4``.
    A float32 Gram cannot see a residual of 1e-4 at all: ``1 − cos² ≈ 1e-8 < eps32``. (The jitter
    of that measurement, ``redundancy_jitter``, is ``(resolvable_tol/10)²`` whatever ``tol`` is.)
    """
    return 100 * math.sqrt(torch.finfo(dtype).eps)


def check_resolvable_tol(tol: float, dtype: torch.dtype, fixes: str | None = None) -> None:
    """Raise a ValueError when a ``dtype`` Gram cannot resolve the redundancy threshold ``tol``.

    Python floats and dtypes only (no tensor is read), so it is free inside a traced forward.
    """
    floor = resolvable_tol(dtype)
    if tol < floor:
        if fixes is None:
            fixes = f"compute the Gram in torch.float64, or set tol >= {round_up(floor):.2g}"
        raise ValueError(
            f"redundancy_tol={tol:g} is below {floor:.3g}, the smallest relative residual a {dtype} Gram "
            f"matrix can resolve (orthogonal.resolvable_tol); experts that close to the span of earlier "
            f"ones would be misclassified. Fix: {fixes}"
        )


def round_up(value: float, digits: int = 2) -> float:
    """``value`` rounded up to ``digits`` significant digits (a threshold to suggest that still passes)."""
    step = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return math.ceil(value / step) * step


class GramSchmidtFactors(NamedTuple):
    """What ``gram_schmidt_factors`` computes on the way to the weights (the analytic backward reuses it)."""

    weights: torch.Tensor  # w [N, E]: Σ_k g_k q_k = Σ_j w_j e_j
    solution: torch.Tensor  # y = L^{-T} c [N, E], so w = y ⊙ D^{-1/2}
    chol: torch.Tensor  # L [N, E, E]: C = L Lᵀ on the live experts, identity rows elsewhere
    inv_norm: torch.Tensor  # 1/‖e_k‖ [N, E] as given (0 at least where not kept)
    scale: torch.Tensor  # the mode's scale of each q̂_k [N, E] (c = g ⊙ scale ⊙ live)


def gram_schmidt_weights(
    gram: torch.Tensor,
    gates: torch.Tensor,
    active: torch.Tensor,
    mode: str = "stiefel",
    tol: float = 1e-4,
) -> torch.Tensor:
    """Weights ``w`` [N, E] with ``Σ_k g_k q_k = Σ_j w_j e_j``, from the Gram matrix alone.

    Gram–Schmidt in index order is the Cholesky factorization of the Gram matrix: with the
    cosine matrix ``C = D^{-1/2} G D^{-1/2} = L Lᵀ`` (``D = diag G``, ``L`` lower triangular),
    ``Q̂ = E D^{-1/2} L^{-T}`` has orthonormal columns and ``q̂_k`` is built from ``e_1..e_k``.
    ``L_kk = ‖u_k‖/‖e_k‖`` is each expert's relative residual, so

    1. factor ``C + δI`` (inactive experts replaced by identity rows; ``δ = 100·eps`` keeps exact
       duplicates factorizable) and call expert k redundant when the part of its pivot in expert
       space, ``r_k = L̃_kk √(1 − δ‖(L̃⁻¹)_k‖²)``, is ``≤ tol`` (the pivot itself also counts the
       jitter, ``√δ·‖β‖`` for an expert in the span of earlier ones with coefficients β): ``live_experts``;
    2. factor ``C`` again without the redundant experts, and solve
       ``w = D^{-1/2} L^{-T} (g ⊙ scale)`` with scale 1 (stiefel), ``L_kk ‖e_k‖`` (orthogonal)
       or ``‖e_k‖`` (norm_preserving): ``gram_schmidt_factors``.

    Batched over tokens (two factorizations, two triangular solves), no Python loop over experts,
    no host synchronization. Raises a ValueError
    when ``tol < resolvable_tol(gram.dtype)`` (a float32 Gram with the default 1e-4, for one).
    """
    _check_mode(mode)
    check_resolvable_tol(tol, gram.dtype)
    inv_norm, cosines = normalized(gram, active)
    return gram_schmidt_factors(inv_norm, cosines, gates, live_experts(inv_norm, cosines, tol), mode).weights


def normalized(gram: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1/‖e_k‖, C)``: inverse norms [N, E] (0 where not ``keep`` or zero) and the cosine matrix
    ``C = D^{-1/2} G D^{-1/2}`` [N, E, E] (rows and columns of those experts 0)."""
    squared_norms = gram.diagonal(dim1=-2, dim2=-1)
    keep = keep & (squared_norms > 0)
    inv_norm = torch.where(keep, torch.where(keep, squared_norms, 1.0).rsqrt(), 0.0)
    return inv_norm, gram * inv_norm[..., :, None] * inv_norm[..., None, :]


def masked_cholesky(cosines: torch.Tensor, keep: torch.Tensor, jitter: float = 0.0) -> torch.Tensor:
    """``L`` of ``C + δI`` on the experts in ``keep``, with identity rows and columns for the others."""
    return masked_cholesky_ex(cosines, keep, jitter).L


def masked_cholesky_ex(cosines: torch.Tensor, keep: torch.Tensor, jitter: float = 0.0):
    """``torch.linalg.cholesky_ex`` of ``masked_cholesky``'s matrix: ``(L, info)``."""
    eye = torch.eye(cosines.shape[-1], dtype=cosines.dtype, device=cosines.device)
    masked = torch.where(keep[..., :, None] & keep[..., None, :], cosines, eye)
    return torch.linalg.cholesky_ex(masked + jitter * eye if jitter else masked)


def live_experts(inv_norm: torch.Tensor, cosines: torch.Tensor, tol: float) -> torch.Tensor:
    """Experts with a direction of their own [N, E] (bool), from ``normalized(gram, active)``: active,
    non-zero, and a relative residual ``ρ_k = ‖u_k‖/‖e_k‖ > tol``. Decides only; no gradient.

    ``ρ_k`` is measured in one factorization ``C + δI = L̃L̃ᵀ`` over the non-zero experts, with the
    jitter ``δ = redundancy_jitter(dtype)`` that keeps duplicates factorizable. Its pivot is not
    the residual: with ``C + δI = XᵀX``, ``X = [V; √δ I]`` (``V`` the unit expert outputs), the pivot
    ``L̃_kk = ‖x̃_k − Σ_j β_j x̃_j‖`` is the residual of a ridge fit ``β``,
    ``L̃_kk² = r_k² + δ(1 + ‖β‖²)``, ``r_k = ‖ĉ_k − Σ_j β_j ĉ_j‖``. An expert exactly in the span of
    several nearly parallel ones has ``‖β‖ ~ 1/ρ`` of theirs, so its pivot ``≈ √δ·‖β‖`` can exceed any
    threshold (it did, at the former ``δ = (tol/10)²``, once ``‖β‖ ≳ 10``). The test is on ``r_k``,
    the part of ``x̃_k``'s residual in expert space: row k of ``L̃⁻¹`` is ``z_k = (−β, 1)/L̃_kk``,
    and ``q̃_k = X z_k`` is a unit vector, so

        r_k² = L̃_kk² (1 − δ‖z_k‖²),          live ⇔ r_k > tol.

    ``r_k ≥ ρ_k`` (a ridge fit is no better than least squares), so no expert with ``ρ_k > tol`` is
    dropped; an expert in the span of earlier ones has ``r_k ≤ δ/λ_min`` (``λ_min`` the smallest
    eigenvalue of the earlier experts' cosine matrix), far below ``tol``. What limits the test is
    the Gram's round-off, ``≈ c·√eps·‖β‖`` in ``r_k`` (c ≈ 1.5 in float64, up to 5 in float32;
    measured for E = 3–16): an expert whose coefficients on earlier ones reach ``‖β‖ ≈ tol/(c·√eps)``
    (~4500 in float64 at the default 1e-4, where two live experts give at most ``‖β‖ ≈ 1/tol``;
    20–67 in float32 at its 3.45e-2) cannot be told from a live one by this Gram, and is kept. The jitter only adds a direction
    outside expert space, so a redundant expert does not disturb the later ones' ``r``: one
    factorization, one triangular inverse, no loop over experts, no host synchronization.

    Residuals are measured against every earlier non-zero expert, redundant ones included, where
    the reference ``gram_schmidt`` measures against the live ones only: the two differ only where a
    later expert lies along the residual of one dropped just under the threshold.
    """
    with torch.no_grad():
        nonzero = inv_norm > 0
        jitter = redundancy_jitter(cosines.dtype)
        factor = masked_cholesky_ex(cosines, nonzero, jitter)
        eye = torch.eye(cosines.shape[-1], dtype=cosines.dtype, device=cosines.device)
        rows = torch.linalg.solve_triangular(factor.L, eye, upper=False)  # L̃⁻¹: row k is z_k
        residual_sq = factor.L.diagonal(dim1=-2, dim2=-1).square() * (1 - jitter * rows.square().sum(-1))
        # cholesky_ex stops at a non-positive pivot (info = its index + 1) and leaves the rest of L̃
        # unfactored. δ = 100·eps keeps it away (none in 12800 tokens of duplicate- and span-heavy
        # experts, float32 and float64); should it happen, no expert from there on is trusted as live
        factored = torch.arange(cosines.shape[-1], device=cosines.device) < torch.where(
            factor.info > 0, factor.info - 1, cosines.shape[-1]
        ).unsqueeze(-1)
        return nonzero & factored & (residual_sq > tol * tol)


def redundancy_jitter(dtype: torch.dtype) -> float:
    """``δ = 100·eps(dtype)`` = ``(resolvable_tol(dtype)/10)²``, the jitter of ``live_experts``: above the
    factorization's round-off (float32 Cholesky of cosine matrices full of duplicates fails below
    ~10·eps), and as small as that allows, because the ridge fit's bias ``δ/λ_min`` grows with it."""
    return 100 * torch.finfo(dtype).eps


def gram_schmidt_factors(
    inv_norm: torch.Tensor, cosines: torch.Tensor, gates: torch.Tensor, live: torch.Tensor, mode: str,
    chol: torch.Tensor | None = None,
) -> GramSchmidtFactors:
    """Step 2 of ``gram_schmidt_weights`` on the ``live`` experts: ``w = D^{-1/2} L^{-T} (g ⊙ scale ⊙ live)``.

    ``inv_norm`` and ``cosines`` are ``normalized(gram, keep)`` for any ``keep ⊇ live`` (the active
    experts, say): only live rows and columns are read, and ``y_k = 0`` wherever k is not live.
    ``chol``: ``masked_cholesky(cosines, live)`` when the caller has it already (no gradient through it).
    """
    if chol is None:
        chol = masked_cholesky(cosines, live)
    if mode == "stiefel":
        scale = torch.ones_like(inv_norm)
    else:
        norm = 1.0 / torch.where(live, inv_norm, 1.0)
        scale = chol.diagonal(dim1=-2, dim2=-1) * norm if mode == "orthogonal" else norm
    coefficients = (gates.to(cosines.dtype) * scale * live)[..., None]
    solution = torch.linalg.solve_triangular(chol.mT, coefficients, upper=True)[..., 0]
    return GramSchmidtFactors(solution * inv_norm, solution, chol, inv_norm, scale)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown orthogonalize mode {mode!r}: choose one of {list(MODES)}")


# ---------------------------------------------------------------------------------------------------
# Mixed precision: the Gram and its factorization in float32, float64 only for the tokens that need it
# ---------------------------------------------------------------------------------------------------

#: float32's unit roundoff ``u = 2⁻²⁴``: a correctly rounded operation has relative error ≤ u.
UNIT_ROUNDOFF_32 = 2.0 ** -24
#: η: the largest first-order relative error of any expert's pivot ``ρ_k²`` (and so of its direction
#: and weight) that a token may carry on the float32 path; above it the token is recomputed in float64.
#: The estimate is pessimistic: on 44,800 tokens of random and near-collinear experts (E 2–16, r 1–16,
#: d 32–600, scales up to 1e3) the float32 output's measured error was at most 0.11× it (0.02–0.06×
#: where it is 1e-5–1e-3). At η = 1e-3 no float32 token erred by more than 5.9e-6 (typically 1e-7–1e-6),
#: inside float32's 1e-5 test tolerance, and a random expert pair up to |cos| ≈ 0.97 (E 8, r 16) stays
#: on the float32 path (docs/decisions.md, "Mixed-precision Gram").
MIXED_PIVOT_ERROR = 1e-3


def float32_gram_error(a: torch.Tensor, b_sq_norms: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``ε_t`` [N]: an estimate of ``‖δC‖₂``, the error of the cosine matrix ``C`` that a float32 Gram carries.

    The float32 Gram ``G_ij = Σ_pq a_ip (M_ij)_pq a_jq`` is formed from ``M = B_catᵀB_cat`` built in
    float64 and rounded once (relative u per entry), then two contractions of ``r`` terms each. Under
    the probabilistic model of rounding errors (Higham & Mary 2019: independent, zero-mean errors of
    size ≤ u, bound with λ = 1) its error is ``|δG_ij| ≲ √(2r+1)·u·Σ_pq |a_ip||M_pq||a_jq|``, and by
    Cauchy–Schwarz that sum is at most ``‖B_i‖_F‖a_i‖·‖B_j‖_F‖a_j‖``. In cosine units
    (``C_ij = G_ij ι_i ι_j``, ``ι_i = 1/‖e_i‖``) that is ``|δC_ij| ≲ √(2r+1)·u·s_i s_j`` with
    ``s_i = ‖B_i‖_F‖a_i‖/‖e_i‖ ≥ 1``, how much larger expert i's rank-space terms are than its
    output (cancellation inside ``B_i a_i``). So ``‖δC‖₂ ≤ ‖δC‖_F ≲ √(2r+1)·u·Σ_i s_i²``, plus
    ``4u·E`` for the normalization (three roundings per entry, one in ``ι``) and the float32
    Cholesky's own backward error (``|ΔC_ij| ≤ γ_{E+1}`` for a unit-diagonal ``C``: ``≤ (E+1)u·E``
    in norm). An expert with rank-space terms but ``G_ii = 0`` (underflow, or total cancellation)
    gives ``s_i = ∞``: the token is never trusted to float32. Exactly zero experts (``a_i = 0`` or
    ``B_i = 0``) are zero in both precisions and do not count.
    """
    num_experts, rank = gram.shape[-1], a.shape[-1]
    rank_space = a.square().sum(-1) * b_sq_norms  # ‖a_i‖²‖B_i‖_F² [N, E]
    counted = keep & (rank_space > 0)
    squared_norms = gram.diagonal(dim1=-2, dim2=-1)
    cancellation = torch.where(counted, rank_space / torch.where(counted, squared_norms, 1.0), 0.0)  # s_i², ∞ if G_ii = 0
    u = UNIT_ROUNDOFF_32
    return math.sqrt(2 * rank + 1) * u * cancellation.sum(-1) + (4 + num_experts + 1) * u * num_experts


class MixedGramGuard(NamedTuple):
    """What ``mixed_gram_guard`` finds on the float32 path (the forward reuses its factor)."""

    safe: torch.Tensor  # [N] bool: the float32 result stands; False: recompute the token in float64
    live: torch.Tensor  # [N, E] bool: active and non-zero (where safe, every such expert is live)
    chol: torch.Tensor  # L [N, E, E] of C on the live experts (meaningless where not safe)
    inv_norm: torch.Tensor  # 1/‖e_k‖ [N, E] (0 where not active or zero)
    cosines: torch.Tensor  # C [N, E, E]


def mixed_gram_guard(
    gram: torch.Tensor, a: torch.Tensor, b_sq_norms: torch.Tensor, active: torch.Tensor, tol: float,
    pivot_error: float = MIXED_PIVOT_ERROR,
) -> MixedGramGuard:
    """Which tokens a float32 Gram ``gram`` [N, E, E] (of ``a`` [N, E, r]) answers as float64 would.

    Factor the cosine matrix of the active non-zero experts without jitter, ``C = LLᵀ``, and invert
    ``L`` (one batched triangular solve). Row k of ``L⁻¹`` is ``z_k = (−β, 1)/L_kk`` (``β``: expert
    k's coefficients on the earlier ones, ``L_kk = ρ_k`` its relative residual), and to first order
    an error ``δC`` moves the pivot by ``δ(ρ_k²) = (−β,1) δC (−β,1)ᵀ``, so

        |δ(ρ_k²)| / ρ_k²  ≤  ‖δC‖₂ · ‖z_k‖²  ≈  ε_t · ‖z_k‖²        (ε_t: ``float32_gram_error``).

    ``‖z_k‖² = (1 + ‖β‖²)/ρ_k² ≥ 1/ρ_k²`` also bounds how much the weights and directions move
    (``‖C⁻¹‖₂ ≤ Σ_k ‖z_k‖²``). A token is *safe* when the factorization succeeded, every number is
    finite, every live expert's pivot is resolved, ``ε_t · max_k ‖z_k‖² ≤ η`` (``pivot_error``,
    :data:`MIXED_PIVOT_ERROR`), and every pivot clears the redundancy threshold with that margin,
    ``ρ_k²(1 − 2η) > tol²``. Then float64's ``live_experts`` keeps every active non-zero expert too
    (its ``r_k ≥ ρ_k``), and the float32 weights differ from float64's by the rounding the estimate
    allows. The first condition is the binding one: it asks ``ρ_k² ≥ ε_t/η`` (ρ ≳ 0.03–0.1 at the
    benchmark's shapes), far above the default ``tol = 1e-4``, so a token anywhere near the threshold
    — an expert within ~10⁻² of the span of earlier ones, a duplicate, an expert in the span — is
    never answered in float32. No gradient; no host synchronization.
    """
    with torch.no_grad():
        inv_norm, cosines = normalized(gram, active)
        live = inv_norm > 0
        factor = masked_cholesky_ex(cosines, live)
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        rows = torch.linalg.solve_triangular(factor.L, eye, upper=False)  # L⁻¹: row k is z_k
        worst = rows.square().sum(-1).amax(-1)  # max_k ‖z_k‖² [N] (1 for the identity rows)
        error = float32_gram_error(a, b_sq_norms, gram, active)
        pivots_sq = factor.L.diagonal(dim1=-2, dim2=-1).square()
        clear = (~live | (pivots_sq * (1 - 2 * pivot_error) > tol * tol)).all(-1)
        safe = (factor.info == 0) & clear & (error * worst <= pivot_error)  # NaN and ∞ compare False
        return MixedGramGuard(safe, live, factor.L, inv_norm, cosines)
