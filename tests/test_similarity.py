import itertools

import numpy as np
import pytest
import torch

from omoe_lab.analysis.similarity import (
    cka_matrix,
    linear_cka,
    mean_pairwise_cosine,
    median_distance,
    pairwise_cosine,
    rbf_cka,
)


def _random_orthogonal(dim, rng):
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q


# --- independent float64 references, written from the definitions -----------------------------

def _reference_biased_hsic(k, l):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def _reference_unbiased_hsic(k, l):
    """Song et al. (2012) HSIC₁ as a U-statistic: the mean over ordered distinct 4-tuples
    (i, j, q, r) of K_ij L_ij + K_ij L_qr − 2 K_ij L_iq."""
    n = k.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        count += 1
    return total / count


def _reference_cka(k, l, hsic):
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def _reference_rbf_kernel(x):
    n = x.shape[0]
    dist = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(n)] for i in range(n)])
    sigma = np.median([dist[i, j] for i in range(n) for j in range(i + 1, n)])
    return np.exp(-(dist**2) / (2 * sigma**2))


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5)) + 2.0  # offsets: the estimators must handle uncentered input
    y = x[:, :3] @ rng.normal(size=(3, 4)) + 0.5 * rng.normal(size=(8, 4)) - 1.0
    return x, y


def test_linear_cka_matches_explicit_kernel_reference(xy):
    x, y = xy
    expected = _reference_cka(x @ x.T, y @ y.T, _reference_biased_hsic)
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-12)


def test_debiased_linear_cka_matches_u_statistic_reference(xy):
    x, y = xy
    expected = _reference_cka(x @ x.T, y @ y.T, _reference_unbiased_hsic)
    assert linear_cka(x, y, debiased=True) == pytest.approx(expected, rel=1e-10)


def test_rbf_cka_matches_explicit_reference(xy):
    x, y = xy
    k, l = _reference_rbf_kernel(x), _reference_rbf_kernel(y)
    assert rbf_cka(x, y) == pytest.approx(_reference_cka(k, l, _reference_biased_hsic), rel=1e-10)
    assert rbf_cka(x, y, debiased=True) == pytest.approx(_reference_cka(k, l, _reference_unbiased_hsic), rel=1e-10)


def test_median_distance_and_explicit_sigma(xy):
    x, y = xy
    pairs = [np.linalg.norm(x[i] - x[j]) for i in range(8) for j in range(i + 1, 8)]
    assert median_distance(x) == pytest.approx(np.median(pairs), rel=1e-12)
    # A huge bandwidth makes exp(−d²/2σ²) ≈ 1 − d²/2σ², whose centered kernel is linear-like.
    assert rbf_cka(x, y, bandwidth_factor=1e3) == pytest.approx(linear_cka(x, y), abs=1e-3)
    assert rbf_cka(x, y, sigma=1e3 * median_distance(x)) != pytest.approx(rbf_cka(x, y), abs=1e-3)


@pytest.mark.parametrize("measure", [
    lambda a, b: linear_cka(a, b),
    lambda a, b: linear_cka(a, b, debiased=True),
    lambda a, b: rbf_cka(a, b),
])
def test_cka_of_a_representation_with_itself_is_one(xy, measure):
    x, _ = xy
    assert measure(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("measure", [
    lambda a, b: linear_cka(a, b),
    lambda a, b: linear_cka(a, b, debiased=True),
    lambda a, b: rbf_cka(a, b),
])
def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling(xy, measure):
    x, y = xy
    rotation = _random_orthogonal(y.shape[1], np.random.default_rng(1))
    base = measure(x, y)
    assert 0.1 < abs(base) < 0.999  # not a degenerate value that any transform would keep
    assert measure(x, 7.5 * y @ rotation) == pytest.approx(base, rel=1e-10)
    assert measure(0.01 * x, y) == pytest.approx(base, rel=1e-10)


def test_debiased_removes_the_small_sample_bias_for_unrelated_features():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 200)), rng.normal(size=(40, 200))
    assert linear_cka(x, y) > 0.5  # biased: many features, few tokens look similar
    assert abs(linear_cka(x, y, debiased=True)) < 0.05


def test_torch_float32_and_numpy_inputs_agree(xy):
    x, y = xy
    value = linear_cka(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    assert value == pytest.approx(linear_cka(x.astype(np.float32), y.astype(np.float32)), rel=1e-12)
    assert value == pytest.approx(linear_cka(x, y), rel=1e-5)


def test_cka_matrix_matches_pairwise_cka_and_is_symmetric():
    rng = np.random.default_rng(4)
    outputs = rng.normal(size=(30, 3, 6))
    outputs[:, 2] += outputs[:, 0]
    for kind, single in (("linear", linear_cka), ("rbf", rbf_cka)):
        for debiased in (False, True):
            matrix = cka_matrix(outputs, kind=kind, debiased=debiased)
            assert matrix.shape == (3, 3) and matrix.dtype == torch.float64
            assert torch.equal(matrix, matrix.T)
            assert torch.equal(matrix.diagonal(), torch.ones(3, dtype=torch.float64))
            for i, j in ((0, 1), (0, 2), (1, 2)):
                expected = single(outputs[:, i], outputs[:, j], debiased=debiased)
                assert matrix[i, j].item() == pytest.approx(expected, rel=1e-12)
            assert matrix[0, 2] > matrix[0, 1]


def test_collapsed_experts_have_cka_and_cosine_near_one():
    rng = np.random.default_rng(5)
    expert = rng.normal(size=(64, 16))
    collapsed = np.stack([expert, 2.0 * expert, expert + 1e-6 * rng.normal(size=expert.shape)], axis=1)
    assert torch.allclose(cka_matrix(collapsed), torch.ones(3, 3, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(cka_matrix(collapsed, debiased=True), torch.ones(3, 3, dtype=torch.float64), atol=1e-9)
    assert mean_pairwise_cosine(collapsed) == pytest.approx(1.0, abs=1e-9)

    diverse = rng.normal(size=(64, 3, 16))
    assert mean_pairwise_cosine(diverse) < 0.4
    assert cka_matrix(diverse, debiased=True).fill_diagonal_(0).abs().max() < 0.2


def test_pairwise_cosine_on_hand_computed_vectors():
    outputs = torch.tensor([
        [[1.0, 0.0], [1.0, 1.0], [0.0, 3.0]],   # cos: 1/√2, 0, 1/√2
        [[1.0, 0.0], [-2.0, 0.0], [0.0, -1.0]],  # |cos|: 1, 0, 0
    ])
    s = 2**-0.5
    expected = torch.tensor([
        [1.0, (s + 1) / 2, 0.0],
        [(s + 1) / 2, 1.0, s / 2],
        [0.0, s / 2, 1.0],
    ], dtype=torch.float64)
    assert torch.allclose(pairwise_cosine(outputs), expected, atol=1e-12)
    assert mean_pairwise_cosine(outputs) == pytest.approx((s + 1 + s) / 2 / 3, abs=1e-12)


def test_orthogonal_per_token_outputs_can_still_have_high_cka():
    # Two experts orthogonal on every token, yet linearly related across tokens: e_2 = R e_1
    # with R a 90° rotation. Cosine says "diverse", CKA says "same function".
    rng = np.random.default_rng(6)
    e1 = rng.normal(size=(50, 2))
    e2 = e1 @ np.array([[0.0, 1.0], [-1.0, 0.0]])
    outputs = np.stack([e1, e2], axis=1)
    assert mean_pairwise_cosine(outputs) == pytest.approx(0.0, abs=1e-12)
    assert cka_matrix(outputs)[0, 1].item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda: linear_cka(np.ones((10, 3)), np.random.rand(10, 3)), "X has zero variance"),
    (lambda: linear_cka(np.random.rand(10, 3), np.full((10, 2), 0.1)), "Y has zero variance"),
    (lambda: linear_cka(np.random.rand(1, 3), np.random.rand(1, 3)), "at least 2"),
    (lambda: linear_cka(np.random.rand(3, 3), np.random.rand(3, 3), debiased=True), "at least 4 tokens"),
    (lambda: linear_cka(np.random.rand(5, 3), np.random.rand(6, 3)), "same tokens"),
    (lambda: linear_cka(np.full((5, 3), np.nan), np.random.rand(5, 3)), "NaN"),
    (lambda: linear_cka(np.random.rand(5, 3, 2), np.random.rand(5, 3)), "tokens, features"),
    (lambda: rbf_cka(np.repeat([[0.0], [1.0]], [8, 1], axis=0), np.random.rand(9, 2)), "bandwidth is 0"),
    (lambda: rbf_cka(np.random.rand(6, 2), np.random.rand(6, 2), sigma=-1.0), "sigma must be positive"),
    (lambda: cka_matrix(np.random.rand(6, 2, 3), kind="cosine"), "kind must be"),
    (lambda: cka_matrix(np.concatenate([np.random.rand(6, 1, 3), np.ones((6, 1, 3))], 1)), "expert 1's outputs has zero"),
    (lambda: pairwise_cosine(np.zeros((4, 2, 3))), "exactly zero"),
    (lambda: pairwise_cosine(np.zeros((0, 2, 3))), "no tokens"),
    (lambda: mean_pairwise_cosine(np.random.rand(4, 1, 3)), "at least 2 experts"),
])
def test_undefined_inputs_raise_instead_of_returning_nan(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_debiased_cka_raises_when_a_single_token_carries_all_the_spread():
    # All tokens equal but one: the biased estimator still sees variance, the unbiased HSIC(X, X)
    # is exactly 0 (no pair of distinct tokens), so debiased CKA would divide by zero.
    x = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [3.0, -1.0]])
    y = np.random.default_rng(0).normal(size=(5, 2))
    assert 0.0 <= linear_cka(x, y) <= 1.0
    with pytest.raises(ValueError, match="single token"):
        linear_cka(x, y, debiased=True)
    with pytest.raises(ValueError, match="single token"):
        linear_cka(y, x, debiased=True)
    with pytest.raises(ValueError, match="expert 1's outputs"):
        cka_matrix(np.stack([y, x], axis=1), debiased=True)
