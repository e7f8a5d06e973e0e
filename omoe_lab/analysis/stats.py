"""Intervals and paired tests for accuracies: how sure is a difference between two scorers?

- ``wilson_interval``: one run's accuracy over n questions (binomial, Wilson score interval).
- ``t_interval``: the mean accuracy over seeds (Student-t on the seed means; seeds are the unit
  of replication, so this interval includes training noise, which a per-question interval hides).
- ``paired_test``: two scorers on the same questions (exact McNemar).
- ``cmh_test``: the same comparison repeated over seeds, combined (Cochran–Mantel–Haenszel).
  Its strata are (seed, question), so the same question answered by 3 seeds counts 3 times.
- ``question_level_test``: the question as the unit: each question's seed-averaged correctness,
  a paired permutation test and bootstrap interval over questions, and the minimum detectable
  difference at that n.
- ``holm``: Holm's step-down adjustment of the p-values of a family of comparisons.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

Z_95 = 1.959964  # two-sided 95 % normal quantile


def wilson_interval(p: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``p`` observed on ``n`` trials."""
    if n == 0:
        return float("nan"), float("nan")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: mean ± t_{(1+c)/2, k-1} · s / √k over k ≥ 2 values (seeds)."""
    from scipy import stats

    k = len(values)
    if k < 2:
        raise ValueError(f"a t interval needs at least 2 values (seeds), got {k}")
    mean = sum(values) / k
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    half = stats.t.ppf((1 + confidence) / 2, k - 1) * sd / math.sqrt(k)
    return mean, mean - half, mean + half


def _discordant(correct_a: Sequence[int], correct_b: Sequence[int]) -> tuple[int, int]:
    if len(correct_a) != len(correct_b):
        raise ValueError(f"a paired test needs the same questions: got {len(correct_a)} and {len(correct_b)} answers")
    gained = sum(1 for a, b in zip(correct_a, correct_b) if b and not a)
    lost = sum(1 for a, b in zip(correct_a, correct_b) if a and not b)
    return gained, lost


def paired_test(correct_a: Sequence[int], correct_b: Sequence[int]) -> dict[str, Any]:
    """Exact McNemar test: do scorers a and b differ in accuracy on the same test questions?

    Only the questions they disagree on carry information: ``gained`` (b right, a wrong) and
    ``lost`` (a right, b wrong). If a and b were equally accurate, each disagreement would be a
    fair coin flip, so p = P(a split at least this uneven | gained + lost flips, ½), two-sided.
    Pairing removes the shared difficulty of the questions, so it detects differences that two
    overlapping Wilson intervals cannot.
    """
    from scipy.stats import binomtest

    gained, lost = _discordant(correct_a, correct_b)
    p = binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
    return {"gained": gained, "lost": lost, "p": float(p)}


def cmh_test(pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> dict[str, Any]:
    """Cochran–Mantel–Haenszel test of a vs b over several seeds, each seed on the same questions.

    Each (seed, question) is a stratum: a 2 × 2 table of scorer (a, b) × answer (right, wrong)
    with one observation per scorer. The CMH statistic ``(Σ (x_s − E x_s))² / Σ Var x_s``, with
    x_s = 1 if b is right, conditions on each stratum's margins, so only the strata where a and b
    disagree contribute (E = ½, Var = ¼ each):

        χ² = (gained − lost)² / (gained + lost),  1 degree of freedom,

    McNemar's statistic on the disagreements pooled over seeds. No continuity correction.
    ``pairs``: one ``(correct_a, correct_b)`` per seed.
    """
    from scipy.stats import chi2

    gained = lost = 0
    for correct_a, correct_b in pairs:
        g, l = _discordant(correct_a, correct_b)
        gained, lost = gained + g, lost + l
    n = gained + lost
    statistic = (gained - lost) ** 2 / n if n else 0.0
    return {"gained": gained, "lost": lost, "seeds": len(pairs), "chi2": statistic,
            "p": float(chi2.sf(statistic, 1)) if n else 1.0, "test": "Cochran–Mantel–Haenszel (seed × question strata)"}


Z_POWER_80 = 0.841621  # one-sided 80 % normal quantile: power of the minimum detectable difference


def question_level_test(correct_a: Sequence[Sequence[int]], correct_b: Sequence[Sequence[int]],
                        resamples: int = 9999, seed: int = 0) -> dict[str, Any]:
    """Is b better than a, with the question as the unit? ``correct_a``/``correct_b``: one 0/1 list
    per seed, all on the same questions (seeds of a and b need not pair up).

    Each question q gets ``d_q = mean_seeds(b_q) − mean_seeds(a_q)``. The p-value is a paired
    permutation test over questions (``scipy.stats.permutation_test``, swapping a and b within a
    question, exact when ``resamples ≥ 2^n``), the interval a percentile bootstrap of mean d over
    questions. ``mdd``: the smallest true difference this n detects with 80 % power at α = 0.05
    (two-sided, normal approximation with the observed spread of d): ``(z_.975 + z_.8) · sd(d) / √n``.
    Unlike CMH over (seed, question) strata, a question answered by several seeds counts once.
    """
    import numpy as np
    from scipy import stats

    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"question_level_test needs one list per seed on the same questions: got shapes {a.shape} and {b.shape}")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    differences = mean_b - mean_a
    n = len(differences)
    out = {"difference": float(differences.mean()), "questions": n, "seeds": [len(a), len(b)],
           "test": "paired permutation over questions (seed-averaged correctness)"}
    if n < 2 or not differences.any():
        return {**out, "low": out["difference"], "high": out["difference"], "p": 1.0, "mdd": float("nan") if n < 2 else 0.0}
    rng = np.random.default_rng(seed)
    p = stats.permutation_test((mean_b, mean_a), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
                               n_resamples=resamples, vectorized=True, random_state=rng).pvalue
    ci = stats.bootstrap((differences,), np.mean, confidence_level=0.95, n_resamples=resamples, method="percentile",
                         random_state=rng).confidence_interval
    mdd = (Z_95 + Z_POWER_80) * float(differences.std(ddof=1)) / math.sqrt(n)
    return {**out, "low": float(ci.low), "high": float(ci.high), "p": float(p), "mdd": mdd}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (family-wise error), in the input order: the i-th smallest of m
    p-values becomes ``max_{j ≤ i} min(1, (m − j + 1) · p_(j))``."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
