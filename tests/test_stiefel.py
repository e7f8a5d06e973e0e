import math

import numpy as np
import pytest
import torch

from omoe_lab.adapters import gram_schmidt
from omoe_lab.analysis.stiefel import (
    assert_on_stiefel,
    default_stiefel_tolerance,
    stiefel_error,
    stiefel_error_per_token,
)


def _orthonormal_experts(tokens, experts, dim, dtype=torch.float32, seed=0):
    """[tokens, E, d] whose E rows per token are orthonormal (a QR factor, transposed)."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(tokens, dim, experts, generator=generator, dtype=torch.float64))
    return q.mT.to(dtype)


def test_qr_factor_is_on_the_stiefel_manifold():
    for dtype in (torch.float32, torch.float64):
        q = _orthonormal_experts(16, 4, 32, dtype)
        assert stiefel_error(q) < 1e-6
        assert assert_on_stiefel(q) == pytest.approx(stiefel_error(q))
    assert stiefel_error(_orthonormal_experts(16, 4, 32, torch.float64).numpy()) < 1e-13


def test_random_matrix_is_far_from_the_stiefel_manifold():
    q = torch.randn(16, 4, 32, generator=torch.Generator().manual_seed(1)) / math.sqrt(32)
    error = stiefel_error(q)
    assert error > 0.1
    with pytest.raises(AssertionError, match=f"Stiefel error {error:.3g}"):
        assert_on_stiefel(q)


def test_error_on_hand_computed_matrices():
    duplicated = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # QᵀQ − I = [[0, 1], [1, 0]]
    assert stiefel_error(duplicated) == pytest.approx(math.sqrt(2))
    stretched = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # QᵀQ − I = diag(3, 0)
    assert stiefel_error(stretched) == pytest.approx(3.0)
    tokens = torch.stack([torch.eye(2), stretched, duplicated])
    assert torch.allclose(stiefel_error_per_token(tokens), torch.tensor([0.0, 3.0, math.sqrt(2)], dtype=torch.float64))
    assert stiefel_error(tokens) == pytest.approx(3.0)  # the worst token


def test_active_mask_targets_diag_active():
    q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert stiefel_error(q) == pytest.approx(1.0)  # the zero column is not a unit vector
    assert stiefel_error(q, active=torch.tensor([True, False, True])) == 0.0
    # an inactive column that is not zero is caught: its squared norm shows on the diagonal
    leaky = q.clone()
    leaky[1, 1] = 0.5
    assert stiefel_error(leaky, active=torch.tensor([True, False, True])) == pytest.approx(0.25)
    per_token = stiefel_error_per_token(torch.stack([q, q]), active=torch.tensor([[True, False, True], [True, True, True]]))
    assert per_token.tolist() == pytest.approx([0.0, 1.0])


def test_the_library_gram_schmidt_passes_and_redundant_experts_need_the_right_mask():
    generator = torch.Generator().manual_seed(2)
    e = torch.randn(64, 4, 24, generator=generator)
    e[:, 3] = 2.0 * e[:, 1]  # expert 3 duplicates expert 1: where both are routed, q_3 = 0
    routed = torch.rand(64, 4, generator=generator) > 0.3
    q = gram_schmidt(e, routed, mode="stiefel")
    nonzero = q.norm(dim=-1) > 0
    redundant = torch.zeros_like(routed)
    redundant[:, 3] = routed[:, 1] & routed[:, 3]
    assert redundant.any()
    assert torch.equal(nonzero, routed & ~redundant)
    assert assert_on_stiefel(q, active=nonzero) < default_stiefel_tolerance(torch.float32, 4)
    with pytest.raises(AssertionError):  # routed but redundant: no direction of its own
        assert_on_stiefel(q, active=routed)
    # the raw outputs are nowhere near orthonormal
    assert stiefel_error(e, active=routed) > 1.0


def test_default_tolerance_follows_the_input_dtype():
    assert default_stiefel_tolerance(torch.float32, 4) == pytest.approx(40 * 2.0**-23)
    assert default_stiefel_tolerance(np.float64, 8) == pytest.approx(80 * 2.0**-52)
    assert default_stiefel_tolerance(torch.bfloat16, 4) == pytest.approx(40 * 2.0**-7)
    q32 = _orthonormal_experts(8, 4, 16, torch.float32)
    noisy = q32 + 1e-4 * torch.randn(q32.shape, generator=torch.Generator().manual_seed(3))
    with pytest.raises(AssertionError):
        assert_on_stiefel(noisy)  # float32 tolerance 4.8e-6
    assert_on_stiefel(noisy.to(torch.bfloat16))  # bfloat16 tolerance 0.31
    assert_on_stiefel(noisy, tol=1e-2)


@pytest.mark.parametrize("call, error, message", [
    (lambda: stiefel_error(torch.ones(3)), ValueError, r"\[\.\.\., E, d\]"),
    (lambda: stiefel_error(torch.ones(0, 2, 3)), ValueError, "no tokens"),
    (lambda: stiefel_error(torch.ones(4, 2, 3), active=torch.ones(4, 3, dtype=torch.bool)), ValueError, "shape"),
    (lambda: stiefel_error(torch.ones(4, 2, 3), active=torch.ones(4, 2)), ValueError, "boolean"),
    (lambda: stiefel_error(torch.full((2, 3), float("nan"))), ValueError, "NaN"),
    (lambda: assert_on_stiefel(np.eye(3, dtype=np.int64)), ValueError, "floating point"),
])
def test_invalid_inputs_raise(call, error, message):
    with pytest.raises(error, match=message):
        call()
