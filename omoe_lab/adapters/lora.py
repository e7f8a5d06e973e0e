"""LoRA, stored the way every mixture here stores its experts: batched over an expert axis."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import AdapterConfig


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(d_in, d_out)`` of an ``nn.Linear`` or a transformers ``Conv1D`` (GPT-2's transposed linear)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        d_in, d_out = module.weight.shape
        return d_in, d_out
    raise TypeError(f"adapters wrap nn.Linear (or transformers Conv1D), not {type(module).__name__}")


def init_lora(lora_A: torch.Tensor, lora_B: torch.Tensor, b_init_std: float | None) -> None:
    """``A ~ U(±1/√d_in)`` (Kaiming-uniform, as in LoRA; ``d_in`` = A's last dimension);
    ``B ~ N(0, b_init_std²)``, or ``B = 0`` when ``b_init_std`` is 0 or None (the adapter starts at zero)."""
    bound = 1.0 / math.sqrt(lora_A.shape[-1])
    nn.init.uniform_(lora_A, -bound, bound)
    if b_init_std:
        nn.init.normal_(lora_B, std=b_init_std)
    else:
        nn.init.zeros_(lora_B)


def project(x: torch.Tensor, lora_A: torch.Tensor) -> torch.Tensor:
    """``A_i x`` for every expert i: [..., d_in] × [E, r, d_in] → [..., E, r], as one matmul with the
    stacked ``A`` ([E·r, d_in], a view of the parameter); the einsum over ``e`` it replaces ran as a
    batched matmul, 9 % slower for a LoRA at 4096 tokens × 2048 (forward + backward, 2 CPU threads)."""
    num_experts, rank, d_in = lora_A.shape
    return (x @ lora_A.reshape(num_experts * rank, d_in).T).unflatten(-1, (num_experts, rank))


class LoRALinear(nn.Module):
    """``y = W0 x + s · Σ_i w_i B_i A_i x`` over E rank-r experts; plain LoRA is E = 1, w = 1.

    Parameters are batched and plainly named: ``lora_A`` [E, r, d_in], ``lora_B`` [E, d_out, r],
    ``scaling`` = alpha / r. The frozen ``base_layer`` is kept unmodified. Subclasses only change
    the mixing weights ``w`` (a router for MoE-LoRA, Gram–Schmidt for OMoE); the expensive work
    is always two matmuls of a rank-(E·r) LoRA.

    *Slots*: the experts the final matmul mixes. They are the E routed experts, preceded by the
    ``num_shared`` shared experts (0 or 1, ``shared_lora_A`` / ``shared_lora_B``, MoE subclasses
    only) when there are any; ``expert_outputs`` and the gates stay those of the routed experts,
    which is what the analysis pairs.
    """

    method = "lora"
    num_shared = 0  # MoELoRALinear sets 1 with AdapterConfig(shared_expert=True)

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, num_experts: int = 1, layer_index: int | None = None):
        super().__init__()
        d_in, d_out = linear_shape(base_layer)
        if config.rank > min(d_in, d_out):
            raise ValueError(
                f"rank={config.rank} exceeds min(d_in, d_out) = {min(d_in, d_out)} of this layer; "
                "choose a smaller rank"
            )
        self.base_layer = base_layer
        self.config = config
        self.num_experts, self.rank, self.scaling = num_experts, config.rank, config.scaling
        self.in_features, self.out_features = d_in, d_out
        self.layer_index = layer_index
        device = next(base_layer.parameters()).device
        self.lora_A = nn.Parameter(torch.empty(num_experts, config.rank, d_in, device=device))
        self.lora_B = nn.Parameter(torch.empty(num_experts, d_out, config.rank, device=device))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A ~ U(±1/√d_in) (Kaiming-uniform, as in LoRA); B = 0, so the adapter starts at zero,
        unless ``config.b_init_std`` asks for a random B."""
        init_lora(self.lora_A, self.lora_B, self.config.b_init_std)

    # --- the maths, per token -------------------------------------------------------------
    def expert_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``a_i = A_i x``: [..., d_in] → [..., E, r]."""
        return project(x.to(self.lora_A.dtype), self.lora_A)

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Gates [..., E]; a single LoRA always uses its one expert."""
        return torch.ones(*x.shape[:-1], self.num_experts, device=x.device)

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Raw expert outputs ``e_i = B_i A_i x``: [..., E, d_out] (materialized: analysis only)."""
        return torch.einsum("...er,eor->...eo", self.expert_inputs(x), self.lora_B)

    # --- slots: shared experts first, then the routed ones --------------------------------------
    def slot_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``a`` of every slot [..., S + E, r]: the shared experts' ``A_s x``, then the routed ``A_i x``."""
        a = self.expert_inputs(x)
        if not self.num_shared:
            return a
        shared = project(x.to(self.lora_A.dtype), self.shared_lora_A)
        return torch.cat([shared, a], dim=-2)

    def slot_B(self) -> torch.Tensor:
        """``B`` of every slot [S + E, d_out, r], in the order of ``slot_inputs``."""
        return self.lora_B if not self.num_shared else torch.cat([self.shared_lora_B, self.lora_B])

    def slot_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs of every slot [..., S + E, d_out] (materialized: references and analysis only)."""
        return torch.einsum("...er,eor->...eo", self.slot_inputs(x), self.slot_B())

    def mixing_weights(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor | None:
        """Per-token weights w [..., S + E] of the slots in the output (None: all ones)."""
        return None

    def mixed_inputs(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """``w ⊙ a`` [..., S + E, r], what the final matmul with ``B_cat`` mixes."""
        weights = self.mixing_weights(x, a)
        return a if weights is None else a * weights.to(a.dtype).unsqueeze(-1)

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        """The added term ``s · Σ_i w_i B_i a_i`` = ``s · B_cat (w ⊙ a)``, without forming any e_i.

        The sum runs over the slots: a shared expert is one more column block of ``B_cat``, so it
        costs no extra matmul. Dropout acts on the experts' input only, ``a_i = A_i dropout(x)``;
        the router sees the clean ``x`` (as in MixLoRA and PEFT-style mixtures), so the gates of a
        training step are exactly ``route(x)``. OMoE's Gram is that of the dropped-out ``a``: the
        outputs actually mixed.
        """
        mixed, b_cat = self.adapter_terms(x)
        return self.scaling * (mixed @ b_cat.T)

    def adapter_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w ⊙ a, B_cat)``: [..., (S + E)·r] and [d_out, (S + E)·r], whose product is the added term."""
        x = x.to(self.lora_A.dtype)
        a = self.mixed_inputs(x, self.slot_inputs(self.dropout(x)))
        b = self.slot_B()
        b_cat = b.permute(1, 0, 2).reshape(b.shape[1], -1)  # [d_out, (S + E)·r]: a small copy of the weights
        return a.flatten(-2), b_cat

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # shape and dtype are Python-level facts: checking them costs no host synchronization
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} takes floating-point hidden states, got {x.dtype}: pass the embeddings "
                            "or a block's activations, not token ids")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: the input's last dimension is {x.shape[-1]}, but this layer takes "
                             f"{self.in_features} features; pass [..., {self.in_features}] activations")
        result = self.base_layer(x, *args, **kwargs)
        mixed, b_cat = self.adapter_terms(x)
        if result.dtype == mixed.dtype == b_cat.dtype and not torch.is_autocast_enabled(result.device.type):
            # W0 x + s·(w⊙a) B_catᵀ as one addmm: the product, its scaling and the sum each wrote a
            # fresh [tokens, d_out] tensor, 10× the time of the rank-(E·r) matmul itself on a CPU
            out = torch.addmm(result.reshape(-1, self.out_features), mixed.reshape(-1, mixed.shape[-1]), b_cat.T,
                              alpha=self.scaling)
            return out.view(result.shape)
        return result + (self.scaling * (mixed @ b_cat.T)).to(result.dtype)

    def extra_repr(self) -> str:
        return (
            f"method={self.method}, in={self.in_features}, out={self.out_features}, "
            f"experts={self.num_experts}, rank={self.rank}, scaling={self.scaling:g}"
        )
