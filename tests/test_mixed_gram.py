"""The mixed-precision Gram (issue 20, item 3): float32 where the guard trusts it, float64 elsewhere.

``OMoELinear.mixed_precision_gram`` runs the Gram and its factorization in float32 and recomputes in
float64 every token ``orthogonal.mixed_gram_guard`` does not trust: ``ε_t · max_k ‖z_k‖² > η``
(``ε_t`` the float32 Gram's error estimate, ``z_k`` row k of ``L⁻¹``, η = ``MIXED_PIVOT_ERROR``), a failed
factorization, or a pivot within that margin of the redundancy threshold. Checked here:

- tokens whose relative residual is just above and just below ``redundancy_tol`` take the fallback,
  and give what the float64 path gives (outputs and gradients, both backward paths, every mode);
- the guard's rule itself flips exactly at η;
- on random layers (no fallback) the mixed path matches the float64 path to float32's tolerance,
  1e-5 relative (measured ≤ 1e-6), outputs and every gradient, both backward paths;
- float64 inputs never take it (bitwise the float64 path), and it traces under ``torch.compile``.
"""
from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from omoe_lab.adapters import AdapterConfig, OMoELinear
from omoe_lab.adapters.orthogonal import (
    MIXED_PIVOT_ERROR, expert_metric, float32_gram_error, masked_cholesky_ex, mixed_gram_guard, normalized,
)
from omoe_lab.adapters.orthogonal_mix import chunked_gram, orthogonal_mix

MODES = ["stiefel", "orthogonal", "norm_preserving"]
FLOAT32_MATCH = 1e-5  # float32's tolerance against the float64 path (tests/test_fuzz.py MATCH_TOL)
SAME = 1e-6  # a fallback token is the float64 path's own answer, rounded to float32 once


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.norm()
    return ((a - b).norm() / (scale if scale > 0 else 1.0)).item()


def near_threshold_inputs(rho: float, tokens: int = 6, d_out: int = 32, seed: int = 0):
    """E 3, rank 2: expert 1 at relative residual ``rho`` from expert 0 for every ``a`` (one A;
    ``B_0 = Q_1 c``, ``B_1 = B_0 + ρ′ Q_2 c`` with ``Q_1 ⊥ Q_2``, so ``e_1 − e_0 ⊥ e_0`` and
    ``‖e_1 − e_0‖ = ρ′‖e_0‖``), expert 2 random. Even tokens have all three active (expert 1 near the
    threshold), odd tokens only experts 0 and 2 (far from it): ``(a, B, gates, active)`` in float32."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(d_out, 4, generator=generator, dtype=torch.float64)).Q
    c = torch.randn(2, 2, generator=generator, dtype=torch.float64)
    b0 = q[:, :2] @ c
    b1 = b0 + rho / (1 - rho * rho) ** 0.5 * (q[:, 2:] @ c)  # ‖u_1‖/‖e_1‖ = ρ exactly (before rounding)
    b2 = torch.randn(d_out, 2, generator=generator, dtype=torch.float64)
    slot_b = torch.stack([b0, b1, b2]).float()  # [3, d_out, 2]
    a = torch.randn(tokens, 3, 2, generator=generator)
    a[:, 1] = a[:, 0]
    gates = torch.softmax(torch.randn(tokens, 3, generator=generator), -1)
    active = torch.ones(tokens, 3, dtype=torch.bool)
    active[1::2, 1] = False
    return a, slot_b, gates, active


def relative_residuals(a: torch.Tensor, slot_b: torch.Tensor) -> torch.Tensor:
    """Expert 1's relative distance from expert 0 per token [N], in float64 from the float32 values."""
    e0 = a[:, 0].double() @ slot_b[0].double().T
    e1 = a[:, 1].double() @ slot_b[1].double().T
    u = e1 - ((e1 * e0).sum(-1) / (e0 * e0).sum(-1)).unsqueeze(-1) * e0
    return u.norm(dim=-1) / e1.norm(dim=-1)


@pytest.mark.parametrize("mode,side", list(itertools.product(MODES, ["above", "below"])))
def test_tokens_near_the_redundancy_threshold_take_the_fallback_and_equal_float64(mode, side):
    tol = 1e-4
    rho = tol * (1.01 if side == "above" else 0.99)
    a, slot_b, gates, active = near_threshold_inputs(rho)
    residual = relative_residuals(a, slot_b)
    assert ((residual > tol) == (side == "above")).all() and ((residual / rho - 1).abs() < 3e-3).all()  # the side holds
    magnitude = torch.tensor(0.7)

    def run(mixed, stats=None):
        inputs = [t.clone().requires_grad_(True) for t in (a, slot_b, gates, magnitude)]
        out = orthogonal_mix(inputs[0], inputs[1], inputs[2], active, inputs[3], mode, tol, torch.float64, mixed, stats)
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
        return out, torch.autograd.grad((out * probe).sum(), inputs)

    stats = {}
    out, grads = run(True, stats)
    expected, expected_grads = run(False)
    near = active[:, 1]
    assert torch.equal(stats["last_fallback"], near)  # exactly the near-threshold tokens fell back
    assert stats == {"tokens": 6, "fallback_tokens": 3, "last_fallback": stats["last_fallback"]}
    # float64 decides: expert 1 is live above the threshold and contributes, below it contributes nothing
    contributes = out[near, 1].abs().amax() > 0
    assert contributes == (side == "above")
    assert rel_err(out[near], expected[near]) <= SAME
    assert rel_err(out[~near], expected[~near]) <= FLOAT32_MATCH
    for name, grad, exp in zip(["a", "B", "gates", "magnitude"], grads, expected_grads):
        assert torch.isfinite(grad).all() and rel_err(grad, exp) <= FLOAT32_MATCH, (name, rel_err(grad, exp))
    assert rel_err(grads[0][near], expected_grads[0][near]) <= SAME


def test_the_guard_flips_exactly_at_its_pivot_error():
    """``safe ⇔ ε_t · max_k ‖z_k‖² ≤ η``: at η just above a token's own value it is safe, just below not."""
    torch.manual_seed(0)
    tokens, experts, rank, d_out = 8, 4, 3, 20
    slot_b = torch.randn(experts, d_out, rank)
    slot_b[3] = slot_b[0] + 0.3 * torch.randn(d_out, rank)  # a moderately close pair: ‖z‖² of a few
    a = torch.randn(tokens, experts, rank)
    a[:, 3] = a[:, 0]
    active = torch.ones(tokens, experts, dtype=torch.bool)
    b_cat, metric = expert_metric(slot_b, torch.float64)
    b_sq_norms = slot_b.square().sum((1, 2))
    gram = chunked_gram(a, metric.float())
    inv_norm, cosines = normalized(gram, active)
    rows = torch.linalg.solve_triangular(masked_cholesky_ex(cosines, inv_norm > 0).L, torch.eye(experts), upper=False)
    value = float32_gram_error(a, b_sq_norms, gram, active) * rows.square().sum(-1).amax(-1)
    assert (value > 0).all() and (value < 0.5).all()
    for t in range(tokens):
        above = mixed_gram_guard(gram, a, b_sq_norms, active, 1e-4, pivot_error=value[t].item() * (1 + 1e-4)).safe
        below = mixed_gram_guard(gram, a, b_sq_norms, active, 1e-4, pivot_error=value[t].item() * (1 - 1e-4)).safe
        assert above[t] and not below[t]
        assert torch.equal(above, value <= value[t] * (1 + 1e-4))


def test_the_error_estimate_rules_out_float32_near_any_redundancy():
    """``ε_t ≥ (E + 5 + √(2r+1))·u·E ≥ 7.7u``, so a safe token has every pivot ``ρ_k² ≥ ε_t/η``:
    no expert closer than 0.021 to the span of the earlier ones is ever answered in float32."""
    a = torch.randn(5, 1, 1)
    gram = a.square()  # [5, 1, 1]: one expert, B = [[1]], G = a²
    error = float32_gram_error(a, torch.ones(1), gram, torch.ones(5, 1, dtype=torch.bool))
    floor = (1 + 5 + 3 ** 0.5) * 2.0 ** -24
    assert torch.allclose(error, torch.full_like(error, floor), rtol=1e-5)
    assert (floor / MIXED_PIVOT_ERROR) ** 0.5 > 0.021


def make_layer(mode="stiefel", num_experts=6, rank=4, d_in=24, d_out=40, seed=0, **routing) -> OMoELinear:
    torch.manual_seed(seed)
    config = AdapterConfig(method="omoe", num_experts=num_experts, rank=rank, alpha=2 * rank, orthogonalize=mode,
                           **routing)
    layer = OMoELinear(nn.Linear(d_in, d_out).requires_grad_(False), config, num_experts)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.router.weight.normal_()
        layer.magnitude.fill_(0.8)
    return layer


def forward_backward(layer: OMoELinear, x: torch.Tensor):
    xi = x.clone().requires_grad_(True)
    out = layer(xi)
    adapter = out - layer.base_layer(xi)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype)
    grads = torch.autograd.grad((out * probe).sum(), [xi] + [p for p in layer.parameters() if p.requires_grad])
    return adapter, grads


@pytest.mark.parametrize(
    "mode,recompute,routing",
    list(itertools.product(MODES, [True, False], [dict(), dict(top_k=2)])),
)
def test_mixed_path_matches_the_float64_path(mode, recompute, routing):
    """A random layer (no fallback) and the same layer with a duplicate, a zero and a near pair (those
    tokens fall back): outputs and every gradient within float32's tolerance of the float64 path."""
    for degenerate in (False, True):
        layer = make_layer(mode, **routing)
        if degenerate:
            with torch.no_grad():
                layer.lora_A[2], layer.lora_B[2] = layer.lora_A[0], layer.lora_B[0]  # duplicate
                layer.lora_B[3] = 0  # zero
                layer.lora_A[5] = layer.lora_A[1]
                layer.lora_B[5] = layer.lora_B[1] + 1e-3 * torch.randn_like(layer.lora_B[1])  # near: live, ρ ~ 1e-3
        layer.recompute = recompute
        mixed = copy.deepcopy(layer)
        mixed.mixed_precision_gram = True
        x = torch.randn(3, 7, 24, generator=torch.Generator().manual_seed(1))
        adapter, grads = forward_backward(mixed, x)
        expected, expected_grads = forward_backward(layer, x)
        assert rel_err(adapter, expected) <= FLOAT32_MATCH, rel_err(adapter, expected)
        for grad, exp in zip(grads, expected_grads):
            assert torch.isfinite(grad).all() and rel_err(grad, exp) <= FLOAT32_MATCH, rel_err(grad, exp)
        fallback = mixed.gram_stats["last_fallback"]
        assert mixed.gram_stats["tokens"] == 21 and mixed.gram_stats["fallback_tokens"] == int(fallback.sum())
        if degenerate:  # every token has the duplicate or the near pair active under soft routing
            assert fallback.any() and (fallback.all() or routing)
        else:
            assert not fallback.any()
        assert mixed.gram_fallback_rate == pytest.approx(fallback.float().mean().item())


def test_both_backward_paths_of_the_mixed_gram_agree():
    """The hand-derived backward (``recompute``) and autograd through the mixed path, with fallback tokens."""
    layer = make_layer("norm_preserving", top_k=3)
    with torch.no_grad():
        layer.lora_A[4], layer.lora_B[4] = layer.lora_A[0], 2 * layer.lora_B[0]  # collinear: redundant
    layer.mixed_precision_gram = True
    kept = copy.deepcopy(layer)
    kept.recompute = False
    x = torch.randn(2, 9, 24, generator=torch.Generator().manual_seed(2))
    (out_r, grads_r), (out_k, grads_k) = forward_backward(layer, x), forward_backward(kept, x)
    assert torch.equal(layer.gram_stats["last_fallback"], kept.gram_stats["last_fallback"])
    assert layer.gram_stats["last_fallback"].any() and not layer.gram_stats["last_fallback"].all()
    assert rel_err(out_r, out_k) <= SAME
    for a, b in zip(grads_r, grads_k):
        assert rel_err(a, b) <= FLOAT32_MATCH


def test_float64_inputs_take_the_float64_path_unchanged():
    layer = make_layer("stiefel").double()
    mixed = copy.deepcopy(layer)
    mixed.mixed_precision_gram = True
    x = torch.randn(4, 5, 24, dtype=torch.float64)
    assert torch.equal(mixed(x), layer(x)) and mixed.gram_stats == {}


def test_mixed_path_traces_as_one_graph():
    """Under ``torch.compile`` no mask is read: every token is recomputed and ``torch.where`` chooses."""
    layer = make_layer("stiefel", top_k=2)
    with torch.no_grad():
        layer.lora_A[2], layer.lora_B[2] = layer.lora_A[0], layer.lora_B[0]
    layer.mixed_precision_gram = True
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    x = torch.randn(4, 6, 24)
    reference = copy.deepcopy(layer)
    reference.mixed_precision_gram = False
    assert rel_err(compiled(x) - layer.base_layer(x), reference(x) - layer.base_layer(x)) <= FLOAT32_MATCH
