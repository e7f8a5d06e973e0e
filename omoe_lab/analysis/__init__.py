"""Measure what the experts learned: capture their outputs, compare them, map them, check them.

Data flows capture → measures → figures (``omoe_lab.viz``). Evidence of diversity comes from the
raw expert outputs (cosine, CKA, effective rank, routing); the Stiefel error only checks that
OMoE's orthogonalization did its job (OMOE_SPEC §6). What collapse costs (``merging``): the
accuracy and output lost when a mixture is merged into one LoRA or loses one expert.
"""
from .capture import Captured, LayerCapture, capture_experts, reservoir_slots, select_layers
from .embedding import embed, tsne_perplexity
from .merging import collapse_cost
from .routing_stats import (
    effective_rank,
    expert_effective_rank,
    expert_load,
    routing_entropy,
    routing_summary,
    topk_frequency,
)
from .similarity import cka_matrix, linear_cka, mean_pairwise_cosine, median_distance, pairwise_cosine, rbf_cka
from .stiefel import assert_on_stiefel, default_stiefel_tolerance, direction_stiefel_error, stiefel_error, stiefel_error_per_token

__all__ = [
    "Captured", "LayerCapture", "assert_on_stiefel", "capture_experts", "collapse_cost", "cka_matrix", "default_stiefel_tolerance", "direction_stiefel_error",
    "effective_rank", "embed", "expert_effective_rank", "expert_load", "linear_cka", "mean_pairwise_cosine",
    "median_distance", "pairwise_cosine", "rbf_cka", "reservoir_slots", "routing_entropy", "routing_summary",
    "select_layers", "stiefel_error", "stiefel_error_per_token", "topk_frequency", "tsne_perplexity",
]
