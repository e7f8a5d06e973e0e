"""Experts in the span of *several* earlier experts are redundant, whatever their coefficients.

Issue 20, item 1. ``e2 = (e1 − e0)/ε`` with ``e1 = e0 + ε·W a`` lies exactly in the span of e0 and e1,
with coefficients ~1/ε in the cosine metric. Explicit Gram–Schmidt leaves it no direction; a
redundancy test on a jittered factorization (pivot ≈ √(δ(1 + ‖β‖²)) > tol once ‖β‖ ≳ 10) kept it,
and the fast path then mixed a direction made of round-off into the output with its full gate.
The same happens without any construction when there are more experts than output dimensions.

The reference here is written from the maths (OMOE_SPEC §3), per token, with Python loops:
modified Gram–Schmidt in index order over the active experts, swept twice (the second sweep
removes what round-off left along earlier directions), an expert dropped when
``‖u_k‖ ≤ tol·‖e_k‖`` (``live_experts`` keeps an expert when its relative residual ``> tol``: the
same threshold),
and ``q_k = q̂_k`` (stiefel), ``u_k`` (orthogonal) or ``‖e_k‖ q̂_k`` (norm_preserving).
"""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from omoe_lab.adapters import AdapterConfig, MixLoRAFFN, OMoELinear
from omoe_lab.adapters import orthogonal_mix

MODES = ["stiefel", "orthogonal", "norm_preserving"]
MATCH = 1e-6  # relative error of the output and of every gradient against the reference


def gram_schmidt_mix(
    e: torch.Tensor, gates: torch.Tensor, active: torch.Tensor, mode: str, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ_k g_k q_k`` [T, d] from the materialized outputs ``e`` [T, E, d] by modified Gram–Schmidt,
    and which experts kept a direction [T, E] (bool).

    Differentiable (autograd through the loops); a dropped expert contributes nothing.
    """
    rows, kept = [], torch.zeros(active.shape, dtype=torch.bool)
    for t in range(e.shape[0]):
        directions: list[torch.Tensor] = []  # q̂_j of the kept experts
        total = e.new_zeros(e.shape[-1])
        for k in range(e.shape[1]):
            if not active[t, k]:
                continue
            e_k = e[t, k]
            u = e_k
            for _ in range(2):
                for q_hat in directions:
                    u = u - (q_hat @ u) * q_hat  # modified: project the running residual
            norm_u, norm_e = u.norm(), e_k.norm()
            if norm_e == 0 or norm_u <= tol * norm_e:
                continue
            q_hat = u / norm_u
            directions.append(q_hat)
            kept[t, k] = True
            scale = {"stiefel": 1.0, "orthogonal": norm_u, "norm_preserving": norm_e}[mode]
            total = total + gates[t, k].to(e.dtype) * scale * q_hat
        rows.append(total)
    return torch.stack(rows), kept


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.norm()
    return ((a - b).norm() / (scale if scale > 0 else 1.0)).item()


def span_layer(mode: str, eps: float, recompute: bool, seed: int = 0) -> OMoELinear:
    """float64, E 3, rank 2, d_in 8 → d_out 16, soft routing: ``B_0``, ``B_0 + ε W``, ``W`` with one A,
    so ``e_2 = (e_1 − e_0)/ε`` exactly for every token."""
    torch.manual_seed(seed)
    config = AdapterConfig(method="omoe", num_experts=3, rank=2, alpha=4, orthogonalize=mode)
    layer = OMoELinear(nn.Linear(8, 16).requires_grad_(False), config, 3).double().eval()
    layer.recompute = recompute
    with torch.no_grad():
        layer.router.weight.normal_()
        layer.magnitude.fill_(0.8)
        a, b0, w = torch.randn(2, 8), torch.randn(16, 2), torch.randn(16, 2)
        layer.lora_A[:] = a
        layer.lora_B[0], layer.lora_B[1], layer.lora_B[2] = b0, b0 + eps * w, w
    return layer


def check_against_reference(layer: OMoELinear, x: torch.Tensor) -> None:
    """The layer's output and the gradients of every trainable parameter and of x match the reference,
    on inputs where the reference does drop some active expert."""
    params = [p for p in layer.parameters() if p.requires_grad]
    probe = torch.randn(*x.shape[:-1], layer.out_features, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    xi = x.clone().requires_grad_(True)
    adapter = layer(xi) - layer.base_layer(xi)
    grads = torch.autograd.grad((adapter * probe).sum(), params + [xi])

    xr = x.clone().requires_grad_(True)
    gates, active = layer.route_with_mask(xr)
    e = torch.einsum("erd,td,eor->teo", layer.lora_A, xr, layer.lora_B)
    mix, kept = gram_schmidt_mix(e, gates, active, layer.orthogonalize, layer.redundancy_tol)
    reference = layer.scaling * layer.magnitude * mix
    assert (active & ~kept).any()  # the construction really is degenerate
    expected = torch.autograd.grad((reference * probe).sum(), params + [xr])

    assert rel_err(adapter, reference) <= MATCH, rel_err(adapter, reference)
    names = [n for n, p in layer.named_parameters() if p.requires_grad] + ["x"]
    for name, grad, exp in zip(names, grads, expected):
        assert torch.isfinite(grad).all(), name
        assert rel_err(grad, exp) <= MATCH, (name, rel_err(grad, exp), grad.abs().max().item())


@pytest.mark.parametrize("mode,recompute,eps", list(itertools.product(MODES, [True, False], [0.1, 0.01, 1e-3])))
def test_expert_in_the_span_of_two_nearly_parallel_experts_is_dropped(mode, recompute, eps):
    layer = span_layer(mode, eps, recompute)
    x = torch.randn(16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    check_against_reference(layer, x)


@pytest.mark.parametrize("mode,recompute", list(itertools.product(MODES, [True, False])))
def test_more_experts_than_output_dimensions(mode, recompute):
    """E 8 experts in d_out 5: from the sixth on every expert is in the span of the earlier ones,
    with random (often large) coefficients."""
    torch.manual_seed(3)
    config = AdapterConfig(method="omoe", num_experts=8, rank=2, alpha=4, orthogonalize=mode)
    layer = OMoELinear(nn.Linear(6, 5).requires_grad_(False), config, 8).double().eval()
    layer.recompute = recompute
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.router.weight.normal_()
        layer.magnitude.fill_(0.8)
    x = torch.randn(32, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    check_against_reference(layer, x)


class GatedMLP(nn.Module):
    """The smallest Llama-style gated MLP (``ffn.is_gated_mlp``)."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


@pytest.mark.parametrize("mode", MODES)
def test_omoe_mixlora_with_more_experts_than_hidden_dimensions(mode):
    """``omoe_mixlora`` decides redundancy with the same functions: 8 experts' changes in R^4."""
    torch.manual_seed(5)
    config = AdapterConfig(method="omoe_mixlora", num_experts=8, rank=2, alpha=4, orthogonalize=mode, b_init_std=0.5)
    block = MixLoRAFFN(GatedMLP(4, 8).requires_grad_(False), config, 8).double().eval()
    with torch.no_grad():
        block.router.weight.normal_()
        block.magnitude.fill_(0.8)
    x = torch.randn(32, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    params = [p for p in block.parameters() if p.requires_grad]
    probe = torch.randn(32, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    out = block(x)
    grads = torch.autograd.grad((out * probe).sum(), params)
    gates, active = block.route_with_mask(x, record=False)
    mix, kept = gram_schmidt_mix(block.expert_outputs(x), gates, active, mode, block.redundancy_tol)
    assert (active & ~kept).any()
    reference = block.base_layer(x) + block.magnitude * mix
    expected = torch.autograd.grad((reference * probe).sum(), params)
    assert rel_err(out, reference) <= MATCH, rel_err(out, reference)
    for grad, exp in zip(grads, expected):
        assert torch.isfinite(grad).all() and rel_err(grad, exp) <= MATCH, rel_err(grad, exp)


@pytest.mark.parametrize("mode", MODES)
def test_hand_derived_backward_passes_gradcheck_on_a_span_degenerate_case(mode, monkeypatch):
    """``orthogonal_mix``'s backward against finite differences where expert 2 is ``(e_1 − e_0)/ε``
    (ε = 0.05: coefficients ~20 in the cosine metric) beside an independent expert 3, one token per
    chunk. gradcheck's steps (1e-6) leave expert 2 within ~1e-5 of the span: still redundant."""
    monkeypatch.setattr(orthogonal_mix, "CPU_CHUNK_BYTES", 1)
    torch.manual_seed(8)
    tokens, experts, rank, d_out, eps = 3, 4, 2, 9, 0.05
    a = torch.randn(tokens, experts, rank, dtype=torch.float64)
    a[:, 1], a[:, 2] = a[:, 0], a[:, 0]
    b = torch.randn(experts, d_out, rank, dtype=torch.float64)
    b[1] = b[0] + eps * b[2]
    gates = torch.softmax(torch.randn(tokens, experts, dtype=torch.float64), -1)
    active = torch.ones(tokens, experts, dtype=torch.bool)
    magnitude = torch.tensor(0.7, dtype=torch.float64)
    inputs = [t.requires_grad_(True) for t in (a, b, gates, magnitude)]

    def mix(a, b, gates, magnitude):
        return orthogonal_mix.orthogonal_mix(a, b, gates, active, magnitude, mode, 1e-4, torch.float64)

    # the forward itself is the reference's: w_2 = 0 (expert 2 contributes nothing)
    e = torch.einsum("eor,ter->teo", b, a).detach()
    expected, kept = gram_schmidt_mix(e, gates.detach(), active, mode, 1e-4)
    assert not kept[:, 2].any() and kept[:, [0, 1, 3]].all()
    mixed = mix(*inputs).detach()
    assert rel_err(0.7 ** -1 * torch.einsum("ter,eor->to", mixed, b.detach()), expected) <= MATCH
    assert torch.autograd.gradcheck(mix, inputs)


@pytest.mark.parametrize("mode,recompute,eps", list(itertools.product(MODES, [True, False], [0.1, 1e-3])))
def test_mixed_precision_gram_sends_span_degenerate_tokens_to_float64(mode, recompute, eps):
    """Issue 20, item 3: in float32, with ``mixed_precision_gram``, every token of the span construction
    (expert 2 in the span of experts 0 and 1) falls back to float64 and gives the float64 path's output and
    gradients (the same computation on the same float32 ``a``: to float32 rounding, 1e-6)."""
    exact = span_layer(mode, eps, recompute).float()
    mixed = span_layer(mode, eps, recompute).float()
    mixed.mixed_precision_gram = True
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(2))
    probe = torch.randn(16, 16, generator=torch.Generator().manual_seed(1))
    results = []
    for layer in (exact, mixed):
        xi = x.clone().requires_grad_(True)
        out = layer(xi) - layer.base_layer(xi)
        params = [p for p in layer.parameters() if p.requires_grad]
        results.append((out, torch.autograd.grad((out * probe).sum(), params + [xi])))
    assert mixed.gram_stats["last_fallback"].all() and mixed.gram_stats["fallback_tokens"] == 16
    (expected, expected_grads), (out, grads) = results
    assert rel_err(out, expected) <= MATCH
    for grad, exp in zip(grads, expected_grads):
        assert torch.isfinite(grad).all() and rel_err(grad, exp) <= MATCH, rel_err(grad, exp)
