"""The lab's other experts: MixLoRA's FFN experts (and OMoE on them), shared experts, null
experts and the orthogonality penalty — each against a slow, readable reference written here."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import omoe_lab
from omoe_lab import AdapterConfig, MixLoRAFFN, adapter_layers, attach_adapters, load_adapters, save_adapters
from omoe_lab.adapters import MoELoRALinear, OMoELinear, load_balancing_loss, mean_real_experts
from tests.conftest import make_tiny_llama

HIDDEN, INTERMEDIATE = 32, 64
D_IN, D_OUT = 24, 40
MODES = ["stiefel", "orthogonal", "norm_preserving"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding in the first row
    return ids, mask


def randomize(model_or_layer: nn.Module, scale: float = 0.3, seed: int = 1) -> None:
    """Every trainable weight random and non-zero (a trained-looking state); magnitudes 0.7."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model_or_layer.named_parameters():
            if p.requires_grad:
                p.copy_(torch.full_like(p, 0.7) if name.endswith("magnitude") else scale * torch.randn(p.shape, generator=g))


# --- references (independent of the library's batched code) -------------------------------------
def top_slots_by_hand(logits_row: torch.Tensor, top_k: int | None, num_real: int, top_p: float | None = None) -> dict[int, float]:
    """Real expert → gate for one token: the k most probable of the E + N slots (or the smallest most
    probable set whose mass reaches top_p), renormalized over the selected *real* ones (AdaMoE);
    every expert under soft routing. Softmax in float32, as the spec says."""
    p = torch.softmax(logits_row.float(), -1).double()
    by_probability = sorted(range(len(p)), key=lambda i: -p[i].item())
    if top_p is not None:
        chosen, mass = [], 0.0
        for i in by_probability:
            chosen.append(i)
            mass += p[i].item()
            if mass >= top_p:
                break
    else:
        chosen = range(len(p)) if top_k is None else by_probability[:top_k]
    real = [i for i in chosen if i < num_real]
    total = sum(p[i].item() for i in real)
    return {i: p[i].item() / total for i in real}


def routed_gates(layer, x: torch.Tensor) -> list[dict[int, float]]:
    """The layer's own gates per token as {expert: gate}, after checking them against the
    by-hand routing: the same selected experts, the same values to float32 round-off (gates are
    float32 by design). The references below take these, so they can be exact in float64."""
    gates, active = layer.route_with_mask(x, record=False)
    logits = x @ layer.router.weight.T
    rows = []
    for t in range(len(x)):
        expected = top_slots_by_hand(logits[t], layer.top_k, layer.num_experts, layer.top_p)
        assert active[t].tolist() == [i in expected for i in range(layer.num_experts)], t
        assert all(abs(gates[t, i].item() - g) < 1e-6 for i, g in expected.items()), t
        rows.append({i: gates[t, i].item() for i in expected})
    return rows


def qr_gram_schmidt(vectors: torch.Tensor, mode: str) -> torch.Tensor:
    """Gram–Schmidt of the rows of ``vectors`` [k, d] in order, by Householder QR (float64)."""
    if vectors.shape[0] == 0:
        return vectors
    q, r = torch.linalg.qr(vectors.double().T)
    signs = torch.sign(torch.diagonal(r))
    q_hat = (q * signs).T
    scale = {"stiefel": torch.ones(len(vectors), dtype=torch.float64), "orthogonal": torch.diagonal(r).abs(),
             "norm_preserving": vectors.double().norm(dim=-1)}[mode]
    return q_hat * scale[:, None]


def ffn_by_hand(block: MixLoRAFFN, x: torch.Tensor):
    """Per token and per expert, with merged weights ``W + s·B A``: every expert's output y_i [T, E, d]
    and the frozen FFN(x) [T, d]. Slow and plain."""
    base, s = block.base_layer, block.scaling

    def linear(name, expert=None):
        """``v ↦ W v + b`` of one projection; with expert i's LoRA merged in if that projection is adapted."""
        module = getattr(base, name)
        weight = module.weight.double()
        if expert is not None and name in block.projections:
            weight = weight + s * block.lora_B[name][expert].double() @ block.lora_A[name][expert].double()
        bias = module.bias.double() if module.bias is not None else 0.0
        return lambda v: weight @ v + bias

    def ffn(v, expert=None):
        gate, up, down = (linear(name, expert) for name in ("gate_proj", "up_proj", "down_proj"))
        return down(base.act_fn(gate(v)) * up(v))

    outputs = torch.stack([torch.stack([ffn(v, i) for i in range(block.num_experts)]) for v in x.double()])
    return outputs, torch.stack([ffn(v) for v in x.double()])


def mixlora_by_hand(block: MixLoRAFFN, x: torch.Tensor) -> torch.Tensor:
    """``FFN(x) + Σ_{i∈S} π_i (y_i − FFN(x))`` (mixlora), or ``FFN(x) + m Σ π_i q_i`` with q from
    QR Gram–Schmidt of the selected changes in index order (omoe_mixlora)."""
    y, plain = ffn_by_hand(block, x)
    rows = []
    for t, gates in enumerate(routed_gates(block, x)):
        experts = sorted(gates)
        changes = torch.stack([y[t, i] - plain[t] for i in experts]) if experts else y.new_zeros(0, y.shape[-1])
        g = torch.tensor([gates[i] for i in experts], dtype=torch.float64)
        if block.orthogonalize is None:
            rows.append(plain[t] + (g[:, None] * changes).sum(0))
        else:
            q = qr_gram_schmidt(changes, block.orthogonalize)
            rows.append(plain[t] + block.magnitude.double() * (g[:, None] * q).sum(0))
    return torch.stack(rows)


def tiny_mlp(bias: bool = False, seed: int = 0):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(seed)
    mlp = LlamaMLP(LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, hidden_act="silu", mlp_bias=bias))
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(std=0.3)
    return mlp.requires_grad_(False)


def make_block(method="mixlora", num_experts=4, rank=4, projections=("gate_proj", "up_proj", "down_proj"), bias=False,
               **kwargs) -> MixLoRAFFN:
    config = AdapterConfig(method=method, num_experts=num_experts, rank=rank, alpha=2 * rank, **kwargs)
    block = MixLoRAFFN(tiny_mlp(bias), config, num_experts, projections=projections)
    randomize(block)
    return block


# --- MixLoRA: FFN-level experts ---------------------------------------------------------------------
FFN_ROUTINGS = [dict(top_k=2), dict(), dict(top_k=2, null_experts=2), dict(top_k=3, null_experts=4)]
PROJECTIONS = [("gate_proj", "up_proj", "down_proj"), ("down_proj",), ("gate_proj", "up_proj")]


@pytest.mark.parametrize("routing,projections,bias", [(r, p, False) for r in FFN_ROUTINGS for p in PROJECTIONS[:1]]
                         + [(FFN_ROUTINGS[0], p, b) for p in PROJECTIONS[1:] for b in (False, True)])
def test_mixlora_block_matches_the_experts_by_hand(routing, projections, bias):
    block = make_block(projections=projections, bias=bias, **routing).double()
    x = torch.randn(3, 5, HIDDEN, dtype=torch.float64)
    reference = mixlora_by_hand(block, x.reshape(-1, HIDDEN)).reshape(3, 5, HIDDEN)
    assert rel_err(block(x), reference) < 1e-12
    # without null experts the mixture is MixLoRA's Σ π_i y_i (the gates sum to 1, to float32 round-off)
    if not routing.get("null_experts"):
        y, _ = ffn_by_hand(block, x.reshape(-1, HIDDEN))
        assert rel_err(block(x), (block.route(x).double().reshape(-1, 4, 1) * y).sum(1).reshape(x.shape)) < 1e-6


@pytest.mark.parametrize("mode,routing", list(itertools.product(MODES, FFN_ROUTINGS[:3])))
def test_omoe_mixlora_orthogonalizes_each_selected_experts_change(mode, routing):
    block = make_block("omoe_mixlora", orthogonalize=mode, **routing).double()
    x = torch.randn(12, HIDDEN, dtype=torch.float64)
    assert rel_err(block(x), mixlora_by_hand(block, x)) < 1e-10
    # the materialized view agrees with the by-hand changes, and its q are orthonormal per token
    y, plain = ffn_by_hand(block, x)
    assert rel_err(block.expert_outputs(x), y - plain[:, None]) < 1e-12
    if mode == "stiefel":
        q, active = block.orthogonal_outputs(x), block.route_with_mask(x)[1]
        gram = q @ q.transpose(-1, -2)
        assert (gram - torch.diag_embed(active.double())).abs().max() < 1e-10


def test_mixlora_matches_the_mixlora_package():
    """External check: the same weights in mixlora 0.2.3's ``MixLoraSparseMoe`` give the same block output."""
    pytest.importorskip("mixlora", reason="the optional mixlora package is not installed (pip install --no-deps mixlora==0.2.3)")
    from mixlora.config import MixLoraConfig
    from mixlora.lora_linear import LoraLinear
    from mixlora.model import MixLoraSparseMoe

    num_experts, rank, alpha = 8, 4, 8
    block = make_block(num_experts=num_experts, rank=rank, top_k=2)
    config = MixLoraConfig(
        base_model_="tiny", task_type_="CAUSAL_LM", peft_type_="MIXLORA", model_type_="llama", dtype_=torch.float32,
        lora_r_=rank, lora_alpha_=alpha, lora_dropout_=0.05, target_modules_={}, routing_strategy_="mixlora",
        num_experts_=num_experts, top_k_=2, act_fn_="silu", jitter_noise_=0.0, router_init_range_=0.02,
        router_aux_loss_coef_=0.0,
    )
    theirs = MixLoraSparseMoe(block.base_layer, config)
    theirs.gate_ = block.router.weight.detach().clone()
    for i, name in itertools.product(range(num_experts), block.projections):
        expert = LoraLinear(getattr(block.base_layer, name), config,
                            (block.lora_A[name][i].detach().clone(), block.lora_B[name][i].detach().clone()))
        expert.dropout_ = nn.Identity()  # its LoraLinear insists on dropout > 0; compare without
        theirs.experts_[f"experts.{i}.{name}"] = expert
    x = torch.randn(2, 16, HIDDEN)
    with torch.no_grad():
        ours, reference = block(x), theirs(x.clone())
    error = rel_err(ours, reference)
    print(f"mixlora 0.2.3 vs MixLoRAFFN: relative error {error:.2e}, max abs {(ours - reference).abs().max():.2e}")
    assert error < 1e-6
    assert rel_err(ours, block.base_layer(x)) > 1e-2  # the experts do change the block: not a vacuous match


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op creates (weights excluded)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("method", ["mixlora", "omoe_mixlora"])
def test_mixlora_forward_runs_frozen_projections_once_and_forms_no_expert_wide_tensor(method):
    """Frozen gate/up run once on all T tokens; the frozen down projection once per token (mixlora)
    or on the T tokens and their K slots (omoe_mixlora); no tensor reaches T·E·d (every expert's output)."""
    num_experts, tokens = 8, 24
    block = make_block(method, num_experts=num_experts, top_k=2)
    rows: dict[str, list[int]] = {name: [] for name in ("gate_proj", "up_proj", "down_proj")}
    for name in rows:
        getattr(block.base_layer, name).register_forward_hook(
            lambda module, args, out, name=name: rows[name].append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    x = torch.randn(tokens, HIDDEN)
    with _LargestTensor() as probe, torch.no_grad():
        block(x)
    assert rows["gate_proj"] == [tokens] and rows["up_proj"] == [tokens]
    assert rows["down_proj"] == [tokens]  # the K changes of omoe_mixlora use its weight directly, not the module
    assert probe.largest < tokens * num_experts * HIDDEN
    with _LargestTensor() as probe, torch.no_grad():
        block.expert_outputs(x)  # the analysis view does materialize every expert: the probe sees it
    assert probe.largest >= tokens * num_experts * HIDDEN


@pytest.mark.parametrize("method", ["mixlora", "omoe_mixlora"])
def test_mixlora_forward_traces_as_one_graph_without_host_syncs(method):
    block = make_block(method, top_k=2, null_experts=2).train()
    compiled = torch.compile(block, backend="eager", fullgraph=True)
    x = torch.randn(2, 6, HIDDEN)
    assert torch.allclose(compiled(x), block(x), atol=1e-6)


@pytest.mark.parametrize("method", ["mixlora", "omoe_mixlora"])
def test_mixlora_under_bf16_stays_close_to_float32(method):
    block = make_block(method, top_k=2, null_experts=1)
    x = torch.randn(32, HIDDEN)
    with torch.no_grad():
        expected = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = block(x)
        whole = make_block(method, top_k=2, null_experts=1).to(torch.bfloat16)(x.bfloat16())
    assert low.dtype == torch.bfloat16 and whole.dtype == torch.bfloat16
    assert rel_err(low.float(), expected) < 3e-2 and rel_err(whole.float(), expected) < 3e-2


# --- whole models: start = base, gradients, counts, save/load, errors -----------------------------------
VARIANT_CONFIGS = {
    "mixlora-top2": dict(method="mixlora", top_k=2),
    "mixlora-all-linear-null": dict(method="mixlora", top_k=2, null_experts=2, target_modules="all-linear"),
    "omoe-mixlora-top2": dict(method="omoe_mixlora", top_k=2),
    "omoe-mixlora-soft-all-linear": dict(method="omoe_mixlora", target_modules="all-linear"),
    "moe-shared": dict(method="moe", shared_expert=True, top_k=2, target_modules=["q_proj", "v_proj", "down_proj"]),
    "omoe-shared": dict(method="omoe", shared_expert=True, target_modules=["q_proj", "v_proj", "down_proj"]),
    "moe-null": dict(method="moe", null_experts=2, top_k=2),
    "omoe-null-shared": dict(method="omoe", null_experts=3, top_k=3, shared_expert=True),
    "moe-penalty": dict(method="moe", orthogonality_penalty=0.1, top_k=3),
}


@pytest.mark.parametrize("name", list(VARIANT_CONFIGS))
def test_fresh_variants_reproduce_the_base_model_exactly(name):
    model = make_tiny_llama()
    ids, mask = batch()
    with torch.no_grad():
        base = model(ids, attention_mask=mask).logits
        attach_adapters(model, AdapterConfig(rank=4, **VARIANT_CONFIGS[name]))
        adapted = model(ids, attention_mask=mask).logits
    assert torch.equal(base, adapted)


@pytest.mark.parametrize("name", list(VARIANT_CONFIGS))
def test_every_variant_parameter_gets_gradient_within_two_steps(name):
    model = attach_adapters(make_tiny_llama(), AdapterConfig(rank=4, **VARIANT_CONFIGS[name]))
    model.train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    reached = set()
    ids, mask = batch()
    for _ in range(2):
        optimizer.zero_grad()
        out = model(ids, attention_mask=mask, labels=ids)
        (out.loss + omoe_lab.router_aux_loss(model, mask)).backward()
        for n, p in trainable.items():
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
            if p.grad.abs().sum() > 0:
                reached.add(n)
        optimizer.step()
    assert reached == set(trainable)


def test_mixlora_parameter_count_matches_hand_count():
    """Tiny Llama: hidden 32, intermediate 64, q/o 32×32, k/v 32→16 (2 kv heads), 2 blocks."""
    config = AdapterConfig(method="mixlora", num_experts=4, rank=4, top_k=2, null_experts=2, target_modules="all-linear")
    summary = omoe_lab.trainable_parameters(attach_adapters(make_tiny_llama(), config))
    E, r = 4, 4
    ffn_a = E * r * (32 + 32 + 64)  # A of gate (d_in 32), up (32), down (64)
    ffn_b = E * r * (64 + 64 + 32)
    router = (E + 2) * 32  # two null experts have router rows too
    attention_a = r * (32 + 32 + 32 + 32)  # plain LoRA on q, k, v, o: A is r × d_in
    attention_b = r * (32 + 16 + 16 + 32)
    assert summary.by_kind == {"lora_A": 2 * (ffn_a + attention_a), "lora_B": 2 * (ffn_b + attention_b), "router": 2 * router}
    omoe = omoe_lab.trainable_parameters(attach_adapters(make_tiny_llama(), AdapterConfig(method="omoe_mixlora", rank=4)))
    assert omoe.by_kind == {"lora_A": 2 * ffn_a, "lora_B": 2 * ffn_b, "router": 2 * E * 32, "magnitude": 2}


def test_shared_expert_parameter_count():
    config = AdapterConfig(method="omoe", num_experts=4, rank=4, shared_expert=True, null_experts=1, top_k=2)
    summary = omoe_lab.trainable_parameters(attach_adapters(make_tiny_llama(), config))
    per_q_shared, per_v_shared = 4 * 32 + 32 * 4, 4 * 32 + 16 * 4  # one more rank-4 LoRA
    assert summary.by_kind == {"lora_A": 2048, "lora_B": 1536, "shared": 2 * (per_q_shared + per_v_shared),
                               "router": 2 * 2 * 5 * 32, "magnitude": 4}


@pytest.mark.parametrize("name", ["mixlora-all-linear-null", "omoe-mixlora-top2", "omoe-null-shared", "moe-penalty"])
def test_variant_save_load_round_trip_gives_identical_logits(tmp_path, name):
    config = AdapterConfig(rank=4, **VARIANT_CONFIGS[name])
    model = attach_adapters(make_tiny_llama(), config)
    randomize(model, scale=0.1)
    ids, mask = batch()
    expected = model(ids, attention_mask=mask).logits
    save_adapters(model, tmp_path / "adapters")
    restored = load_adapters(make_tiny_llama(), tmp_path / "adapters")
    assert restored.omoe_config == config
    assert torch.equal(restored(ids, attention_mask=mask).logits, expected)
    assert sorted(adapter_layers(restored)) == sorted(adapter_layers(model))


def test_detach_puts_the_original_mlp_back():
    model = make_tiny_llama()
    mlp = model.model.layers[1].mlp
    ids, mask = batch()
    base = model(ids, attention_mask=mask).logits
    attach_adapters(model, AdapterConfig(method="mixlora", rank=4, top_k=2, target_modules="all-linear"))
    assert isinstance(model.model.layers[1].mlp, MixLoRAFFN)
    randomize(model)
    omoe_lab.detach_adapters(model)
    assert model.model.layers[1].mlp is mlp and not adapter_layers(model)
    assert torch.equal(model(ids, attention_mask=mask).logits, base)


def test_configs_without_variants_serialize_as_before():
    """Variant options at their defaults are left out of to_dict, so older configs (and the run
    fingerprints hashed from them) do not change; set ones round-trip."""
    assert set(AdapterConfig().to_dict()).isdisjoint({"shared_expert", "null_experts", "orthogonality_penalty"})
    assert AdapterConfig().to_dict()["target_modules"] == ["q_proj", "v_proj"]
    config = AdapterConfig(method="moe", top_k=2, null_experts=2, shared_expert=True, orthogonality_penalty=0.5)
    assert AdapterConfig.from_dict(config.to_dict()) == config
    assert AdapterConfig(method="mixlora").target_modules == ["gate_proj", "up_proj", "down_proj"]


def test_capture_reads_mixlora_blocks_like_other_layers():
    """The analysis pairs gates [N, E] with expert outputs [N, E, d]: a MixLoRA block gives both."""
    from omoe_lab.analysis import capture_experts

    model = attach_adapters(make_tiny_llama(), AdapterConfig(method="mixlora", rank=4, top_k=2, null_experts=1))
    randomize(model, scale=0.1)
    ids, mask = batch()
    captured = capture_experts(model, [{"input_ids": ids, "attention_mask": mask}], progress=False)
    layer = captured["layers.0.mlp"]
    assert layer.expert_outputs.shape == (int(mask.sum()), 4, 32) and layer.gates.shape == (int(mask.sum()), 4)
    assert layer.expert_outputs.abs().amax() > 0
    assert layer.orthogonal_outputs is None
    from omoe_lab.analysis import routing_summary

    assert not routing_summary(captured).empty  # tokens routed only to the null expert are rows of zeros


def test_capture_keeps_the_orthogonal_outputs_of_omoe_mixlora():
    from omoe_lab.analysis import capture_experts, direction_stiefel_error

    model = attach_adapters(make_tiny_llama(), AdapterConfig(method="omoe_mixlora", rank=4, top_k=2))
    randomize(model, scale=0.1)
    ids, mask = batch()
    layer = capture_experts(model, [{"input_ids": ids, "attention_mask": mask}], progress=False)["layers.0.mlp"]
    assert layer.orthogonal_outputs is not None and direction_stiefel_error(layer.orthogonal_outputs) < 1e-5


def test_ffn_method_on_a_model_without_gated_mlp_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                          bos_token_id=0, eos_token_id=0))
    with pytest.raises(ValueError, match=r"method='mixlora' puts experts on Llama-style gated MLP blocks.*GPT2LMHeadModel has none"):
        attach_adapters(gpt2, AdapterConfig(method="mixlora", rank=4, top_k=2))
    assert not adapter_layers(gpt2)
    with pytest.raises(ValueError, match="selects no projection of a gated MLP"):
        attach_adapters(make_tiny_llama(), AdapterConfig(method="omoe_mixlora", rank=4, target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="gated MLP"):
        MixLoRAFFN(nn.Linear(4, 4), AdapterConfig(method="mixlora", rank=2), 2)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(method="moe", null_experts=2), r"null_experts=2 needs sparse routing: set top_k or top_p"),
        (dict(method="mixlora", null_experts=1), r"null_experts=1 needs sparse routing: set top_k \("),
        (dict(method="lora", null_experts=1), "null_experts need a router"),
        (dict(method="moe", null_experts=-1, top_k=1), "null_experts must be an integer >= 0"),
        (dict(method="moe", num_experts=2, null_experts=1, top_k=4), r"top_k=4 must be between 1 and the number of experts \(2 \+ 1 null\)"),
        (dict(method="lora", orthogonality_penalty=0.1), "a single LoRA has one expert"),
        (dict(method="omoe", orthogonality_penalty=0.1), "orthogonal by construction"),
        (dict(method="mixlora", orthogonality_penalty=0.1), "orthogonality_penalty is for method='moe'"),
        (dict(method="moe", orthogonality_penalty=-1.0), "orthogonality_penalty must be a number >= 0"),
        (dict(method="lora", shared_expert=True), "shared_expert=True is for method='moe' or 'omoe'"),
        (dict(method="mixlora", shared_expert=True), "shared_expert=True is for method='moe' or 'omoe'"),
        (dict(method="moe", shared_expert="yes"), "shared_expert must be True or False"),
        (dict(method="mixlora", top_p=0.5), "takes top_k or soft routing, not top_p"),
        (dict(method="omoe_mixlora", orthogonalize="qr"), r"unknown orthogonalize mode.*method='mixlora'"),
        (dict(method="omoe_mixlora", b_init_std=0.0), "b_init_std"),
    ],
)
def test_bad_variant_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdapterConfig(**kwargs)


# --- shared expert ---------------------------------------------------------------------------------
def make_layer(method="moe", num_experts=4, rank=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    config = AdapterConfig(method=method, num_experts=num_experts, rank=rank, alpha=2 * rank, **kwargs)
    layer = {"moe": MoELoRALinear, "omoe": OMoELinear}[method](nn.Linear(D_IN, D_OUT), config, num_experts)
    randomize(layer)
    return layer


def linear_experts_by_hand(layer, x):
    """Per token: the shared expert's output (or None) and every routed expert's ``B_i A_i x``."""
    A, B = layer.lora_A.double(), layer.lora_B.double()
    shared = [layer.shared_lora_B[0].double() @ layer.shared_lora_A[0].double() @ v for v in x] if layer.num_shared else None
    routed = [[B[i] @ A[i] @ v for i in range(layer.num_experts)] for v in x]
    return shared, routed


def linear_mixture_by_hand(layer, x):
    """``s · (e_shared + Σ_i g_i e_i)`` (moe) or ``s · m · (q_shared + Σ g_i q_i)`` with QR Gram–Schmidt
    over [shared, selected real experts in index order] (omoe), token by token."""
    x = x.double()
    shared, routed = linear_experts_by_hand(layer, x)
    rows = []
    for t, gates in enumerate(routed_gates(layer, x)):
        vectors = ([shared[t]] if shared else []) + [routed[t][i] for i in sorted(gates)]
        weights = ([1.0] if shared else []) + [gates[i] for i in sorted(gates)]
        vectors = torch.stack(vectors) if vectors else torch.zeros(0, D_OUT, dtype=torch.float64)
        weights = torch.tensor(weights, dtype=torch.float64)
        if layer.method == "omoe":
            vectors = layer.magnitude.double() * qr_gram_schmidt(vectors, layer.orthogonalize)
        rows.append(layer.scaling * (weights[:, None] * vectors).sum(0))
    return torch.stack(rows)


LINEAR_VARIANTS = [
    ("moe", dict(shared_expert=True)), ("moe", dict(shared_expert=True, top_k=2)),
    ("moe", dict(null_experts=2, top_k=2)), ("moe", dict(null_experts=3, top_p=0.5, shared_expert=True)),
] + [("omoe", dict(orthogonalize=m, shared_expert=True, **r)) for m in MODES for r in (dict(), dict(top_k=2))] + [
    ("omoe", dict(null_experts=2, top_k=2)), ("omoe", dict(null_experts=4, top_k=3, shared_expert=True)),
]


@pytest.mark.parametrize("method,kwargs", LINEAR_VARIANTS)
def test_shared_and_null_experts_match_the_mixture_by_hand(method, kwargs):
    layer = make_layer(method, **kwargs).double()
    x = torch.randn(16, D_IN, dtype=torch.float64)
    assert rel_err(layer.adapter_output(x), linear_mixture_by_hand(layer, x)) < 1e-10


@pytest.mark.parametrize("mode", MODES)
def test_omoe_orthogonalizes_routed_experts_against_the_shared_one(mode):
    """The shared expert is first in the Gram–Schmidt order: its direction is kept, and every routed
    q_i is orthogonal to it."""
    layer = make_layer("omoe", shared_expert=True, orthogonalize=mode, top_k=2).double()
    x = torch.randn(16, D_IN, dtype=torch.float64)
    q = layer.slot_orthogonal_outputs(x)
    shared = layer.slot_outputs(x)[:, 0]
    assert rel_err(q[:, 0] * shared.norm(dim=-1, keepdim=True) / q[:, 0].norm(dim=-1, keepdim=True), shared) < 1e-12
    assert (torch.einsum("td,ted->te", shared, layer.orthogonal_outputs(x)).abs() / shared.norm(dim=-1, keepdim=True)).max() < 1e-10
    assert layer.orthogonal_outputs(x).shape == (16, 4, D_OUT) and layer.expert_outputs(x).shape == (16, 4, D_OUT)


@pytest.mark.parametrize("kwargs", [dict(shared_expert=True, top_k=2), dict(null_experts=2, top_k=3, shared_expert=True)])
def test_omoe_variant_fast_path_gradients_match_the_reference(kwargs):
    layer = make_layer("omoe", num_experts=5, **kwargs).double()
    x = torch.randn(3, 7, D_IN, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(3, 7, D_OUT, dtype=torch.float64)
    names = ["lora_A", "lora_B", "shared_lora_A", "shared_lora_B", "magnitude"]
    inputs = [layer.get_parameter(n) for n in names] + [x]

    def reference(v):
        gates, active = layer.slot_gates(v)
        return layer.scaling * layer.magnitude * (gates.unsqueeze(-1) * layer.slot_orthogonal_outputs(v)).sum(-2)

    fast = torch.autograd.grad((layer.adapter_output(x) * probe).sum(), inputs)
    slow = torch.autograd.grad((reference(x) * probe).sum(), inputs)
    for name, f, r in zip(names + ["x"], fast, slow):
        assert r.abs().max() > 0 and rel_err(f, r) < 1e-10, name


# --- null experts ------------------------------------------------------------------------------------
def test_null_experts_route_by_brute_force_and_count_real_experts():
    layer = make_layer("moe", num_experts=4, null_experts=4, top_k=3)
    with torch.no_grad():
        layer.router.weight[4:] *= 3  # strong null logits: many tokens pick null experts
    x = torch.randn(200, D_IN)
    gates, active = layer.route_with_mask(x)
    logits = layer.router(x)
    counts = []
    for t in range(len(x)):
        expected = top_slots_by_hand(logits[t], 3, 4)
        assert active[t].tolist() == [i in expected for i in range(4)]
        assert torch.allclose(gates[t].double(), torch.tensor([expected.get(i, 0.0) for i in range(4)], dtype=torch.float64), atol=1e-6)
        counts.append(len(expected))
    assert min(counts) == 0 and max(counts) == 3  # tokens use 0 to k real experts
    assert layer.mean_real_experts(x).item() == pytest.approx(sum(counts) / len(counts))
    mask = torch.zeros(200, dtype=torch.long)
    mask[:50] = 1
    assert layer.mean_real_experts(x, mask).item() == pytest.approx(sum(counts[:50]) / 50)
    assert mean_real_experts(active[:50]).item() == pytest.approx(sum(counts[:50]) / 50)
    # a token whose k slots are all null gets zero gates and no adapter output
    silent = torch.tensor(counts) == 0
    assert (gates[silent] == 0).all() and (layer.adapter_output(x)[silent] == 0).all()
    block = make_block(null_experts=3, top_k=2)
    assert 0 <= block.mean_real_experts(torch.randn(50, HIDDEN)).item() <= 2


def test_null_experts_are_one_group_in_the_load_balancing_loss():
    """E = 2 real, N = 2 null, top-1, four tokens: by hand, f = (1/4, 1/4, 1/2, 0) → null mean 1/4 each;
    P_null pooled likewise; loss = 4 · Σ f_i P_i."""
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1], [0.1, 0.1, 0.5, 0.3], [0.2, 0.1, 0.6, 0.1]])
    active = torch.zeros(4, 4, dtype=torch.bool)
    active[0, 0] = active[1, 1] = active[2, 2] = active[3, 2] = True
    f = [0.25, 0.25, 0.25, 0.25]
    mean_p = probs.mean(0).tolist()
    pooled = (mean_p[2] + mean_p[3]) / 2
    expected = 4 * (f[0] * mean_p[0] + f[1] * mean_p[1] + 2 * f[2] * pooled)
    assert load_balancing_loss(probs, active, null_experts=2).item() == pytest.approx(expected, rel=1e-6)
    plain = 4 * (0.25 * mean_p[0] + 0.25 * mean_p[1] + 0.5 * mean_p[2])
    assert load_balancing_loss(probs, active).item() == pytest.approx(plain, rel=1e-6)  # without pooling: another value
    assert plain != pytest.approx(expected)


# --- orthogonality penalty ----------------------------------------------------------------------------
def penalty_by_hand(layer, x, mask=None) -> float:
    """``mean_t mean_{i≠j active} cos²(e_i, e_j)`` from materialized outputs, over real tokens."""
    shared, routed = linear_experts_by_hand(layer, x.double())
    _, active = layer.route_with_mask(x, record=False)
    values = []
    for t in range(len(x)):
        vectors = ([shared[t]] if shared else []) + [routed[t][i] for i in range(layer.num_experts) if active[t, i]]
        pairs = [(i, j) for i in range(len(vectors)) for j in range(len(vectors)) if i != j]
        cos2 = [(torch.dot(vectors[i], vectors[j]) / (vectors[i].norm() * vectors[j].norm())).item() ** 2 for i, j in pairs]
        if mask is None or mask[t]:
            values.append(sum(cos2) / len(cos2) if cos2 else 0.0)
    return sum(values) / len(values)


@pytest.mark.parametrize("kwargs", [dict(), dict(top_k=2, load_balance_coef=0.0, router_z_coef=0.0), dict(shared_expert=True, top_k=1,
                                    load_balance_coef=0.0, router_z_coef=0.0)])
def test_orthogonality_penalty_matches_cosines_by_hand_and_ignores_padding(kwargs):
    layer = make_layer("moe", orthogonality_penalty=0.3, **kwargs).train()
    x = torch.randn(20, D_IN)
    mask = (torch.arange(20) % 3 != 0).long()
    layer(x)
    loss = layer.aux_loss(mask)
    assert loss.requires_grad
    assert loss.item() == pytest.approx(0.3 * penalty_by_hand(layer, x, mask), rel=1e-5)
    assert layer.aux_loss(mask) is None  # consumed
    layer.eval()
    layer(x)
    assert layer.aux_loss(mask) is None  # recorded in training only


def test_orthogonality_penalty_reaches_the_training_loss_and_decorrelates_experts():
    """router_aux_loss carries the penalty (train.py adds it unchanged); minimizing it lowers the cosines."""
    config = AdapterConfig(method="moe", rank=4, num_experts=4, orthogonality_penalty=1.0, target_modules=["q_proj", "v_proj"])
    model = attach_adapters(make_tiny_llama(), config).train()
    ids, mask = batch()
    model(ids, attention_mask=mask)
    assert omoe_lab.router_aux_loss(model, mask).item() == 0.0  # B = 0: zero experts have no direction, no NaN
    randomize(model, scale=0.1)
    layers = list(adapter_layers(model).values())
    with torch.no_grad():  # collapsed experts: every expert a slightly perturbed copy of expert 0
        for layer in layers:
            layer.lora_A.copy_(layer.lora_A[:1] + 0.1 * (layer.lora_A - layer.lora_A[:1]))
            layer.lora_B.copy_(layer.lora_B[:1] + 0.1 * (layer.lora_B - layer.lora_B[:1]))
    optimizer = torch.optim.Adam([layer.lora_B for layer in layers], lr=2e-2)
    values = []
    for _ in range(15):
        optimizer.zero_grad()
        model(ids, attention_mask=mask)
        aux = omoe_lab.router_aux_loss(model, mask)
        aux.backward()
        values.append(aux.item())
        optimizer.step()
    print("penalty while minimizing it:", [round(v, 3) for v in values])
    assert values[0] > 0.5 and values[-1] < 0.5 * values[0]
    model.eval()
    model(ids, attention_mask=mask)
    assert omoe_lab.router_aux_loss(model, mask).item() == 0.0
    # the mean over layers of λ · penalty, as router_aux_loss documents
    model.train()
    inputs = {}
    hooks = [layer.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, args[0]))
             for name, layer in adapter_layers(model).items()]
    model(ids, attention_mask=mask)
    for hook in hooks:
        hook.remove()
    expected = sum(penalty_by_hand(layer, inputs[name].reshape(-1, layer.in_features), mask.flatten())
                   for name, layer in adapter_layers(model).items()) / len(layers)
    assert omoe_lab.router_aux_loss(model, mask).item() == pytest.approx(expected, rel=1e-4)


def test_linear_variants_trace_as_one_graph_without_host_syncs():
    layer = make_layer("moe", shared_expert=True, null_experts=2, top_k=2, orthogonality_penalty=0.1).train()
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    x = torch.randn(4, 6, D_IN)
    assert torch.allclose(compiled(x), layer(x), atol=1e-6)
    omoe = make_layer("omoe", shared_expert=True, null_experts=2, top_k=2)
    assert torch.allclose(torch.compile(omoe, backend="eager", fullgraph=True)(x), omoe(x), atol=1e-6)
    assert math.isfinite(layer.aux_loss().item())


def test_the_trainer_trains_the_variants_unchanged():
    """train.py adds router_aux_loss to its loss: under soft routing (no router losses) a non-zero
    aux_loss in its history is the orthogonality penalty; a MixLoRA model trains and is probed."""
    from omoe_lab.models import byte_tokenizer
    from omoe_lab.train import TrainConfig, train
    from tests.test_train import VOCAB, toy_examples

    tokenizer, data = byte_tokenizer(), toy_examples(8)
    config = TrainConfig(steps=2, batch_size=4, lr=1e-2, warmup_steps=1, routing_every=1)
    penalized = attach_adapters(make_tiny_llama(vocab=VOCAB), AdapterConfig(
        method="moe", num_experts=3, rank=4, orthogonality_penalty=0.5, b_init_std=0.02))
    history = train(penalized, tokenizer, data, config, progress=False).history
    assert all(row["aux_loss"] > 0 for row in history)
    mixlora = attach_adapters(make_tiny_llama(vocab=VOCAB), AdapterConfig(
        method="mixlora", num_experts=3, rank=4, top_k=2, null_experts=1, target_modules="all-linear"))
    before = {n: p.detach().clone() for n, p in mixlora.named_parameters() if p.requires_grad}
    result = train(mixlora, tokenizer, data, config, progress=False)
    assert all(math.isfinite(row["loss"]) and row["aux_loss"] > 0 for row in result.history)
    assert {row["layer"] for row in result.routing} == {"model.layers.0.mlp", "model.layers.1.mlp"}
    # every FFN-expert, router and attention-LoRA weight is in the optimizer (B moved, decay moved the rest)
    assert all(not torch.equal(p, before[n]) for n, p in mixlora.named_parameters() if p.requires_grad)
