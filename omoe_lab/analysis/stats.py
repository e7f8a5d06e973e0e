"""Intervals and paired tests for accuracies: how sure is a difference between two scorers?

- ``wilson_interval``: one run's accuracy over n questions (binomial, Wilson score interval).
- ``t_interval``: the mean accuracy over seeds (Student-t on the seed means; seeds are the unit
  of replication, so this interval includes training noise, which a per-question interval hides).
- ``paired_test``: two scorers on the same questions (exact McNemar).
- ``cmh_test``: the same comparison repeated over seeds, combined (Cochran–Mantel–Haenszel).
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
