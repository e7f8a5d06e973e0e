import math

import numpy as np
import pytest
import torch

from omoe_lab.analysis.capture import Captured, LayerCapture
from omoe_lab.analysis.routing_stats import (
    effective_rank,
    expert_effective_rank,
    expert_load,
    routing_entropy,
    routing_summary,
    topk_frequency,
)

# four tokens, three experts: top-2 style rows, a one-hot row and a uniform row
GATES = torch.tensor([
    [0.5, 0.5, 0.0],
    [0.25, 0.0, 0.75],
    [1.0, 0.0, 0.0],
    [1 / 3, 1 / 3, 1 / 3],
])


def test_routing_entropy_on_hand_computed_gates():
    per_token = [math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), 0.0, math.log(3)]
    assert routing_entropy(GATES) == pytest.approx(np.mean(per_token), rel=1e-6)
    assert routing_entropy(GATES, normalized=True) == pytest.approx(np.mean(per_token) / math.log(3), rel=1e-6)
    assert routing_entropy(torch.full((5, 4), 0.25), normalized=True) == pytest.approx(1.0)
    assert routing_entropy(torch.eye(4)) == 0.0


def test_load_and_frequency_on_hand_computed_gates():
    assert expert_load(GATES).tolist() == pytest.approx([(0.5 + 0.25 + 1 + 1 / 3) / 4, (0.5 + 1 / 3) / 4, (0.75 + 1 / 3) / 4], rel=1e-6)
    assert expert_load(GATES).sum().item() == pytest.approx(1.0)
    assert topk_frequency(GATES).tolist() == [1.0, 0.5, 0.5]
    # leading dimensions are flattened: [B, S, E] gives the same as [B·S, E]
    assert torch.equal(topk_frequency(GATES.reshape(2, 2, 3)), topk_frequency(GATES))
    assert expert_load(GATES.numpy()).dtype == torch.float64


@pytest.mark.parametrize("call, message", [
    (lambda: routing_entropy(torch.tensor([[2.0, -1.0]])), "non-negative"),
    (lambda: expert_load(torch.tensor([[0.2, 0.2]])), "sum to 1"),
    (lambda: topk_frequency(torch.zeros(0, 3)), "no tokens"),
    (lambda: routing_entropy(torch.ones(4, 1), normalized=True), "at least 2 experts"),
    (lambda: routing_entropy(torch.tensor([[float("nan"), 1.0]])), "NaN"),
    (lambda: effective_rank(torch.zeros(3, 4)), "all zero"),
    (lambda: effective_rank(torch.ones(3)), r"\[n, d\]"),
    (lambda: expert_effective_rank(torch.zeros(2, 3, 4)), "all zero"),
    (lambda: expert_effective_rank(torch.ones(0, 3, 4)), "no tokens"),
])
def test_invalid_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_effective_rank_on_known_spectra():
    assert routing_entropy(torch.ones(3, 1)) == 0.0  # a single expert: entropy 0 nats is fine
    assert effective_rank(torch.outer(torch.arange(1.0, 5.0), torch.ones(6))) == pytest.approx(1.0)
    assert effective_rank(3.0 * torch.eye(5)) == pytest.approx(5.0)
    # singular values 3 and 1: p = (3/4, 1/4), erank = exp(H(p))
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(math.exp(h))
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0, 0.0, 0.0, 0, 0], dtype=torch.float64)) @ rotation) == pytest.approx(math.exp(h))


def test_expert_effective_rank_from_collapsed_to_orthogonal_experts():
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(10, 1, 16, generator=generator)
    collapsed = direction * torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1)
    assert expert_effective_rank(collapsed) == pytest.approx(1.0, abs=1e-6)
    orthonormal, _ = torch.linalg.qr(torch.randn(10, 16, 3, generator=generator))
    assert expert_effective_rank(orthonormal.mT) == pytest.approx(3.0, abs=1e-5)
    random = torch.randn(10, 3, 16, generator=generator)
    assert 1.5 < expert_effective_rank(random) < 3.0


def _layer(name, index, gates, method="moe"):
    tokens, experts = gates.shape
    return LayerCapture(name, index, method, torch.randn(tokens, experts, 4), gates, gates > 0)


def _captured(layers, task_codes, task_names):
    n = len(task_codes)
    return Captured(
        layers={layer.name: layer for layer in layers},
        token_ids=torch.arange(n), sequence_ids=torch.zeros(n, dtype=torch.long), positions=torch.arange(n),
        task_codes=torch.tensor(task_codes), task_names=task_names, tokens_seen=n,
    )


def test_routing_summary_groups_by_layer_and_task():
    other = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    lora = LayerCapture("lora", 0, "lora", torch.randn(4, 1, 4), torch.ones(4, 1), torch.ones(4, 1, dtype=torch.bool))
    captured = _captured([_layer("a", 0, GATES), _layer("b", 1, other), lora], [0, 1, 0, 1], ("boolq", "piqa"))
    summary = routing_summary(captured)
    assert list(summary.columns) == [
        "layer", "block", "method", "task", "expert", "tokens", "load", "frequency", "entropy", "entropy_normalized"
    ]
    assert len(summary) == 2 * 2 * 3  # LoRA left out: no router
    boolq_a = summary[(summary.layer == "a") & (summary.task == "boolq")]
    rows = GATES[[0, 2]]
    assert boolq_a["load"].tolist() == pytest.approx(expert_load(rows).tolist())
    assert boolq_a["frequency"].tolist() == [1.0, 0.5, 0.0]
    assert boolq_a["entropy"].tolist() == pytest.approx([routing_entropy(rows)] * 3)
    assert set(boolq_a["tokens"]) == {2} and set(boolq_a["block"]) == {0}
    piqa_b = summary[(summary.layer == "b") & (summary.task == "piqa")]
    assert piqa_b["load"].tolist() == [0.0, 0.5, 0.5] and set(piqa_b["entropy_normalized"]) == {0.0}

    overall = routing_summary(captured, by_task=False)
    assert set(overall.task) == {"all"} and len(overall) == 6
    assert overall[overall.layer == "a"]["load"].tolist() == pytest.approx(expert_load(GATES).tolist())

    with pytest.raises(ValueError, match="no routed layers"):
        routing_summary(_captured([lora], [0, 1, 0, 1], ("boolq", "piqa")))


def test_a_token_routed_only_to_null_experts_is_a_row_of_zeros():
    gates = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # row 1: null experts only
    assert expert_load(gates).tolist() == pytest.approx([0.5, 1 / 6, 0.0])
    assert routing_entropy(gates) == pytest.approx(math.log(2) / 3)
    with pytest.raises(ValueError, match="sum to 1, or to 0"):
        expert_load(torch.tensor([[0.5, 0.0]]))
