"""omoe_lab: Orthogonal Mixture-of-Experts LoRA for any Hugging Face causal LM.

>>> model = omoe_lab.attach_adapters(model, omoe_lab.AdapterConfig(method="omoe", num_experts=4))
"""
__version__ = "0.1.0"

from .adapters import AdapterConfig, LoRALinear, MixLoRAFFN, MoELoRALinear, OMoELinear, SMoRALinear  # noqa: E402
from .inject import (  # noqa: E402
    adapter_layers,
    attach_adapters,
    detach_adapters,
    load_adapters,
    router_aux_loss,
    save_adapters,
    trainable_parameters,
)
from .export import export_peft, load_peft_lora  # noqa: E402

__all__ = [
    "AdapterConfig", "LoRALinear", "MixLoRAFFN", "MoELoRALinear", "OMoELinear", "SMoRALinear", "adapter_layers", "attach_adapters",
    "detach_adapters", "export_peft", "load_adapters", "load_peft_lora", "router_aux_loss", "save_adapters",
    "trainable_parameters",
]
