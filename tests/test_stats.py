"""Intervals and paired tests against readable by-hand references."""
from __future__ import annotations

import math

import numpy as np
import pytest

from omoe_lab.analysis.stats import cmh_test, paired_test, t_interval, wilson_interval


def test_wilson_interval_by_hand():
    # p = 0.5, n = 8: centre (p + z²/2n)/(1 + z²/n) = 0.5, half-width z·sqrt(p(1-p)/n + z²/4n²)/(1 + z²/n)
    z = 1.959964
    half = z * math.sqrt(0.25 / 8 + z * z / 256) / (1 + z * z / 8)
    low, high = wilson_interval(0.5, 8)
    assert low == pytest.approx(0.5 - half, abs=1e-12) and high == pytest.approx(0.5 + half, abs=1e-12)
    low, high = wilson_interval(0.0, 10)  # never below 0, unlike the normal approximation
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(z * z / 10 / (1 + z * z / 10), rel=1e-9)


def test_t_interval_by_hand():
    values = [0.50, 0.54, 0.49]
    mean, low, high = t_interval(values)
    sd = math.sqrt(sum((v - 0.51) ** 2 for v in values) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, 2 dof}
    assert mean == pytest.approx(0.51) and low == pytest.approx(0.51 - half) and high == pytest.approx(0.51 + half)
    with pytest.raises(ValueError, match="at least 2"):
        t_interval([0.5])


def _cmh_by_hand(pairs) -> tuple[float, float]:
    """General CMH over 2×2 strata (scorer × right/wrong), one stratum per (seed, question)."""
    from scipy.stats import chi2

    deviation = variance = 0.0
    for correct_a, correct_b in pairs:
        for a, b in zip(correct_a, correct_b):
            table = np.array([[b, 1 - b], [a, 1 - a]], dtype=float)  # rows: scorer b, scorer a
            n = table.sum()
            rows, cols = table.sum(1), table.sum(0)
            deviation += table[0, 0] - rows[0] * cols[0] / n
            variance += rows[0] * rows[1] * cols[0] * cols[1] / (n * n * (n - 1))
    statistic = deviation**2 / variance
    return statistic, chi2.sf(statistic, 1)


def test_cmh_equals_the_general_stratified_formula():
    rng = np.random.default_rng(3)
    pairs = [(rng.integers(0, 2, 40).tolist(), rng.integers(0, 2, 40).tolist()) for _ in range(3)]
    result = cmh_test(pairs)
    statistic, p = _cmh_by_hand(pairs)
    assert result["chi2"] == pytest.approx(statistic, rel=1e-12) and result["p"] == pytest.approx(p, rel=1e-12)
    assert result["gained"] == sum(paired_test(a, b)["gained"] for a, b in pairs) and result["seeds"] == 3


def test_cmh_without_disagreement_and_with_mismatched_questions():
    assert cmh_test([([1, 0], [1, 0])])["p"] == 1.0
    with pytest.raises(ValueError, match="same questions"):
        cmh_test([([1, 0], [1, 0, 1])])


# --- the question as the unit, Holm -----------------------------------------------------------------
def test_question_level_test_is_exact_against_every_sign_flip():
    import itertools

    from omoe_lab.analysis.stats import question_level_test

    a = [[1, 0, 1, 0, 0, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1, 0, 0, 1, 0]]
    b = [[1, 1, 1, 0, 1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 0, 1, 0, 1, 1]]
    d = [sum(col_b) / 2 - sum(col_a) / 2 for col_a, col_b in zip(zip(*a), zip(*b))]
    observed = sum(d) / len(d)
    # the reference: every way of swapping a and b within questions, two-sided
    flips = [sum(s * x for s, x in zip(signs, d)) / len(d) for signs in itertools.product((1, -1), repeat=len(d))]
    expected = sum(abs(f) >= abs(observed) - 1e-12 for f in flips) / len(flips)
    result = question_level_test(a, b, resamples=5000)
    assert result["difference"] == pytest.approx(observed)
    assert result["p"] == pytest.approx(expected)
    assert result["low"] <= observed <= result["high"] and result["questions"] == 10 and result["seeds"] == [2, 2]
    sd = math.sqrt(sum((x - observed) ** 2 for x in d) / 9)
    assert result["mdd"] == pytest.approx((1.959964 + 0.841621) * sd / math.sqrt(10))


def test_question_level_test_counts_a_question_once_however_many_seeds():
    from omoe_lab.analysis.stats import question_level_test

    a, b = [0, 1, 0, 1, 0, 1, 0, 0] * 5, [1, 1, 0, 1, 1, 1, 0, 0] * 5
    one, three = question_level_test([a], [b]), question_level_test([a] * 3, [b] * 3)
    assert three["p"] == pytest.approx(one["p"])  # identical seeds add no evidence
    assert cmh_test([(a, b)] * 3)["p"] < cmh_test([(a, b)])["p"]  # where CMH over (seed, question) strata triples it
    assert question_level_test([a], [a])["p"] == 1.0
    with pytest.raises(ValueError, match="same questions"):
        question_level_test([a], [b[:-1]])


def test_holm_matches_its_step_down_definition():
    from omoe_lab.analysis.stats import holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])  # R: p.adjust(..., "holm")
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []
