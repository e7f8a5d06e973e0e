"""Vanilla mixture of LoRA experts: a router mixes the experts' outputs."""
from __future__ import annotations

import torch
from torch import nn

from .config import AdapterConfig
from .lora import LoRALinear
from .routing import load_balancing_loss, router_z_loss, routing_gates


class MoELoRALinear(LoRALinear):
    """``y = W0 x + s · Σ_i g_i B_i A_i x`` with ``g = route(x)`` (soft, top-k or top-p).

    While training with a non-zero auxiliary-loss coefficient the layer keeps its last router
    logits and active mask on the side (never in its return value); ``aux_loss`` turns them into
    the load-balancing and z-losses, and ``omoe_lab.router_aux_loss`` sums them over the model.
    """

    method = "moe"

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, num_experts: int, layer_index: int | None = None):
        super().__init__(base_layer, config, num_experts, layer_index)
        self.top_k, self.top_p = config.top_k, config.top_p
        self.router = nn.Linear(self.in_features, num_experts, bias=False, device=self.lora_A.device)
        nn.init.normal_(self.router.weight, std=config.router_init_std)
        self.load_balance_coef = float(config.load_balance_coef)
        self.router_z_coef = float(config.router_z_coef)
        self._routing_record: tuple[torch.Tensor, torch.Tensor] | None = None

    def route_with_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gates [..., E] (float32) and active mask [..., E]; records logits for the aux losses."""
        logits = self.router(x.to(self.router.weight.dtype))
        gates, active = routing_gates(logits, self.top_k, self.top_p)
        if self.training and (self.load_balance_coef > 0 or self.router_z_coef > 0):
            self._routing_record = (logits, active)
        return gates, active

    def route(self, x: torch.Tensor) -> torch.Tensor:
        return self.route_with_mask(x)[0]

    def mixing_weights(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.route_with_mask(x)[0]

    def aux_loss(self, token_mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """``λ_lb · load_balance + λ_z · z_loss`` of the last recorded forward, then forget it."""
        if self._routing_record is None:
            return None
        logits, active = self._routing_record
        self._routing_record = None
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.load_balance_coef > 0:
            probs = torch.softmax(logits.float(), dim=-1)
            loss = loss + self.load_balance_coef * load_balancing_loss(probs, active, token_mask)
        if self.router_z_coef > 0:
            loss = loss + self.router_z_coef * router_z_loss(logits, token_mask)
        return loss
