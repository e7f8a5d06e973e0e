"""OMoE: the active experts' outputs are orthogonalized per token before they are mixed."""
from __future__ import annotations

import torch
from torch import nn

from .config import AdapterConfig
from .moe import MoELoRALinear
from .orthogonal import expert_gram, gram_schmidt, gram_schmidt_weights


class OMoELinear(MoELoRALinear):
    """``y = W0 x + s · m · Σ_k g_k q_k`` with ``q_1..q_E`` from Gram–Schmidt over the active e_k.

    ``forward`` never forms the [tokens, E, d_out] expert outputs: Gram–Schmidt only needs their
    Gram matrix, which lives in rank space (``orthogonal.expert_gram``), and turns the gates into
    weights ``w`` with ``Σ_k g_k q_k = Σ_j w_j e_j`` (``orthogonal.gram_schmidt_weights``); the
    output is then ``s · m · B_cat (w ⊙ a)``, the same final matmul as vanilla MoE-LoRA.
    ``orthogonal_outputs`` is the materialized reference and must agree with it.

    Init (OMOE_SPEC §4): ``B`` small random, so every expert has a direction from step 0, and
    the learnable magnitude ``m`` (one scalar per layer) starts at 0, so the model starts as the
    base model. ``m`` gets a gradient at step 1, everything else from step 2.
    """

    method = "omoe"
    # precision of the Gram matrix and its factorizations (docs/decisions.md); MPS has no float64
    gram_dtype: torch.dtype = torch.float64

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, num_experts: int, layer_index: int | None = None):
        super().__init__(base_layer, config, num_experts, layer_index)
        self.orthogonalize = config.orthogonalize
        self.redundancy_tol = config.redundancy_tol
        self.magnitude = nn.Parameter(torch.zeros((), device=self.lora_A.device))

    def orthogonal_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """``q_k`` [..., E, d_out] by explicit Gram–Schmidt on the materialized experts (reference)."""
        gates, active = self.route_with_mask(x)
        return gram_schmidt(self.expert_outputs(x), active, self.orthogonalize, self.redundancy_tol)

    def mixing_weights(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        gates, active = self.route_with_mask(x)
        lead = a.shape[:-2]
        flat_a = a.reshape(-1, self.num_experts, self.rank)
        # the Gram and its factorizations run in float64 outside autocast: tiny, and precision-bound
        with torch.autocast(device_type=a.device.type, enabled=False):
            gram_dtype = torch.float32 if a.device.type == "mps" else self.gram_dtype
            gram = expert_gram(flat_a, self.lora_B, gram_dtype)
            weights = gram_schmidt_weights(
                gram,
                gates.reshape(-1, self.num_experts),
                active.reshape(-1, self.num_experts),
                self.orthogonalize,
                self.redundancy_tol,
            )
        return (self.magnitude * weights).reshape(*lead, self.num_experts)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", orthogonalize={self.orthogonalize}"
