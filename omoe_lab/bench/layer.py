"""One adapted ``d × d`` linear, forward + backward, at the shapes of the issue's layer target.

Variants, at each (tokens, d, E, r), in one run:

- ``omoe``: OMoE (stiefel, soft routing) as ``forward`` computes it: rank-space Gram in the
  layer's default precision (float64), Cholesky weights, one final matmul;
- ``omoe-mixed``: the same with ``mixed_precision_gram``: the Gram and its factorization in float32,
  the tokens its guard does not trust recomputed in float64 (``fallback_rate``: their share over the
  timed calls), at the default threshold; beside ``omoe``, the float64 path, it is the before/after pair;
- ``omoe-f32``: the same with a float32 Gram and the smallest threshold it resolves,
  ``redundancy_tol = resolvable_tol(float32)`` (3.45e-2): the speed/precision trade-off;
- ``omoe-kept``: ``OMoELinear.recompute = False``, the Gram path's intermediates
  kept for backward instead of recomputed there: the other end of the time–memory trade-off;
- ``omoe-naive``: the readable reference, every expert output materialized and Gram–Schmidt
  looped over experts (``OMoELinear.orthogonal_outputs``);
- ``moe``: vanilla MoE-LoRA, soft routing; ``lora``: one LoRA of rank E·r (the same A/B budget).

The input requires a gradient, as inside a network. ``rel_error`` of the OMoE rows is
``‖y − y_ref‖ / ‖y_ref‖`` against the naive path run in float64 on a float64 copy of the layer
(the accuracy half of the target: relative ≤ 1e-6 in float32 outputs).
"""
from __future__ import annotations

import copy
from functools import partial

import torch
from torch import nn

from ..adapters import AdapterConfig, LoRALinear, MoELoRALinear, OMoELinear
from ..adapters.orthogonal import resolvable_tol
from .measure import (
    MiB, backward_step, cuda_peak_mib, module_tensors, saved_activation_bytes, time_calls, time_side_by_side, timing_fields,
)
from .options import Options
from .record import of_ratio, ratio, row_metric, target

SHAPES = [(2048, 576, 4, 8), (2048, 576, 8, 16), (4096, 2048, 8, 16)]  # tokens, d, E, r
SMOKE_SHAPES = [(64, 32, 2, 4), (64, 32, 4, 4)]
VARIANTS = ["omoe", "omoe-mixed", "omoe-f32", "omoe-kept", "omoe-naive", "moe", "lora"]
OMOE_VARIANTS = ("omoe", "omoe-mixed", "omoe-f32", "omoe-kept")  # the fast path, in some setting (accuracy measured)
TIME_LIMIT, MEMORY_LIMIT, ERROR_LIMIT = 1.15, 1.10, 1e-6  # omoe / moe time and saved memory; omoe's error


def build(variant: str, d: int, num_experts: int, rank: int, device: torch.device) -> nn.Module:
    """The variant's layer on a fixed random frozen base (the same base for every variant)."""
    torch.manual_seed(0)
    base = nn.Linear(d, d, bias=False).requires_grad_(False)
    if variant == "lora":
        layer = LoRALinear(base, AdapterConfig(method="lora", rank=num_experts * rank, alpha=2 * num_experts * rank))
    elif variant == "moe":
        layer = MoELoRALinear(base, AdapterConfig(method="moe", num_experts=num_experts, rank=rank), num_experts)
    else:
        f32 = variant == "omoe-f32"
        tol = resolvable_tol(torch.float32) if f32 else AdapterConfig.redundancy_tol
        config = AdapterConfig(method="omoe", num_experts=num_experts, rank=rank, redundancy_tol=tol)
        layer = OMoELinear(base, config, num_experts)
        if f32:
            layer.gram_dtype = torch.float32  # on this layer only (checked against its tol when set)
        if variant == "omoe-kept":
            layer.recompute = False
        if variant == "omoe-mixed":
            layer.mixed_precision_gram = True
        with torch.no_grad():
            layer.magnitude.fill_(1.0)  # the adapter term is live, as after training starts
    with torch.no_grad():
        layer.lora_B.normal_(std=0.02)
    return layer.to(device)


def naive_omoe_forward(layer: OMoELinear, x: torch.Tensor) -> torch.Tensor:
    """``W0 x + s·m·Σ_k g_k q_k`` with every q_k materialized (the readable reference path)."""
    gates = layer.route(x)
    mixed = (gates.unsqueeze(-1) * layer.orthogonal_outputs(x)).sum(-2)
    return layer.base_layer(x) + layer.scaling * layer.magnitude * mixed


def forward_of(variant: str, layer: nn.Module):
    return (lambda x: naive_omoe_forward(layer, x)) if variant == "omoe-naive" else layer


@torch.no_grad()
def relative_error(layer: OMoELinear, x: torch.Tensor) -> float:
    """``‖layer(x) − ref‖ / ‖ref‖`` with ref the naive path in float64 (a float64 copy of the layer)."""
    reference_layer = copy.deepcopy(layer).double()
    reference = naive_omoe_forward(reference_layer, x.double())
    return float((layer(x).double() - reference).norm() / reference.norm())


def run(options: Options) -> dict:
    device, rows = options.device, []
    shapes = SMOKE_SHAPES if options.smoke else SHAPES
    for tokens, d, num_experts, rank in shapes:
        torch.manual_seed(1)
        x = torch.randn(tokens, d, device=device, requires_grad=True)  # as inside a network
        grad = torch.randn(tokens, d, device=device)
        layers = {variant: build(variant, d, num_experts, rank, device) for variant in VARIANTS}
        steps = {variant: backward_step(forward_of(variant, layer), x, grad, layer.parameters())
                 for variant, layer in layers.items()}
        # the fast variants side by side (their ratios are the targets); the naive reference on its own
        seconds = time_side_by_side({v: s for v, s in steps.items() if v != "omoe-naive"}, options.repeats, device)
        seconds["omoe-naive"] = time_calls(steps["omoe-naive"], options.repeats, device)
        for variant, layer in layers.items():
            row = {"id": f"{tokens}x{d} E{num_experts} r{rank} {variant}", "tokens": tokens, "d": d, "experts": num_experts,
                   "rank": rank, "variant": variant, **timing_fields(seconds[variant])}
            row["saved_mib"] = saved_activation_bytes(partial(forward_of(variant, layer), x), module_tensors(layer)) / MiB
            if variant in OMOE_VARIANTS:
                row["redundancy_tol"] = layer.redundancy_tol
                # share of tokens the mixed path recomputed in float64, over every forward run so far; None: not mixed
                row["fallback_rate"] = layer.gram_fallback_rate
                row["rel_error"] = relative_error(layer, x.detach())
            if device.type == "cuda":
                row["cuda_peak_mib"] = cuda_peak_mib(steps[variant], device)
            rows.append(row)
            error = f"  rel. error {row['rel_error']:.1e}" if "rel_error" in row else ""
            if row.get("fallback_rate") is not None:
                error += f"  float64 fallback {row['fallback_rate']:.1%} of tokens"
            options.say(f"layer {row['id']:28s} {row['ms']:9.2f} ms  {row['saved_mib']:9.2f} MiB saved{error}")
    ratios, targets = [], []
    for tokens, d, num_experts, rank in shapes:
        shape = f"{tokens}x{d} E{num_experts} r{rank}"
        pairs = [("omoe", "moe"), ("omoe-mixed", "moe"), ("omoe-mixed", "omoe"), ("omoe-f32", "moe"), ("omoe-kept", "moe"), ("omoe", "lora"), ("omoe-naive", "omoe")]
        for top, bottom in [(t, b) for t, b in pairs if t in VARIANTS]:
            for metric, what in (("ms", "time"), ("saved_mib", "saved memory")):
                ratio(f"{shape}: {top} / {bottom} {what}", row_metric(f"{shape} {top}", metric),
                      row_metric(f"{shape} {bottom}", metric), rows, ratios)
        targets.append(target(f"OMoE / MoE-LoRA time at {shape}", of_ratio(f"{shape}: omoe / moe time"), TIME_LIMIT,
                              rows, ratios))
        targets.append(target(f"OMoE / MoE-LoRA saved memory at {shape}", of_ratio(f"{shape}: omoe / moe saved memory"),
                              MEMORY_LIMIT, rows, ratios))
        targets.append(target(f"OMoE output relative error vs float64 reference at {shape}",
                              row_metric(f"{shape} omoe", "rel_error"), ERROR_LIMIT, rows, ratios))
    return {
        "description": "Forward + backward of one adapted d × d linear (input requires grad); saved memory = bytes "
                       "autograd keeps for backward (each storage once, parameters excluded). omoe-mixed: float32 Gram "
                       "with a guarded per-token float64 fallback (fallback_rate: the share of tokens recomputed). "
                       "omoe-f32: float32 Gram with redundancy_tol = resolvable_tol(float32).",
        "settings": {"shapes": [list(s) for s in shapes], "variants": VARIANTS},
        "rows": rows, "ratios": ratios, "targets": targets,
    }
