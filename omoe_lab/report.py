"""The demo's deliverable: one self-contained HTML report plus a machine-readable ``metrics.json``.

``write_report(results, out_dir)`` turns finished runs (``experiments.RunResult``) into eight
sections — headline accuracy (with the zero-shot baselines), accuracy per task, training curves,
expert diversity (with the random-start control and diversity over training), t-SNE, routing
(with routing by task), the Stiefel check, configuration — each opened by a plain-language
paragraph on what to look at.

``report_content`` computes what each section shows (every number and verdict sentence comes
from the runs passed in; the sentences from ``findings``); the Jinja2 templates in
``omoe_lab/templates`` lay it out, with autoescaping on. The figures come from ``viz`` so the
report, the notebooks and the widgets look the same; plotly.js is inlined once, so the file
opens offline.
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from . import __version__
from .experiments import RunResult
from .findings import compare_with_zero_shot, format_p_value, paired_with_zero_shot  # noqa: F401 (public here too)
from .io import atomic_write_text
from .report_content import SECTIONS, Report, build_report  # noqa: F401 (SECTIONS: public here too)

TEMPLATE = "report.html.j2"


def environment_info() -> dict[str, Any]:
    """Versions, platform, CPU/threads and CUDA device behind a report (absent packages: None)."""
    import torch

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "accelerate": version("accelerate"),
        "omoe_lab": __version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def write_report(
    results: Sequence[RunResult],
    out_dir: str | os.PathLike,
    *,
    title: str = "omoe_lab demo",
    notes: str | None = None,
    environment: dict | None = None,
) -> Path:
    """Write ``report.html`` and ``metrics.json`` into ``out_dir`` (created if missing); return the HTML path.

    Each file is written atomically (a temporary file renamed over the target), so a reader
    never sees half a report. Raises ValueError without runs, OSError naming the folder when it
    cannot be written.
    """
    # zero-shot first everywhere: it is the baseline every other row is read against
    results = sorted(results, key=lambda r: r.config.get("method") != "none")
    if not results:
        raise ValueError("write_report needs at least one RunResult")
    environment = environment if environment is not None else environment_info()
    report = build_report(results, title=title, notes=notes, environment=environment)
    page = render_html(report)
    metrics = metrics_json(report)

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "metrics.json", metrics)
        return atomic_write_text(out_dir / "report.html", page)
    except OSError as error:
        raise OSError(f"cannot write the report into {out_dir}: {error.strerror or error}") from error


def render_html(report: Report) -> str:
    """The report as one HTML page (plotly.js inlined with the page's first figure)."""
    environment = Environment(
        loader=PackageLoader("omoe_lab", "templates"), autoescape=True, undefined=StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )
    # a fresh one per page: whether plotly.js was inlined yet is the state of one page
    environment.globals["figure"] = _FigureDivs()
    return environment.get_template(TEMPLATE).render(report=report)


class _FigureDivs:
    """Turns figures into HTML divs, inlining plotly.js with the first one only (templates call
    it in page order, so the first figure drawn is the first on the page)."""

    def __init__(self) -> None:
        self.plotly_included = False

    def __call__(self, fig: go.Figure) -> Markup:
        div = fig.to_html(
            full_html=False, include_plotlyjs=False if self.plotly_included else "inline",
            config={"displaylogo": False, "responsive": True},
        )
        self.plotly_included = True
        return Markup(f'<div class="figure">{div}</div>')  # plotly's own HTML, its JSON escaped by plotly


def metrics_json(report: Report) -> str:
    """``metrics.json``: strict JSON (NaN, e.g. an interval over 0 examples, becomes null; numpy scalars plain numbers)."""
    return json.dumps(_jsonable(report.metrics), indent=1, allow_nan=False) + "\n"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
