"""The notebooks' exercises: every checker passes its reference solution, names the case a wrong
answer fails with what was expected, what came back and a hint, lets an unsolved stub through
with one line, and matches the exercise cells of notebooks 00–05 (run here without a kernel)."""
from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import pytest
import torch

from omoe_lab import exercises
from omoe_lab.exercises import CHECKERS, EXERCISES, SOLUTIONS_ENV, exercise, show_solution

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {"0": "00_tour", "1": "01_collapse", "2": "02_gram_schmidt", "3": "03_lora_to_moe", "4": "04_finetune_real",
             "5": "05_how_many_experts"}


# --- plausible wrong answers, and the case each must fail --------------------------------------

def lora_without_scaling(x, W0, A, B, scaling):
    return x @ W0.T + (x @ A.T) @ B.T


def lora_without_transposes(x, W0, A, B, scaling):
    return x @ W0 + scaling * x @ A.T @ B.T


def lora_for_flat_tokens_only(x, W0, A, B, scaling):
    return torch.einsum("td,od->to", x, W0) + scaling * torch.einsum("td,rd,or->to", x, A, B)


def lora_count_forgetting_B(method, d_in, d_out, num_experts, rank):
    one_lora = rank * d_in
    return one_lora if method == "lora" else num_experts * (one_lora + d_in) + (method == "omoe")


def router_sized_by_d_out(method, d_in, d_out, num_experts, rank):
    one_lora = rank * (d_in + d_out)
    return one_lora if method == "lora" else num_experts * (one_lora + d_out) + (method == "omoe")


def omoe_without_magnitude(method, d_in, d_out, num_experts, rank):
    one_lora = rank * (d_in + d_out)
    return one_lora if method == "lora" else num_experts * (one_lora + d_in)


def signed_cosine(e):
    unit = e / e.norm(dim=-1, keepdim=True)
    return (unit @ unit.mT)[:, ~torch.eye(e.shape[1], dtype=torch.bool)].mean().item()


def cosine_with_diagonal(e):
    unit = e / e.norm(dim=-1, keepdim=True)
    return (unit @ unit.mT).abs().mean().item()


def cosine_normalized_over_tokens(e):
    unit = e / e.norm(dim=0, keepdim=True)
    return (unit @ unit.mT).abs()[:, ~torch.eye(e.shape[1], dtype=torch.bool)].mean().item()


def cka_without_centering(X, Y):
    return ((X.T @ Y).norm() ** 2 / ((X.T @ X).norm() * (Y.T @ Y).norm())).item()


def cka_not_squared(X, Y):
    X, Y = X - X.mean(0), Y - Y.mean(0)
    return ((X.T @ Y).norm() / ((X.T @ X).norm() * (Y.T @ Y).norm()).sqrt()).item()


def cka_over_squared_norms(X, Y):
    X, Y = X - X.mean(0), Y - Y.mean(0)
    return ((X.T @ Y).norm() ** 2 / (X.norm() ** 2 * Y.norm() ** 2)).item()


def effective_rank_with_naive_log(matrix):
    p = torch.linalg.svdvals(matrix) / torch.linalg.svdvals(matrix).sum()
    return math.exp(-(p * p.log()).sum().item())


def effective_rank_of_eigenvalues(matrix):
    eigenvalues = torch.linalg.svdvals(matrix) ** 2
    p = eigenvalues / eigenvalues.sum()
    return math.exp(-torch.special.xlogy(p, p).sum().item())


def stiefel_mean_over_tokens(q, active=None):
    target = torch.eye(q.shape[-2], dtype=torch.float64) if active is None else torch.diag_embed(active.double())
    return torch.linalg.matrix_norm(q.double() @ q.double().mT - target).mean().item()


def stiefel_ignoring_active(q, active=None):
    return torch.linalg.matrix_norm(q.double() @ q.double().mT - torch.eye(q.shape[-2], dtype=torch.float64)).max().item()


def stiefel_in_float32(q, active=None):
    target = torch.eye(q.shape[-2], dtype=q.dtype) if active is None else torch.diag_embed(active.to(q.dtype))
    return torch.linalg.matrix_norm(q @ q.mT - target).max().item()


def stiefel_columns_times_columns(q, active=None):
    return torch.linalg.matrix_norm(q.double().mT @ q.double() - torch.eye(q.shape[-2], dtype=torch.float64)).max().item()


def gram_schmidt_variant(passes=2, modified=True, absolute=False, eps=None, fixed_tol=None, orthogonal_length="u"):
    """Gram–Schmidt with one thing changed from the reference."""

    def variant(e, mode="stiefel", tol=1e-4):
        tol = fixed_tol if fixed_tol is not None else tol
        directions, outputs = [], []
        for k in range(e.shape[-2]):
            e_k = e[..., k, :]
            u = e_k
            for _ in range(passes):
                for q_j in directions:
                    u = u - ((u if modified else e_k) * q_j).sum(-1, keepdim=True) * q_j
            norm_u, norm_e = u.norm(dim=-1, keepdim=True), e_k.norm(dim=-1, keepdim=True)
            if eps is not None:
                q_hat = u / (norm_u + eps)
            else:
                live = norm_u > (tol if absolute else tol * norm_e)
                q_hat = torch.where(live, u / torch.where(live, norm_u, 1.0), 0.0)
            directions.append(q_hat)
            length = {"stiefel": 1.0, "orthogonal": norm_u if orthogonal_length == "u" else norm_e, "norm_preserving": norm_e}[mode]
            outputs.append(q_hat * length)
        return torch.stack(outputs, dim=-2)

    variant.__name__ = f"gram_schmidt_passes{passes}_{'modified' if modified else 'classical'}" + (
        "_absolute" if absolute else "") + (f"_eps{eps:g}" if eps is not None else "") + (
        "_fixed_tol" if fixed_tol is not None else "") + ("_orthogonal_by_e" if orthogonal_length != "u" else "")
    return variant


def moe_softmax_over_tokens(x, W0, A, B, W_g, scaling):
    gates = torch.softmax(x @ W_g.T, dim=0)
    e = torch.einsum("...er,eor->...eo", torch.einsum("...d,erd->...er", x, A), B)
    return x @ W0.T + scaling * (gates[..., None] * e).sum(-2)


def moe_without_scaling(x, W0, A, B, W_g, scaling):
    gates = torch.softmax(x @ W_g.T, dim=-1)
    e = torch.einsum("...er,eor->...eo", torch.einsum("...d,erd->...er", x, A), B)
    return x @ W0.T + (gates[..., None] * e).sum(-2)


def moe_for_flat_tokens_only(x, W0, A, B, W_g, scaling):
    gates = torch.softmax(x @ W_g.T, dim=-1)
    e = torch.einsum("ter,eor->teo", torch.einsum("td,erd->ter", x, A), B)
    return x @ W0.T + scaling * (gates[..., None] * e).sum(-2)


def top_k_without_renormalizing(logits, k):
    p = torch.softmax(logits, dim=-1)
    return p * torch.zeros_like(p, dtype=torch.bool).scatter(-1, p.topk(k, dim=-1).indices, True)


def top_k_by_threshold(logits, k):
    p = torch.softmax(logits, dim=-1)
    kept = p * (p >= p.topk(k, dim=-1).values[..., -1:])
    return kept / kept.sum(-1, keepdim=True)


def top_k_with_naive_softmax(logits, k):
    p = logits.exp() / logits.exp().sum(-1, keepdim=True)
    kept = p * torch.zeros_like(p, dtype=torch.bool).scatter(-1, p.topk(k, dim=-1).indices, True)
    return kept / kept.sum(-1, keepdim=True)


def balance_loss(per_token_fraction=False, scale_by_E=True, use_mask=True, detach=False):
    """The load-balancing loss with one thing changed from the reference."""

    def loss(probs, active, token_mask=None):
        E = probs.shape[-1]
        probs, active = probs.reshape(-1, E), active.reshape(-1, E).float()
        weight = torch.ones(len(probs)) if token_mask is None or not use_mask else token_mask.reshape(-1).float()
        slots = active * weight[:, None]
        f = slots.sum(0) / (weight.sum() if per_token_fraction else slots.sum())
        P = (probs * weight[:, None]).sum(0) / weight.sum()
        value = (E if scale_by_E else 1) * (f * P).sum()
        return value.item() if detach else value

    loss.__name__ = "balance_loss" + ("_per_token_fraction" if per_token_fraction else "") + (
        "" if scale_by_E else "_without_E") + ("" if use_mask else "_ignoring_mask") + ("_detached" if detach else "")
    return loss


def permutation_variant(strict=False, one_sided=False, seeds="mean"):
    """The exact question-level permutation p with one thing changed from the reference."""

    def variant(correct_a, correct_b):
        if seeds == "pairs":   # (seed, question) pairs as the units, seeds of a and b zipped
            d = [b - a for seed_a, seed_b in zip(correct_a, correct_b) for a, b in zip(seed_a, seed_b)]
        else:
            scale_a, scale_b = (len(correct_a), len(correct_b)) if seeds == "mean" else (1, 1)
            d = [sum(s[q] for s in correct_b) / scale_b - sum(s[q] for s in correct_a) / scale_a for q in range(len(correct_a[0]))]
        observed = sum(d) if one_sided else abs(sum(d))
        count = 0
        for signs in itertools.product((1, -1), repeat=len(d)):
            flipped = sum(s * x for s, x in zip(signs, d))
            flipped = flipped if one_sided else abs(flipped)
            count += flipped > observed + 1e-9 if strict else flipped >= observed - 1e-9
        return count / 2 ** len(d)

    variant.__name__ = "permutation" + ("_strict" if strict else "") + ("_one_sided" if one_sided else "") + (
        "" if seeds == "mean" else f"_seeds_{seeds}")
    return variant


def mcnemar_one_sided(correct_a, correct_b):
    gained = sum(1 for a, b in zip(correct_a, correct_b) if b and not a)
    lost = sum(1 for a, b in zip(correct_a, correct_b) if a and not b)
    n = gained + lost
    return sum(math.comb(n, i) for i in range(min(gained, lost) + 1)) / 2**n if n else 1.0


def mcnemar_uncapped(correct_a, correct_b):
    return 2 * mcnemar_one_sided(correct_a, correct_b) if any(a != b for a, b in zip(correct_a, correct_b)) else 1.0


def mixture_with_one_magnitude(layer_shapes, method, num_experts, rank):
    sum_in, sum_out = sum(s[0] for s in layer_shapes), sum(s[1] for s in layer_shapes)
    if method == "lora":
        return rank * (sum_in + sum_out)
    return num_experts * (rank * (sum_in + sum_out) + sum_in) + (method == "omoe")


def mixture_router_by_d_out(layer_shapes, method, num_experts, rank):
    sum_in, sum_out = sum(s[0] for s in layer_shapes), sum(s[1] for s in layer_shapes)
    if method == "lora":
        return rank * (sum_in + sum_out)
    return num_experts * (rank * (sum_in + sum_out) + sum_out) + (method == "omoe") * len(layer_shapes)


def merged_summing_over_tokens(lora_A, lora_B, token_weights, scaling):
    return scaling * torch.einsum("j,jor,jrd->od", token_weights.sum(dim=0), lora_B, lora_A)


def merged_without_scaling(lora_A, lora_B, token_weights, scaling):
    return torch.einsum("j,jor,jrd->od", token_weights.mean(dim=0), lora_B, lora_A)


def merged_A_times_B(lora_A, lora_B, token_weights, scaling):
    return scaling * (token_weights.mean(dim=0)[:, None, None] * (lora_A @ lora_B)).sum(dim=0)


def merged_transposed(lora_A, lora_B, token_weights, scaling):
    return scaling * (token_weights.mean(dim=0)[:, None, None] * (lora_A.mT @ lora_B.mT)).sum(dim=0)


def merged_averaging_over_experts(lora_A, lora_B, token_weights, scaling):
    return scaling * torch.einsum("j,jor,jrd->od", token_weights.mean(dim=-1), lora_B, lora_A)


def merged_with_one_mean_weight(lora_A, lora_B, token_weights, scaling):
    return scaling * token_weights.mean() * (lora_B @ lora_A).sum(dim=0)


def merged_in_float32(lora_A, lora_B, token_weights, scaling):
    return scaling * torch.einsum("j,jor,jrd->od", token_weights.float().mean(dim=0), lora_B.float(), lora_A.float())


NEAR_PARALLEL = "nearly parallel experts, e_k = c + 1e-3·δ_k (float32): orthonormal to 4.8e-06"
MERGE_CONSTANT = "weights constant over the 8 tokens: the merged layer equals the mixture on every token"

# (exercise, wrong answer, the case that catches it, a piece of the message)
WRONG_ANSWERS = [
    ("0.1", lora_without_scaling, "scaling s = α/r = 4", "the frozen W0 x is not scaled"),
    ("0.1", lora_without_transposes, "6 tokens, d_in = d_out = 8, rank 2, s = 1", "entries differ"),
    ("0.1", lora_for_flat_tokens_only, "a batch of sequences, x [2, 3, d_in]", "an exception, RuntimeError"),
    ("0.2", lora_count_forgetting_B, "LoRA, rank 8, on SmolLM2's q_proj (576 → 576)", "expected: 9,216"),
    ("0.2", router_sized_by_d_out, "MoE-LoRA, E = 8, rank 4, on v_proj (576 → 192)", "W_g is [E, d_in]"),
    ("0.2", omoe_without_magnitude, "OMoE, E = 4, rank 8, on q_proj", "one magnitude m per layer"),
    ("1.1", signed_cosine, "4 random experts, 32 tokens, d = 16", "|dot products|"),
    ("1.1", cosine_with_diagonal, "4 random experts, 32 tokens, d = 16", "the pairs i ≠ j"),
    ("1.1", cosine_normalized_over_tokens, "4 random experts, 32 tokens, d = 16", "expected:"),
    ("1.2", cka_without_centering, "two random representations, 40 tokens, 8 features each", "center both over tokens"),
    ("1.2", cka_not_squared, "two random representations, 40 tokens, 8 features each", "‖XᵀY‖²_F"),
    ("1.2", cka_over_squared_norms, "two random representations, 40 tokens, 8 features each", "expected:"),
    ("1.3", effective_rank_with_naive_log, "singular values (3, 1, 0, 0): 0·log 0 counts as 0", "got:      nan"),
    ("1.3", effective_rank_of_eigenvalues, "4 random expert outputs in R^16", "σ the singular values"),
    ("2.1", stiefel_mean_over_tokens, "one bad token among 50: the worst token, not the mean", "maximum over tokens"),
    ("2.1", stiefel_ignoring_active, "top-2 routing: inactive experts are zero rows, the target is diag(active)", "diag_embed"),
    ("2.1", stiefel_in_float32, "float32 rows orthonormal to round-off (measured in float64, rtol 0.01)", "upcast q to float64"),
    ("2.1", stiefel_columns_times_columns, "orthonormal rows (the library's gram_schmidt of random experts), float64",
     "an exception, RuntimeError"),
    ("2.2", gram_schmidt_variant(passes=1, modified=False), NEAR_PARALLEL, "(10·E·eps of float32)"),
    ("2.2", gram_schmidt_variant(passes=1), NEAR_PARALLEL, "on the worst token"),
    ("2.2", gram_schmidt_variant(eps=1e-6), "expert 2 duplicates expert 1: q_2 = 0", "no u/(‖u‖ + eps)"),
    ("2.2", gram_schmidt_variant(absolute=True), "tiny experts (all × 1e-7): the threshold is relative", "not with tol"),
    ("2.2", gram_schmidt_variant(fixed_tol=1e-4), "tol = 0.05: an expert 3 % away from expert 1 is redundant", "the tol argument"),
    ("2.2", gram_schmidt_variant(orthogonal_length="e"), "mode 'orthogonal': q_k = u_k", "keeps the residual's length"),
    ("3.1", moe_softmax_over_tokens, "6 tokens, E = 3 experts of rank 2, soft routing, s = 1", "over the experts (dim=-1)"),
    ("3.1", moe_without_scaling, "scaling s = α/r = 2", "multiplies the gated sum"),
    ("3.1", moe_for_flat_tokens_only, "a batch of sequences, x [2, 4, d_in]", "an exception, RuntimeError"),
    ("3.2", top_k_without_renormalizing, "8 tokens, E = 4, k = 2", "every token's gates sum to 1"),
    ("3.2", top_k_by_threshold, "ties: logits (2, 2, 2, 0) and k = 2 keep exactly two", "exactly k = 2 non-zero gates"),
    ("3.2", top_k_with_naive_softmax, "large logits (100 + noise, float32): a stable softmax", "non-finite entries"),
    ("3.3", balance_loss(per_token_fraction=True), "top-2 routing of 64 random tokens, E = 4", "Σ f_i = 1"),
    ("3.3", balance_loss(scale_by_E=False), "top-2 routing of 64 random tokens, E = 4", "expected: 1.0"),
    ("3.3", balance_loss(use_mask=False), "padding: the last 32 of 64 tokens have token_mask 0", "weight every token by its mask"),
    ("3.3", balance_loss(detach=True), "the gradient reaches the router through P only", "does not depend on probs"),
    ("4.1", permutation_variant(strict=True), "every question's seed mean the same in a and b: d_q = 0, p = 1", "(≥, not >)"),
    ("4.1", permutation_variant(one_sided=True), "b worse than a: one seed each, 9 questions, 6 lost and 1 gained (two-sided)",
     "two-sided: compare |Σ_q s_q d_q|"),
    ("4.1", permutation_variant(seeds="summed"), "3 seeds of b against one of a (an arm against the baseline), 10 questions",
     "average each question's correctness over its seeds first"),
    ("4.1", permutation_variant(seeds="pairs"), "3 seeds of b against one of a (an arm against the baseline), 10 questions",
     "expected:"),
    ("4.2", mcnemar_one_sided, "200 questions, two scorers that disagree on some", "expected:"),
    ("4.2", mcnemar_uncapped, "an even split, 3 gained and 3 lost: p = 1", "cap p at 1"),
    ("5.1", mixture_with_one_magnitude, "OMoE, E = 4, r = 8: one magnitude per adapted layer", "not one per model"),
    ("5.1", mixture_router_by_d_out, "MoE-LoRA, E = 4, r = 8, on q_proj and v_proj of 4 blocks", "expected: 264,192"),
    ("5.2", merged_summing_over_tokens, MERGE_CONSTANT, "x_t ΔWᵀ = 8 × the mixture's output on every token"),
    ("5.2", merged_without_scaling, "E = 4 experts of rank 3, 10 tokens with their own weights, s = α/r = 2", "multiply by the scaling s"),
    ("5.2", merged_A_times_B, MERGE_CONSTANT, "an exception, RuntimeError"),
    ("5.2", merged_transposed, MERGE_CONSTANT, "got:      shape (12, 5)"),
    ("5.2", merged_averaging_over_experts, MERGE_CONSTANT, "(in merged_averaging_over_experts, line "),
    ("5.2", merged_with_one_mean_weight, MERGE_CONSTANT, "(not a multiple of it)"),
    ("5.2", merged_in_float32, MERGE_CONSTANT, "keep the float64 inputs in float64"),
]


@pytest.mark.parametrize("number", sorted(EXERCISES))
def test_the_reference_solution_passes_with_one_line(number, capsys):
    solution = EXERCISES[number].solution
    assert CHECKERS[number](solution) is solution
    out = capsys.readouterr().out
    assert out.startswith(f"✓ Exercise {number} — ") and out.count("\n") == 1, out


@pytest.mark.parametrize("number", sorted(EXERCISES))
def test_every_checker_catches_at_least_two_wrong_answers(number):
    assert sum(1 for n, *_ in WRONG_ANSWERS if n == number) >= 2


@pytest.mark.parametrize("number, wrong, case, detail", WRONG_ANSWERS,
                         ids=[f"{n}-{w.__name__}" for n, w, *_ in WRONG_ANSWERS])
def test_a_wrong_answer_fails_on_its_case_with_a_message(number, wrong, case, detail, capsys):
    with pytest.raises(AssertionError) as failure:
        CHECKERS[number](wrong)
    message = str(failure.value)
    first = message.splitlines()[0]
    assert first.startswith(f"Exercise {number} — {EXERCISES[number].title}: case ")
    assert first.endswith(f', "{case}", fails.'), message
    assert [line.split(":")[0].strip() for line in message.splitlines()[1:]] == ["expected", "got", "hint"], message
    assert detail in message, message
    assert failure.value.__cause__ is None and failure.value.__suppress_context__  # one message, no chained traceback
    assert capsys.readouterr().out == ""


def test_an_unsolved_stub_prints_not_yet_solved_and_does_not_raise(capsys):
    def linear_cka_by_hand(X, Y):
        raise NotImplementedError

    returned = exercises.check_linear_cka(linear_cka_by_hand)
    out = capsys.readouterr().out
    assert out.startswith("not yet solved: Exercise 1.2 — linear CKA.") and out.count("\n") == 1, out
    assert 'show_solution("1.2")' in out
    assert returned is EXERCISES["1.2"].solution  # what the rest of the notebook goes on with


def test_a_half_solved_function_says_which_case_is_missing(capsys):
    def gram_schmidt_by_hand(e, mode="stiefel", tol=1e-4):
        if mode != "stiefel":
            raise NotImplementedError
        return EXERCISES["2.2"].solution(e, mode, tol)

    exercises.check_gram_schmidt(gram_schmidt_by_hand)
    out = capsys.readouterr().out
    assert out.startswith("not yet solved: Exercise 2.2") and "(cases 1–1 pass; case 2, \"mode 'orthogonal': q_k = u_k\", raised NotImplementedError)" in out, out


def test_jupyter_shows_the_message_alone_and_where_the_learner_s_code_raised():
    with pytest.raises(AssertionError) as failure:
        exercises.check_lora_forward(lora_for_flat_tokens_only)
    assert failure.value._render_traceback_() == f"CheckFailed: {failure.value}".splitlines()  # IPython's hook
    assert "(in lora_for_flat_tokens_only, line " in str(failure.value) and "torch.einsum(" in str(failure.value)


def test_a_function_returning_nothing_is_told_so():
    with pytest.raises(AssertionError, match="None — the function returned nothing"):
        exercises.check_lora_forward(lambda x, W0, A, B, scaling: None)


def test_the_switch_swaps_the_solution_in(monkeypatch):
    def stub(X, Y):
        raise NotImplementedError

    for value, swapped in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv(SOLUTIONS_ENV, value)
        assert (exercise("1.2")(stub) is EXERCISES["1.2"].solution) is swapped
    monkeypatch.delenv(SOLUTIONS_ENV)
    assert exercise("1.2")(stub) is stub
    with pytest.raises(ValueError, match="no exercise '9.9'"):
        exercise("9.9")


def test_show_solution_prints_the_source(capsys):
    show_solution("2.2")
    out = capsys.readouterr().out
    assert out.startswith("# Exercise 2.2 — Gram–Schmidt") and "def gram_schmidt_by_hand(e, mode=\"stiefel\", tol=1e-4):" in out


def test_checking_leaves_the_global_random_state_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    for number, check in CHECKERS.items():
        check(EXERCISES[number].solution)
    assert torch.equal(torch.rand(3), expected)


def test_the_merge_checker_s_reference_is_the_statement_s_formula():
    """Exercise 5.2's reference (the library's merged layer, read off on the identity) is ΔW = s Σ_j w̄_j B_j A_j."""
    from omoe_lab.exercises.checkers import merged_layer_delta_w

    A, B, weights = torch.randn(3, 2, 12, dtype=torch.float64), torch.randn(3, 5, 2, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    expected = 1.5 * torch.einsum("j,jor,jrd->od", weights.mean(dim=0), B, A)
    torch.testing.assert_close(merged_layer_delta_w(A, B, weights, 1.5), expected, rtol=1e-12, atol=1e-13)


def test_the_solutions_module_has_no_stubs():
    source = Path(exercises.solutions.__file__).read_text()
    assert "NotImplementedError" not in source


# --- the exercise cells of notebooks 00–05 ------------------------------------------------------

def notebook_cells(number: str) -> list[dict]:
    path = ROOT / "notebooks" / f"{NOTEBOOKS[number.split('.')[0]]}.ipynb"
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


IN_NOTEBOOKS = sorted(n for n in EXERCISES if n.split(".")[0] in NOTEBOOKS)


def test_notebooks_00_to_05_have_twelve_exercises_or_more_two_to_three_each():
    assert len(IN_NOTEBOOKS) >= 12
    assert all(2 <= sum(1 for n in IN_NOTEBOOKS if n.startswith(f"{k}.")) <= 3 for k in NOTEBOOKS)


@pytest.mark.parametrize("number", IN_NOTEBOOKS)
def test_the_notebook_states_the_exercise_and_offers_hint_and_solution(number):
    cells = notebook_cells(number)
    sources = ["".join(cell["source"]) for cell in cells]
    heading = f"### Exercise {number} — {EXERCISES[number].title}"
    statements = [i for i, s in enumerate(sources) if cells[i]["cell_type"] == "markdown" and s.startswith(heading)]
    stubs = [i for i, s in enumerate(sources) if cells[i]["cell_type"] == "code" and f'@exercise("{number}")' in s]
    assert len(statements) == 1 and len(stubs) == 1, (heading, statements, stubs)
    statement, stub, hint = sources[statements[0]], sources[stubs[0]], sources[stubs[0] + 1]
    assert statements[0] < stubs[0] and "$" in statement  # the task, with its maths, comes first
    assert re.search(r"^\s+raise NotImplementedError", stub, re.M), stub
    assert "<details>" in hint and f'show_solution("{number}")' in hint, hint


@pytest.mark.parametrize("solved", [False, True], ids=["unsolved", "solved"])
@pytest.mark.parametrize("number", IN_NOTEBOOKS)
def test_the_notebook_stub_cell_runs_unsolved_and_solved(number, solved, monkeypatch, capsys):
    """The stub cell as committed: 'not yet solved' without the switch, a pass with it (what nbval runs)."""
    if solved:
        monkeypatch.setenv(SOLUTIONS_ENV, "1")
    else:
        monkeypatch.delenv(SOLUTIONS_ENV, raising=False)
    cell = next("".join(c["source"]) for c in notebook_cells(number) if f'@exercise("{number}")' in "".join(c["source"]))
    namespace = {"torch": torch, **{name: getattr(exercises, name) for name in exercises.__all__}}
    exec(compile(cell, f"<exercise {number}>", "exec"), namespace)
    out = capsys.readouterr().out
    expected = f"✓ Exercise {number} — " if solved else f"not yet solved: Exercise {number} — "
    assert out.startswith(expected) and out.count("\n") == 1, out
