"""OMoE's mixing step as one autograd Function, with its backward derived by hand.

``orthogonal_mix(a, B, g, active, m)`` returns ``m · w ⊙ a`` [N, E, r], the input of the final
``B_cat`` matmul, with ``w`` from Gram–Schmidt on the rank-space Gram (``orthogonal``). Autograd
through that path keeps a [N, E, E, r] product and several [N, E, E] factors, or, under a
checkpoint, runs the whole forward a second time and then its ~80-operation backward. Here the
forward keeps only what vanilla MoE-LoRA keeps (``a``, the gates) plus the live mask, and the
backward recomputes the Gram and one factorization and then applies, in the Gram's dtype:

- ``out = m·w⊙a``: ``ā = m·w⊙ō``, ``s_k = ⟨ō_k, a_k⟩``, ``w̄ = m·s``, ``m̄ = Σ w⊙s``;
- ``w = y⊙ι`` (``ι = 1/‖e‖``): ``ȳ = w̄⊙ι``, ``ῑ = w̄⊙y``;
- ``Lᵀy = c``: ``c̄ = v = L^{-1}ȳ``, ``L̄ = −tril(y vᵀ)``;
- ``c = g⊙scale⊙live``: ``ḡ = v⊙scale⊙live``; orthogonal (scale ``L_kk/ι_k``) and
  norm_preserving (scale ``1/ι_k``) also reach ``L_kk`` and ``ι``;
- ``C = LLᵀ`` (Murray 2016): ``C̄ = sym(L^{-T} Φ(LᵀL̄) L^{-1})``, Φ = lower triangle, half diagonal;
- ``C_ij = G_ij ι_i ι_j`` on live pairs: ``Ḡ = C̄⊙ιιᵀ``, ``ῑ += 2 Σ_j C̄_ij G_ij ι_j``, and
  ``ι = G_kk^{-1/2}``: ``Ḡ_kk −= ½ ῑ_k ι_k³``;
- ``G_ij = a_iᵀ M_ij a_j``, ``M = B_catᵀB_cat``: ``ā_i += 2 Σ_j Ḡ_ij M_ij a_j``,
  ``M̄_ij = Σ_t Ḡ_ij a_i a_jᵀ``, ``B̄_cat = 2 B_cat M̄``.

Mixed precision (``mixed=True``, ``OMoELinear.mixed_precision_gram``): forward and backward run in
float32 for the tokens ``orthogonal.mixed_gram_guard`` trusts and in the Gram's dtype for the gathered
others (``mixed_forward``, ``mixed_backward``); ``docs/decisions.md``, "Mixed-precision Gram".

Everything meets in the Gram's dtype and is rounded to ``a``'s only as a sum (see
``OMoELinear.mixed_inputs``: for near-collinear experts its parts are large and cancel).
``tests/test_adapters.py`` checks the backward against autograd through the differentiable path
and against finite differences (``torch.autograd.gradcheck``).
"""
from __future__ import annotations

import torch

from .orthogonal import (
    expert_metric, gram_of_product, gram_schmidt_factors, live_experts, metric_product, mixed_gram_guard, normalized,
)


def orthogonal_mix(
    a: torch.Tensor, slot_B: torch.Tensor, gates: torch.Tensor, active: torch.Tensor, magnitude: torch.Tensor,
    mode: str, tol: float, gram_dtype: torch.dtype, mixed: bool = False, stats: dict | None = None,
) -> torch.Tensor:
    """``m · w ⊙ a`` [N, E, r] in ``a``'s dtype; ``a`` [N, E, r], ``slot_B`` [E, d_out, r], gates/active [N, E].

    ``mixed``: the Gram and its factorization in float32, and in ``gram_dtype`` (float64) only for the
    tokens ``orthogonal.mixed_gram_guard`` does not trust to float32 (``mixed_forward``); ``stats``,
    a dict, then counts ``tokens`` and ``fallback_tokens`` of each forward (summed) and holds the last
    forward's per-token ``last_fallback`` mask [N].
    """
    return OrthogonalMix.apply(a, slot_B, gates, active, magnitude, mode, tol, gram_dtype, mixed, stats)


# The [tokens, E, E, r] stages (the Gram's product; in backward, Ḡ_ij a_j) run over chunks of tokens.
# On a CPU a fresh 16 MiB tensor page-faults its way in on every call (there is no caching allocator),
# which cost more than its arithmetic; chunks this small reuse freed memory instead (docs/benchmarks.md).
# On a GPU the caching allocator reuses memory, and one launch per op is best.
CPU_CHUNK_BYTES = 4 * 2**20


def token_chunks(wide: torch.Tensor) -> list[slice]:
    """Slices of the tokens of ``wide`` [N, E, r]: one off the CPU, ≤ ``CPU_CHUNK_BYTES`` of [E, E, r] on it."""
    num_tokens, num_experts, rank = wide.shape
    step = max(num_tokens, 1)
    if wide.device.type == "cpu":
        step = max(1, CPU_CHUNK_BYTES // (num_experts * num_experts * rank * wide.element_size()))
    return [slice(start, start + step) for start in range(0, num_tokens, step)]


def chunked_gram(wide: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
    """``orthogonal.expert_gram`` of ``wide`` [N, E, r] (in the Gram's dtype), chunk by chunk: [N, E, E]."""
    gram = wide.new_empty(wide.shape[0], wide.shape[1], wide.shape[1])
    for part in token_chunks(wide):
        gram[part] = gram_of_product(metric_product(wide[part], metric), wide[part])
    return gram


def exact_mix(wide, metric, gates, active, magnitude, mode, tol):
    """``(m·w⊙a, live)`` with the Gram, the redundancy test and the weights all in ``wide``'s dtype."""
    gram = chunked_gram(wide, metric)
    inv_norm, cosines = normalized(gram, active)
    live = live_experts(inv_norm, cosines, tol)
    weights = gram_schmidt_factors(inv_norm, cosines, gates, live, mode).weights
    return (magnitude.to(wide.dtype) * weights).unsqueeze(-1) * wide, live


def fallback_tokens(safe: torch.Tensor) -> torch.Tensor:
    """Indices [K] of the tokens the float32 path does not answer (``~safe``).

    Reading the mask is the mixed path's one host synchronization off the CPU (K sets the shapes of
    the float64 recomputation; on a CPU there is no device to wait for). Under ``torch.compile``
    nothing is read: every token is recomputed and ``merge`` chooses with ``torch.where``.
    """
    if torch.compiler.is_compiling():
        return torch.arange(safe.shape[0], device=safe.device)
    return (~safe).nonzero().squeeze(-1)


def merge(fast: torch.Tensor, slow: torch.Tensor, index: torch.Tensor, safe: torch.Tensor) -> torch.Tensor:
    """``fast`` with the rows ``index`` replaced by ``slow`` (cast to ``fast``'s dtype)."""
    slow = slow.to(fast.dtype)
    if index.shape[0] == fast.shape[0]:  # every token recomputed (under torch.compile, or none safe)
        return torch.where(safe.view(-1, *[1] * (fast.dim() - 1)), fast, slow)
    return fast.index_copy(0, index, slow)


def mixed_forward(a, metric, b_sq_norms, gates, active, magnitude, mode, tol, stats):
    """``(m·w⊙a, live, safe)``: the float32 path for every token, then ``exact_mix`` in ``metric``'s
    dtype for the tokens the guard sends back (``orthogonal.mixed_gram_guard``), merged row by row.
    ``m·w⊙a`` is float32 (float64 rows rounded to it once)."""
    wide = a.float()
    gram = chunked_gram(wide, metric.float())
    guard = mixed_gram_guard(gram, wide, b_sq_norms.float(), active, tol)
    weights = gram_schmidt_factors(guard.inv_norm, guard.cosines, gates, guard.live, mode, guard.chol).weights
    out = (magnitude.float() * weights).unsqueeze(-1) * wide
    live, index = guard.live, fallback_tokens(guard.safe)
    if index.numel():
        slow_out, slow_live = exact_mix(a[index].to(metric.dtype), metric, gates[index], active[index], magnitude, mode, tol)
        out, live = merge(out, slow_out, index, guard.safe), merge(live, slow_live, index, guard.safe)
    if stats is not None and not torch.compiler.is_compiling():
        stats["tokens"] = stats.get("tokens", 0) + a.shape[0]
        stats["fallback_tokens"] = stats.get("fallback_tokens", 0) + index.numel()
        stats["last_fallback"] = ~guard.safe  # [N] of the last forward (tests, analysis)
    return out, live, guard.safe


def gram_backward(wide, grad_gram, metric, grad_a):
    """The Gram's part of the gradient: ``ā_i += 2 Σ_j M_ij (Ḡ_ij a_j)`` into ``grad_a`` (in place), and
    ``M̄_ij = Σ_t a_i (Ḡ_ij a_j)ᵀ`` [E, r, E·r] returned; chunked over tokens like the Gram."""
    num_experts, rank = wide.shape[-2:]
    grad_metric = metric.new_zeros(num_experts, rank, num_experts * rank)
    for part in token_chunks(wide):
        spread = (grad_gram[part].unsqueeze(-1) * wide[part].unsqueeze(1)).flatten(2).transpose(0, 1)
        grad_a[part] += 2 * torch.bmm(spread, metric.mT).transpose(0, 1)  # [E, n, E·r] → [n, E, r]
        grad_metric += torch.bmm(wide[part].permute(1, 2, 0), spread)
    return grad_metric


class OrthogonalMix(torch.autograd.Function):
    """The Function behind ``orthogonal_mix``; its backward is the module docstring's."""

    @staticmethod
    def forward(ctx, a, slot_B, gates, active, magnitude, mode, tol, gram_dtype, mixed=False, stats=None):
        with torch.autocast(device_type=a.device.type, enabled=False):
            b_cat, metric = expert_metric(slot_B, gram_dtype)
            if mixed:
                b_sq_norms = b_cat.square().view(b_cat.shape[0], -1, a.shape[-1]).sum((0, 2))  # ‖B_i‖_F² [E]
                out, live, safe = mixed_forward(a, metric, b_sq_norms, gates, active, magnitude, mode, tol, stats)
            else:
                out, live = exact_mix(a.to(gram_dtype), metric, gates, active, magnitude, mode, tol)
                safe = None
        ctx.save_for_backward(a, slot_B, gates, magnitude, live, safe)
        ctx.mode, ctx.gram_dtype = mode, gram_dtype
        return out.to(a.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        a, slot_B, gates, magnitude, live, safe = ctx.saved_tensors
        with torch.autocast(device_type=a.device.type, enabled=False):
            b_cat, metric = expert_metric(slot_B, ctx.gram_dtype)
            if safe is None:
                wide = a.to(ctx.gram_dtype)
                gram = chunked_gram(wide, metric)
                grad_a, grad_gram, grad_gates, grad_magnitude = mixing_backward(
                    wide, grad_out.to(ctx.gram_dtype), gram, gates, live, magnitude.to(ctx.gram_dtype), ctx.mode,
                )
                grad_metric = gram_backward(wide, grad_gram, metric, grad_a)
            else:
                grad_a, grad_metric, grad_gates, grad_magnitude = mixed_backward(
                    a, grad_out, metric, gates, live, safe, magnitude, ctx.mode,
                )
            # M = B_catᵀ B_cat, M̄ symmetric
            num_experts, rank = a.shape[-2:]
            grad_b = (2 * b_cat @ grad_metric.flatten(0, 1)).view(-1, num_experts, rank).permute(1, 0, 2)
        return (
            grad_a.to(a.dtype), grad_b.to(slot_B.dtype), grad_gates.to(gates.dtype), None,
            grad_magnitude.to(magnitude.dtype), None, None, None, None, None,
        )


def mixed_backward(a, grad_out, metric, gates, live, safe, magnitude, mode):
    """``(ā, M̄, ḡ, m̄)`` of ``mixed_forward``: float32 for the safe tokens, ``metric``'s dtype for the
    others. Each pass sees only its own tokens' live experts (the other tokens get no live expert, so
    zero weights and zero gradients, nothing undefined), so the two add up; ``M̄`` and ``m̄`` meet in
    ``metric``'s dtype."""
    wide = a.float()
    gram = torch.where(safe[:, None, None], chunked_gram(wide, metric.float()), 0.0)  # no ∞ from unsafe tokens
    grad_a, grad_gram, grad_gates, grad_magnitude = mixing_backward(
        wide, grad_out.float(), gram, gates, live & safe[:, None], magnitude.float(), mode,
    )
    grad_metric = gram_backward(wide, grad_gram, metric.float(), grad_a).to(metric.dtype)
    grad_magnitude = grad_magnitude.to(metric.dtype)
    index = fallback_tokens(safe)
    if index.numel():
        sub = a[index].to(metric.dtype)
        sub_live = live[index] & ~safe[index, None]  # under torch.compile: every token, the safe ones masked
        sub_a, sub_gram, sub_gates, sub_magnitude = mixing_backward(
            sub, grad_out[index].to(metric.dtype), chunked_gram(sub, metric), gates[index], sub_live,
            magnitude.to(metric.dtype), mode,
        )
        grad_metric = grad_metric + gram_backward(sub, sub_gram, metric, sub_a)
        grad_a = grad_a.index_add(0, index, sub_a.to(grad_a.dtype))
        grad_gates = grad_gates.index_add(0, index, sub_gates.to(grad_gates.dtype))
        grad_magnitude = grad_magnitude + sub_magnitude
    return grad_a, grad_metric, grad_gates, grad_magnitude


def mixing_backward(wide, grad_out, gram, gates, live, m, mode):
    """From ``ō`` to ``(ā without the Gram's part, Ḡ, ḡ, m̄)``, all tokens at once (the docstring's steps)."""
    f = gram_schmidt_factors(*normalized(gram, live), gates, live, mode)
    chol, inv_norm, y = f.chol, f.inv_norm, f.solution
    # out = m·w⊙a
    s = (grad_out * wide).sum(-1)
    grad_magnitude = (f.weights * s).sum()
    grad_a = (m * f.weights).unsqueeze(-1) * grad_out
    grad_w = m * s
    # w = y⊙ι, then Lᵀy = c
    grad_inv = grad_w * y
    v = torch.linalg.solve_triangular(chol, (grad_w * inv_norm).unsqueeze(-1), upper=False)[..., 0]
    grad_chol = -torch.tril(y.unsqueeze(-1) * v.unsqueeze(-2))
    # c = g⊙scale⊙live
    grad_gates = v * f.scale * live
    if mode != "stiefel":
        grad_scale = v * gates.to(wide.dtype) * live
        norm = 1.0 / torch.where(live, inv_norm, 1.0)
        if mode == "orthogonal":  # scale = L_kk·‖e_k‖
            grad_chol = grad_chol + torch.diag_embed(grad_scale * norm)
            grad_norm = grad_scale * chol.diagonal(dim1=-2, dim2=-1)
        else:  # norm_preserving: scale = ‖e_k‖
            grad_norm = grad_scale
        grad_inv = grad_inv - grad_norm * norm.square() * live
    # C = LLᵀ
    phi = torch.tril(chol.mT @ grad_chol)
    phi = phi - 0.5 * torch.diag_embed(phi.diagonal(dim1=-2, dim2=-1))
    half = torch.linalg.solve_triangular(chol.mT, phi, upper=True)
    grad_cos = torch.linalg.solve_triangular(chol, half, upper=False, left=False)  # L^{-T} Φ L^{-1}
    pairs = live.unsqueeze(-1) & live.unsqueeze(-2)
    grad_cos = torch.where(pairs, 0.5 * (grad_cos + grad_cos.mT), 0.0)
    # C = D^{-1/2} G D^{-1/2}, ι = G_kk^{-1/2}
    grad_gram = grad_cos * inv_norm.unsqueeze(-1) * inv_norm.unsqueeze(-2)
    grad_inv = grad_inv + 2 * (grad_cos * gram * inv_norm.unsqueeze(-2)).sum(-1)
    grad_gram = grad_gram - torch.diag_embed(0.5 * grad_inv * inv_norm.pow(3))
    return grad_a, grad_gram, grad_gates, grad_magnitude
