"""On a CUDA GPU: the adapters' forward + backward never wait for the host, and the benchmark runs there.

``torch.cuda.set_sync_debug_mode("error")`` turns every synchronizing call (a ``.item()``, a
device-to-host copy, a data-dependent shape such as ``nonzero``) into a RuntimeError, so a
forward or backward that passes runs asynchronously: the GPU is never idle waiting for Python.
The first call of each layer runs outside the check: lazy initialization (cuBLAS handles, the
caching allocator) may synchronize once, and that is no property of the layer.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from omoe_lab.adapters import AdapterConfig, LoRALinear, MixLoRAFFN, MoELoRALinear, OMoELinear

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA GPU here: the host-synchronization checks need one (torch.cuda.is_available() is False)",
)

D, TOKENS = 64, 48
ROUTINGS = {"soft": {}, "top-2": {"top_k": 2}}


def linear_layer(method: str, routing: dict) -> nn.Module:
    torch.manual_seed(0)
    base = nn.Linear(D, D, device="cuda").requires_grad_(False)
    if method == "lora":
        return LoRALinear(base, AdapterConfig(method="lora", rank=8, b_init_std=0.02))
    config = AdapterConfig(method=method, num_experts=4, rank=4, b_init_std=0.02, **routing)
    layer = (OMoELinear if method == "omoe" else MoELoRALinear)(base, config, 4)
    if method == "omoe":
        with torch.no_grad():
            layer.magnitude.fill_(1.0)
    return layer


def mlp_block(method: str, routing: dict) -> nn.Module:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(0)
    mlp = LlamaMLP(LlamaConfig(hidden_size=D, intermediate_size=2 * D)).cuda().requires_grad_(False)
    block = MixLoRAFFN(mlp, AdapterConfig(method=method, num_experts=4, rank=4, b_init_std=0.02, **routing), 4)
    if method == "omoe_mixlora":
        with torch.no_grad():
            block.magnitude.fill_(1.0)
    return block


def forward_backward(layer: nn.Module, x: torch.Tensor) -> None:
    layer(x).square().mean().backward()


@pytest.mark.parametrize("routing", list(ROUTINGS))
@pytest.mark.parametrize("method", ["lora", "moe", "omoe", "mixlora", "omoe_mixlora"])
def test_forward_and_backward_never_synchronize_with_the_host(method, routing):
    if method == "lora" and routing != "soft":
        pytest.skip("a single LoRA has no router")
    layer = mlp_block(method, ROUTINGS[routing]) if "mixlora" in method else linear_layer(method, ROUTINGS[routing])
    layer.train()
    x = torch.randn(2, TOKENS // 2, D, device="cuda", requires_grad=True)
    forward_backward(layer, x)  # warm-up: lazy initialization may synchronize once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        forward_backward(layer, x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters() if p.requires_grad)


def test_the_benchmark_smoke_runs_on_cuda(tmp_path):
    from omoe_lab.bench import main

    results = main(["--smoke", "--device", "cuda", "--out", str(tmp_path), "--quiet"])
    assert set(results) == {"layer", "peers", "scaling", "end_to_end", "scoring"}
    assert all(r["device"].startswith("cuda") and r["machine"].get("gpu") for r in results.values())
    assert all("cuda_peak_mib" in row for row in results["layer"]["rows"])
