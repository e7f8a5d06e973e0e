"""Routers: soft, top-k and top-p gates, and the router auxiliary losses.

``p = softmax(W_g x)`` is always computed in float32 (bf16 softmax is too coarse for gates).
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


def load_balancing_loss(
    probs: torch.Tensor, active: torch.Tensor, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch / Mixtral load-balancing loss ``E · Σ_i f_i · P_i`` over real (non-padding) tokens.

    ``f_i`` is the fraction of expert slots dispatched to expert i (sums to 1), ``P_i`` the mean
    router probability of expert i. It equals 1 for perfectly uniform routing and grows to E
    when every token goes to the same expert. Gradient flows through ``P`` only.
    """
    num_experts = probs.shape[-1]
    probs, active = probs.reshape(-1, num_experts), active.reshape(-1, num_experts).float()
    weight = _token_weights(token_mask, probs)
    dispatch = (active * weight).sum(0) / (active * weight).sum().clamp_min(1e-9)
    mean_prob = (probs * weight).sum(0) / weight.sum().clamp_min(1e-9)
    return num_experts * (dispatch * mean_prob).sum()


def router_z_loss(logits: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE router z-loss ``mean_t (logsumexp_i W_g x_t)²``: keeps router logits small."""
    num_experts = logits.shape[-1]
    logits = logits.float().reshape(-1, num_experts)
    weight = _token_weights(token_mask, logits).squeeze(-1)
    z = torch.logsumexp(logits, dim=-1) ** 2
    return (z * weight).sum() / weight.sum().clamp_min(1e-9)


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
