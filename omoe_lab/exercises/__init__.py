"""Exercises for the notebooks: the learner writes a function, a checker says whether it is right.

In a notebook, an exercise is a stub and a checker call::

    @exercise("1.2")
    def linear_cka_by_hand(X, Y):
        raise NotImplementedError  # your code here

    linear_cka_by_hand = check_linear_cka(linear_cka_by_hand)

``check_<name>(fn)`` runs ``fn`` on several cases against the library's own implementation
(``checkers``) and

* prints ``✓ Exercise 1.2 — linear CKA: … passes all 5 cases (…)`` and returns ``fn`` when it is right;
* raises AssertionError (``CheckFailed``) naming the case that failed, what was expected, what came
  back, and a hint, when it is wrong; an exception inside ``fn`` is reported the same way, with the
  line of ``fn`` that raised it, and Jupyter shows that message alone, not a traceback;
* prints ``not yet solved: Exercise 1.2 — linear CKA …`` and returns the reference solution while
  ``fn`` still raises NotImplementedError, so a notebook run top to bottom reaches its end.

``show_solution("1.2")`` prints a reference solution (``solutions``). With ``OMOE_LAB_SOLUTIONS=1``
in the environment, ``@exercise`` replaces every stub by its solution: how the notebook tests run
the notebooks (``tests/notebook_support.py``), solved.
"""
from __future__ import annotations

import inspect
import os
from typing import Callable

from .checkers import (
    CHECKERS,
    EXERCISES,
    check_adapter_parameters,
    check_effective_rank,
    check_gram_schmidt,
    check_linear_cka,
    check_load_balancing_loss,
    check_lora_forward,
    check_mcnemar_p,
    check_mean_abs_cosine,
    check_merged_delta_w,
    check_mixture_parameters,
    check_moe_lora_forward,
    check_permutation_p,
    check_stiefel_error,
    check_top_k_gates,
)
from .checking import Exercise

SOLUTIONS_ENV = "OMOE_LAB_SOLUTIONS"


def solutions_enabled() -> bool:
    """Whether ``OMOE_LAB_SOLUTIONS`` asks for the reference solutions (``1``, ``true``, ``yes`` or ``on``)."""
    return os.environ.get(SOLUTIONS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def find(number: str) -> Exercise:
    """The exercise numbered ``number`` (``"2.2"``), or a ValueError listing them all."""
    try:
        return EXERCISES[str(number)]
    except KeyError:
        raise ValueError(f"no exercise {number!r}; the exercises are {', '.join(EXERCISES)}") from None


def exercise(number: str) -> Callable[[Callable], Callable]:
    """Decorate the learner's stub of exercise ``number``: it stays as written, unless
    ``OMOE_LAB_SOLUTIONS=1``, which puts the reference solution in its place."""
    chosen = find(number)

    def use(fn: Callable) -> Callable:
        return chosen.solution if solutions_enabled() else fn

    return use


def show_solution(number: str) -> None:
    """Print a reference solution of exercise ``number`` — for when you are stuck."""
    chosen = find(number)
    print(f"# {chosen.label}: a reference solution (omoe_lab/exercises/solutions.py)\n")
    print(inspect.getsource(chosen.solution))


__all__ = [
    "CHECKERS", "EXERCISES", "SOLUTIONS_ENV", "check_adapter_parameters", "check_effective_rank", "check_gram_schmidt",
    "check_linear_cka", "check_load_balancing_loss", "check_lora_forward", "check_mcnemar_p", "check_mean_abs_cosine",
    "check_merged_delta_w", "check_mixture_parameters", "check_moe_lora_forward", "check_permutation_p", "check_stiefel_error",
    "check_top_k_gates",
    "exercise", "find", "show_solution", "solutions_enabled",
]
