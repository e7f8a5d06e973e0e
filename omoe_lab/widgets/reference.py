"""The committed sweep drawn under the learner's runs in ``ExpertCountExplorer``: reading a
sweep summary, naming its lines, and its dashed traces with their t intervals."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from .. import viz

REFERENCE_PREFIX = "sweep · "  # every reference trace's name starts so: the learner's lines never share a name
REFERENCE_GROUP, OWN_GROUP = "reference", "yours"  # legend groups: the committed sweep, the learner's runs
_EXPERTS_IN_LABEL = re.compile(r"\s*\bE=\d+\b")


def repository_root() -> Path:
    """The folder above the ``omoe_lab`` package: the checkout, for an editable install."""
    return Path(__file__).resolve().parents[2]


def shown_path(path) -> str:
    """``path`` as a learner would name it from the checkout: relative to the repository root
    (``../shared/data/commonsense``), never an absolute path of this machine. A name that is no
    path here (``"hub"``) is shown as given."""
    import os

    return os.path.relpath(Path(path).resolve(), repository_root()) if Path(path).exists() else str(path)


def load_reference(reference) -> tuple[dict | None, str, str | None]:
    """``(summary, source, problem)`` of a sweep summary given as a loaded dict or a path.

    A relative path is looked up from the working directory, then from the repository root (a
    notebook runs in ``notebooks/``, the summaries live in ``results/``). ``problem`` says, in
    one line, why there is no summary (file missing, not JSON, not a sweep summary); it is
    ``None`` when ``summary`` is usable.
    """
    if isinstance(reference, dict):
        source, summary = "the summary passed in", reference
    else:
        path = Path(reference)
        tried = [path] if path.is_absolute() else [path, repository_root() / path]
        found = next((p for p in tried if p.is_file()), None)
        source = str(reference)
        if found is not None and found.resolve().is_relative_to(repository_root()):  # named as the repository names it
            source = str(found.resolve().relative_to(repository_root()))
        if found is None:
            where = " or ".join(str(p) for p in dict.fromkeys(p.resolve() for p in tried))
            return None, source, f"{source} was not found (looked for {where})"
        try:
            summary = json.loads(found.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            return None, source, f"{source} could not be read: {type(error).__name__}: {error}"
    arms = summary.get("arms") if isinstance(summary, dict) else None
    if not isinstance(arms, list) or not all(isinstance(a, dict) and "accuracy" in a and "config" in a for a in arms):
        return None, source, f"{source} is not a sweep summary (omoe_lab.sweep.summarize_sweep: 'arms' with 'config' and 'accuracy')"
    return summary, source, None


def reference_series_name(arm: dict) -> str:
    """The reference line an arm belongs to: its label without the expert count
    (``"MoE-LoRA E=8 top-2"`` → ``"MoE-LoRA top-2"``), so expert counts of one kind join one line."""
    return _EXPERTS_IN_LABEL.sub("", str(arm.get("label") or arm.get("arm"))).strip(" ,")


def reference_frame(summary: dict) -> pd.DataFrame:
    """One row per arm of a sweep summary: ``series``, ``arm``, ``method``, ``num_experts`` and the
    overall accuracy's mean and 95 % Student-t interval over seeds (``low``, ``high``, ``seeds``)."""
    rows = []
    for arm in summary["arms"]:
        accuracy = arm["accuracy"]["all"]
        rows.append({
            "series": reference_series_name(arm), "arm": arm.get("arm"), "label": arm.get("run_label") or arm.get("label"),
            "method": arm["config"]["method"], "num_experts": int(arm["config"]["num_experts"]),
            "mean": accuracy["mean"], "low": accuracy["low"], "high": accuracy["high"], "seeds": len(accuracy.get("values", [])),
        })
    return pd.DataFrame(rows, columns=["series", "arm", "label", "method", "num_experts", "mean", "low", "high", "seeds"])


def reference_caption(summary: dict, source: str) -> str:
    """One line (HTML) that says what the reference is: file, setting, profile, seeds, questions, scoring."""
    meta = summary.get("meta", {})
    seeds = meta.get("seeds") or []
    per_task = meta.get("n_per_task") or {}
    questions = f"n = {meta['n']} test questions" if "n" in meta else "test questions"
    if per_task:
        questions += f" ({', '.join(f'{html.escape(str(t))} {c}' for t, c in per_task.items())})"
    scoring = ", ".join(str(meta[k]) + suffix for k, suffix in (("protocol", ""), ("prompt_style", " prompt")) if meta.get(k))
    parts = [f"<b>reference</b> (dashed): <code>{html.escape(source)}</code>",
             f"setting <b>{html.escape(str(meta.get('setting', '?')))}</b>",
             f"profile <b>{html.escape(str(meta.get('profile', '?')))}</b>",
             f"seeds {', '.join(map(str, seeds))}" if seeds else "seeds ?", questions]
    if scoring:
        parts.append(html.escape(scoring))
    parts.append("bars: 95 % Student-t intervals over seeds")
    return " · ".join(parts)


def reference_traces(summary: dict, x_range: tuple[float, float]) -> list[go.Scatter]:
    """The sweep's accuracy against experts as dashed lines with their t intervals, named
    ``"sweep · …"`` and grouped apart from the learner's runs.

    Each kind of arm (method, routing, start; ``reference_series_name``) is one line over its
    expert counts, nudged sideways a little so that intervals at the same E stay readable (the
    hover says the true E). LoRA, whose sweep arm has the mixtures' A/B budget (rank E·r) rather
    than an expert count, and zero-shot (the runs' own prompt style, per-token mean) are
    horizontal lines across ``x_range``. Each line has its method's colour (``viz.series_style``),
    dashed (dash-dotted under top-k routing), and goes in the second legend (``legend2``).
    """
    frame = reference_frame(summary)
    meta = summary.get("meta", {})
    seeds_text = ", ".join(map(str, meta.get("seeds") or [])) or "?"
    group = dict(legend="legend2", legendgroup=REFERENCE_GROUP, legendgrouptitle_text=(
        f"dashed: the sweep {html.escape(str(meta.get('setting', '?')))}, profile {html.escape(str(meta.get('profile', '?')))}, "
        f"seeds {seeds_text} (bars: 95 % t)"))
    seeds = len(meta.get("seeds") or []) or None
    traces: list[go.Scatter] = []
    routed = frame[frame["method"] != "lora"]
    names = list(dict.fromkeys(routed["series"]))
    # a line spans expert counts: its look is its method's, routing and start, not one E's shade
    configs = {}
    for arm in summary["arms"]:
        configs.setdefault(reference_series_name(arm), {k: v for k, v in arm["config"].items() if k != "num_experts"})
    styles = viz.series_styles(names, {name: {"label": name, "config": configs[name]} for name in names})
    for index, name in enumerate(names):
        rows = routed[routed["series"] == name].sort_values("num_experts")
        style = styles[name]
        offset = 0.07 * (index - (len(names) - 1) / 2)
        traces.append(go.Scatter(
            x=rows["num_experts"] + offset, y=100 * rows["mean"], mode="lines+markers", name=REFERENCE_PREFIX + name,
            line=dict(color=style.color, width=1.5, dash="dashdot" if style.pattern else "dash"),
            marker=dict(size=8, symbol="diamond-open"),
            error_y=dict(type="data", symmetric=False, array=100 * (rows["high"] - rows["mean"]),
                         arrayminus=100 * (rows["mean"] - rows["low"]), thickness=1),
            customdata=rows[["num_experts", "low", "high", "seeds"]].to_numpy(dtype=float) * [1, 100, 100, 1],
            hovertemplate=f"{html.escape(name)} (sweep)<br>E = %{{customdata[0]:.0f}}: %{{y:.1f}} %"
                          f"<br>95 % t interval %{{customdata[1]:.1f}} – %{{customdata[2]:.1f}} (%{{customdata[3]:.0f}} seeds)<extra></extra>",
            **group,
        ))
    flat = [(f"{row.label} (E·r budget)", row.mean, row.low, row.high, viz.method_color("lora"), "dash")
            for row in frame[frame["method"] == "lora"].itertuples()]
    ways, prompt = summary.get("baselines", {}).get("ways", {}), meta.get("prompt_style")
    if prompt and f"{prompt}/mean" in ways:
        flat.append((f"zero-shot ({prompt}/mean)", ways[f"{prompt}/mean"]["accuracy"], None, None, viz.method_color("none"), "dot"))
    low_x, high_x = x_range
    for name, mean, low, high, color, dash in flat:
        interval = f"<br>95 % t interval {100 * low:.1f} – {100 * high:.1f} ({seeds} seeds)" if low is not None else ""
        traces.append(go.Scatter(
            x=[low_x, high_x], y=[100 * mean] * 2, mode="lines", name=REFERENCE_PREFIX + name,
            line=dict(color=color, width=1.5, dash=dash),
            hovertemplate=f"{html.escape(name)} (sweep): %{{y:.1f}} %{interval}<extra></extra>", **group,
        ))
        if low is not None:  # the interval as a faint band around the line
            traces.append(go.Scatter(
                x=[low_x, high_x, high_x, low_x], y=[100 * low, 100 * low, 100 * high, 100 * high], mode="lines",
                fill="toself", fillcolor=viz._transparent(color, 0.12), line=dict(width=0), hoverinfo="skip",
                name=REFERENCE_PREFIX + name + " interval", showlegend=False, **{**group, "legendgrouptitle_text": None},
            ))
    return traces
