"""The maths: LoRA, vanilla MoE-LoRA and OMoE layers that wrap an unmodified linear."""
from .config import METHODS, ORTHOGONALIZE_MODES, AdapterConfig
from .lora import LoRALinear, linear_shape
from .moe import MoELoRALinear
from .omoe import OMoELinear
from .orthogonal import expert_gram, gram_schmidt, gram_schmidt_weights
from .routing import load_balancing_loss, router_z_loss, routing_gates

LAYER_CLASSES = {"lora": LoRALinear, "moe": MoELoRALinear, "omoe": OMoELinear}

__all__ = [
    "AdapterConfig", "LAYER_CLASSES", "LoRALinear", "METHODS", "MoELoRALinear", "OMoELinear",
    "ORTHOGONALIZE_MODES", "expert_gram", "gram_schmidt", "gram_schmidt_weights", "linear_shape",
    "load_balancing_loss", "router_z_loss", "routing_gates",
]
