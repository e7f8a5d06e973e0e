"""Vanilla mixture of LoRA experts: a router mixes the experts' outputs.

Also the router itself (``RoutedMixin``), shared by every routed layer — the linear-level mixtures
here and the FFN-level experts of ``adapters/ffn.py`` — with null experts and the auxiliary losses.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import AdapterConfig
from .lora import LoRALinear, init_lora
from .orthogonal import cosine_penalty, expert_gram
from .routing import (
    load_balancing_loss, mean_real_experts, real_expert_gates, router_z_loss, routing_gates, token_mean,
)


class RoutedMixin:
    """A router ``p = softmax(W_g x)`` over E real (+ N null) experts, and its auxiliary losses.

    With N null experts (AdaMoE) ``W_g`` has E + N rows; the gates it returns are those of the E
    real experts (``routing.real_expert_gates``), so they pair with the experts' outputs as before.
    While training with a non-zero coefficient, the layer keeps its last router logits and active
    mask on the side (never in its return value); ``aux_loss`` turns them into the load-balancing
    and z-losses, and ``omoe_lab.router_aux_loss`` averages those over the model's layers.
    """

    num_experts: int
    training: bool
    orthogonality_penalty: float = 0.0  # λ of the penalty; only MoELoRALinear records one

    def _init_router(self, d_in: int, num_experts: int, config: AdapterConfig, device) -> None:
        self.top_k, self.top_p = config.top_k, config.top_p
        self.null_experts = config.null_experts
        self.router = nn.Linear(d_in, num_experts + self.null_experts, bias=False, device=device)
        nn.init.normal_(self.router.weight, std=config.router_init_std)
        self.load_balance_coef = float(config.load_balance_coef)
        self.router_z_coef = float(config.router_z_coef)
        self._routing_record: tuple[torch.Tensor, torch.Tensor] | None = None
        self._penalty_record: torch.Tensor | None = None

    def route_with_mask(self, x: torch.Tensor, record: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Gates [..., E] (float32) and active mask [..., E] of the real experts; records the logits
        (of all E + N slots) for the aux losses while training, unless ``record=False``."""
        logits = self.router(x.to(self.router.weight.dtype))
        gates, active = routing_gates(logits, self.top_k, self.top_p)
        if record and self.training and (self.load_balance_coef > 0 or self.router_z_coef > 0):
            self._routing_record = (logits, active)
        if self.null_experts:
            gates, active = real_expert_gates(gates, active, self.num_experts)
        return gates, active

    def route(self, x: torch.Tensor) -> torch.Tensor:
        return self.route_with_mask(x)[0]

    @torch.no_grad()
    def mean_real_experts(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Average number of real experts a token of ``x`` uses (0-d tensor; k without null experts).

        Reads the router only (nothing is recorded for the aux losses, no expert runs).
        """
        return mean_real_experts(self.route_with_mask(x, record=False)[1], token_mask)

    def aux_loss(self, token_mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """``λ_lb · load_balance + λ_z · z_loss (+ λ_orth · penalty)`` of the last recorded forward,
        then forget it; None when nothing was recorded (eval mode, zero coefficients)."""
        routing, penalty = self._routing_record, self._penalty_record
        if routing is None and penalty is None:
            return None
        self._routing_record = self._penalty_record = None
        reference = routing[0] if routing is not None else penalty
        loss = reference.new_zeros((), dtype=torch.float32)
        if routing is not None:
            logits, active = routing
            if self.load_balance_coef > 0:
                probs = torch.softmax(logits.float(), dim=-1)
                loss = loss + self.load_balance_coef * load_balancing_loss(probs, active, token_mask, self.null_experts)
            if self.router_z_coef > 0:
                loss = loss + self.router_z_coef * router_z_loss(logits, token_mask)
        if penalty is not None:
            loss = loss + self.orthogonality_penalty * token_mean(penalty, token_mask)
        return loss


class MoELoRALinear(RoutedMixin, LoRALinear):
    """``y = W0 x + s · (Σ_s e_s + Σ_i g_i B_i A_i x)`` with ``g = route(x)`` (soft, top-k or top-p).

    - Shared expert (``AdapterConfig.shared_expert``, DeepSeekMoE): ``e_s = B_s A_s x`` with weight
      1 for every token, beside the routed experts; it is slot 0 of the final matmul
      (``LoRALinear.slot_inputs``), so it costs no separate matmul.
    - Null experts (``AdapterConfig.null_experts``, AdaMoE): see ``RoutedMixin`` and
      ``routing.real_expert_gates``; a null slot outputs nothing.
    - Orthogonality penalty (``AdapterConfig.orthogonality_penalty`` = λ): while training, the
      forward also records ``pen_t = mean_{i≠j active} cos²(e_i, e_j)`` per token, with the cosines
      from the rank-space Gram ``G_ij = a_iᵀ B_iᵀ B_j a_j`` (``orthogonal.expert_gram``: no e_i is
      formed) of the slots actually mixed (the shared expert included, dropout applied);
      ``aux_loss`` adds ``λ · mean_t pen_t`` over non-padding tokens.
    """

    method = "moe"

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, num_experts: int, layer_index: int | None = None):
        super().__init__(base_layer, config, num_experts, layer_index)
        self._init_router(self.in_features, num_experts, config, self.lora_A.device)
        self.orthogonality_penalty = float(config.orthogonality_penalty)
        if config.shared_expert:
            # created after the router so that configs without a shared expert draw the same init
            device = self.lora_A.device
            self.num_shared = 1
            self.shared_lora_A = nn.Parameter(torch.empty(1, self.rank, self.in_features, device=device))
            self.shared_lora_B = nn.Parameter(torch.empty(1, self.out_features, self.rank, device=device))
            init_lora(self.shared_lora_A, self.shared_lora_B, config.b_init_std)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.num_shared:
            init_lora(self.shared_lora_A, self.shared_lora_B, self.config.b_init_std)

    def slot_gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gates and active mask of every slot [..., S + E]: 1 and True for the shared expert."""
        gates, active = self.route_with_mask(x)
        if not self.num_shared:
            return gates, active
        ones = gates.new_ones(*gates.shape[:-1], self.num_shared)
        return torch.cat([ones, gates], dim=-1), torch.cat([ones.bool(), active], dim=-1)

    def penalty_per_token(self, a: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """``pen_t`` [...] from the slot inputs ``a`` [..., S + E, r] (``orthogonal.cosine_penalty``)."""
        slots = a.shape[-2]
        # a loss term, so float32 suffices (cos² near 1 needs no more); kept out of bf16 autocast
        with torch.autocast(device_type=a.device.type, enabled=False):
            gram = expert_gram(a.reshape(-1, slots, self.rank), self.slot_B(), torch.float32)
            penalty = cosine_penalty(gram, active.reshape(-1, slots))
        return penalty.reshape(a.shape[:-2])

    def mixing_weights(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        gates, active = self.slot_gates(x)
        if self.training and self.orthogonality_penalty > 0:
            self._penalty_record = self.penalty_per_token(a, active)
        return gates
