"""Rank-wise experts (SMoRA): every rank-1 component of one LoRA is an expert, routed per token.

Zhao, Zhou et al., "Each Rank Could be an Expert: Single-Ranked Mixture of Experts LoRA for
Multi-Task Learning" (arXiv 2501.15103, 2025). For one token x, with ``A`` [E, d_in] (rows ``a_iᵀ``)
and ``B`` [d_out, E] (columns ``b_i``), E = the LoRA's total rank:

    y = W0 x + s · Σ_i g_i(x) (a_iᵀ x) b_i = W0 x + s · B diag(g(x)) A x,      s = alpha / 1,

with ``g = route(x)``: ``softmax(W_g x)`` in float32; top-k keeps the k largest and renormalizes
(``routing.routing_gates``). Under soft routing with uniform gates ``g_i = 1/E`` this is exactly a
LoRA of rank E with the same alpha (``(alpha/E) B A x``); under top-k with gates ≈ 1/k it is a LoRA
of the k chosen ranks at LoRA's own scaling ``alpha/k``. That is why the scaling is ``alpha / 1``:
the rank-1 experts follow the mixtures' convention (``alpha / rank`` per expert, then the gated sum).
"""
from __future__ import annotations

from torch import nn

from .config import AdapterConfig
from .moe import MoELoRALinear


class SMoRALinear(MoELoRALinear):
    """``y = W0 x + s · B diag(g(x)) A x``: a rank-E LoRA whose E rank-1 components are routed (SMoRA).

    Why a ``MoELoRALinear`` subclass: MoE-LoRA with rank-1 experts *is* this layer. Its forward is
    ``a = A x`` [..., E, 1], ``w ⊙ a`` with ``w = g``, then one matmul with ``B_cat`` [d_out, E]: the
    two matmuls of a rank-E LoRA, batched over the experts, with no Python loop over them, no host
    synchronization, and nothing per token wider than [tokens, E] besides the layer's input and
    output. Top-k zeroes the unselected ranks' gates rather than gathering them: gathering each
    token's k columns of B would form a [tokens, k, d_out] tensor, k times the output, to save a
    fraction of two thin matmuls. What the subclass adds is the method's name (saved configs, run
    labels, the PEFT export's refusal) and its rank-1 constraint, which ``AdapterConfig(method=
    "smora")`` checks (``rank=1``; ``num_experts`` = the LoRA's total rank).

    Routing: the lab's router (softmax, top-k or top-p, null experts allowed) with the Switch
    load-balancing and z-losses of every sparse arm, so a SMoRA arm differs from a MoE-LoRA arm
    with the same routing in the experts' granularity only. The paper balances the load instead with a per-rank bias added
    to the router logits for the selection and updated outside the gradient (auxiliary-loss-free
    balancing); that is not implemented here. A shared expert and the orthogonality penalty are
    refused by ``AdapterConfig`` (the penalty would be token-independent: ``cos(e_i, e_j) = ±cos(b_i, b_j)``).

    No orthogonal variant (no OMoE over rank-1 experts). A rank-1 expert's output
    ``e_i = (a_iᵀ x) b_i`` points along ``b_i`` for every token, so Gram–Schmidt over the active
    ``e_i`` is Gram–Schmidt over B's active columns times ``sign(a_iᵀ x)``:

    - ``"stiefel"``: ``q_k = sign(a_kᵀ x) b̂_k^⊥``; the output sees ``A x`` only through signs, so
      ``lora_A`` gets no gradient (zero almost everywhere) and the experts cannot learn what to read;
    - ``"orthogonal"`` / ``"norm_preserving"``: ``q_k = (a_kᵀ x) b_k^⊥`` (norm_preserving: times
      ``‖b_k‖/‖b_k^⊥‖``), with ``b_k^⊥`` the residual of ``b_k`` against the earlier active columns: linear
      again, the active columns of B orthogonalized per active set. That is a reparametrization of
      B (weight-space orthogonality), not a per-token diversification of expert outputs, which is
      OMoE's claim; a per-token Cholesky would be spent on what one QR of B per active set gives.

    ``tests/test_smora.py`` checks both statements on ``OMoELinear`` with rank 1 (docs/decisions.md).
    """

    method = "smora"

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, num_experts: int, layer_index: int | None = None):
        if config.rank != 1:  # AdapterConfig refuses it at construction; a field changed afterwards must not slip by
            raise ValueError(f"SMoRALinear has rank-1 experts; got a config with rank={config.rank}")
        super().__init__(base_layer, config, num_experts, layer_index)
