"""The maths of one adapted linear: references, Gram–Schmidt, routing, init, dtypes."""
from __future__ import annotations

import copy
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
    gram_schmidt_weights,
    load_balancing_loss,
    router_z_loss,
    routing_gates,
)
from omoe_lab.adapters import orthogonal_mix
from omoe_lab.adapters.orthogonal import resolvable_tol

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


def omoe_reference(layer: OMoELinear, x: torch.Tensor) -> torch.Tensor:
    """``s · m · Σ_k g_k q_k`` with q_k from ``gram_schmidt`` on the materialized expert outputs."""
    return layer.scaling * layer.magnitude * (layer.route(x).unsqueeze(-1) * layer.orthogonal_outputs(x)).sum(-2)


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
    """The Gram in float32 (the spec's choice, faster), with a threshold it resolves, keeps the answer."""
    layer = make_layer("omoe", top_k=3, redundancy_tol=resolvable_tol(torch.float32))
    layer.gram_dtype = torch.float32
    x = torch.randn(64, D_IN)
    assert rel_err(layer.adapter_output(x), omoe_reference(layer, x)) < 1e-4


def near_span_layer(residuals: list[float], dtype=torch.float64, **kwargs) -> OMoELinear:
    """Experts 0, 1 random; expert 2 + i a copy of expert i % 2 with B moved by ``residuals[i]``
    (relative), so its output lies about that far from the span of the experts before it."""
    layer = make_layer("omoe", num_experts=2 + len(residuals), **kwargs).to(dtype)
    with torch.no_grad():
        for i, rho in enumerate(residuals):
            src = i % 2
            layer.lora_A[2 + i] = layer.lora_A[src]
            noise = torch.randn_like(layer.lora_B[src])
            layer.lora_B[2 + i] = layer.lora_B[src] + rho * noise * layer.lora_B[src].norm() / noise.norm()
    return layer


def relative_residuals(vectors: torch.Tensor) -> torch.Tensor:
    """``‖u_k‖ / ‖e_k‖`` per token and expert [..., E] (float64 Householder QR)."""
    r = torch.linalg.qr(vectors.double().transpose(-1, -2)).R
    return torch.diagonal(r, dim1=-2, dim2=-1).abs() / vectors.double().norm(dim=-1)


def test_float64_gram_resolves_experts_close_to_the_span():
    """At the default tol 1e-4, experts 0.1–3 % off the span of earlier ones are live and match the reference."""
    layer = near_span_layer([1e-3, 3e-3, 1e-2, 3e-2])
    x = torch.randn(64, D_IN, dtype=torch.float64)
    residuals = relative_residuals(layer.expert_outputs(x))[:, 2:]
    assert residuals.min() > 5e-4 and residuals.max() < 6e-2  # the construction is what it says
    assert rel_err(layer.adapter_output(x), omoe_reference(layer, x)) <= 1e-6


def test_float32_gram_with_a_resolvable_tol_matches_the_reference():
    """Float32 Gram at tol = resolvable_tol(float32): an expert 1 % off the span is redundant in
    both paths, one 20 % off is live in both; the answer is the float64 reference's."""
    tol = resolvable_tol(torch.float32)
    layer = near_span_layer([1e-2, 2e-1], dtype=torch.float32, redundancy_tol=tol)
    layer.gram_dtype = torch.float32
    x = torch.randn(64, D_IN)
    residuals = relative_residuals(layer.expert_outputs(x))
    assert residuals[:, 2].max() < tol / 2 and residuals[:, 3].min() > 2 * tol  # far from the threshold
    reference = omoe_reference(copy.deepcopy(layer).double(), x.double())
    assert rel_err(layer.adapter_output(x), reference) < 1e-5


def test_unresolvable_tol_for_a_float32_gram_is_refused_with_both_fixes(monkeypatch):
    """Float32 cannot resolve tol 1e-4 (1 − cos² ≈ 1e-8 < eps32): refused, never silently raised."""
    floor = f"{resolvable_tol(torch.float32):.3g}"
    message = rf"redundancy_tol=0.0001 is below {floor}.*float64.*redundancy_tol.*>= 0.035"
    layer = make_layer("omoe")
    with pytest.raises(ValueError, match=message):
        layer.gram_dtype = torch.float32  # on the layer
    assert layer.gram_dtype is torch.float64
    layer32 = make_layer("omoe", redundancy_tol=0.05)
    layer32.gram_dtype = torch.float32  # resolvable: accepted
    with pytest.raises(ValueError, match=message):  # lowering the tol of a float32 layer
        layer32.redundancy_tol = 1e-4
    with pytest.raises(ValueError, match="MPS has no float64"):
        layer.check_gram_precision(torch.device("mps"))
    monkeypatch.setattr(OMoELinear, "gram_dtype", torch.float32)  # as the benchmark does
    with pytest.raises(ValueError, match=message):
        layer(torch.randn(2, D_IN))  # built before the class attribute changed: the forward's guard
    with pytest.raises(ValueError, match=message):
        make_layer("omoe")  # at construction
    gram = torch.eye(3).expand(2, 3, 3)
    gates, active = torch.full((2, 3), 1 / 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=rf"redundancy_tol=0.0001 is below {floor}"):
        gram_schmidt_weights(gram, gates, active, tol=1e-4)  # the function itself
    gram_schmidt_weights(gram.double(), gates, active, tol=1e-4)  # float64 resolves it


def test_router_sees_the_clean_input_under_dropout():
    """Dropout acts on the experts' input; the gates of a training forward are route(x) on the clean x."""
    for method in ["moe", "omoe"]:
        layer = make_layer(method, dropout=0.5, top_k=2).train()
        x = torch.randn(6, D_IN)
        torch.manual_seed(5)
        out = layer.adapter_output(x)
        torch.manual_seed(5)
        x_dropped = layer.dropout(x)  # the same mask as the forward's
        selected = [routing_gates(layer.router(inputs), top_k=2)[1] for inputs in (x_dropped, x)]
        assert not torch.equal(*selected)  # dropout does change which experts a router would pick
        gates, active = layer.route_with_mask(x)
        e = torch.einsum("...d,erd,eor->...eo", x_dropped, layer.lora_A, layer.lora_B)
        if method == "omoe":  # the Gram is that of the dropped-out experts, the outputs actually mixed
            e = layer.magnitude * gram_schmidt(e, active, layer.orthogonalize, layer.redundancy_tol)
        assert rel_err(out, layer.scaling * (gates.unsqueeze(-1) * e).sum(-2)) < 1e-5, method


@pytest.mark.parametrize("mode,routing", list(itertools.product(MODES, ROUTINGS)))
def test_fast_path_gradients_match_the_reference(mode, routing):
    """d/d(A, B, router, m, x) of the rank-space forward equal those of explicit Gram–Schmidt (float64),
    with a duplicated expert (2 = 0) and a zero expert (4) among random ones."""
    layer = make_layer("omoe", num_experts=5, orthogonalize=mode, **routing).double()
    with torch.no_grad():
        layer.lora_A[2], layer.lora_B[2] = layer.lora_A[0], layer.lora_B[0]
        layer.lora_B[4] = 0
    x = torch.randn(3, 7, D_IN, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(3, 7, D_OUT, dtype=torch.float64)
    names = ["lora_A", "lora_B", "router.weight", "magnitude"]
    inputs = [layer.get_parameter(n) for n in names] + [x]

    def grads(forward):
        return torch.autograd.grad((forward(x) * probe).sum(), inputs)

    fast, reference = grads(layer.adapter_output), grads(lambda x: omoe_reference(layer, x))
    for name, f, r in zip(names + ["x"], fast, reference):
        assert r.abs().max() > 0 and torch.isfinite(f).all(), name
        assert rel_err(f, r) <= 1e-10, (name, rel_err(f, r))


def test_float16_near_collinear_expert_gets_finite_gradients():
    """Found by tests/test_fuzz.py. Rank 1, expert 1 = 3 × expert 0: fp16 rounding leaves it ρ ≈ 2e-4
    from expert 0's span, live at tol 1e-4. The gradient reaching ``a`` through the Gram and through
    ``w ⊙ a`` has two parts ∝ 1/ρ that cancel (at rank 1, e_k's direction does not depend on a_k);
    each rounded to fp16 on its own, they overflowed to inf − inf = NaN, although the exact
    gradients are small. Formed in float64 and rounded once, they stay finite."""
    torch.manual_seed(0)
    layer = OMoELinear(nn.Linear(16, 32).requires_grad_(False), AdapterConfig(num_experts=2, rank=1), 2)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.magnitude.fill_(1.0)
        layer.lora_A[1], layer.lora_B[1] = layer.lora_A[0], 3 * layer.lora_B[0]
    layer = layer.half()
    x = torch.randn(8, 16, dtype=torch.float16, requires_grad=True)
    probe = 0.1 * torch.randn(8, 32)  # lora_B's exact gradient (∝ 1/ρ) then fits fp16 with room
    params = [layer.lora_A, layer.lora_B, layer.router.weight, layer.magnitude]
    grads = torch.autograd.grad((layer(x).float() * probe).sum(), params + [x])
    exact = copy.deepcopy(layer).double()
    x64 = x.detach().double().requires_grad_(True)
    exact_out = exact.base_layer(x64) + omoe_reference(exact, x64)
    exact_params = [exact.lora_A, exact.lora_B, exact.router.weight, exact.magnitude]
    exact_grads = torch.autograd.grad((exact_out * probe.double()).sum(), exact_params + [x64])
    assert max(g.abs().max() for g in exact_grads) < torch.finfo(torch.float16).max / 8  # representable
    for name, grad in zip(["lora_A", "lora_B", "router.weight", "magnitude", "x"], grads):
        assert torch.isfinite(grad).all(), name


def test_configs_saved_with_the_old_b_init_name_still_load():
    config = AdapterConfig.from_dict({"method": "omoe", "omoe_b_init_std": 0.05})
    assert config.b_init_std == 0.05
    with pytest.raises(ValueError, match="unknown AdapterConfig fields"):
        AdapterConfig.from_dict({"method": "omoe", "b_init": 0.05})


def kept_for_backward(forward) -> list[torch.Size]:
    """Shapes of the tensors whose storage an op allocated during ``forward()`` and that are still
    alive afterwards (what autograd, or a checkpoint, keeps for the backward pass), the output excluded."""
    import gc
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    created: dict[int, tuple[weakref.ref, torch.Size]] = {}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            for t in tree_leaves(out):  # storages the op allocated, not views of its inputs'
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                    created.setdefault(t.untyped_storage().data_ptr(), (weakref.ref(t.untyped_storage()), t.shape))
            return out

    with Record():
        out = forward()
    gc.collect()
    return [shape for ptr, (ref, shape) in created.items() if ref() is not None and ptr != out.untyped_storage().data_ptr()]


@pytest.mark.parametrize("routing", ROUTINGS)
def test_recomputing_the_gram_path_changes_no_number_and_keeps_no_gram(routing):
    """``OMoELinear.recompute`` (the default) runs the Gram path as one Function with a hand-derived
    backward (``adapters/orthogonal_mix.py``): outputs and the recorded aux loss are bitwise those of
    autograd through the same maths, gradients agree to float64 round-off, routing is recorded once,
    and no [N, E, E, r] or [N, E, E] tensor survives the forward (with autograd, both do)."""
    torch.manual_seed(0)
    kept = make_layer("omoe", num_experts=5, load_balance_coef=0.01, **routing).double()
    recomputed = copy.deepcopy(kept)
    kept.recompute = False
    assert recomputed.recompute
    x = torch.randn(3, 7, D_IN, dtype=torch.float64)
    probe = torch.randn(3, 7, D_OUT, dtype=torch.float64)
    results = []
    for layer in (kept, recomputed):
        layer.train()
        xi = x.clone().requires_grad_(True)
        out = layer(xi)
        aux = layer.aux_loss()
        grads = torch.autograd.grad((out * probe).sum() + aux, [xi] + [p for p in layer.parameters() if p.requires_grad])
        assert layer.aux_loss() is None  # recorded once: the backward does not route again
        results.append((out, aux, grads))
    (out_k, aux_k, grads_k), (out_r, aux_r, grads_r) = results
    assert torch.equal(out_k, out_r) and torch.equal(aux_k, aux_r)
    for a, b in zip(grads_k, grads_r):
        assert b.abs().max() > 0 and rel_err(b, a) < 1e-12

    tokens, experts, rank = 21, 5, kept.rank
    def gram_sized(layer):
        shapes = kept_for_backward(lambda: layer(x.clone().requires_grad_(True)))
        return [s for s in shapes if s in (torch.Size([tokens, experts, experts, rank]), torch.Size([tokens, experts, experts]))]
    assert gram_sized(kept) and not gram_sized(recomputed)



@pytest.mark.parametrize("mode", MODES)
def test_hand_derived_backward_passes_gradcheck(mode, monkeypatch):
    """``orthogonal_mix``'s backward against finite differences (float64), for every input that has a
    gradient, with an inactive expert, an exact duplicate (redundant: no direction, no gradient) and
    one token per chunk, so the chunked weight gradient is summed across chunks."""
    monkeypatch.setattr(orthogonal_mix, "CPU_CHUNK_BYTES", 1)
    torch.manual_seed(0)
    tokens, experts, rank, d_out = 4, 4, 3, 9
    a = torch.randn(tokens, experts, rank, dtype=torch.float64)
    b = torch.randn(experts, d_out, rank, dtype=torch.float64)
    a[:, 3], b[3] = a[:, 1], b[1]  # expert 3 duplicates expert 1
    gates = torch.softmax(torch.randn(tokens, experts, dtype=torch.float64), -1)
    active = torch.ones(tokens, experts, dtype=torch.bool)
    active[0, 1] = False  # on token 0 the duplicate is the live one
    magnitude = torch.tensor(0.7, dtype=torch.float64)
    inputs = [t.requires_grad_(True) for t in (a, b, gates, magnitude)]

    def mix(a, b, gates, magnitude):
        return orthogonal_mix.orthogonal_mix(a, b, gates, active, magnitude, mode, 1e-4, torch.float64)

    assert orthogonal_mix.token_chunks(a) == [slice(t, t + 1) for t in range(tokens)]
    assert torch.autograd.gradcheck(mix, inputs)


def test_chunked_gram_path_equals_one_chunk(monkeypatch):
    """Chunking the tokens (what keeps a CPU's Gram product small) changes no output or gradient."""
    layer = make_layer("omoe", num_experts=4, top_k=2)
    x = torch.randn(2, 9, D_IN)

    def run():
        xi = x.clone().requires_grad_(True)
        out = layer(xi)
        return [out] + list(torch.autograd.grad(out.square().sum(), [xi, layer.lora_A, layer.lora_B, layer.magnitude]))

    whole = run()
    monkeypatch.setattr(orthogonal_mix, "CPU_CHUNK_BYTES", 4 * 4 * 4 * 8 * 5)  # 5 tokens per chunk: 4 chunks
    chunked = run()
    for w, c in zip(whole, chunked):
        assert rel_err(c, w) < 1e-6
