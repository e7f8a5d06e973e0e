"""pytest configuration for running the notebooks themselves:  pytest --nbval-lax notebooks/

Lax mode executes every cell top to bottom and fails on an error; stored outputs are not compared
(the notebooks are committed without outputs, and plots, timings and tqdm bars would never match
anyway; an exercise cell prints "not yet solved" or "✓" depending on the switch below). The kernel
inherits this process's environment, so the defaults set here reach the notebooks' own
``omoe_lab.experiments.profile_from_env()`` calls and their exercises' ``@exercise``.

``tests/test_notebooks.py`` runs the same command in a subprocess as part of ``make test``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

# The smallest profile unless the caller chose one: a notebook test must fit the CI budget.
os.environ.setdefault("OMOE_LAB_PROFILE", "ci")
# Exercises solved unless the caller chose otherwise: @exercise swaps the reference solution in for
# each stub (OMOE_LAB_SOLUTIONS=0 runs them as a learner first sees them: "not yet solved" lines).
os.environ.setdefault("OMOE_LAB_SOLUTIONS", "1")


def needs_default_model(notebook: Path) -> bool:
    """Whether a notebook loads the default model (02 works on synthetic tensors and needs none)."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return any('load_model("default"' in "".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")


def pytest_collection_modifyitems(config, items):
    """Skip the notebooks that load the default model, with the reason, when it is neither
    installed nor cached."""
    from omoe_lab.models import FIX_COMMAND, default_model_available

    if default_model_available():
        return
    skip = pytest.mark.skip(reason=f"this notebook uses the default model, which is neither installed nor cached: {FIX_COMMAND}")
    for item in items:
        path = Path(item.path).resolve()
        if HERE in path.parents and path.suffix == ".ipynb" and needs_default_model(path):
            item.add_marker(skip)
