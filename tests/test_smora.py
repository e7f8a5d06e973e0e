"""Rank-wise experts (SMoRA, ``method="smora"``) against a readable per-rank computation, and the
two facts behind "no OMoE over rank-1 experts" (docs/decisions.md)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from omoe_lab import AdapterConfig, SMoRALinear, adapter_layers, attach_adapters, load_adapters, save_adapters
from omoe_lab.adapters import OMoELinear
from omoe_lab.cli import build_parser, main
from omoe_lab.experiments import RunConfig, analyse_experts, capture_for_analysis
from omoe_lab.export import check_exportable, export_peft
from omoe_lab.models import byte_tokenizer
from omoe_lab.sweep import ARMS, SETTINGS
from omoe_lab.train import TrainConfig, train
from tests.conftest import make_tiny_llama
from tests.test_train import VOCAB, toy_examples
from tests.test_variants import _LargestTensor, batch, randomize

D_IN, D_OUT, RANKS = 5, 7, 6


def make_smora(num_experts=RANKS, d_in=D_IN, d_out=D_OUT, seed=0, **kwargs) -> SMoRALinear:
    """A layer with B and the router random (a trained-looking state; B = 0 at init)."""
    torch.manual_seed(seed)
    config = AdapterConfig(method="smora", num_experts=num_experts, rank=1, alpha=3.0, **kwargs)
    layer = SMoRALinear(nn.Linear(d_in, d_out), config, num_experts)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.router.weight.normal_()
    return layer


def per_rank_reference(layer: SMoRALinear, x: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """``W0 x + s · Σ_{i∈S(x)} g_i(x) (a_iᵀ x) b_i``, token by token and rank by rank.

    ``p = softmax(W_g x)``; S = the k most probable ranks (all of them under soft routing);
    ``g_i = p_i / Σ_{j∈S} p_j``. ``a_i`` is row i of A, ``b_i`` column i of B.
    """
    A, B, W_g = layer.lora_A[:, 0, :], layer.lora_B[:, :, 0].T, layer.router.weight
    rows = []
    for token in x:
        probs = torch.softmax(W_g @ token, dim=0)
        chosen = sorted(range(layer.num_experts), key=lambda i: -probs[i].item())[: top_k or layer.num_experts]
        total = sum(probs[i] for i in chosen)
        update = torch.zeros(B.shape[0])
        for i in chosen:
            update = update + layer.scaling * (probs[i] / total) * (A[i] @ token) * B[:, i]
        rows.append(layer.base_layer(token) + update)
    return torch.stack(rows)


@pytest.mark.parametrize("top_k", [None, 1, 3])
def test_outputs_and_gradients_match_the_per_rank_reference(top_k):
    layer = make_smora(top_k=top_k)
    x = torch.randn(9, D_IN, requires_grad=True)
    weights = torch.randn(9, D_OUT)  # a loss that weighs every output differently
    trainable = [layer.lora_A, layer.lora_B, layer.router.weight]

    fast = layer(x)
    fast_grads = torch.autograd.grad((fast * weights).sum(), [*trainable, x])
    slow = per_rank_reference(layer, x, top_k)
    slow_grads = torch.autograd.grad((slow * weights).sum(), [*trainable, x])

    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-5)
    for name, got, expected in zip(["lora_A", "lora_B", "router", "x"], fast_grads, slow_grads):
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), name
    if top_k is not None:  # unselected ranks get nothing: each token touches only its k columns of B
        touched = (layer.route(x) > 0).any(0)
        assert (fast_grads[1][~touched] == 0).all()


def test_uniform_gates_give_the_rank_E_lora_with_the_same_alpha():
    """Why the scaling is alpha / 1: soft gates 1/E turn s·B diag(g) A x into (alpha/E)·B A x."""
    layer = make_smora()
    with torch.no_grad():
        layer.router.weight.zero_()  # softmax of equal logits: g_i = 1/E for every token
    x = torch.randn(4, D_IN)
    A, B = layer.lora_A[:, 0, :], layer.lora_B[:, :, 0].T
    lora = layer.base_layer(x) + (layer.config.alpha / RANKS) * x @ A.T @ B.T
    assert torch.allclose(layer(x), lora, rtol=1e-5, atol=1e-6)


def test_forward_is_one_graph_without_host_syncs_and_forms_no_expert_wide_tensor():
    """Two thin matmuls like a rank-E LoRA: no tensor reaches T·E·d_out (every rank's output)."""
    tokens, ranks, d_in, d_out = 24, 16, 24, 40
    layer = make_smora(num_experts=ranks, d_in=d_in, d_out=d_out, top_k=4).train()
    x = torch.randn(tokens, d_in)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x), layer(x), atol=1e-6)
    with _LargestTensor() as probe, torch.no_grad():
        layer(x)
    assert probe.largest <= tokens * d_out  # the output itself
    with _LargestTensor() as probe, torch.no_grad():
        layer.expert_outputs(x)  # the analysis view materializes every rank's output: the probe sees it
    assert probe.largest >= tokens * ranks * d_out


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(num_experts=4, rank=1, top_k=5), "top_k=5 must be between 1 and the number of experts"),
        (dict(num_experts=16, rank=4, top_k=4), r"rank-1 .*got rank=4.*Pass rank=1"),
        (dict(num_experts=16, top_k=4), r"got rank=8"),  # AdapterConfig's default rank does not apply
        (dict(num_experts=4, rank=1, shared_expert=True), "shared_expert=True is for method='moe' or 'omoe'"),
        (dict(num_experts=4, rank=1, orthogonality_penalty=0.1), r"cos²\(e_i, e_j\) = cos²\(b_i, b_j\)"),
        (dict(num_experts=4, rank=1, null_experts=2), "null_experts=2 needs sparse routing"),
    ],
)
def test_bad_config_is_refused_with_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdapterConfig(method="smora", **kwargs)


def test_a_config_changed_after_its_checks_is_refused_by_the_layer():
    config = AdapterConfig(method="smora", num_experts=4, rank=1)
    config.rank = 2
    with pytest.raises(ValueError, match="rank-1 experts"):
        SMoRALinear(nn.Linear(D_IN, D_OUT), config, 4)


def test_trains_on_a_tiny_model():
    model = make_tiny_llama(seed=0, vocab=VOCAB, layers=3, init_range=0.2)
    attach_adapters(model, AdapterConfig(method="smora", num_experts=8, rank=1, alpha=2.0, top_k=2, target_modules="all-linear"))
    result = train(model, byte_tokenizer(), toy_examples(), TrainConfig(steps=12, batch_size=8, lr=2e-2, warmup_steps=1),
                   progress=False)
    losses = [row["loss"] for row in result.history]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert all(row["aux_loss"] > 0 for row in result.history)  # top-k: the load-balancing loss is on
    assert result.routing and all(row["layer"] for row in result.routing)


def test_save_load_round_trip_and_peft_export_refusal(tmp_path):
    config = AdapterConfig(method="smora", num_experts=6, rank=1, top_k=2, target_modules=["q_proj", "v_proj", "down_proj"])
    model = attach_adapters(make_tiny_llama(), config)
    randomize(model)
    ids, mask = batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    save_adapters(model, tmp_path / "adapters")
    loaded = load_adapters(make_tiny_llama(), tmp_path / "adapters")
    layers = adapter_layers(loaded)
    assert all(type(layer) is SMoRALinear and layer.lora_A.shape[1] == 1 for layer in layers.values())
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, expected)
    with pytest.raises(ValueError, match=r"SMoRA \(method='smora'\) has no peer format in PEFT.*diag\(g\(x\)\)"):
        export_peft(model, tmp_path / "peft")
    with pytest.raises(ValueError, match="method='smora'"):
        check_exportable(config)
    assert not (tmp_path / "peft").exists()


def test_run_config_cli_and_sweep_arm():
    arm = RunConfig(**ARMS["smora16top4"].settings, profile="learn")
    adapter = arm.adapter_config(num_blocks=30)
    # the profile's rank (4) is per expert; SMoRA's experts have rank 1, so alpha = 2·1 as for every arm (s = 2)
    assert (adapter.method, adapter.num_experts, adapter.rank, adapter.alpha, adapter.top_k) == ("smora", 16, 1, 2.0, 4)
    assert arm.resolved().rank == 1 and arm.label() == "SMoRA (rank-1 experts) E=16 top-4"
    assert arm.key() != RunConfig(method="moe", num_experts=16, top_k=4, profile="learn").key()
    assert not any("smora16top4" in setting.arms for setting in SETTINGS.values())  # run it with --arms
    with pytest.raises(ValueError, match="rank-1 experts, got rank=4"):
        RunConfig(method="smora", num_experts=16, rank=4).check()
    assert build_parser().parse_args(["train", "--method", "smora", "--num-experts", "16", "--top-k", "4"]).method == "smora"


def test_run_analysis_names_experts_no_token_trained_instead_of_failing():
    """A rank no token selected in a short top-k run keeps B = 0: no direction, so no cosine or CKA."""
    config = RunConfig(method="smora", num_experts=4, top_k=2, model="tiny", profile="ci", capture_tokens=32).resolved()
    model = attach_adapters(make_tiny_llama(vocab=VOCAB), config.adapter_config(num_blocks=2))
    randomize(model)
    for layer in adapter_layers(model).values():
        with torch.no_grad():
            layer.lora_B[1].zero_()
    captured = capture_for_analysis(model, byte_tokenizer(), toy_examples(8), config, progress=False)
    rows, _ = analyse_experts(captured, config)
    assert rows and all(row["zero_experts"] == [1] and "mean_cka" not in row and "routing_entropy" in row for row in rows)


def test_cli_refuses_top_k_above_the_number_of_ranks_before_any_work(capsys, tmp_path):
    code = main(["train", "--method", "smora", "--num-experts", "4", "--top-k", "5", "--model", "tiny",
                 "--tasks", "boolq", "--out", str(tmp_path / "run")])
    assert code == 2 and "--top-k 5 must be between 1 and --num-experts (4)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- why there is no OMoE over rank-1 experts ---------------------------------------------------
def rank_one_omoe(mode: str) -> OMoELinear:
    torch.manual_seed(0)
    layer = OMoELinear(nn.Linear(D_IN, D_OUT), AdapterConfig(method="omoe", num_experts=4, rank=1, orthogonalize=mode), 4)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.router.weight.normal_()
        layer.magnitude.fill_(0.8)
    return layer


def test_stiefel_omoe_over_rank_one_experts_sees_the_input_projection_only_through_signs():
    """e_k = (a_kᵀx) b_k, so q_k = sign(a_kᵀx) b̂_k^⊥: scaling A changes nothing and A gets no gradient."""
    layer = rank_one_omoe("stiefel")
    x = torch.randn(8, D_IN)
    out = layer.adapter_output(x)
    with torch.no_grad():
        layer.lora_A.mul_(3.0)
    assert torch.allclose(layer.adapter_output(x), out, rtol=1e-5, atol=1e-6)
    # a weighted sum: the squared norm of orthonormal q's would not depend on B either
    (layer.adapter_output(x) * torch.randn(8, D_OUT)).sum().backward()
    assert layer.lora_B.grad.abs().max() > 1e-2 and layer.lora_A.grad.abs().max() < 1e-9


def test_orthogonal_omoe_over_rank_one_experts_is_a_fixed_reparametrization_of_b():
    """Soft routing, mode "orthogonal": Σ_k g_k u_k = Σ_k g_k (a_kᵀx) b_k^⊥, with b_k^⊥ the Gram–Schmidt
    residual of B's column k (QR: Q[:, k]·R_kk), the same for every token: a LoRA with an orthogonalized B."""
    layer = rank_one_omoe("orthogonal")
    x = torch.randn(8, D_IN)
    B = layer.lora_B[:, :, 0].T.detach().double()
    q, r = torch.linalg.qr(B)
    residuals = q * torch.diagonal(r)  # column k: b_k minus its projection on b_1..b_{k-1}
    a = x.double() @ layer.lora_A[:, 0, :].T.detach().double()
    expected = layer.scaling * 0.8 * (layer.route(x).double() * a) @ residuals.T
    assert torch.allclose(layer.adapter_output(x).double(), expected, rtol=1e-5, atol=1e-6)
