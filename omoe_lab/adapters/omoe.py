"""OMoE: the active experts' outputs are orthogonalized per token before they are mixed."""
from __future__ import annotations

import torch
from torch import nn

from .config import AdapterConfig
from .moe import MoELoRALinear
from .orthogonal import (
    check_resolvable_tol, expert_gram, expert_metric, gram_of_product, gram_schmidt, gram_schmidt_factors,
    gram_schmidt_weights, live_experts, metric_product, mixed_gram_guard, normalized, resolvable_tol, round_up,
)
from .orthogonal_mix import fallback_tokens, merge, orthogonal_mix


class OMoELinear(MoELoRALinear):
    """``y = W0 x + s · m · Σ_k g_k q_k`` with ``q_1..q_E`` from Gram–Schmidt over the active e_k.

    ``forward`` never forms the [tokens, E, d_out] expert outputs: Gram–Schmidt only needs their
    Gram matrix, which lives in rank space (``orthogonal.expert_gram``), and turns the gates into
    weights ``w`` with ``Σ_k g_k q_k = Σ_j w_j e_j`` (``orthogonal.gram_schmidt_weights``); the
    output is then ``s · m · B_cat (w ⊙ a)``, the same final matmul as vanilla MoE-LoRA.
    ``orthogonal_outputs`` is the materialized reference and must agree with it.

    Shared expert (``AdapterConfig.shared_expert``): it is slot 0, first in the Gram–Schmidt order,
    with gate 1 for every token: its direction is kept as it is, and the routed experts are
    orthogonalized against it (they can only add what the shared expert does not already do).
    Null experts: Gram–Schmidt runs over the selected *real* experts; a null slot has no output.

    Init (OMOE_SPEC §4): ``B`` small random, so every expert has a direction from step 0, and
    the learnable magnitude ``m`` (one scalar per layer) starts at 0, so the model starts as the
    base model. ``m`` gets a gradient at step 1, everything else from step 2.

    Precision: the Gram runs in ``gram_dtype`` (float64; float32 on MPS, which has no float64).
    A float32 Gram cannot resolve ``redundancy_tol`` below ``resolvable_tol(torch.float32)`` (3.45e-2):
    such a layer is refused with a ValueError at construction, when ``gram_dtype`` or
    ``redundancy_tol`` is set on it, and (a guard on Python values only) in the forward, e.g.
    after the class attribute was changed or the layer moved to MPS.

    Mixed precision (``mixed_precision_gram = True``; off by default): for inputs of 32 bits or fewer
    the Gram and its factorization run in float32, and only the tokens that float32 cannot answer as
    float64 would (an expert within ~10⁻² of the span of earlier ones, a duplicate, a zero that is
    not exactly zero, an overflow: ``orthogonal.mixed_gram_guard``) are recomputed in ``gram_dtype``,
    as a gathered subset. float64 inputs take the float64 path unchanged. ``gram_stats`` counts the
    tokens and the fallback tokens of every forward (``reset_gram_stats``); off the CPU, reading which
    tokens fall back is one host synchronization per forward and one per backward.
    """

    method = "omoe"
    # precision of the Gram matrix and its factorizations (docs/decisions.md); MPS has no float64
    gram_dtype: torch.dtype = torch.float64
    # the hand-derived backward that recomputes the Gram path instead of keeping it (mixed_inputs)
    recompute: bool = True
    # float32 Gram with a guarded per-token float64 fallback (docs/decisions.md, "Mixed-precision Gram")
    mixed_precision_gram: bool = False

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, num_experts: int, layer_index: int | None = None):
        super().__init__(base_layer, config, num_experts, layer_index)
        self.orthogonalize = config.orthogonalize
        self.redundancy_tol = config.redundancy_tol  # __setattr__ checks it against the Gram's precision
        self.magnitude = nn.Parameter(torch.zeros((), device=self.lora_A.device))
        # mixed precision: {"tokens": N, "fallback_tokens": K} summed over forwards, and "last_fallback",
        # the last forward's [tokens] mask of the tokens recomputed in float64
        self.gram_stats: dict = {}

    def reset_gram_stats(self) -> None:
        self.gram_stats.clear()

    @property
    def gram_fallback_rate(self) -> float | None:
        """Share of the tokens the mixed-precision Gram recomputed in float64 since ``reset_gram_stats``."""
        tokens = self.gram_stats.get("tokens", 0)
        return self.gram_stats["fallback_tokens"] / tokens if tokens else None

    def uses_mixed_gram(self, a: torch.Tensor, gram_dtype: torch.dtype) -> bool:
        """Whether this forward takes the mixed-precision path (Python values only: nothing syncs)."""
        return self.mixed_precision_gram and gram_dtype == torch.float64 and a.dtype != torch.float64

    def __setattr__(self, name, value):
        # refuse an unresolvable threshold when it is set, not at the first training step
        if name in ("gram_dtype", "redundancy_tol") and "lora_A" in self._parameters:
            self.check_gram_precision(
                self.lora_A.device,
                value if name == "gram_dtype" else self.gram_dtype,
                value if name == "redundancy_tol" else self.redundancy_tol,
            )
        super().__setattr__(name, value)

    def check_gram_precision(
        self, device: torch.device, gram_dtype: torch.dtype | None = None, tol: float | None = None
    ) -> torch.dtype:
        """The Gram dtype used on ``device``; a ValueError if it cannot resolve the redundancy threshold."""
        gram_dtype = self.gram_dtype if gram_dtype is None else gram_dtype
        tol = self.redundancy_tol if tol is None else tol
        if device.type == "mps":  # no float64 on MPS
            gram_dtype, fixes = torch.float32, "MPS has no float64, so"
        else:
            fixes = "use a float64 Gram (OMoELinear.gram_dtype = torch.float64, the default), or"
        floor = resolvable_tol(gram_dtype)
        fixes += f" set AdapterConfig(redundancy_tol=...) >= {round_up(floor):.2g}"
        check_resolvable_tol(tol, gram_dtype, fixes)
        return gram_dtype

    def slot_orthogonal_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """``q_k`` of every slot [..., S + E, d_out] (shared expert first) by explicit Gram–Schmidt
        on the materialized outputs: the reference the fast path is tested against."""
        gates, active = self.slot_gates(x)
        return gram_schmidt(self.slot_outputs(x), active, self.orthogonalize, self.redundancy_tol)

    def orthogonal_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """``q_k`` of the routed experts [..., E, d_out] (after the shared expert, if any), reference."""
        return self.slot_orthogonal_outputs(x)[..., self.num_shared :, :]

    def mixed_inputs(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """``m · w ⊙ a``, formed in the Gram's dtype from the very tensor the Gram is built from.

        For an expert at relative distance ρ from the span of the others, ``w`` grows like 1/ρ and
        the gradient reaching ``a`` through the Gram and through ``w ⊙ a`` has two large parts that
        cancel. They must meet in float64 and be rounded to ``a``'s dtype only as a sum: rounded
        apart, an fp16 ``a`` received inf from one and −inf from the other (NaN) where the true
        gradient was small.

        Memory and time (``recompute``, the default): the Gram path is one autograd Function
        (``orthogonal_mix``) whose backward is derived by hand; it keeps for backward only what
        vanilla MoE-LoRA keeps (``a`` and the gates, plus the [tokens, E] live mask) and recomputes
        the rank-space Gram and one factorization there. ``recompute = False`` runs autograd
        through the same maths instead (the reference the hand-derived backward is tested
        against): the [tokens, E, E, r] float64 product and the [tokens, E, E] factors then stay
        alive until backward (``docs/benchmarks.md``: the trade-off).
        """
        gates, active = self.slot_gates(x)
        # a guard on Python values (dtype, device, config): no tensor is read, nothing syncs
        gram_dtype = self.check_gram_precision(a.device)
        mixed = self.uses_mixed_gram(a, gram_dtype)
        if self.recompute:
            slots = a.shape[-2]
            out = orthogonal_mix(
                a.reshape(-1, slots, self.rank), self.slot_B(), gates.reshape(-1, slots), active.reshape(-1, slots),
                self.magnitude, self.orthogonalize, self.redundancy_tol, gram_dtype, mixed, self.gram_stats,
            )
            return out.reshape(a.shape)
        wide = a.to(gram_dtype)
        weights = (self.mixed_orthogonal_weights if mixed else self.orthogonal_weights)(wide, gates, active)
        return (wide * weights.unsqueeze(-1)).to(a.dtype)

    def orthogonal_weights(self, a: torch.Tensor, gates: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """``m · w`` [..., S + E] in ``a``'s dtype, from the rank-space Gram of the slots' ``a``."""
        lead, slots = a.shape[:-2], a.shape[-2]
        # the Gram and its factorizations run in the Gram's dtype outside autocast: tiny, and precision-bound
        with torch.autocast(device_type=a.device.type, enabled=False):
            gram = expert_gram(a.reshape(-1, slots, self.rank), self.slot_B(), a.dtype)
            weights = gram_schmidt_weights(
                gram,
                gates.reshape(-1, slots),
                active.reshape(-1, slots),
                self.orthogonalize,
                self.redundancy_tol,
            )
        return (self.magnitude.to(weights.dtype) * weights).reshape(*lead, slots)

    def mixed_orthogonal_weights(self, a: torch.Tensor, gates: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """``m · w`` [..., S + E] in float64 by the mixed-precision path, with autograd through it
        (``recompute = False``): float32 weights where ``mixed_gram_guard`` trusts them, the float64
        path (``orthogonal_weights``'s maths) on the gathered other tokens. The float32 pass gives the
        other tokens no live expert and a zero Gram, so nothing undefined reaches the backward.
        ``a`` is the float64 upcast that ``w ⊙ a`` is formed from: both passes branch off it, so their
        gradients meet in float64 (``mixed_inputs``: for near-collinear experts they cancel)."""
        lead, slots = a.shape[:-2], a.shape[-2]
        flat, gates, active = a.reshape(-1, slots, self.rank), gates.reshape(-1, slots), active.reshape(-1, slots)
        with torch.autocast(device_type=a.device.type, enabled=False):
            b_cat, metric = expert_metric(self.slot_B(), torch.float64)
            b_sq_norms = b_cat.detach().square().view(b_cat.shape[0], slots, self.rank).sum((0, 2)).float()
            wide = flat.float()
            gram = gram_of_product(metric_product(wide, metric.float()), wide)
            guard = mixed_gram_guard(gram.detach(), wide.detach(), b_sq_norms, active, self.redundancy_tol)
            safe = guard.safe.unsqueeze(-1)
            gram = torch.where(safe.unsqueeze(-1), gram, 0.0)
            weights = gram_schmidt_factors(*normalized(gram, active & safe), gates, guard.live & safe,
                                           self.orthogonalize).weights.double()
            index = fallback_tokens(guard.safe)
            if index.numel():
                sub = flat[index].double()
                inv_norm, cosines = normalized(gram_of_product(metric_product(sub, metric), sub), active[index])
                live = live_experts(inv_norm, cosines, self.redundancy_tol)
                exact = gram_schmidt_factors(inv_norm, cosines, gates[index], live, self.orthogonalize).weights
                weights = merge(weights, exact, index, guard.safe)
            if not torch.compiler.is_compiling():
                self.gram_stats["tokens"] = self.gram_stats.get("tokens", 0) + flat.shape[0]
                self.gram_stats["fallback_tokens"] = self.gram_stats.get("fallback_tokens", 0) + index.numel()
                self.gram_stats["last_fallback"] = ~guard.safe
        return (self.magnitude.double() * weights).reshape(*lead, slots)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", orthogonalize={self.orthogonalize}"
