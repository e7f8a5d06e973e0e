"""One adapted layer, timed and counted: the small API notebook 02 uses. The benchmark suite is
``omoe_lab.bench`` (``omoe-lab bench``); this module only names its layer part's pieces.
"""
from __future__ import annotations

import statistics

import torch
from torch import nn

from .bench.layer import build, forward_of, naive_omoe_forward
from .bench.measure import backward_step, module_tensors, saved_activation_bytes, time_calls

VARIANTS = ["omoe", "omoe-naive", "moe", "lora"]  # the fast path, its reference, vanilla MoE-LoRA, LoRA of rank E·r

__all__ = ["VARIANTS", "build", "naive_omoe_forward", "saved_bytes", "time_variant"]


def time_variant(variant: str, layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, repeats: int) -> float:
    """Median seconds of forward + backward (one warm-up first)."""
    step = backward_step(forward_of(variant, layer), x, grad, layer.parameters())
    return statistics.median(time_calls(step, repeats, x.device))


def saved_bytes(variant: str, layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward (each storage once, parameters excluded)."""
    return saved_activation_bytes(lambda: forward_of(variant, layer)(x), module_tensors(layer))
