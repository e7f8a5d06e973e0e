"""Routers: soft, top-k and top-p gates, null experts, and the router auxiliary losses.

``p = softmax(W_g x)`` is always computed in float32 (bf16 softmax is too coarse for gates).
With N null experts (AdaMoE) the router has E + N outputs ("slots"); the last N are null.
"""
from __future__ import annotations

import torch


def routing_gates(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gates ``g`` [..., E] (rows sum to 1) and the active mask [..., E] from router logits.

    - soft:  ``g = p`` and every expert is active;
    - top-k: keep the k largest ``p_i``, renormalize: ``g_i = p_i / Σ_{j∈topk} p_j``;
    - top-p: keep the smallest set of largest ``p_i`` whose mass reaches ``top_p``, renormalize.

    Unselected experts get ``g_i = 0`` and, since ``g`` is a masked product, zero gradient.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    if top_k is None and top_p is None:
        return probs, torch.ones_like(probs, dtype=torch.bool)
    if top_k is not None:
        selected = torch.topk(probs, top_k, dim=-1).indices
        active = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, selected, True)
    else:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # keep an expert if the mass strictly before it is still short of top_p: this includes
        # the expert that crosses the threshold, so at least one expert is always kept.
        keep_sorted = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) < top_p
        active = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * active
    return kept / kept.sum(dim=-1, keepdim=True), active


def real_expert_gates(
    gates: torch.Tensor, active: torch.Tensor, num_real: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gates and active mask of the ``num_real`` real experts from those of all E + N slots.

    AdaMoE (Zeng et al. 2024): top-k runs over the E real and N null slots; a null slot outputs
    nothing, so a token may use fewer than k real experts (none at all, too). The selected real
    experts' gates are renormalized among themselves, as AdaMoE's released code does:

        g_i = p_i / Σ_{j ∈ S ∩ real} p_j   for i ∈ S ∩ real,    0 otherwise,

    and a token that selected only null slots gets all-zero gates (its adapter output is 0). The
    null logits then reach the loss through the selection and the load-balancing loss only.
    """
    real_active = active[..., :num_real]
    kept = gates[..., :num_real]
    total = kept.sum(dim=-1, keepdim=True)
    # a division by 1 where no real expert was selected keeps the zero gates zero (no 0/0)
    return kept / torch.where(total > 0, total, torch.ones_like(total)), real_active


def mean_real_experts(active: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Average number of real experts a token uses, ``(1/T) Σ_t Σ_i active_ti``, over non-padding tokens.

    ``active`` [..., E] is the real experts' mask (``route_with_mask``'s, or ``LayerCapture.active``):
    k under plain top-k, E under soft routing, between 0 and k with null experts.
    """
    flat = active.reshape(-1, active.shape[-1]).float()
    weight = _token_weights(token_mask, flat)
    return (flat * weight).sum() / weight.sum().clamp_min(1e-9)


def load_balancing_loss(
    probs: torch.Tensor, active: torch.Tensor, token_mask: torch.Tensor | None = None, null_experts: int = 0
) -> torch.Tensor:
    """Switch / Mixtral load-balancing loss ``E · Σ_i f_i · P_i`` over real (non-padding) tokens.

    ``f_i`` is the fraction of expert slots dispatched to expert i (sums to 1), ``P_i`` the mean
    router probability of expert i. It equals 1 for perfectly uniform routing and grows to E
    when every token goes to the same expert. Gradient flows through ``P`` only.

    With ``null_experts = N`` (the last N of the E' = E + N slots), the null experts are one group:
    they are interchangeable, so only their total use is balanced against the real experts',
    ``f_i, P_i ← mean_{j ∈ null} f_j, mean_{j ∈ null} P_j`` for each null i, then ``E' · Σ_i f_i P_i``
    (AdaMoE's intent; the line of its released code that does this slices the wrong axis and
    changes nothing).
    """
    num_experts = probs.shape[-1]
    probs, active = probs.reshape(-1, num_experts), active.reshape(-1, num_experts).float()
    weight = _token_weights(token_mask, probs)
    dispatch = (active * weight).sum(0) / (active * weight).sum().clamp_min(1e-9)
    mean_prob = (probs * weight).sum(0) / weight.sum().clamp_min(1e-9)
    if null_experts:
        dispatch, mean_prob = _pool_null(dispatch, null_experts), _pool_null(mean_prob, null_experts)
    return num_experts * (dispatch * mean_prob).sum()


def _pool_null(values: torch.Tensor, null_experts: int) -> torch.Tensor:
    """Replace the last ``null_experts`` entries of a per-slot vector by their mean."""
    real, null = values[:-null_experts], values[-null_experts:]
    return torch.cat([real, null.mean().expand(null_experts)])


def router_z_loss(logits: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE router z-loss ``mean_t (logsumexp_i W_g x_t)²``: keeps router logits small."""
    num_experts = logits.shape[-1]
    logits = logits.float().reshape(-1, num_experts)
    weight = _token_weights(token_mask, logits).squeeze(-1)
    z = torch.logsumexp(logits, dim=-1) ** 2
    return (z * weight).sum() / weight.sum().clamp_min(1e-9)


def token_mean(values: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of per-token ``values`` [...] over non-padding tokens (all tokens without a mask)."""
    flat = values.reshape(-1, 1).float()
    weight = _token_weights(token_mask, flat)
    return (flat * weight).sum() / weight.sum().clamp_min(1e-9)


def _token_weights(token_mask: torch.Tensor | None, flat: torch.Tensor) -> torch.Tensor:
    """[N, 1] float weights: 1 for real tokens, 0 for padding (all ones without a mask)."""
    if token_mask is None:
        return torch.ones(flat.shape[0], 1, device=flat.device)
    if token_mask.numel() != flat.shape[0]:
        raise ValueError(
            f"token mask has {token_mask.numel()} entries but the router saw {flat.shape[0]} tokens; "
            "pass the attention mask of the batch that was just run through the model"
        )
    return token_mask.reshape(-1, 1).to(device=flat.device, dtype=torch.float32)
