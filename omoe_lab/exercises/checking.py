"""How a checker runs a learner's function: named cases, the library as the reference, one message.

A checker runs the learner's function and the library's own implementation on the same inputs,
case by case, and compares what came back. The first case that differs raises an AssertionError
whose message names the exercise and the case, says what was expected and what came back, and
gives the hint for that case; an exception inside the learner's function is reported the same
way, in one message. In Jupyter that message is all the learner sees (``CheckFailed``); pytest
hides the checker's own frames (``__tracebackhide__``).
A function that still raises ``NotImplementedError`` is *not yet solved*: one line says so and
nothing is raised, so a notebook run top to bottom reaches its end.

Everything runs under ``torch.random.fork_rng`` with a fixed seed: the cases are the same every
time, and checking leaves the notebook's own random numbers untouched.
"""
from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

CASE_SEED = 0


class CheckFailed(AssertionError):
    """A case the learner's function got wrong. IPython shows its message alone (its
    ``_render_traceback_`` hook), not a traceback through the checker."""

    def _render_traceback_(self) -> list[str]:
        return f"{type(self).__name__}: {self}".splitlines()


@dataclass(frozen=True)
class Mismatch:
    """What the reference gave and what the learner's function gave, in words."""

    expected: str
    got: str


Compare = Callable[[Any, Any], "Mismatch | None"]


@dataclass(frozen=True)
class Case:
    """One input to try: ``fn(*args, **kwargs)`` against ``reference(*args, **kwargs)``.

    ``compare(got, expected)`` returns None when they agree (default: ``close()``); ``through``
    turns a function into the quantity compared (the gradient of its output, say), applied to
    the learner's function and the reference alike.
    """

    name: str
    args: tuple
    hint: str
    kwargs: dict = field(default_factory=dict, kw_only=True)
    compare: Compare | None = field(default=None, kw_only=True)
    through: Callable[[Callable], Callable] | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class Exercise:
    """An exercise of a notebook: its number (``"2.1"``), its title, and the reference solution
    (``omoe_lab.exercises.solutions``) that ``show_solution`` prints and the switch swaps in."""

    number: str
    title: str
    solution: Callable

    @property
    def label(self) -> str:
        return f"Exercise {self.number} — {self.title}"

    def check(self, fn: Callable, reference: Callable, cases: Callable[[], Sequence[Case]],
              compare: Compare | None = None) -> Callable:
        """Run ``fn`` on every case of ``cases()``, comparing with ``compare`` (default ``close()``)
        unless the case has its own; return what the notebook goes on with: ``fn`` when it passes,
        the reference solution while it is not yet solved. Raises ``CheckFailed`` (an AssertionError)
        on the first case that fails."""
        __tracebackhide__ = True
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(CASE_SEED)
            built = list(cases())
            for index, case in enumerate(built, start=1):
                expected = _apply(case, reference)
                try:
                    got = _apply(case, fn)
                except NotImplementedError:
                    print(self._not_solved(index, case))
                    return self.solution
                except Exception as error:  # the learner's bug, reported as a failed case
                    raise CheckFailed(self._failure(index, len(built), case, Mismatch(
                        describe(expected), f"an exception, {type(error).__name__}: {error}{_where(error)}"))) from None
                mismatch = (case.compare or compare or close())(got, expected)
                if mismatch is not None:
                    raise CheckFailed(self._failure(index, len(built), case, mismatch)) from None
        whose = "the reference solution (OMOE_LAB_SOLUTIONS=1)" if fn is self.solution else self.solution.__name__
        print(f"✓ {self.label}: {whose} passes all {len(built)} cases ({'; '.join(case.name for case in built)})")
        return fn

    def _not_solved(self, index: int, case: Case) -> str:
        where = "" if index == 1 else f' (cases 1–{index - 1} pass; case {index}, "{case.name}", raised NotImplementedError)'
        return (f"not yet solved: {self.label}{where}. Fill in {self.solution.__name__} above and run the cell again; "
                f'the hint is below, show_solution("{self.number}") prints a solution. Until then the notebook goes on '
                "with the reference solution.")

    def _failure(self, index: int, total: int, case: Case, mismatch: Mismatch) -> str:
        """The one message a failed case raises: exercise, case, expected, got, hint."""
        return (f'{self.label}: case {index} of {total}, "{case.name}", fails.\n'
                f"  expected: {mismatch.expected}\n"
                f"  got:      {mismatch.got}\n"
                f"  hint:     {case.hint}")


def _where(error: Exception) -> str:
    """Where in the learner's code ``error`` was raised: the last frame outside this package and the
    installed libraries (torch's own frames say nothing about the learner's bug)."""
    package = str(Path(__file__).resolve().parents[1])
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not frame.filename.startswith((package, "<frozen")) and "site-packages" not in frame.filename]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (in {frame.name}, line {frame.lineno}: {frame.line})" if frame.line else f" (in {frame.name}, line {frame.lineno})"


def _apply(case: Case, fn: Callable) -> Any:
    """``fn`` (through ``case.through``) on fresh copies of the case's inputs: a function that
    writes into its inputs cannot change what the other one sees."""
    __tracebackhide__ = True
    call = case.through(fn) if case.through else fn
    return call(*_fresh(case.args), **_fresh(case.kwargs))


def _fresh(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    if isinstance(value, tuple):
        return tuple(_fresh(v) for v in value)
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    return value


# --- comparisons ----------------------------------------------------------------------------

def describe(value) -> str:
    """A value in a few words: a tensor's dtype and shape (and its value when it has one), a number."""
    if value is None:
        return "None — the function returned nothing (a missing return?)"
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return f"{value.item():.6g} (a {_dtype(value)} tensor of shape {tuple(value.shape)})"
        return f"a {_dtype(value)} tensor of shape {tuple(value.shape)}"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value!r} ({type(value).__name__})"


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def as_number(value) -> float | None:
    """A Python float from a number (Python, numpy) or a one-element tensor; None for anything else."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach())
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return float(value)
    return None


def close(atol: float = 1e-5, rtol: float = 1e-4) -> Compare:
    """Equal within ``|got − expected| ≤ atol + rtol·|expected|``: tensors entry by entry, numbers as numbers."""

    def compare(got, expected):
        if isinstance(expected, torch.Tensor) and expected.numel() > 1:
            return _compare_tensors(got, expected, atol, rtol)
        return _compare_numbers(got, expected, atol, rtol)

    return compare


def exactly() -> Compare:
    """Equal as numbers (counts)."""
    return close(atol=0.0, rtol=0.0)


def _compare_numbers(got, expected, atol: float, rtol: float) -> Mismatch | None:
    value, target = as_number(got), as_number(expected)
    if value is None:
        return Mismatch(describe(expected), f"{describe(got)}, not a number")
    if math.isnan(value) or math.isinf(value):
        return Mismatch(describe(expected), f"{value} (0/0 or a log of 0 somewhere?)")
    difference = abs(value - target)
    if difference <= atol + rtol * abs(target):
        return None
    if atol == rtol == 0:
        return Mismatch(describe(expected), describe(got))
    return Mismatch(describe(expected), f"{value:.6g} (|difference| {difference:.2g}, tolerance {atol:g} + {rtol:g}·|expected|)")


def tensor_problem(got, expected: torch.Tensor) -> Mismatch | None:
    """What is wrong with ``got`` before its values are compared: not a tensor, another shape, NaN or inf."""
    if not isinstance(got, torch.Tensor):
        return Mismatch(describe(expected), f"{describe(got)}, not a tensor")
    if got.shape != expected.shape:
        return Mismatch(f"shape {tuple(expected.shape)}", f"shape {tuple(got.shape)}")
    bad = ~torch.isfinite(got.detach())
    if bad.any():
        where = _index(bad)
        return Mismatch(describe(expected), f"{got[where].item()} at {list(where)}, {int(bad.sum())} non-finite entries "
                                            f"(0/0 or a log of 0 somewhere?)")
    return None


def _compare_tensors(got, expected: torch.Tensor, atol: float, rtol: float) -> Mismatch | None:
    problem = tensor_problem(got, expected)
    if problem:
        return problem
    got64, expected64 = got.detach().double(), expected.detach().double()
    difference = (got64 - expected64).abs()
    outside = difference > atol + rtol * expected64.abs()
    if not outside.any():
        return None
    where = _index(difference * outside)
    return Mismatch(
        f"{describe(expected)}, with {expected64[where].item():.6g} at {list(where)}",
        f"{got64[where].item():.6g} there: {int(outside.sum())} of {outside.numel()} entries differ by more than "
        f"{atol:g} + {rtol:g}·|expected| (the largest by {difference.max().item():.2g})",
    )


def _index(mask: torch.Tensor) -> tuple[int, ...]:
    """The index of the largest entry of ``mask`` (a bool or non-negative tensor)."""
    flat = int(mask.double().flatten().argmax())
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), mask.shape))
