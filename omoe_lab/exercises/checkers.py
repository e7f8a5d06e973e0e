"""One checker per exercise: its cases, and the library implementation each case is compared with.

``check_<name>(fn)`` runs ``fn`` on every case (the edge cases the lectures warn about among
them: a duplicated expert, a zero expert, ties, padding), prints one line when all pass and
returns ``fn``; prints "not yet solved" and returns the reference solution while ``fn`` still
raises NotImplementedError; raises AssertionError naming the case otherwise (``checking``).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..adapters import LAYER_CLASSES, AdapterConfig, LoRALinear, MoELoRALinear
from ..adapters.orthogonal import gram_schmidt
from ..adapters.routing import load_balancing_loss, routing_gates
from ..analysis.merging import _constant_mix
from ..analysis.routing_stats import effective_rank
from ..analysis.similarity import linear_cka, mean_pairwise_cosine
from ..analysis.stats import paired_test, question_level_test
from ..analysis.stiefel import default_stiefel_tolerance, stiefel_error
from ..inject import trainable_parameters
from . import solutions
from .checking import Case, Exercise, Mismatch, close, describe, exactly, tensor_problem

LORA_FORWARD = Exercise("0.1", "LoRA's forward pass", solutions.lora_forward_by_hand)
ADAPTER_PARAMETERS = Exercise("0.2", "trainable parameters of LoRA, MoE-LoRA and OMoE", solutions.adapter_parameters_by_hand)
MEAN_ABS_COSINE = Exercise("1.1", "mean |cosine| between experts", solutions.mean_abs_cosine_by_hand)
LINEAR_CKA = Exercise("1.2", "linear CKA", solutions.linear_cka_by_hand)
EFFECTIVE_RANK = Exercise("1.3", "effective rank", solutions.effective_rank_by_hand)
STIEFEL_ERROR = Exercise("2.1", "the Stiefel check", solutions.stiefel_error_by_hand)
GRAM_SCHMIDT = Exercise("2.2", "Gram–Schmidt, twice, with the redundancy threshold", solutions.gram_schmidt_by_hand)
MOE_LORA_FORWARD = Exercise("3.1", "a MoE-LoRA layer's forward pass", solutions.moe_lora_forward_by_hand)
TOP_K_GATES = Exercise("3.2", "top-k gates", solutions.top_k_gates_by_hand)
LOAD_BALANCING_LOSS = Exercise("3.3", "the Switch load-balancing loss", solutions.load_balancing_loss_by_hand)
PERMUTATION_P = Exercise("4.1", "the question-level permutation test", solutions.permutation_p_by_hand)
MCNEMAR_P = Exercise("4.2", "the exact McNemar test", solutions.mcnemar_p_by_hand)
MIXTURE_PARAMETERS = Exercise("5.1", "trainable parameters as a function of E and r", solutions.mixture_parameters_by_hand)
MERGED_DELTA_W = Exercise("5.2", "merge a mixture into one LoRA", solutions.merged_delta_w_by_hand)


def randn64(*shape) -> torch.Tensor:
    """Standard normal float64 inputs: the analysis measures compute in float64."""
    return torch.randn(*shape, dtype=torch.float64)


def frozen_linear(W0: torch.Tensor) -> nn.Linear:
    """An ``nn.Linear`` without bias whose weight is ``W0`` [d_out, d_in], frozen."""
    d_out, d_in = W0.shape
    base = nn.Linear(d_in, d_out, bias=False).requires_grad_(False)
    base.weight.copy_(W0)
    return base


# --- 00_tour -------------------------------------------------------------------------------

@torch.no_grad()
def lora_layer_output(x, W0, A, B, scaling):
    """``LoRALinear`` holding these weights, on x."""
    rank = A.shape[0]
    layer = LoRALinear(frozen_linear(W0), AdapterConfig(method="lora", rank=rank, alpha=scaling * rank))
    layer.lora_A.copy_(A[None])
    layer.lora_B.copy_(B[None])
    return layer(x)


def lora_cases() -> list[Case]:
    def inputs(shape_x, d_in, d_out, rank, scaling, zero_B=False):
        B = torch.zeros(d_out, rank) if zero_B else torch.randn(d_out, rank)
        return (torch.randn(*shape_x, d_in), torch.randn(d_out, d_in), torch.randn(rank, d_in), B, scaling)

    return [
        Case("6 tokens, d_in = d_out = 8, rank 2, s = 1", inputs((6,), 8, 8, 2, 1.0),
             "the tokens are the rows of x, so every matrix acts from the right, transposed: x @ W0.T, not W0 @ x."),
        Case("scaling s = α/r = 4", inputs((6,), 8, 8, 2, 4.0),
             "scale only the low-rank term s·BAx; the frozen W0 x is not scaled."),
        Case("a non-square layer, d_in = 12 → d_out = 5 (like v_proj)", inputs((6,), 12, 5, 3, 2.0),
             "W0 is [d_out, d_in], A is [r, d_in], B is [d_out, r]: follow the shapes."),
        Case("a batch of sequences, x [2, 3, d_in]", inputs((2, 3), 12, 5, 3, 2.0),
             "use matmuls that act on the last dimension (x @ M.T), so any leading dimensions pass through."),
        Case("B = 0, how LoRA starts: y = W0 x", inputs((6,), 8, 8, 2, 2.0, zero_B=True),
             "with B = 0 the adapter adds nothing: only W0 x is left."),
        Case("rank 1", inputs((6,), 8, 8, 1, 2.0), "a rank-1 A is [1, d_in] and B is [d_out, 1]; nothing special should be needed."),
    ]


def check_lora_forward(fn: Callable) -> Callable:
    """Exercise 0.1: ``lora_forward_by_hand(x, W0, A, B, scaling)`` against ``LoRALinear``."""
    __tracebackhide__ = True
    return LORA_FORWARD.check(fn, lora_layer_output, lora_cases)


def counted_parameters(method, d_in, d_out, num_experts, rank) -> int:
    """Trainable parameters of the library's adapter on a d_in → d_out linear, as
    ``omoe_lab.trainable_parameters`` counts them."""
    base = nn.Linear(d_in, d_out, bias=False).requires_grad_(False)
    config = AdapterConfig(method=method, num_experts=num_experts, rank=rank)
    layer = LAYER_CLASSES[method](base, config, 1 if method == "lora" else num_experts)
    return trainable_parameters(layer).trainable


def adapter_parameter_cases() -> list[Case]:
    return [
        Case("LoRA, rank 8, on SmolLM2's q_proj (576 → 576)", ("lora", 576, 576, 4, 8),
             "A is [r, d_in] and B is [d_out, r]; both are trained. A LoRA has no router (num_experts is ignored)."),
        Case("LoRA, rank 32, on v_proj (576 → 192)", ("lora", 576, 192, 4, 32),
             "d_out differs from d_in here: B has d_out · r entries, A has r · d_in."),
        Case("MoE-LoRA, E = 4, rank 8, on q_proj", ("moe", 576, 576, 4, 8),
             "E experts, each an A and a B, plus the router W_g [E, d_in] (no bias)."),
        Case("MoE-LoRA, E = 8, rank 4, on v_proj (576 → 192)", ("moe", 576, 192, 8, 4),
             "the router reads the layer's input: W_g is [E, d_in], whatever d_out is."),
        Case("OMoE, E = 4, rank 8, on q_proj", ("omoe", 576, 576, 4, 8),
             "OMoE has everything MoE-LoRA has, plus one magnitude m per layer."),
        Case("OMoE, E = 2, rank 16, on a 64 → 48 layer", ("omoe", 64, 48, 2, 16),
             "the same count at another shape: nothing in it should depend on 576."),
    ]


def check_adapter_parameters(fn: Callable) -> Callable:
    """Exercise 0.2: ``adapter_parameters_by_hand(method, d_in, d_out, num_experts, rank)`` against the
    library's layers, counted by ``omoe_lab.trainable_parameters``."""
    __tracebackhide__ = True
    return ADAPTER_PARAMETERS.check(fn, counted_parameters, adapter_parameter_cases, exactly())


# --- 01_collapse ---------------------------------------------------------------------------

def cosine_cases() -> list[Case]:
    random = randn64(32, 4, 16)
    opposite = randn64(32, 3, 16)
    opposite[:, 1] = -opposite[:, 0]
    sizes = randn64(32, 4, 16) * torch.tensor([100.0, 1.0, 0.01, 1.0], dtype=torch.float64)[:, None]
    return [
        Case("4 random experts, 32 tokens, d = 16", (random,),
             "normalize each e_ti to unit length, take |dot products| per token, average over tokens and the pairs i ≠ j."),
        Case("anti-parallel experts, e_1 = −e_0", (opposite,),
             "an expert that points the opposite way is just as redundant: take the absolute value of the cosine."),
        Case("experts of very different sizes (×100 … ×0.01)", (sizes,),
             "a cosine ignores length: divide each output by its own norm, over the feature axis (dim=-1)."),
        Case("two experts, 5 tokens, float32", (torch.randn(5, 2, 16),),
             "with E = 2 there is one pair (i, j) = (0, 1) and its mirror; the diagonal (always 1) is left out."),
    ]


def check_mean_abs_cosine(fn: Callable) -> Callable:
    """Exercise 1.1: ``mean_abs_cosine_by_hand(e)`` against ``analysis.mean_pairwise_cosine``."""
    __tracebackhide__ = True
    return MEAN_ABS_COSINE.check(fn, mean_pairwise_cosine, cosine_cases)


def cka_cases() -> list[Case]:
    X = randn64(40, 8)
    rotation = torch.linalg.qr(randn64(8, 8)).Q
    return [
        Case("two random representations, 40 tokens, 8 features each", (X, randn64(40, 8)),
             "center both over tokens (subtract the column means), then ‖XᵀY‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)."),
        Case("features with a large offset (+5 on every token)", (X + 5, randn64(40, 8) + 5),
             "CKA compares how the tokens vary: subtract each feature's mean over the tokens (dim=0) first."),
        Case("Y = 3·X·R, a rotation and a scale of X: CKA = 1", (X, 3 * X @ rotation),
             "‖XᵀY‖ is squared in the numerator; the denominator uses ‖XᵀX‖_F and ‖YᵀY‖_F, not ‖X‖² and ‖Y‖²."),
        Case("different widths, d1 = 6 and d2 = 10", (randn64(40, 6), randn64(40, 10)),
             "X and Y share their tokens (rows), not their features: XᵀY is [d1, d2]."),
        Case("few tokens, many features (T = 6, d = 50)", (randn64(6, 50), randn64(6, 50)),
             "the formula is the same for any T and d; compute in the inputs' dtype (float64 here)."),
    ]


def check_linear_cka(fn: Callable) -> Callable:
    """Exercise 1.2: ``linear_cka_by_hand(X, Y)`` against ``analysis.linear_cka`` (biased estimator)."""
    __tracebackhide__ = True
    return LINEAR_CKA.check(fn, linear_cka, cka_cases, close(atol=1e-6, rtol=1e-5))


def effective_rank_cases() -> list[Case]:
    parallel = torch.tensor([[1.0], [2.0], [-0.5], [3.0]], dtype=torch.float64) * randn64(1, 16)
    orthogonal = 3.0 * torch.linalg.qr(randn64(16, 4)).Q.T
    zero_rows = torch.zeros(4, 16, dtype=torch.float64)
    zero_rows[0, 0], zero_rows[1, 1] = 3.0, 1.0
    lengths = torch.tensor([[10.0], [1.0], [0.1], [0.01]], dtype=torch.float64)
    return [
        Case("4 random expert outputs in R^16", (randn64(4, 16),),
             "erank = exp(−Σ p_k log p_k) with p_k = σ_k / Σ_j σ_j, σ the singular values (torch.linalg.svdvals)."),
        Case("four parallel rows (collapsed experts): 1", (parallel,),
             "one non-zero singular value gives p = (1, 0, 0, 0), entropy 0, erank 1."),
        Case("four orthogonal rows of equal length: 4", (orthogonal,),
             "equal singular values give p_k = 1/4 and erank = exp(log 4) = 4."),
        Case("singular values (3, 1, 0, 0): 0·log 0 counts as 0", (zero_rows,),
             "p·log p is NaN at p = 0; torch.special.xlogy(p, p) is 0 there."),
        Case("rows of very different lengths", (lengths * randn64(4, 16),),
             "normalize the singular values themselves (not their squares, the eigenvalues of MMᵀ) to sum to 1."),
    ]


def check_effective_rank(fn: Callable) -> Callable:
    """Exercise 1.3: ``effective_rank_by_hand(matrix)`` against ``analysis.effective_rank``."""
    __tracebackhide__ = True
    return EFFECTIVE_RANK.check(fn, effective_rank, effective_rank_cases, close(atol=1e-6, rtol=1e-6))


# --- 02_gram_schmidt -----------------------------------------------------------------------

# A float32 Q measured in float64 differs from the same Q measured in float32 by ~30 % (both
# ~3e-7): 1 % tells the two apart and leaves room for any float64 order of summation.
STIEFEL_RTOL = 1e-2


def stiefel_cases() -> list[Case]:
    def orthonormalized(*shape, dtype=torch.float64, **options):
        return gram_schmidt(torch.randn(*shape, dtype=dtype), **options)

    one_bad = orthonormalized(50, 4, 16)
    one_bad[17, 2] += 0.3 * one_bad[17, 1]
    top2 = torch.zeros(50, 4, dtype=torch.bool).scatter(-1, torch.rand(50, 4).topk(2, dim=-1).indices, True)
    return [
        Case("orthonormal rows (the library's gram_schmidt of random experts), float64", (orthonormalized(50, 4, 16),),
             "rows are experts: Q Qᵀ is q @ q.mT, [..., E, E]; subtract the identity, Frobenius norm per token, worst token."),
        Case("one bad token among 50: the worst token, not the mean", (one_bad,),
             "take the maximum over tokens of the per-token norm: a check must catch a single bad token."),
        Case("orthogonal rows of different lengths (the 'orthogonal' mode)", (orthonormalized(50, 4, 16, mode="orthogonal"),),
             "the diagonal of Q Qᵀ holds the squared lengths; the target is 1 there, so long or short rows count as error."),
        Case("top-2 routing: inactive experts are zero rows, the target is diag(active)",
             (orthonormalized(50, 4, 16, active=top2), top2),
             "with `active` given, compare Q Qᵀ with torch.diag_embed(active) instead of the identity."),
        Case("a batch of sequences, q [2, 8, 4, 16]", (orthonormalized(2, 8, 4, 16),),
             "reduce over every leading dimension: the worst token of the whole batch."),
        Case(f"float32 rows orthonormal to round-off (measured in float64, rtol {STIEFEL_RTOL:g})",
             (orthonormalized(50, 4, 16, dtype=torch.float32),),
             "upcast q to float64 before forming Q Qᵀ: in float32 the product's own round-off is as large as "
             "the error being measured."),
    ]


def check_stiefel_error(fn: Callable) -> Callable:
    """Exercise 2.1: ``stiefel_error_by_hand(q, active=None)`` against ``analysis.stiefel_error``."""
    __tracebackhide__ = True
    return STIEFEL_ERROR.check(fn, stiefel_error, stiefel_cases, close(atol=1e-12, rtol=STIEFEL_RTOL))


def library_gram_schmidt(e, mode="stiefel", tol=1e-4):
    return gram_schmidt(e, None, mode, tol)


def orthonormal_and_close(tol: float, atol: float) -> Callable:
    """A near-degenerate case: the rows must be orthonormal to ``tol`` (a float32 Stiefel tolerance),
    then close to the library's (loosely: there, round-off of the inputs moves q by ~κ·eps)."""

    def compare(got, expected):
        problem = tensor_problem(got, expected)
        if problem:
            return problem
        error = stiefel_error(got)
        if error > tol:
            return Mismatch(f"orthonormal rows on every token, ‖Q Qᵀ − I‖_F ≤ {tol:.1e} (10·E·eps of float32)",
                            f"‖Q Qᵀ − I‖_F = {error:.1e} on the worst token")
        return close(atol=atol, rtol=0.0)(got, expected)

    return compare


def gram_schmidt_cases() -> list[Case]:
    sized = torch.randn(32, 4, 16) * torch.tensor([3.0, 1.0, 0.5, 0.1])[:, None]
    duplicate = torch.randn(32, 4, 16)
    duplicate[:, 2] = duplicate[:, 1]
    zero = torch.randn(32, 4, 16)
    zero[:, 0] = 0.0
    span = torch.randn(32, 4, 16)
    span[:, 3] = span[:, 0] - 2.0 * span[:, 1]
    close_copy = randn64(32, 3, 16)
    # expert 2: expert 1 plus a relative 3 % of its own length in a direction of its own
    close_copy[:, 2] = close_copy[:, 1] + 0.03 * close_copy[:, 1].norm(dim=-1, keepdim=True) * gram_schmidt(close_copy)[:, 2]
    batch = torch.randn(2, 3, 4, 16)
    batch[..., 3, :] = batch[..., 1, :]
    near = torch.randn(64, 1, 16) + 1e-3 * torch.randn(64, 4, 16)
    tolerance = default_stiefel_tolerance(torch.float32, 4)
    return [
        Case("4 random experts of sizes 3, 1, 0.5 and 0.1, mode 'stiefel'", (sized,),
             "for k in order: u = e_k minus its projections on the earlier q̂_j (the running u, twice), q̂_k = u/‖u‖."),
        Case("mode 'orthogonal': q_k = u_k", (sized,),
             "'orthogonal' keeps the residual's length: q_k = ‖u_k‖·q̂_k = u_k; project on the unit q̂_j all the same.",
             kwargs={"mode": "orthogonal"}),
        Case("mode 'norm_preserving': q_k = ‖e_k‖ q̂_k", (sized,),
             "'norm_preserving' gives q̂_k the length of the raw e_k, not of the residual u_k.",
             kwargs={"mode": "norm_preserving"}),
        Case("expert 2 duplicates expert 1: q_2 = 0", (duplicate,),
             "a duplicate's residual is round-off: when ‖u_k‖ ≤ tol·‖e_k‖ set q_k = 0 (no u/(‖u‖ + eps)), and let "
             "it take no part in later projections."),
        Case("expert 0 is zero: q_0 = 0, no NaN", (zero,),
             "0/0 is NaN: a zero expert fails the test ‖u‖ > tol·‖e‖ (0 > 0 is false); divide only where it passes "
             "(torch.where(live, u / torch.where(live, ‖u‖, 1), 0))."),
        Case("expert 3 in the span of experts 0 and 1 (e_3 = e_0 − 2 e_1)", (span,),
             "an expert in the span of the earlier ones has nothing of its own: its residual is round-off, so it is redundant."),
        Case("tiny experts (all × 1e-7): the threshold is relative", (sized * 1e-7,),
             "compare ‖u_k‖ with tol·‖e_k‖, not with tol: the experts' scale must not decide redundancy."),
        Case("tol = 0.05: an expert 3 % away from expert 1 is redundant", (close_copy,),
             "use the tol argument, not a fixed 1e-4.", kwargs={"tol": 0.05}),
        Case("a batch of sequences [2, 3, E, d], 'norm_preserving', with a duplicate", (batch,),
             "index experts with e[..., k, :] and reduce over the last dimension only, keepdim=True.",
             kwargs={"mode": "norm_preserving"}),
        Case(f"nearly parallel experts, e_k = c + 1e-3·δ_k (float32): orthonormal to {tolerance:.1e}", (near,),
             "one pass leaves round-off along the earlier directions (classical: error ~0.5 here, modified: ~5e-4); "
             "project the running u (modified) and run the loop over the earlier directions twice.",
             compare=orthonormal_and_close(tolerance, 1e-3)),
    ]


def check_gram_schmidt(fn: Callable) -> Callable:
    """Exercise 2.2: ``gram_schmidt_by_hand(e, mode="stiefel", tol=1e-4)`` against ``adapters.gram_schmidt``."""
    __tracebackhide__ = True
    return GRAM_SCHMIDT.check(fn, library_gram_schmidt, gram_schmidt_cases)


# --- 03_lora_to_moe ------------------------------------------------------------------------

@torch.no_grad()
def moe_layer_output(x, W0, A, B, W_g, scaling):
    """``MoELoRALinear`` (soft routing) holding these weights, on x."""
    num_experts, rank, _ = A.shape
    config = AdapterConfig(method="moe", num_experts=num_experts, rank=rank, alpha=scaling * rank)
    layer = MoELoRALinear(frozen_linear(W0), config, num_experts)
    layer.lora_A.copy_(A)
    layer.lora_B.copy_(B)
    layer.router.weight.copy_(W_g)
    return layer(x)


def moe_cases() -> list[Case]:
    def inputs(shape_x, num_experts=3, rank=2, d_in=8, d_out=6, scaling=1.0, router=1.0, zero_expert=None):
        B = torch.randn(num_experts, d_out, rank)
        if zero_expert is not None:
            B[zero_expert] = 0.0
        return (torch.randn(*shape_x, d_in), torch.randn(d_out, d_in), torch.randn(num_experts, rank, d_in), B,
                router * torch.randn(num_experts, d_in), scaling)

    return [
        Case("6 tokens, E = 3 experts of rank 2, soft routing, s = 1", inputs((6,)),
             "g = softmax(x W_gᵀ) over the experts (dim=-1); e_i = B_i A_i x; y = x W0ᵀ + s Σ_i g_i e_i."),
        Case("scaling s = α/r = 2", inputs((6,), scaling=2.0), "the scaling multiplies the gated sum, not W0 x."),
        Case("a uniform router, W_g = 0: every gate is 1/E", inputs((6,), router=0.0),
             "softmax of equal logits gives 1/E: sum the experts weighted by their gates, not just their plain sum."),
        Case("expert 1 has B_1 = 0 (a zero expert)", inputs((6,), zero_expert=1),
             "a zero expert contributes 0 but keeps its gate: do not renormalize the gates over the other experts."),
        Case("a batch of sequences, x [2, 4, d_in]", inputs((2, 4)),
             "write the einsums with '...' for the leading dimensions (e.g. '...d,erd->...er'), softmax over dim=-1."),
        Case("one expert, E = 1: a LoRA", inputs((6,), num_experts=1),
             "with one expert the gate is 1 and the layer is a LoRA; A [1, r, d_in] and B [1, d_out, r] keep their expert axis."),
    ]


def check_moe_lora_forward(fn: Callable) -> Callable:
    """Exercise 3.1: ``moe_lora_forward_by_hand(x, W0, A, B, W_g, scaling)`` against ``MoELoRALinear``."""
    __tracebackhide__ = True
    return MOE_LORA_FORWARD.check(fn, moe_layer_output, moe_cases)


def library_top_k_gates(logits, k):
    return routing_gates(logits, top_k=k)[0]


def top_k_gates_match(logits: torch.Tensor, k: int) -> Callable:
    """Top-k gates, with ties allowed either way: rows sum to 1, exactly k non-zero gates, the
    k largest probabilities kept, and the same gate values as the library's."""
    p = torch.softmax(logits.float(), dim=-1)

    def compare(got, expected):
        problem = tensor_problem(got, expected)
        if problem:
            return problem
        got = got.detach().float()
        sums = got.sum(-1)
        if ((sums - 1).abs() > 1e-5).any():
            token = _first(((sums - 1).abs() > 1e-5))
            return Mismatch("every token's gates sum to 1", f"token {token}'s gates sum to {sums[token].item():.4f}")
        count = (got > 0).sum(-1)
        if (count != k).any():
            token = _first(count != k)
            gates = [round(g, 4) for g in got[token].tolist()]
            return Mismatch(f"exactly k = {k} non-zero gates per token", f"token {token} has {int(count[token])}: {gates}")
        kept_low = torch.where(got > 0, p, torch.inf).min(-1).values
        dropped_high = torch.where(got > 0, -torch.inf, p).max(-1).values
        if (kept_low < dropped_high - 1e-7).any():
            token = _first(kept_low < dropped_high - 1e-7)
            return Mismatch(f"the {k} largest probabilities kept", f"token {token} keeps p = {kept_low[token].item():.4f} "
                                                                   f"but drops p = {dropped_high[token].item():.4f}")
        return close(atol=1e-6, rtol=1e-5)(got.sort(-1).values, expected.sort(-1).values)

    return compare


def _first(mask: torch.Tensor) -> tuple[int, ...] | int:
    index = tuple(int(i) for i in mask.nonzero()[0])
    return index[0] if len(index) == 1 else index


def top_k_cases() -> list[Case]:
    def case(name, logits, k, hint):
        return Case(name, (logits, k), hint, compare=top_k_gates_match(logits, k))

    ties = torch.tensor([[2.0, 2.0, 2.0, 0.0], [1.0, 3.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    return [
        case("8 tokens, E = 4, k = 2", torch.randn(8, 4), 2,
             "p = softmax(logits) over the experts; keep the k largest p per token, zero the rest, divide by the kept sum."),
        case("k = 1: one gate of 1 per token", torch.randn(8, 4), 1, "renormalized, a single kept probability becomes 1."),
        case("k = E: every expert, soft routing", torch.randn(8, 4), 4, "keeping every expert gives back softmax(logits)."),
        case("ties: logits (2, 2, 2, 0) and k = 2 keep exactly two", ties, 2,
             "p ≥ (k-th largest p) keeps every tied expert; torch.topk picks exactly k."),
        case("large logits (100 + noise, float32): a stable softmax", 100 + torch.randn(8, 4), 2,
             "exp(100) overflows float32 to inf and inf/inf is NaN: use torch.softmax, which subtracts the max first."),
        case("a batch of sequences, logits [2, 3, E]", torch.randn(2, 3, 4), 2, "softmax, topk and scatter along dim=-1, the expert axis."),
    ]


def check_top_k_gates(fn: Callable) -> Callable:
    """Exercise 3.2: ``top_k_gates_by_hand(logits, k)`` against ``adapters.routing.routing_gates``."""
    __tracebackhide__ = True
    return TOP_K_GATES.check(fn, library_top_k_gates, top_k_cases)


def gradient_of_probs(loss: Callable) -> Callable:
    """``∂ loss(probs, active, token_mask) / ∂ probs``: what the load-balancing loss teaches the router."""

    def gradient(probs, active, token_mask=None):
        probs = probs.detach().requires_grad_(True)
        value = loss(probs, active, token_mask)
        if not isinstance(value, torch.Tensor) or not value.requires_grad:
            raise TypeError(f"the loss ({describe(value)}) does not depend on probs through autograd; return a "
                            "tensor computed from probs (no .item(), float() or .detach())")
        return torch.autograd.grad(value, probs)[0]

    return gradient


def load_balancing_cases() -> list[Case]:
    def routed(tokens, k, shape=None):
        logits = torch.randn(tokens, 4)
        probs = torch.softmax(logits, dim=-1)
        active = routing_gates(logits, top_k=k)[1]
        return (probs, active) if shape is None else (probs.reshape(*shape, 4), active.reshape(*shape, 4))

    tokens = 64
    probs, active = routed(tokens, 2)
    mask = torch.ones(tokens)
    mask[tokens // 2:] = 0
    sure = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 8)
    batch_probs, batch_active = routed(16, 2, shape=(2, 8))
    batch_mask = torch.tensor([[1.0] * 8, [1.0] * 5 + [0.0] * 3])
    return [
        Case("top-2 routing of 64 random tokens, E = 4", (probs, active),
             "f_i is the share of the routed *slots* (Σ f_i = 1; a top-2 token fills two), P_i the mean probability; "
             "the loss is E Σ f_i P_i."),
        Case("balanced: uniform probabilities, one token per expert in turn: 1",
             (torch.full((8, 4), 0.25), torch.eye(4, dtype=torch.bool).repeat(2, 1)),
             "balanced routing gives f_i = P_i = 1/E, so E Σ f_i P_i = 1: multiply by E."),
        Case("collapsed: every token sure of expert 0 and sent there: E", (sure, sure.bool()),
             "f = P = (1, 0, 0, 0) gives E · 1 = E."),
        Case("padding: the last 32 of 64 tokens have token_mask 0", (probs, active, mask),
             "padding tokens count in neither f nor P: weight every token by its mask in both means."),
        Case("a batch of sequences [2, 8, E] with an attention mask [2, 8]", (batch_probs, batch_active, batch_mask),
             "flatten the leading dimensions (reshape(-1, E)) and the mask with them (reshape(-1))."),
        Case("the gradient reaches the router through P only", (probs, active, mask),
             "f is a count from `active` (no gradient); keep P = mean of probs in autograd (no .item() or .detach()).",
             through=gradient_of_probs),
    ]


def check_load_balancing_loss(fn: Callable) -> Callable:
    """Exercise 3.3: ``load_balancing_loss_by_hand(probs, active, token_mask=None)`` against
    ``adapters.routing.load_balancing_loss``."""
    __tracebackhide__ = True
    return LOAD_BALANCING_LOSS.check(fn, load_balancing_loss, load_balancing_cases)


# --- 04_finetune_real and 05_how_many_experts ------------------------------------------------

def library_permutation_p(correct_a, correct_b):
    return question_level_test(correct_a, correct_b)["p"]


def permutation_cases() -> list[Case]:
    """At most 13 questions: ``question_level_test``'s 9,999 resamples then cover all 2^n sign flips,
    so the library's p is exact, as the learner's enumeration is."""
    b_three = (torch.rand(3, 10) < 0.7).int().tolist()
    return [
        Case("every question's seed mean the same in a and b: d_q = 0, p = 1",
             ([[1, 0, 1, 0, 1], [0, 1, 1, 0, 0]], [[0, 1, 1, 0, 0], [1, 0, 1, 0, 1]]),
             "count the sign flips at least as extreme, |Σ s_q d_q| ≥ |Σ d_q| (≥, not >): the observed flip is "
             "always one of them, and here all 2^n tie with 0, so p = 1."),
        Case("b worse than a: one seed each, 9 questions, 6 lost and 1 gained (two-sided)",
             ([[1, 1, 1, 1, 1, 1, 0, 1, 0]], [[0, 0, 0, 0, 0, 0, 1, 1, 0]]),
             "two-sided: compare |Σ_q s_q d_q| with |Σ_q d_q|, so a b worse than a is as unusual as a b better by as much."),
        Case("3 seeds of b against one of a (an arm against the baseline), 10 questions", ([[0, 1, 0, 0, 1, 0, 1, 0, 0, 1]], b_three),
             "average each question's correctness over its seeds first (b has 3, a has 1): d_q = mean_b(q) − mean_a(q). "
             "The question is the unit, not the (seed, question) pair, and the seeds of a and b need not pair up."),
        Case("2 seeds each, 12 questions: d_q in steps of ½",
             ([[1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 0], [0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 1]],
              [[1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0], [1, 0, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1]]),
             "d_q = (b's seeds right on q)/2 − (a's seeds right on q)/2; flip the sign of each d_q, all 2^12 ways."),
        Case("a single question: both flips are as extreme, p = 1", ([[0]], [[1]]),
             "with n = 1 there are two flips, +d and −d, and both have |Σ| = |d|."),
    ]


def check_permutation_p(fn: Callable) -> Callable:
    """Exercise 4.1: ``permutation_p_by_hand(correct_a, correct_b)`` against ``analysis.stats.question_level_test``
    (exact at these sizes)."""
    __tracebackhide__ = True
    return PERMUTATION_P.check(fn, library_permutation_p, permutation_cases, close(atol=1e-12, rtol=1e-9))


def library_mcnemar_p(correct_a, correct_b):
    return paired_test(correct_a, correct_b)["p"]


def mcnemar_cases() -> list[Case]:
    a = (torch.rand(200) < 0.6).int().tolist()
    b = [x if flip > 0.2 else 1 - x for x, flip in zip(a, torch.rand(200).tolist())]
    return [
        Case("200 questions, two scorers that disagree on some", (a, b),
             "count gained (b right, a wrong) and lost (a right, b wrong); the rest carries no information."),
        Case("no disagreement at all: p = 1", ([1, 0, 1, 1, 0], [1, 0, 1, 1, 0]),
             "with gained + lost = 0 there is nothing to test: p = 1 (and no division by 0)."),
        Case("an even split, 3 gained and 3 lost: p = 1", ([1, 1, 1, 0, 0, 0, 1], [0, 0, 0, 1, 1, 1, 1]),
             "two tails of a symmetric binomial add to more than 1 at the centre: cap p at 1."),
        Case("7 gained, 0 lost", ([0] * 7 + [1] * 3, [1] * 10),
             "two-sided: p = 2 · P(X ≤ min(gained, lost)) with X ~ Binomial(gained + lost, ½), exact (math.comb)."),
        Case("agreement, right or wrong, is ignored", ([1] * 50 + [0] * 50 + [1, 0, 0], [1] * 50 + [0] * 50 + [0, 1, 1]),
             "only the discordant questions count; questions both got right or both got wrong do not."),
    ]


def check_mcnemar_p(fn: Callable) -> Callable:
    """Exercise 4.2: ``mcnemar_p_by_hand(correct_a, correct_b)`` against ``analysis.stats.paired_test``."""
    __tracebackhide__ = True
    return MCNEMAR_P.check(fn, library_mcnemar_p, mcnemar_cases, close(atol=1e-12, rtol=1e-9))


def counted_mixture_parameters(layer_shapes, method, num_experts, rank) -> int:
    return sum(counted_parameters(method, d_in, d_out, num_experts, rank) for d_in, d_out in layer_shapes)


def mixture_parameter_cases() -> list[Case]:
    q_and_v = [(576, 576), (576, 192)] * 4    # SmolLM2's q_proj and v_proj in four blocks
    attention = [(576, 576), (576, 192), (576, 192), (576, 576)]   # q, k, v and o_proj of one block
    return [
        Case("MoE-LoRA, E = 4, r = 8, on q_proj and v_proj of 4 blocks", (q_and_v, "moe", 4, 8),
             "per layer E·r·(d_in + d_out) + E·d_in; summed over layers that is E·(r·(Σd_in + Σd_out) + Σd_in)."),
        Case("MoE-LoRA, E = 8: twice the E = 4 count", (q_and_v, "moe", 8, 8),
             "the count is linear in E, with no constant term for MoE-LoRA."),
        Case("OMoE, E = 4, r = 8: one magnitude per adapted layer", (q_and_v, "omoe", 4, 8),
             "OMoE adds one magnitude per layer, not one per model: + (number of layers)."),
        Case("OMoE, E = 2, r = 16, on the four attention projections of one block", (attention, "omoe", 2, 16),
             "the same formula with other shapes: keep Σd_in and Σd_out apart (the router reads d_in)."),
        Case("LoRA of rank E·r = 32 (the same A/B budget)", (q_and_v, "lora", 4, 32),
             "a LoRA has no router and no magnitude: r·(Σd_in + Σd_out) with its own rank."),
    ]


def check_mixture_parameters(fn: Callable) -> Callable:
    """Exercise 5.1: ``mixture_parameters_by_hand(layer_shapes, method, num_experts, rank)`` against the
    library's layers, counted by ``omoe_lab.trainable_parameters``."""
    __tracebackhide__ = True
    return MIXTURE_PARAMETERS.check(fn, counted_mixture_parameters, mixture_parameter_cases, exactly())


@torch.no_grad()
def merged_layer_delta_w(lora_A, lora_B, token_weights, scaling):
    """ΔW [d_out, d_in] of ``analysis.merging``'s merged variant: an ``MoELoRALinear`` (float64) holding these
    experts, mixing with the constant ``w̄`` = mean of ``token_weights`` over the tokens (``merging._constant_mix``,
    as ``variant_layers`` sets it), read off from its adapter output on the identity (row i: ``ΔW e_i``)."""
    num_experts, rank, d_in = lora_A.shape
    d_out = lora_B.shape[1]
    config = AdapterConfig(method="moe", num_experts=num_experts, rank=rank, alpha=scaling * rank)
    layer = MoELoRALinear(frozen_linear(torch.zeros(d_out, d_in)), config, num_experts).double().eval()
    layer.lora_A.copy_(lora_A)
    layer.lora_B.copy_(lora_B)
    layer.mixed_inputs = _constant_mix(token_weights.double().mean(dim=0))  # an instance attribute shadows the method
    return layer.adapter_output(torch.eye(d_in, dtype=torch.float64)).T


# float64 inputs: ΔW to 1e-10 relative (entry by entry, 1e-12 absolute for entries that cancel to about 0)
MERGE_ATOL, MERGE_RTOL = 1e-12, 1e-10


def mixture_output(x, lora_A, lora_B, token_weights, scaling):
    """The mixture's added term on each token, ``y_t = s Σ_j w_{t,j} B_j A_j x_t`` [N, d_out], float64."""
    return scaling * torch.einsum("tj,jor,jrd,td->to", token_weights, lora_B, lora_A, x)


def merges_exactly(x: torch.Tensor, lora_A, lora_B, token_weights, scaling) -> Callable:
    """Weights constant over the tokens: the merged layer must give the mixture's output on every token,
    ``x_t ΔWᵀ = s Σ_j w_j B_j A_j x_t``; then ΔW itself is compared with the reference."""
    mixture = mixture_output(x, lora_A, lora_B, token_weights, scaling)
    tokens = len(x)

    def compare(got, expected):
        problem = tensor_problem(got, expected)
        if problem:
            return problem
        merged = x @ got.detach().double().T
        if close(atol=MERGE_ATOL, rtol=MERGE_RTOL)(merged, mixture) is None:
            return close(atol=MERGE_ATOL, rtol=MERGE_RTOL)(got, expected)
        ratio = float((merged * mixture).sum() / mixture.square().sum())     # the best single factor
        residual = float((merged - ratio * mixture).norm() / mixture.norm())
        off = float((merged - mixture).norm() / mixture.norm())
        how = (f"x_t ΔWᵀ = {ratio:.6g} × the mixture's output on every token" if residual < 1e-8
               else f"x_t ΔWᵀ differs from the mixture's output by {off:.3g} of its norm (not a multiple of it)")
        if got.dtype != torch.float64:
            how += f"; ΔW came back as {str(got.dtype).removeprefix('torch.')}: keep the float64 inputs in float64"
        return Mismatch(f"x_t ΔWᵀ = the mixture's output s Σ_j w_j B_j A_j x_t on each of the {tokens} tokens "
                        f"(to {MERGE_RTOL:g} relative)", how)

    return compare


def merge_cases() -> list[Case]:
    def inputs(tokens=8, num_experts=3, rank=2, d_in=12, d_out=5, scaling=1.0, constant=False, zero_expert=None):
        A, B = randn64(num_experts, rank, d_in), randn64(num_experts, d_out, rank)
        if zero_expert is not None:
            B[zero_expert] = 0.0
        # any sign and no sum to 1: OMoE's w_t are m·(its Gram–Schmidt weights)
        weights = randn64(1, num_experts).expand(tokens, -1).clone() if constant else randn64(tokens, num_experts)
        return A, B, weights, scaling

    constant = inputs(tokens=8, scaling=1.0, constant=True)
    probe = randn64(8, constant[0].shape[-1])
    return [
        Case("weights constant over the 8 tokens: the merged layer equals the mixture on every token", constant,
             "ΔW = s Σ_j w̄_j B_j A_j with w̄ = token_weights.mean(dim=0), the *mean* over the tokens (dim 0 of [N, E]), not "
             "their sum and not a mean over the experts; ΔW is [d_out, d_in] like W0: B_j [d_out, r] @ A_j [r, d_in].",
             compare=merges_exactly(probe, *constant)),
        Case("E = 4 experts of rank 3, 10 tokens with their own weights, s = α/r = 2", inputs(tokens=10, num_experts=4, rank=3, scaling=2.0),
             "multiply by the scaling s once: the merged LoRA's ΔW includes it, as the mixture's term s Σ_j w_j B_j A_j x does."),
        Case("a square layer (d_in = d_out = 8), 6 tokens", inputs(tokens=6, d_in=8, d_out=8, scaling=0.5),
             "with d_in = d_out a transpose still has the right shape: B_j @ A_j, not A_jᵀ B_jᵀ (that is ΔWᵀ)."),
        Case("expert 1 has B_1 = 0 (a zero expert)", inputs(zero_expert=1, scaling=2.0),
             "a zero expert's B_j A_j is 0 and adds nothing; nothing needs normalizing (B_j A_j / ‖B_j A_j‖ would be 0/0 here), and w̄ is not renormalized over the other experts."),
        Case("one expert, E = 1: a LoRA, ΔW = s w̄ B A", inputs(tokens=5, num_experts=1, rank=4, scaling=2.0),
             "with E = 1, A is [1, r, d_in] and B [1, d_out, r]: keep the expert axis; the answer is s · w̄_0 · B_0 A_0."),
    ]


def check_merged_delta_w(fn: Callable) -> Callable:
    """Exercise 5.2: ``merged_delta_w_by_hand(lora_A, lora_B, token_weights, scaling)`` against ``analysis.merging``'s
    merged layer (float64, 1e-10 relative)."""
    __tracebackhide__ = True
    return MERGED_DELTA_W.check(fn, merged_layer_delta_w, merge_cases, close(atol=MERGE_ATOL, rtol=MERGE_RTOL))


EXERCISES = {exercise.number: exercise for exercise in (
    LORA_FORWARD, ADAPTER_PARAMETERS, MEAN_ABS_COSINE, LINEAR_CKA, EFFECTIVE_RANK, STIEFEL_ERROR, GRAM_SCHMIDT,
    MOE_LORA_FORWARD, TOP_K_GATES, LOAD_BALANCING_LOSS, PERMUTATION_P, MCNEMAR_P, MIXTURE_PARAMETERS, MERGED_DELTA_W,
)}
CHECKERS = {
    "0.1": check_lora_forward, "0.2": check_adapter_parameters, "1.1": check_mean_abs_cosine, "1.2": check_linear_cka,
    "1.3": check_effective_rank, "2.1": check_stiefel_error, "2.2": check_gram_schmidt, "3.1": check_moe_lora_forward,
    "3.2": check_top_k_gates, "3.3": check_load_balancing_loss, "4.1": check_permutation_p,
    "4.2": check_mcnemar_p, "5.1": check_mixture_parameters, "5.2": check_merged_delta_w,
}
