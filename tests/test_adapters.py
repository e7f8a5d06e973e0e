"""The maths of one adapted linear: references, Gram–Schmidt, routing, init, dtypes."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from omoe_lab.adapters import (
    AdapterConfig,
    LoRALinear,
    MoELoRALinear,
    OMoELinear,
    gram_schmidt,
    load_balancing_loss,
    router_z_loss,
    routing_gates,
)

MODES = ["stiefel", "orthogonal", "norm_preserving"]
ROUTINGS = [dict(), dict(top_k=2), dict(top_p=0.6)]
D_IN, D_OUT = 24, 40


def make_layer(method="omoe", device="cpu", num_experts=4, rank=4, seed=0, **kwargs):
    """A layer with every weight random and non-zero (a trained-looking state)."""
    torch.manual_seed(seed)
    config = AdapterConfig(method=method, num_experts=num_experts, rank=rank, alpha=2 * rank, **kwargs)
    cls = {"lora": LoRALinear, "moe": MoELoRALinear, "omoe": OMoELinear}[method]
    layer = cls(nn.Linear(D_IN, D_OUT), config, config.num_experts).to(device)
    with torch.no_grad():
        layer.lora_B.normal_()
        if method != "lora":
            layer.router.weight.normal_()
        if method == "omoe":
            layer.magnitude.fill_(0.8)
    return layer


def qr_reference(vectors: torch.Tensor, mode: str) -> torch.Tensor:
    """Independent float64 reference: Householder QR of [e_1 … e_E] is Gram–Schmidt in exact arithmetic.

    With the signs fixed so that diag(R) > 0, Q's columns are q̂_k and R_kk = ‖u_k‖.
    """
    e = vectors.double()
    q, r = torch.linalg.qr(e.transpose(-1, -2))  # columns are experts
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    q_hat = (q * signs.unsqueeze(-2)).transpose(-1, -2)  # [..., E, d]
    residual_norms = torch.diagonal(r, dim1=-2, dim2=-1).abs()
    scale = {"stiefel": torch.ones_like(residual_norms), "orthogonal": residual_norms, "norm_preserving": e.norm(dim=-1)}[mode]
    return q_hat * scale.unsqueeze(-1)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("mode", MODES)
def test_gram_schmidt_matches_householder_qr(mode):
    torch.manual_seed(1)
    vectors = torch.randn(6, 5, 30)
    assert rel_err(gram_schmidt(vectors, mode=mode), qr_reference(vectors, mode)) < 1e-5


@pytest.mark.parametrize("mode,routing", list(itertools.product(MODES, ROUTINGS)))
def test_omoe_fast_path_equals_materialized_reference(device, mode, routing):
    layer = make_layer("omoe", device, orthogonalize=mode, **routing)
    x = torch.randn(3, 7, D_IN, device=device)
    q = layer.orthogonal_outputs(x)
    reference = layer.scaling * layer.magnitude * (layer.route(x).unsqueeze(-1) * q).sum(-2)
    assert rel_err(layer.adapter_output(x), reference) < 1e-5
    assert torch.allclose(layer(x), layer.base_layer(x) + layer.adapter_output(x))


@pytest.mark.parametrize("method,routing", [("lora", {})] + [("moe", r) for r in ROUTINGS])
def test_vanilla_output_is_gated_sum_of_expert_outputs(device, method, routing):
    layer = make_layer(method, device, **routing)
    x = torch.randn(5, D_IN, device=device)
    e = torch.stack([x @ layer.lora_A[i].T @ layer.lora_B[i].T for i in range(layer.num_experts)], dim=-2)
    assert torch.allclose(layer.expert_outputs(x), e, rtol=1e-5, atol=1e-6)
    reference = layer.scaling * (layer.route(x).unsqueeze(-1) * e).sum(-2)
    assert rel_err(layer.adapter_output(x), reference) < 1e-5


def _orthonormality_gap(q: torch.Tensor, live: torch.Tensor) -> float:
    """max over tokens of |QᵀQ − diag(live)| (float64), experts as rows."""
    q = q.double()
    gram = q @ q.transpose(-1, -2)
    target = torch.diag_embed(live.double())
    return (gram - target).abs().amax().item()


def test_stiefel_columns_for_random_near_collinear_and_duplicated_experts():
    torch.manual_seed(2)
    base = torch.randn(50, 1, 64)
    random = torch.randn(50, 4, 64)
    near = torch.cat([base, base + 1e-3 * torch.randn(50, 1, 64), torch.randn(50, 2, 64)], dim=1)
    dup = torch.cat([base, base, torch.randn(50, 1, 64), base * 3.0], dim=1)
    for vectors, live in [
        (random, [True] * 4),
        (near, [True] * 4),
        (dup, [True, False, True, False]),
    ]:
        q = gram_schmidt(vectors, mode="stiefel")
        assert torch.isfinite(q).all()
        live_mask = torch.tensor(live).expand(50, 4)
        assert _orthonormality_gap(q, live_mask) <= 1e-5
        assert (q[:, ~torch.tensor(live)] == 0).all()  # redundant experts contribute nothing


@pytest.mark.parametrize("mode", MODES)
def test_fast_path_handles_duplicated_and_zero_experts(device, mode):
    layer = make_layer("omoe", device, orthogonalize=mode)
    with torch.no_grad():
        layer.lora_A[1] = layer.lora_A[0]
        layer.lora_B[1] = layer.lora_B[0]  # expert 1 duplicates expert 0
        layer.lora_B[3] = 0  # expert 3 outputs zero
    x = torch.randn(16, D_IN, device=device)
    fast = layer.adapter_output(x)
    reference = layer.scaling * layer.magnitude * (layer.route(x).unsqueeze(-1) * layer.orthogonal_outputs(x)).sum(-2)
    assert rel_err(fast, reference) < 1e-5
    fast.square().sum().backward()
    for name, p in layer.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("mode", MODES)
def test_zero_experts_give_zero_output_and_finite_gradients(device, mode):
    layer = make_layer("omoe", device, orthogonalize=mode)
    with torch.no_grad():
        layer.lora_B.zero_()
    x = torch.randn(8, D_IN, device=device)
    out = layer.adapter_output(x)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(layer.orthogonal_outputs(x), torch.zeros(8, 4, D_OUT, device=device))
    (out.sum() + layer(x).sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


@pytest.mark.parametrize("method", ["moe", "omoe"])
def test_top_k_selects_k_and_unselected_experts_get_no_gradient(device, method):
    layer = make_layer(method, device, num_experts=5, top_k=2)
    x = torch.randn(1, D_IN, device=device)
    gates = layer.route(x)
    assert (gates > 0).sum().item() == 2 and torch.allclose(gates.sum(-1), torch.ones(1, device=device))
    layer.adapter_output(x).square().sum().backward()
    selected = (gates[0] > 0).cpu()
    for expert in range(5):
        grad_norm = layer.lora_A.grad[expert].norm() + layer.lora_B.grad[expert].norm()
        assert (grad_norm > 0) if selected[expert] else (grad_norm == 0), expert
    # the router gets gradient only through the selected experts' probabilities
    assert torch.isfinite(layer.router.weight.grad).all()


def test_routing_gates_against_brute_force():
    torch.manual_seed(3)
    logits = torch.randn(200, 6)
    probs = torch.softmax(logits, -1)
    soft, active = routing_gates(logits)
    assert torch.allclose(soft, probs) and active.all()
    topk, active = routing_gates(logits, top_k=3)
    for p, g, a in zip(probs, topk, active):
        chosen = sorted(range(6), key=lambda i: -p[i])[:3]
        expected = torch.zeros(6)
        expected[chosen] = p[chosen] / p[chosen].sum()
        assert torch.allclose(g, expected, atol=1e-6) and a.tolist() == [i in chosen for i in range(6)]
    topp, active = routing_gates(logits, top_p=0.7)
    for p, g in zip(probs, topp):
        order, mass, chosen = sorted(range(6), key=lambda i: -p[i]), 0.0, []
        for i in order:  # the smallest prefix whose mass reaches 0.7
            chosen.append(i)
            mass += p[i].item()
            if mass >= 0.7:
                break
        assert sorted(torch.nonzero(g).flatten().tolist()) == sorted(chosen)
        assert abs(g.sum().item() - 1) < 1e-6


def test_load_balancing_and_z_loss_values():
    uniform = torch.full((10, 4), 0.25)
    assert load_balancing_loss(uniform, torch.ones(10, 4, dtype=torch.bool)).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[1.0, 0, 0, 0]]).repeat(10, 1)
    assert load_balancing_loss(collapsed, collapsed > 0).item() == pytest.approx(4.0)
    # hand case: two tokens, top-1, E=2: f = (1/2, 1/2), P = (0.7+0.4, 0.3+0.6)/2 → 2·(0.5·0.55+0.5·0.45) = 1
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
    assert load_balancing_loss(probs, torch.tensor([[True, False], [False, True]])).item() == pytest.approx(1.0)
    # padding tokens do not count: the masked loss equals the loss on the real tokens alone
    torch.manual_seed(4)
    logits = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    gates, active = routing_gates(logits, top_k=1)
    probs = torch.softmax(logits, -1)
    real = mask.bool()
    assert load_balancing_loss(probs, active, mask).item() == pytest.approx(
        load_balancing_loss(probs[real], active[real]).item(), rel=1e-6
    )
    expected_z = (torch.logsumexp(logits[real], -1) ** 2).mean()
    assert router_z_loss(logits, mask).item() == pytest.approx(expected_z.item(), rel=1e-6)


@pytest.mark.parametrize("method", ["lora", "moe", "omoe"])
def test_bf16_autocast_close_to_float32(method):
    layer = make_layer(method)
    x = torch.randn(32, D_IN)
    expected = layer.adapter_output(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = layer.adapter_output(x)
    assert low.dtype == torch.bfloat16
    assert rel_err(low.float(), expected) < 3e-2
    bf16_layer = make_layer(method).to(torch.bfloat16)
    out = bf16_layer(x.bfloat16())
    assert out.dtype == torch.bfloat16 and rel_err(out.float(), make_layer(method)(x)) < 3e-2


def test_forward_traces_as_one_graph_without_host_syncs():
    """A data-dependent Python branch or ``.item()`` would break the graph; fullgraph forbids that."""
    layer = make_layer("omoe", top_k=2)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    x = torch.randn(4, 6, D_IN)
    assert torch.allclose(compiled(x), layer(x), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(method="mixture"), "unknown method"),
        (dict(method="omoe", orthogonalize="householder"), "unknown orthogonalize mode"),
        (dict(method="omoe", orthogonalize=None), "method='moe'"),
        (dict(num_experts=0), "num_experts must be >= 1"),
        (dict(top_k=5, num_experts=4), "top_k=5"),
        (dict(top_k=0), "top_k=0"),
        (dict(top_k=1, top_p=0.5), "not both"),
        (dict(top_p=1.5), "top_p"),
        (dict(rank=0), "rank must be >= 1"),
        (dict(method="omoe", b_init_std=0.0), "b_init_std"),
        (dict(method="moe", b_init_std=-1.0), "b_init_std"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdapterConfig(**kwargs)


@pytest.mark.parametrize("method", ["lora", "moe", "omoe"])
def test_every_method_starts_as_the_base_model(method):
    """LoRA and MoE-LoRA through B = 0, OMoE through magnitude = 0 with a random B (std 0.02)."""
    torch.manual_seed(0)
    layer = {"lora": LoRALinear, "moe": MoELoRALinear, "omoe": OMoELinear}[method](
        nn.Linear(D_IN, D_OUT), AdapterConfig(method=method, num_experts=4, rank=4), 4)
    x = torch.randn(16, D_IN)
    assert torch.equal(layer(x), layer.base_layer(x))
    if method == "omoe":
        assert layer.lora_B.std().item() == pytest.approx(0.02, rel=0.1)
    else:
        assert not layer.lora_B.any()


def test_vanilla_experts_can_start_from_omoes_random_b():
    """The control run: same random B as OMoE, no orthogonalization, so the start is not the base model."""
    torch.manual_seed(0)
    layer = MoELoRALinear(nn.Linear(D_IN, D_OUT), AdapterConfig(method="moe", num_experts=4, rank=4, b_init_std=0.02), 4)
    assert layer.lora_B.std().item() == pytest.approx(0.02, rel=0.1)
    assert layer.adapter_output(torch.randn(16, D_IN)).abs().max() > 0


def test_rank_larger_than_layer_is_refused():
    with pytest.raises(ValueError, match="rank=32 exceeds"):
        OMoELinear(nn.Linear(D_IN, D_OUT), AdapterConfig(rank=32), 4)


def test_float32_gram_option_stays_close_to_the_reference():
    """The Gram in float32 (the spec's choice, faster) loses a little precision but not the answer."""
    layer = make_layer("omoe", top_k=3)
    layer.gram_dtype = torch.float32
    x = torch.randn(64, D_IN)
    reference = layer.scaling * layer.magnitude * (layer.route(x).unsqueeze(-1) * layer.orthogonal_outputs(x)).sum(-2)
    assert rel_err(layer.adapter_output(x), reference) < 1e-4


def test_configs_saved_with_the_old_b_init_name_still_load():
    config = AdapterConfig.from_dict({"method": "omoe", "omoe_b_init_std": 0.05})
    assert config.b_init_std == 0.05
    with pytest.raises(ValueError, match="unknown AdapterConfig fields"):
        AdapterConfig.from_dict({"method": "omoe", "b_init": 0.05})
