"""What collapse costs: merge each layer's mixture into one LoRA, or take one expert out, and
measure how much the adapter's output and the model's accuracy change.

A mixture layer adds ``s · Σ_j w_{t,j} e_j`` with ``e_j = B_j A_j x`` and token-dependent weights
``w_t``: the gates for MoE-LoRA; for OMoE the rank-space weights of its Gram–Schmidt fast path,
``m · w`` with ``Σ_k g_k q_k = Σ_j w_j e_j`` (``orthogonal.gram_schmidt_weights``).

- **Merged**: ``s · Σ_j w̄_j e_j`` = one LoRA of rank E·r, ``ΔW = s · Σ_j w̄_j B_j A_j``, with
  ``w̄`` the mean of ``w_t`` over the probe tokens. Exact when the weights do not depend on the
  token: experts that have collapsed onto one direction merge almost for free.
- **Without expert j**: the layer as if expert j were not there: its gate is 0 and (OMoE) it is
  left out of Gram–Schmidt; the other gates are not renormalized.

The output change is measured on captured probe tokens (``capture.Captured``: the raw e_j and
the gates of every token) and pooled over layers, ``√(Σ ‖Δ' − Δ‖² / Σ ‖Δ‖²)``; the accuracy
change by scoring the test questions with the live layers set to the variant (``variant_layers``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from ..adapters.config import ORTHOGONAL_METHODS
from ..adapters.orthogonal import gram_schmidt_weights
from ..inject import adapter_layers
from .capture import Captured, LayerCapture

MERGED = "merged"


def mixture_layers(model) -> dict:
    """The model's adapter layers that mix several routed experts (and no shared expert)."""
    layers = {name: layer for name, layer in adapter_layers(model).items() if layer.num_experts > 1}
    unrouted = [name for name, layer in layers.items() if not hasattr(layer, "slot_gates")]
    if unrouted:
        raise ValueError(f"{unrouted[0]} is not a routed linear mixture (MoE-LoRA or OMoE): nothing to merge there")
    shared = [name for name, layer in layers.items() if layer.num_shared]
    if shared:
        raise ValueError(f"merging does not cover shared experts yet ({shared[0]} has one): measure arms without them")
    return layers


def token_weights(layer, captured: LayerCapture, gates: torch.Tensor | None = None,
                  active: torch.Tensor | None = None) -> torch.Tensor:
    """``w_t`` [N, E] (float64) with adapter output ``s · Σ_j w_{t,j} e_j`` on the captured tokens;
    ``gates``/``active`` replace the router's (to take an expert out)."""
    gates = captured.gates if gates is None else gates
    active = captured.active if active is None else active
    if layer.method not in ORTHOGONAL_METHODS:
        return gates.double() * active
    outputs = captured.expert_outputs.double()
    gram = outputs @ outputs.transpose(-1, -2)  # e_i · e_j: the Gram the fast path forms in rank space
    weights = gram_schmidt_weights(gram, gates.double(), active, layer.orthogonalize, layer.redundancy_tol)
    return layer.magnitude.detach().double().cpu() * weights


def without_expert(gates: torch.Tensor, active: torch.Tensor, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gates and active mask [..., E] with ``expert`` removed (gate 0, inactive; others unchanged)."""
    keep = torch.ones(gates.shape[-1], dtype=torch.bool, device=gates.device)
    keep[expert] = False
    return gates * keep, active & keep


def variant_weights(layer, captured: LayerCapture, variant: str | int) -> torch.Tensor:
    """Per-token weights [N, E] of a variant: ``MERGED`` (every token gets ``w̄``) or an expert index."""
    if variant == MERGED:
        full = token_weights(layer, captured)
        return full.mean(dim=0).expand_as(full)
    return token_weights(layer, captured, *without_expert(captured.gates, captured.active, variant))


def output_change(layers: dict, captured: Captured, variant: str | int) -> dict:
    """Relative L2 change of the adapter outputs on the captured tokens, pooled over layers and
    per layer: ``‖Σ_j (w'_j − w_j) e_j‖ / ‖Σ_j w_j e_j‖`` (the scaling s cancels)."""
    changed = total = 0.0
    per_layer = {}
    for name, layer in layers.items():
        outputs = captured[name].expert_outputs.double()
        full = token_weights(layer, captured[name])
        delta = torch.einsum("ne,neo->no", variant_weights(layer, captured[name], variant) - full, outputs)
        reference = torch.einsum("ne,neo->no", full, outputs)
        d2, r2 = float(delta.square().sum()), float(reference.square().sum())
        per_layer[name] = (d2 / r2) ** 0.5 if r2 > 0 else 0.0
        changed, total = changed + d2, total + r2
    return {"output_change": (changed / total) ** 0.5 if total > 0 else 0.0, "output_change_per_layer": per_layer}


@contextlib.contextmanager
def variant_layers(layers: dict, captured: Captured, variant: str | int) -> Iterator[None]:
    """Set the live layers to a variant while the block runs: ``MERGED`` mixes with the constant
    ``w̄`` (one LoRA of rank E·r); an expert index takes that expert out of routing (and of OMoE's
    Gram–Schmidt). The layers' own methods come back afterwards, even on error."""
    overrides: dict = {}
    for name, layer in layers.items():
        if variant == MERGED:
            mean = token_weights(layer, captured[name]).mean(dim=0)
            overrides[name] = ("mixed_inputs", _constant_mix(mean))
        else:
            overrides[name] = ("slot_gates", _dropping(layer.slot_gates, variant))
    try:
        for name, (attribute, function) in overrides.items():
            setattr(layers[name], attribute, function)  # an instance attribute shadows the method
        yield
    finally:
        for name, (attribute, _) in overrides.items():
            layers[name].__dict__.pop(attribute, None)


def _constant_mix(mean: torch.Tensor) -> Callable:
    def mixed_inputs(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a * mean.to(a.device, a.dtype).unsqueeze(-1)

    return mixed_inputs


def _dropping(slot_gates: Callable, expert: int) -> Callable:
    def gates_without(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return without_expert(*slot_gates(x), expert)

    return gates_without


def collapse_cost(model, captured: Captured, accuracy: float, score: Callable[[], tuple[float, list[int]]],
                  max_dropped: int = 4) -> dict:
    """Accuracy and adapter-output change when every mixture is merged into one LoRA and, for
    E ≤ ``max_dropped``, when each expert is taken out. ``accuracy``: the full model's;
    ``score()`` scores the test questions with the model as it is: ``(accuracy, correct per question)``."""
    layers = mixture_layers(model)
    if not layers:
        raise ValueError("the model has no mixture layers (num_experts > 1): nothing to merge")
    experts = max(layer.num_experts for layer in layers.values())
    variants: list[str | int] = [MERGED, *(range(experts) if experts <= max_dropped else ())]
    rows = []
    for variant in variants:
        with variant_layers(layers, captured, variant):
            variant_accuracy, correct = score()
        rows.append({"variant": MERGED if variant == MERGED else f"without expert {variant}",
                     "expert": None if variant == MERGED else variant, "accuracy": variant_accuracy,
                     "accuracy_lost": accuracy - variant_accuracy, **output_change(layers, captured, variant),
                     "correct": correct})
    return {"accuracy": accuracy, "probe_tokens": len(captured), "variants": rows}
