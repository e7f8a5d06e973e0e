"""What the notebook tests and the browser test share: one run cache per test session, and the
environment a notebook's kernel gets."""
from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def shared_runs(tmp_path_factory) -> Path:
    """The ``OMOE_LAB_RUNS`` folder of every notebook test and the browser test of this session.

    Fresh every session (under pytest's temporary folder), so a developer's cache is never
    replayed and every run a notebook needs really trains once; shared within the session, so a
    run that two notebooks (or nbval and the browser test) both need trains only once — notebook
    05's explorer replays the OMoE run notebook 04 trained, and the other way round.
    """
    folder = tmp_path_factory.getbasetemp() / "notebook-runs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def notebook_environment(runs: Path) -> dict[str, str]:
    """The environment of a notebook under test: the ``ci`` profile, the shared run cache, the
    committed sweep summary (a developer's ``OMOE_LAB_SWEEP`` would point the notebooks elsewhere),
    and every exercise solved (``OMOE_LAB_SOLUTIONS=1``: ``@exercise`` swaps in the reference
    solutions, so the cells after an exercise run on a passing function; ``tests/test_exercises.py``
    runs the stubs unsolved)."""
    env = {**os.environ, "OMOE_LAB_PROFILE": "ci", "OMOE_LAB_RUNS": str(runs), "OMOE_LAB_SOLUTIONS": "1"}
    env.pop("OMOE_LAB_SWEEP", None)
    return env


def needs_default_model(notebook: Path) -> bool:
    """Whether a notebook loads the default model (02, 03 and 06 need none)."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return any('load_model("default"' in "".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")
