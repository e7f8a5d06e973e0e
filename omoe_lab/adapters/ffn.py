"""MixLoRA: a mixture of experts over whole gated MLP blocks, and its OMoE variant.

MixLoRA (Li et al. 2024, arXiv 2404.15159; the OMoE paper's main baseline, 8 experts, top-2)
puts one router in front of each Llama-style gated MLP ``FFN(x) = W_d (σ(W_g x) ⊙ W_u x)``.
Expert i is that frozen FFN with its own LoRA on the gate, up and down projections, the
nonlinearity inside the expert. For one token x (``s = alpha / r``, LoRA dropout left out):

    gᵢ = W_g x + s B^gᵢ A^gᵢ x,     uᵢ = W_u x + s B^uᵢ A^uᵢ x,     hᵢ = σ(gᵢ) ⊙ uᵢ,
    yᵢ = W_d hᵢ + s B^dᵢ A^dᵢ hᵢ,    h₀ = σ(W_g x) ⊙ W_u x,          FFN(x) = W_d h₀,

and with the top-k gates πᵢ (``Σ_{i∈S} πᵢ = 1`` over the selected set S)

    mixlora:       y = Σ_{i∈S} πᵢ yᵢ = W_d (h₀ + Σ_{i∈S} πᵢ (hᵢ − h₀)) + s Σ_{i∈S} πᵢ B^dᵢ A^dᵢ hᵢ,
    omoe_mixlora:  y = FFN(x) + m · Σ_{i∈S} πᵢ qᵢ,   q = Gram–Schmidt(Δ_S),   Δᵢ = yᵢ − FFN(x).

The second form of ``mixlora`` is the first by linearity of ``W_d``: the frozen down projection
runs once per token on the mixed hidden state, not once per selected expert. ``omoe_mixlora``
orthogonalizes each selected expert's *change* ``Δᵢ = W_d (hᵢ − h₀) + s B^dᵢ A^dᵢ hᵢ`` of the
FFN output, not the whole outputs ``yᵢ``: those are all ``FFN(x)`` plus a small change, so their
Gram–Schmidt would keep one copy of ``FFN(x)`` and break "start = base". As in OMoE (OMOE_SPEC
§4), its B starts small and random and the magnitude ``m`` (one scalar per block) starts at 0.

Cost, for T tokens, K selected slots per token (K = top_k, or E under soft routing):
- the frozen gate/up projections run once for all T tokens; the selected experts' hidden
  states ``hᵢ`` [T, K, f] are inherent to the architecture (the nonlinearity is per expert);
- no per-expert Python loop and no host sync (MixLoRA loops over experts with ``torch.where``):
  the per-slot LoRAs ``B_{e_p} A_{e_p} v_p`` are batched as one matmul with every expert's A
  (``[T, K, E, r]``) and a one-hot mask over the expert axis. The only E-wide tensors are these
  rank-space ones (``E·r`` against the FFN width f, as MoE-LoRA's ``[T, E, r]``); the extra
  LoRA FLOPs are ``(E − 1)/E`` of the LoRA part — k·(E−1)·r/d of the frozen FFN's FLOPs
  (19 % for SmolLM2-135M at E = 8, r = 8, top-2; 5 % for LLaMA-2 7B at r = 16). No tensor of
  size E × f or E × d per token exists in the forward;
- ``mixlora`` runs the frozen down projection once per token; ``omoe_mixlora`` runs it on the
  K changes too (it needs each ``Δᵢ`` in output space).

Null experts (AdaMoE) fit in: a null slot is "the frozen FFN, unchanged" (``Δ = 0``), so a token
may change fewer FFN experts. The slots are static (K per token), so a null slot still costs a
real one here; AdaMoE's FLOP savings would need a dynamic dispatch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import AdapterConfig
from .lora import init_lora, linear_shape
from .moe import RoutedMixin
from .orthogonal import check_resolvable_tol, gram_schmidt, gram_schmidt_weights, resolvable_tol, round_up

GATED_MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def is_gated_mlp(module: nn.Module) -> bool:
    """A Llama-style gated MLP: ``gate_proj``, ``up_proj``, ``down_proj`` linears and an ``act_fn``
    (Llama, Mistral, Qwen2/3, Gemma, SmolLM). Fused projections (Phi-3's gate_up_proj) do not count."""
    return all(isinstance(getattr(module, name, None), nn.Linear) for name in GATED_MLP_PROJECTIONS) and callable(
        getattr(module, "act_fn", None)
    )


class MixLoRAFFN(RoutedMixin, nn.Module):
    """Replaces one gated MLP block: E LoRA experts over the whole FFN, top-k routed (module docstring).

    Parameters: ``lora_A[p]`` [E, r, d_in(p)], ``lora_B[p]`` [E, d_out(p), r] for each adapted
    projection p of gate_proj / up_proj / down_proj (``AdapterConfig.target_modules``), the
    ``router`` [E + N, d], and for ``omoe_mixlora`` the ``magnitude`` m. The frozen MLP stays
    as ``base_layer``.

    For the analysis, which pairs gates with expert outputs, ``expert_outputs(x)`` returns every
    expert's change ``Δᵢ`` [..., E, d] (materialized), and ``orthogonal_outputs(x)`` their
    Gram–Schmidt over the active experts, which is also the reference of the batched forward.
    """

    method = "mixlora"
    # precision of the Gram of the changes (as OMoELinear's; MPS has no float64 and uses float32)
    gram_dtype: torch.dtype = torch.float64

    def __init__(
        self,
        base_layer: nn.Module,
        config: AdapterConfig,
        num_experts: int,
        layer_index: int | None = None,
        projections: tuple[str, ...] = GATED_MLP_PROJECTIONS,
    ):
        super().__init__()
        if not is_gated_mlp(base_layer):
            raise TypeError(
                f"MixLoRAFFN wraps a Llama-style gated MLP (gate_proj, up_proj, down_proj linears and act_fn), "
                f"not {type(base_layer).__name__}"
            )
        unknown = sorted(set(projections) - set(GATED_MLP_PROJECTIONS))
        if unknown or not projections:
            raise ValueError(f"projections must be a non-empty subset of {list(GATED_MLP_PROJECTIONS)}, got {list(projections)}")
        hidden, intermediate = linear_shape(base_layer.gate_proj)
        if linear_shape(base_layer.up_proj) != (hidden, intermediate) or linear_shape(base_layer.down_proj) != (intermediate, hidden):
            raise ValueError(f"{type(base_layer).__name__}: gate_proj, up_proj and down_proj shapes do not form a gated MLP")
        if config.rank > min(hidden, intermediate):
            raise ValueError(
                f"rank={config.rank} exceeds min(d_in, d_out) = {min(hidden, intermediate)} of this layer; choose a smaller rank"
            )
        self.base_layer = base_layer
        self.config = config
        self.method = config.method
        self.num_experts, self.rank, self.scaling = num_experts, config.rank, config.scaling
        self.in_features = self.out_features = hidden
        self.intermediate_size = intermediate
        self.layer_index = layer_index
        self.projections = tuple(p for p in GATED_MLP_PROJECTIONS if p in projections)  # canonical order
        device = base_layer.gate_proj.weight.device
        self.lora_A, self.lora_B = nn.ParameterDict(), nn.ParameterDict()
        for name in self.projections:
            d_in, d_out = linear_shape(getattr(base_layer, name))
            self.lora_A[name] = nn.Parameter(torch.empty(num_experts, self.rank, d_in, device=device))
            self.lora_B[name] = nn.Parameter(torch.empty(num_experts, d_out, self.rank, device=device))
            init_lora(self.lora_A[name], self.lora_B[name], config.b_init_std)
        self._init_router(hidden, num_experts, config, device)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.orthogonalize = config.orthogonalize
        self.redundancy_tol = config.redundancy_tol
        if self.orthogonalize is not None:
            self.magnitude = nn.Parameter(torch.zeros((), device=device))
            self.check_gram_precision(device)

    @property
    def lora_dtype(self) -> torch.dtype:
        return next(iter(self.lora_A.values())).dtype

    def check_gram_precision(self, device: torch.device) -> torch.dtype:
        """The Gram dtype on ``device``; a ValueError if it cannot resolve ``redundancy_tol``."""
        gram_dtype = torch.float32 if device.type == "mps" else self.gram_dtype
        floor = round_up(resolvable_tol(gram_dtype))
        check_resolvable_tol(self.redundancy_tol, gram_dtype, f"use a float64 Gram, or set redundancy_tol >= {floor:.2g}")
        return gram_dtype

    # --- the maths ---------------------------------------------------------------------------
    def selected_slots(self, gates: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The K slots of every token: expert ids [T, K] in ascending order, live mask, gates.

        K = top_k (soft routing: E). The active real experts come first, in index order (the
        Gram–Schmidt order of OMOE_SPEC §2); a slot is not live when the token chose fewer real
        experts (null experts), and then has gate 0 and no LoRA. A stable sort of ``~active``
        finds them without a data-dependent shape.
        """
        slots = self.top_k if self.top_k is not None else self.num_experts
        order = torch.argsort((~active).to(torch.int8), dim=-1, stable=True)[..., :slots]
        live = active.gather(-1, order)
        return order, live, gates.gather(-1, order) * live

    def _slot_lora(self, name: str, inputs: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        """``s · B_{e_p} A_{e_p} v_p`` for every slot p = (t, k): [T, K, d_out(name)].

        ``inputs`` is [T, d_in] (the token, shared by its K slots) or [T, K, d_in]. Every expert's
        ``A v`` is computed (rank space, [..., E, r]); the one-hot ``one_hot`` [T, K, E] keeps the
        slot's own expert, so one matmul with ``B_cat`` [E·r, d_out] gives each slot its expert's B.
        """
        a = torch.einsum("...d,erd->...er", inputs, self.lora_A[name])
        if a.dim() == 3:  # one A x per token, the same for its K slots
            a = a.unsqueeze(1)
        return self.scaling * torch.einsum("tker,eor->tko", one_hot.unsqueeze(-1) * a, self.lora_B[name])

    def _hidden_states(self, x: torch.Tensor, experts: torch.Tensor, live: torch.Tensor):
        """``h_p`` [T, K, f] of every slot, ``h₀`` [T, f], and the one-hot of the slots' experts."""
        base = self.base_layer
        one_hot = F.one_hot(experts, self.num_experts).to(self.lora_dtype) * live.unsqueeze(-1)
        x_lora = self.dropout(x.to(self.lora_dtype))
        gate0, up0 = base.gate_proj(x), base.up_proj(x)  # frozen, once for all tokens
        gate, up = gate0.unsqueeze(1), up0.unsqueeze(1)
        if "gate_proj" in self.projections:
            gate = gate + self._slot_lora("gate_proj", x_lora, one_hot).to(gate0.dtype)
        if "up_proj" in self.projections:
            up = up + self._slot_lora("up_proj", x_lora, one_hot).to(up0.dtype)
        hidden = (base.act_fn(gate) * up).expand(-1, experts.shape[-1], -1)
        return hidden, base.act_fn(gate0) * up0, one_hot

    def _down_lora_inputs(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Every expert's ``A^d dropout(h_p)`` [T, K, E, r] (rank space), or None without a down LoRA."""
        if "down_proj" not in self.projections:
            return None
        return torch.einsum("tkf,erf->tker", self.dropout(hidden.to(self.lora_dtype)), self.lora_A["down_proj"])

    def _changes(self, hidden, hidden0, one_hot) -> torch.Tensor:
        """``Δ_p = W_d (h_p − h₀) + s B^d A^d h_p`` [T, K, d]: each slot's change of the FFN output
        (the frozen down projection's bias cancels, so only its weight is applied)."""
        delta = F.linear(hidden - hidden0.unsqueeze(1), self.base_layer.down_proj.weight)
        a_down = self._down_lora_inputs(hidden)
        if a_down is not None:
            lora = self.scaling * torch.einsum("tker,eor->tko", one_hot.unsqueeze(-1) * a_down, self.lora_B["down_proj"])
            delta = delta + lora.to(delta.dtype)
        return delta

    def ffn_output(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output [T, d] for flat tokens x [T, d] (see the module docstring)."""
        gates, active = self.route_with_mask(x)
        experts, live, weights = self.selected_slots(gates, active)
        hidden, hidden0, one_hot = self._hidden_states(x, experts, live)
        if self.orthogonalize is None:
            mix = weights.to(hidden.dtype)
            mixed = hidden0 + torch.einsum("tk,tkf->tf", mix, hidden - hidden0.unsqueeze(1))
            out = self.base_layer.down_proj(mixed)  # once per token, by linearity of W_d
            a_down = self._down_lora_inputs(hidden)
            if a_down is not None:
                mixed_a = torch.einsum("tk,tke,tker->ter", mix.to(a_down.dtype), one_hot, a_down)  # [T, E, r]
                out = out + (self.scaling * torch.einsum("ter,eor->to", mixed_a, self.lora_B["down_proj"])).to(out.dtype)
            return out
        delta = self._changes(hidden, hidden0, one_hot)
        out0 = self.base_layer.down_proj(hidden0)
        gram_dtype = self.check_gram_precision(x.device)
        # the Gram, its factorizations and w ⊙ Δ in the Gram's dtype, outside autocast (as OMoELinear)
        with torch.autocast(device_type=x.device.type, enabled=False):
            wide = delta.to(gram_dtype)
            gram = wide @ wide.transpose(-1, -2)  # [T, K, K], batched over tokens
            w = gram_schmidt_weights(gram, weights, live, self.orthogonalize, self.redundancy_tol)
            change = self.magnitude.to(gram_dtype) * torch.einsum("tk,tkd->td", w, wide)
        return out0 + change.to(out0.dtype)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} takes floating-point hidden states, got {x.dtype}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: the input's last dimension is {x.shape[-1]}, but this block takes "
                             f"{self.in_features} features; pass [..., {self.in_features}] activations")
        return self.ffn_output(x.reshape(-1, x.shape[-1])).reshape(x.shape)

    # --- materialized views (analysis and references) -----------------------------------------
    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert's change ``Δᵢ = yᵢ − FFN(x)`` [..., E, d] for every token (E× memory: analysis only)."""
        flat = x.reshape(-1, x.shape[-1])
        experts = torch.arange(self.num_experts, device=x.device).expand(flat.shape[0], -1)
        live = torch.ones_like(experts, dtype=torch.bool)
        delta = self._changes(*self._hidden_states(flat, experts, live))
        return delta.reshape(*x.shape[:-1], self.num_experts, -1)

    def orthogonal_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """``q_i`` [..., E, d]: explicit Gram–Schmidt of the active experts' changes (reference;
        ``omoe_mixlora`` only)."""
        if self.orthogonalize is None:
            raise ValueError("orthogonal_outputs is for method='omoe_mixlora'; this block does not orthogonalize")
        gates, active = self.route_with_mask(x, record=False)
        return gram_schmidt(self.expert_outputs(x), active, self.orthogonalize, self.redundancy_tol)

    def extra_repr(self) -> str:
        return (
            f"method={self.method}, hidden={self.in_features}, intermediate={self.intermediate_size}, "
            f"experts={self.num_experts}, null_experts={self.null_experts}, top_k={self.top_k}, rank={self.rank}, "
            f"scaling={self.scaling:g}, projections={list(self.projections)}, orthogonalize={self.orthogonalize}"
        )
