"""The maths: LoRA, vanilla MoE-LoRA, OMoE and rank-wise (SMoRA) layers that wrap an unmodified
linear, and MixLoRA's experts over whole gated MLP blocks (``ffn.MixLoRAFFN``)."""
from .config import FFN_METHODS, METHODS, ORTHOGONALIZE_MODES, AdapterConfig
from .ffn import MixLoRAFFN, is_gated_mlp
from .lora import LoRALinear, linear_shape
from .moe import MoELoRALinear
from .omoe import OMoELinear
from .orthogonal import cosine_penalty, expert_gram, gram_schmidt, gram_schmidt_weights
from .routing import (
    load_balancing_loss, mean_real_experts, real_expert_gates, router_z_loss, routing_gates,
)
from .smora import SMoRALinear

LAYER_CLASSES = {"lora": LoRALinear, "moe": MoELoRALinear, "omoe": OMoELinear, "mixlora": MixLoRAFFN, "omoe_mixlora": MixLoRAFFN,
                 "smora": SMoRALinear}

__all__ = [
    "AdapterConfig", "FFN_METHODS", "LAYER_CLASSES", "LoRALinear", "METHODS", "MixLoRAFFN", "MoELoRALinear",
    "OMoELinear", "ORTHOGONALIZE_MODES", "SMoRALinear", "cosine_penalty", "expert_gram", "gram_schmidt", "gram_schmidt_weights",
    "is_gated_mlp", "linear_shape", "load_balancing_loss", "mean_real_experts", "real_expert_gates",
    "router_z_loss", "routing_gates",
]
