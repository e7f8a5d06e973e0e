"""Reference solutions of the notebooks' exercises, written the way a learner would write them.

Plain torch, no library calls: ``show_solution("2.2")`` prints one of these, and
``OMOE_LAB_SOLUTIONS=1`` puts them in place of the notebooks' stubs. Each passes its checker
(``tests/test_exercises.py``), which compares it with the library's own implementation.
"""
from __future__ import annotations

import itertools
import math

import torch


# --- 00_tour -------------------------------------------------------------------------------

def lora_forward_by_hand(x, W0, A, B, scaling):
    """Exercise 0.1: ``y = W0 x + s·B A x`` for every token (the rows of x)."""
    return x @ W0.T + scaling * (x @ A.T) @ B.T


def adapter_parameters_by_hand(method, d_in, d_out, num_experts, rank):
    """Exercise 0.2: trainable parameters one adapter adds to a d_in → d_out linear."""
    one_lora = rank * d_in + d_out * rank          # A [r, d_in] and B [d_out, r]
    if method == "lora":
        return one_lora
    router = num_experts * d_in                    # W_g [E, d_in], no bias
    magnitude = 1 if method == "omoe" else 0       # OMoE's one scalar m per layer
    return num_experts * one_lora + router + magnitude


# --- 01_collapse ---------------------------------------------------------------------------

def mean_abs_cosine_by_hand(e):
    """Exercise 1.1: mean over tokens and expert pairs i ≠ j of |cos(e_ti, e_tj)|, e [T, E, d]."""
    unit = e / e.norm(dim=-1, keepdim=True)
    cosines = (unit @ unit.mT).abs()                         # [T, E, E]
    off_diagonal = ~torch.eye(e.shape[1], dtype=torch.bool)
    return cosines[:, off_diagonal].mean().item()


def linear_cka_by_hand(X, Y):
    """Exercise 1.2: ‖XᵀY‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) after centering X [T, d1] and Y [T, d2] over tokens."""
    X, Y = X - X.mean(dim=0), Y - Y.mean(dim=0)
    return ((X.T @ Y).norm() ** 2 / ((X.T @ X).norm() * (Y.T @ Y).norm())).item()


def effective_rank_by_hand(matrix):
    """Exercise 1.3: exp of the entropy of the normalized singular values (Roy & Vetterli 2007)."""
    singular_values = torch.linalg.svdvals(matrix.double())
    p = singular_values / singular_values.sum()
    entropy = -torch.special.xlogy(p, p).sum()              # xlogy(0, 0) = 0: zero singular values add nothing
    return math.exp(entropy.item())


# --- 02_gram_schmidt -----------------------------------------------------------------------

def stiefel_error_by_hand(q, active=None):
    """Exercise 2.1: the worst token's ‖Q Qᵀ − diag(active)‖_F for q [..., E, d], in float64."""
    q = q.double()                                           # measure q's error, not float32's round-off
    if active is None:
        target = torch.eye(q.shape[-2], dtype=torch.float64)
    else:
        target = torch.diag_embed(active.double())
    gram = q @ q.mT                                          # [..., E, E]: the rows are the experts
    return torch.linalg.matrix_norm(gram - target).max().item()


def gram_schmidt_by_hand(e, mode="stiefel", tol=1e-4):
    """Exercise 2.2: modified Gram–Schmidt, twice, over the experts of e [..., E, d], in index order.

    An expert whose residual is at most ``tol·‖e_k‖`` is redundant: q_k = 0, and it takes no part
    in later projections. ``mode`` sets the length: 1, ‖u_k‖ or ‖e_k‖.
    """
    directions, outputs = [], []
    for k in range(e.shape[-2]):
        e_k = e[..., k, :]
        u = e_k
        for _ in range(2):                                   # the second pass removes the round-off of the first
            for q_j in directions:
                u = u - (u * q_j).sum(-1, keepdim=True) * q_j
        norm_u, norm_e = u.norm(dim=-1, keepdim=True), e_k.norm(dim=-1, keepdim=True)
        live = norm_u > tol * norm_e                         # relative: the experts' scale does not matter
        q_hat = torch.where(live, u / torch.where(live, norm_u, 1.0), 0.0)
        directions.append(q_hat)                             # a redundant expert adds a zero direction
        length = {"stiefel": 1.0, "orthogonal": norm_u, "norm_preserving": norm_e}[mode]
        outputs.append(q_hat * length)
    return torch.stack(outputs, dim=-2)


# --- 03_lora_to_moe ------------------------------------------------------------------------

def moe_lora_forward_by_hand(x, W0, A, B, W_g, scaling):
    """Exercise 3.1: ``y = W0 x + s Σ_i g_i B_i A_i x`` with soft gates ``g = softmax(W_g x)``."""
    gates = torch.softmax(x @ W_g.T, dim=-1)                 # [..., E]
    a = torch.einsum("...d,erd->...er", x, A)                # a_i = A_i x      [..., E, r]
    e = torch.einsum("...er,eor->...eo", a, B)               # e_i = B_i a_i    [..., E, d_out]
    return x @ W0.T + scaling * (gates[..., None] * e).sum(dim=-2)


def top_k_gates_by_hand(logits, k):
    """Exercise 3.2: softmax, keep the k largest probabilities of each token, renormalize."""
    p = torch.softmax(logits.float(), dim=-1)
    chosen = p.topk(k, dim=-1).indices                       # exactly k, ties included
    keep = torch.zeros_like(p, dtype=torch.bool).scatter(-1, chosen, True)
    kept = p * keep
    return kept / kept.sum(dim=-1, keepdim=True)


def load_balancing_loss_by_hand(probs, active, token_mask=None):
    """Exercise 3.3: ``E Σ_i f_i P_i`` over the real tokens (token_mask 1), padding left out."""
    num_experts = probs.shape[-1]
    probs = probs.reshape(-1, num_experts)
    active = active.reshape(-1, num_experts).float()
    weight = torch.ones(len(probs)) if token_mask is None else token_mask.reshape(-1).float()
    slots = active * weight[:, None]
    f = slots.sum(0) / slots.sum()                           # share of the routed slots: sums to 1
    P = (probs * weight[:, None]).sum(0) / weight.sum()      # mean router probability
    return num_experts * (f * P).sum()


# --- 04_finetune_real ---------------------------------------------------------------------

def permutation_p_by_hand(correct_a, correct_b):
    """Exercise 4.1: exact two-sided paired permutation test over questions, the question as the unit.

    ``correct_a``/``correct_b``: one 0/1 list per seed (any number of seeds each), the same questions.
    """
    n = len(correct_a[0])
    mean_a = [sum(seed[q] for seed in correct_a) / len(correct_a) for q in range(n)]
    mean_b = [sum(seed[q] for seed in correct_b) / len(correct_b) for q in range(n)]
    d = [b - a for a, b in zip(mean_a, mean_b)]                 # each question's seed-averaged difference
    observed = abs(sum(d))
    # under "no difference" a and b are exchangeable within a question: every sign flip of d is as likely
    as_extreme = sum(1 for signs in itertools.product((1, -1), repeat=n)
                     if abs(sum(s * x for s, x in zip(signs, d))) >= observed - 1e-9)   # ties count (≥)
    return as_extreme / 2**n


def mcnemar_p_by_hand(correct_a, correct_b):
    """Exercise 4.2: exact two-sided McNemar p-value of two scorers on the same questions."""
    gained = sum(1 for a, b in zip(correct_a, correct_b) if b and not a)
    lost = sum(1 for a, b in zip(correct_a, correct_b) if a and not b)
    n = gained + lost
    if n == 0:
        return 1.0
    # under equal accuracy each disagreement is a fair coin: P(a split at least this uneven), both tails
    tail = sum(math.comb(n, i) for i in range(min(gained, lost) + 1)) / 2**n
    return min(1.0, 2 * tail)


# --- 05_how_many_experts -------------------------------------------------------------------

def mixture_parameters_by_hand(layer_shapes, method, num_experts, rank):
    """Exercise 5.1: trainable parameters over adapted linears of shapes [(d_in, d_out), ...]."""
    sum_in = sum(d_in for d_in, _ in layer_shapes)
    sum_out = sum(d_out for _, d_out in layer_shapes)
    if method == "lora":
        return rank * (sum_in + sum_out)
    magnitudes = len(layer_shapes) if method == "omoe" else 0   # one per adapted layer
    return num_experts * (rank * (sum_in + sum_out) + sum_in) + magnitudes


def merged_delta_w_by_hand(lora_A, lora_B, token_weights, scaling):
    """Exercise 5.2: the mixture merged into one LoRA of rank E·r, ``ΔW = s Σ_j w̄_j B_j A_j`` [d_out, d_in],
    with ``w̄`` the mean over the N tokens of ``token_weights`` [N, E]; A [E, r, d_in], B [E, d_out, r]."""
    mean_weights = token_weights.mean(dim=0)                 # w̄_j: average over the tokens, not the experts
    products = lora_B @ lora_A                               # B_j A_j for every expert    [E, d_out, d_in]
    return scaling * (mean_weights[:, None, None] * products).sum(dim=0)
