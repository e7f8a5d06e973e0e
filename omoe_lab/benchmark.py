"""Forward+backward time and activation memory of one adapted linear layer.

Compares, at the same shapes in one run:
  omoe       OMoE, rank-space fast path (what ``forward`` uses)
  omoe-naive OMoE, materialized expert outputs + explicit Gram–Schmidt loop (the reference)
  moe        vanilla MoE-LoRA, soft routing
  lora       one LoRA of rank E·r (the same trainable A/B budget, no router)
Memory is the bytes autograd saves for the backward pass (exact and device-independent), plus
the CUDA peak when run on a GPU. Targets are ratios within one run, never absolute times.

    omoe-lab bench [--device cuda] [--out benchmarks/results/adapter_layer.json]
    python benchmarks/adapter_layer.py   (the same)
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from omoe_lab.adapters import AdapterConfig, LoRALinear, MoELoRALinear, OMoELinear
from omoe_lab.adapters.orthogonal import resolvable_tol

SHAPES = [(2048, 576, 4, 8), (2048, 576, 8, 16), (4096, 2048, 8, 16)]  # tokens, d, E, r
VARIANTS = ["omoe", "omoe-naive", "moe", "lora"]


def build(variant: str, d: int, num_experts: int, rank: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    base = nn.Linear(d, d, bias=False).requires_grad_(False)
    if variant == "lora":
        layer = LoRALinear(base, AdapterConfig(method="lora", rank=num_experts * rank, alpha=2 * num_experts * rank))
    elif variant == "moe":
        layer = MoELoRALinear(base, AdapterConfig(method="moe", num_experts=num_experts, rank=rank), num_experts)
    else:
        config = AdapterConfig(method="omoe", num_experts=num_experts, rank=rank, redundancy_tol=omoe_tol(device))
        layer = OMoELinear(base, config, num_experts)
        with torch.no_grad():
            layer.magnitude.fill_(1.0)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.02)
    return layer.to(device)


def omoe_tol(device: torch.device) -> float:
    """The default redundancy_tol, or, when the Gram is float32 (``--gram-dtype float32`` or MPS),
    the smallest one a float32 Gram resolves (the layer refuses the default 1e-4 there)."""
    gram_dtype = torch.float32 if device.type == "mps" else OMoELinear.gram_dtype
    return max(AdapterConfig.redundancy_tol, resolvable_tol(gram_dtype))


def naive_omoe_forward(layer: OMoELinear, x: torch.Tensor) -> torch.Tensor:
    """``W0 x + s·m·Σ_k g_k q_k`` with every q_k materialized (the readable reference path)."""
    gates = layer.route(x)
    mixed = (gates.unsqueeze(-1) * layer.orthogonal_outputs(x)).sum(-2)
    return layer.base_layer(x) + layer.scaling * layer.magnitude * mixed


def step(variant: str, layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
    out = naive_omoe_forward(layer, x) if variant == "omoe-naive" else layer(x)
    out.backward(grad)


def saved_bytes(variant: str, layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward (parameters excluded)."""
    params = {p.data_ptr() for p in layer.parameters()}
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = naive_omoe_forward(layer, x) if variant == "omoe-naive" else layer(x)
    del out
    return total


def time_variant(variant, layer, x, grad, repeats: int) -> float:
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    step(variant, layer, x, grad)  # warm-up
    times = []
    for _ in range(repeats):
        layer.zero_grad(set_to_none=True)
        sync()
        start = time.perf_counter()
        step(variant, layer, x, grad)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(device: torch.device, repeats: int) -> list[dict]:
    rows = []
    for tokens, d, num_experts, rank in SHAPES:
        torch.manual_seed(1)
        x = torch.randn(tokens, d, device=device, requires_grad=True)  # as inside a network
        grad = torch.randn(tokens, d, device=device)
        for variant in VARIANTS:
            layer = build(variant, d, num_experts, rank, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = time_variant(variant, layer, x, grad, repeats)
            row = dict(
                tokens=tokens, d=d, experts=num_experts, rank=rank, variant=variant,
                ms=1000 * seconds, saved_mib=saved_bytes(variant, layer, x) / 2**20,
            )
            if device.type == "cuda":
                row["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
            rows.append(row)
            print(f"{tokens:5d} {d:5d} {num_experts:2d} {rank:3d}  {variant:10s} {row['ms']:9.1f} ms  {row['saved_mib']:8.1f} MiB saved")
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    for shape in SHAPES:
        by = {r["variant"]: r for r in rows if (r["tokens"], r["d"], r["experts"], r["rank"]) == shape}
        out.append(dict(
            shape=shape,
            omoe_over_moe=by["omoe"]["ms"] / by["moe"]["ms"],
            naive_over_omoe=by["omoe-naive"]["ms"] / by["omoe"]["ms"],
            omoe_over_lora=by["omoe"]["ms"] / by["lora"]["ms"],
            saved_naive_over_omoe=by["omoe-naive"]["saved_mib"] / by["omoe"]["saved_mib"],
        ))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per variant; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--gram-dtype", default="float64", choices=["float64", "float32"],
                        help="precision of OMoE's Gram matrix (default float64, the library default)")
    parser.add_argument("--out", default="benchmarks/results/adapter_layer.json", help="where to write the JSON results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    previous_gram_dtype, OMoELinear.gram_dtype = OMoELinear.gram_dtype, getattr(torch, args.gram_dtype)
    device = torch.device(args.device)
    tol = omoe_tol(device)
    default = AdapterConfig.redundancy_tol
    tol_note = "" if tol == default else f" (not the default {default:g}: a float32 Gram cannot resolve it)"
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} gram={args.gram_dtype} "
          f"redundancy_tol={tol:.3g}{tol_note}")
    print("tokens     d  E   r  variant     fwd+bwd       activations")
    try:
        rows = run(device, args.repeats)
    finally:  # a float32 class default left behind would refuse every later default-tol layer
        OMoELinear.gram_dtype = previous_gram_dtype
    summary = ratios(rows)
    print("\nratios (same run):")
    for s in summary:
        print(
            f"  {s['shape']}: omoe/moe {s['omoe_over_moe']:.2f}x (target <= 1.25), "
            f"naive/omoe {s['naive_over_omoe']:.1f}x, omoe/lora(E*r) {s['omoe_over_lora']:.2f}x, "
            f"saved memory naive/omoe {s['saved_naive_over_omoe']:.1f}x"
        )
    result = dict(
        device=str(device), threads=torch.get_num_threads(), torch=torch.__version__, gram_dtype=args.gram_dtype,
        redundancy_tol=tol, machine=platform.machine(), processor=platform.processor(), rows=rows, ratios=summary,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
