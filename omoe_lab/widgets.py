"""JupyterLab explorers: move a control, watch expert collapse (MoE-LoRA) or diversity (OMoE).

- ``ExpertCountExplorer`` trains (or replays from the cache) one configuration per click through
  ``omoe_lab.experiments.run`` and redraws accuracy against the number of experts (every run of
  the session, the latest ringed) over a committed sweep's curve as a reference, the CKA heatmap
  of a chosen adapted layer and the t-SNE of the experts' outputs.
- ``LayerExplorer`` looks inside an already-trained model, one adapted layer at a time: expert
  similarity (CKA, mean |cosine|), routing (load per task, entropy) and the Stiefel check, on
  the scored prompts, captured exactly as the runs' own analysis captures them.
- ``GramSchmidtGeometry`` draws three expert outputs in 3-D and what Gram–Schmidt makes of them
  (modes, expert order, redundancy), straight from ``adapters.gram_schmidt``.

None computes anything of its own: runs come from ``experiments``, measures from ``analysis``,
Gram–Schmidt from ``adapters``, figures from ``viz``, so a number seen here is the number in the
report. Building and displaying them runs nothing heavy and needs no frontend, so notebooks
executed headless (nbval, nbclient) do not block; the figures are plotly ``FigureWidget``s when
anywidget is available, else plain figures redrawn inside an ``Output``.
"""
from __future__ import annotations

import copy
import dataclasses
import html
import itertools
import json
import math
import re
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import torch

from . import experiments, viz
from .adapters.config import ORTHOGONALIZE_MODES
from .adapters.orthogonal import gram_schmidt
from .analysis import (
    capture_experts, cka_matrix, expert_effective_rank, expert_load, mean_pairwise_cosine, routing_entropy,
    direction_stiefel_error, routing_summary,
)
from .analysis.diversity import layer_diversity, off_diagonal_mean
from .experiments import RunConfig, RunResult
from .inject import adapter_layers, load_adapters

METHOD_CHOICES = (("MoE-LoRA (vanilla)", "moe"), ("OMoE (Gram–Schmidt)", "omoe"), ("LoRA (E = 1 reference)", "lora"))
ROUTING_CHOICES = (("soft", "soft"), ("top-k", "top_k"))
# ipywidgets cuts a description at ~80 px ("orthogona…"); "initial" sizes it to its text
LABEL_STYLE = {"description_width": "initial"}


# --- figures that redraw in place ----------------------------------------------------------
class LiveFigure:
    """A plotly figure panel, shown once and redrawn in place by ``show`` (or ``update``).

    ``figure`` is a ``go.FigureWidget`` (and ``widget`` the same object) when one can be made;
    otherwise ``figure`` is a ``go.Figure`` and ``widget`` an ``Output`` whose single display is
    replaced on every redraw. ``size`` (plotly ``width``/``height``) is applied to every figure
    shown, since a new figure brings its own layout.

    The browser keeps its own copy of a FigureWidget's figure, and two things about that copy
    decide how a redraw is sent:

    - edits reach it as plotly.js relayout/restyle messages, which *merge* into it: a layout key
      the new figure does not set is not removed, so a placeholder's annotation (and its hidden
      axes) would stay printed over the real plot. ``show`` therefore first sends ``null`` for
      every layout property the new figure leaves out, which plotly.js resets to its default;
    - a page that is reloaded, or a notebook reopened while its kernel runs, draws the figure
      from the widget model's synced state (``_widget_data``/``_widget_layout``), which plotly
      writes only when a FigureWidget is made. Both methods write it after every redraw.

    The FigureWidget itself is kept, not replaced by a new one: each new FigureWidget sends the
    browser plotly.js again (anywidget's ~5 MB ``_esm``), which it evaluates once more.
    ``update`` is for figures that keep their traces (a slider moving an arrow): it edits their
    properties in place (no flicker, and a 3-D scene keeps the camera the user chose).
    """

    def __init__(self, figure: go.Figure, **size):
        self.size = size
        figure.update_layout(**size)
        try:
            self.figure = go.FigureWidget(figure)
            self.widget, self.live = self.figure, True
        except Exception:  # FigureWidget needs anywidget and its frontend stack; a static figure still teaches
            self.figure, self.widget, self.live = figure, widgets.Output(), False
            self._render()

    def show(self, figure: go.Figure) -> None:
        """Replace what is drawn by ``figure`` (which is resized, not copied: templates are slow to copy)."""
        figure.update_layout(**self.size)
        if not self.live:
            self.figure = figure
            self._render()
            return
        # what the new layout leaves out is cleared first: an array (annotations, shapes) set to [],
        # anything else to null, which plotly.js resets to its default
        stale = {path: [] if isinstance(value, (list, tuple)) else None
                 for path, value in stale_layout_paths(self.figure.layout.to_plotly_json(), figure.layout.to_plotly_json())}
        with self.figure.batch_update():  # one message to the frontend, not one per trace
            self.figure.data = []
            self.figure.add_traces(list(figure.data))
        if stale:
            self.figure.plotly_relayout(stale)
        self.figure.layout = figure.layout
        self._sync_state()

    def update(self, figure: go.Figure) -> None:
        """Like ``show``, but edits the drawn traces in place when ``figure`` has the same kinds of
        traces in the same order (every property it sets is sent; the template is not)."""
        figure.update_layout(**self.size)
        if not self.live or [t.type for t in self.figure.data] != [t.type for t in figure.data]:
            self.show(figure)
            return
        with self.figure.batch_update():  # one message to the frontend
            for drawn, new in zip(self.figure.data, figure.data):
                props = new.to_plotly_json()
                props.pop("type"), props.pop("uid", None)
                drawn.update(props)
            layout = figure.layout.to_plotly_json()
            layout.pop("template", None)
            self.figure.layout.update(layout)
        self._sync_state()

    def _sync_state(self) -> None:
        """Write the figure as it is now into the state a reloaded page draws from."""
        if hasattr(self.figure, "_widget_data"):  # plotly >= 6 (anywidget); older FigureWidgets kept no such state
            self.figure._widget_data = copy.deepcopy(self.figure._data)
            self.figure._widget_layout = copy.deepcopy(self.figure._layout_obj._props)

    def _render(self) -> None:
        # Written as an output record rather than with display(): display() outside a kernel
        # prints the figure's repr, and JupyterLab renders this MIME type natively.
        bundle = pio.renderers["plotly_mimetype"].to_mimebundle(self.figure.to_dict())
        bundle["text/plain"] = f"<plotly figure: {self.figure.layout.title.text or 'untitled'}>"
        self.widget.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)


def stale_layout_paths(old: dict, new: dict, prefix: str = ""):
    """``(dotted path, old value)`` of what layout ``old`` sets and ``new`` does not
    (``"annotations"``, ``"xaxis.visible"``), the template aside (every figure here uses
    ``viz.TEMPLATE``). Arrays such as ``annotations`` count as one value: a new array replaces
    the old one whole."""
    for key, value in old.items():
        if not prefix and key == "template":
            continue
        if key not in new:
            yield prefix + key, value
        elif isinstance(value, dict) and isinstance(new[key], dict):
            yield from stale_layout_paths(value, new[key], f"{prefix}{key}.")


def placeholder(title: str, message: str) -> go.Figure:
    """An empty figure that says why it is empty."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14, color="#666666"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig.update_layout(template=viz.TEMPLATE, title_text=title)


def redraw(plot: LiveFigure, figure: go.Figure) -> None:
    """Draw ``figure`` in ``plot`` in the order plotly.js takes without an error.

    Category axes that list tick values (``viz.cka_heatmap``'s) fail in plotly.js ("ax.dtick
    error: Infinity") whenever they are drawn without the data they list: a heatmap replaced by
    one of another size, or removed, or a placeholder's axes receiving a heatmap's layout before
    its trace. So: a heatmap replacing a heatmap is edited in place, with its layout, in one
    message (``LiveFigure.update``); a figure without traces (a placeholder) takes its layout first
    and then loses the old traces; anything else gets its traces first (``LiveFigure.show``).
    """
    heatmaps = [t.type for t in plot.figure.data] == [t.type for t in figure.data] == ["heatmap"]
    if not plot.live or not plot.figure.data or figure.data:
        (plot.update if heatmaps else plot.show)(figure)
        return
    figure.update_layout(**plot.size)
    stale = {path: [] if isinstance(value, (list, tuple)) else None
             for path, value in stale_layout_paths(plot.figure.layout.to_plotly_json(), figure.layout.to_plotly_json())}
    if stale:
        plot.figure.plotly_relayout(stale)
    plot.figure.layout = figure.layout
    plot.figure.data = []
    plot._sync_state()


def with_subtitle(figure: go.Figure, title: str, subtitle: str) -> go.Figure:
    """A title and a smaller line under it, as plotly's own subtitle: a ``<br><sub>`` title under
    ``viz.TEMPLATE``'s container-anchored, auto-margined title loses its first line in plotly.js."""
    return figure.update_layout(title=dict(text=title, subtitle=dict(text=subtitle)))


def _error_text(error: BaseException) -> str:
    return html.escape(f"{type(error).__name__}: {error}")


def _number(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def layer_metrics_html(row: dict) -> str:
    """One line of a layer's measures (an ``experiments.analyse_experts`` row, or the same keys).

    Mean |cosine| is per token, CKA across tokens (OMOE_SPEC §6): OMoE's Gram–Schmidt makes the
    q_i orthogonal per token, but these measures are taken on the raw e_i, where diversity is
    learned, not imposed.
    """
    experts = row.get("experts")
    parts = [f"<b>{html.escape(viz.layer_label(row['layer'], row.get('block')))}</b>"]
    if experts is not None:
        parts.append(f"{experts} expert{'s' if experts != 1 else ''}")
    if row.get("tokens") is not None:
        parts.append(f"{row['tokens']} tokens")
    measures = (
        ("mean |cosine| of raw outputs", "mean_abs_cosine", ""),
        ("mean off-diagonal CKA", "mean_cka", ""),
        ("effective rank", "effective_rank", f" of {experts}" if experts else ""),
        ("routing entropy / log E", "routing_entropy", ""),
        ("Stiefel error", "stiefel_error", ""),
    )
    for name, key, suffix in measures:
        if key in row:
            parts.append(f"{name}: {_number(row[key])}{suffix}")
    for name, message in row.get("undefined", {}).items():
        parts.append(f"{html.escape(name)}: undefined ({html.escape(message)})")
    if experts == 1:
        parts.append("a single expert has nothing to be similar to")
    return " · ".join(parts)


# --- accuracy against the number of experts --------------------------------------------------
def series_name(config: dict) -> str:
    """The accuracy line a run belongs to: its method, split off by routing and by
    orthogonalization when they differ from soft and ``"stiefel"``, so that variants never
    average together as if they were seeds of one configuration."""
    method = config["method"]
    variant = []
    if config.get("top_k"):
        variant.append(f"top-{config['top_k']}")
    if method == "omoe" and config.get("orthogonalize") not in (None, "stiefel"):
        variant.append(config["orthogonalize"])
    return method if not variant else f"{viz.method_label(method)} ({', '.join(variant)})"


def accuracy_frame(results: Sequence[RunResult]) -> pd.DataFrame:
    """Overall accuracy per run (``experiments.results_table``, task ``"all"``) with ``method``
    replaced by ``series_name``: the input of ``viz.accuracy_vs_experts``."""
    table = experiments.results_table(results)
    overall = table[table["task"] == "all"].reset_index(drop=True)
    overall["method"] = [series_name(r.config) for r in results]  # one "all" row per run, in order
    return overall


LATEST_RUN = "this run"  # the legend name of the ring around the latest run's point


def ring_latest_run(figure: go.Figure, row: pd.Series, label: str, how: str) -> go.Figure:
    """Mark one run on a ``viz.accuracy_vs_experts`` figure: its line drawn wider, the other
    lines faded, and an open ring at the run's own accuracy (``row``: its ``accuracy_frame`` row).
    Pressing Run on a configuration already drawn changes no point, so the ring is what moves."""
    series = viz.method_label(row["method"])  # the trace name accuracy_vs_experts gives the series
    color = "#222222"
    for trace in figure.data:
        if trace.name == series:
            trace.line.width, color = 4, trace.line.color or color
        else:
            trace.opacity = 0.45
    figure.add_trace(go.Scatter(
        x=[row["num_experts"]], y=[100 * row["accuracy"]], mode="markers", name=LATEST_RUN,
        marker=dict(symbol="circle-open", size=22, color=color, line=dict(width=3, color=color)),
        hovertemplate=f"{html.escape(label)} ({how})<br>%{{x}} experts: %{{y:.1f}} %<extra></extra>",
    ))
    return figure


# --- the committed sweep as a reference curve ----------------------------------------------------
REFERENCE_PREFIX = "sweep · "  # every reference trace's name starts so: the learner's lines never share a name
REFERENCE_GROUP, OWN_GROUP = "reference", "yours"  # legend groups: the committed sweep, the learner's runs
_EXPERTS_IN_LABEL = re.compile(r"\s*\bE=\d+\b")


def repository_root() -> Path:
    """The folder above the ``omoe_lab`` package: the checkout, for an editable install."""
    return Path(__file__).resolve().parents[1]


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
    horizontal lines across ``x_range``.
    """
    frame = reference_frame(summary)
    meta = summary.get("meta", {})
    seeds_text = ", ".join(map(str, meta.get("seeds") or [])) or "?"
    group = dict(legendgroup=REFERENCE_GROUP, legendgrouptitle_text=(
        f"dashed: the sweep {html.escape(str(meta.get('setting', '?')))}, profile {html.escape(str(meta.get('profile', '?')))}, "
        f"seeds {seeds_text} (bars: 95 % t)"))
    seeds = len(meta.get("seeds") or []) or None
    traces: list[go.Scatter] = []
    routed = frame[frame["method"] != "lora"]
    names = list(dict.fromkeys(routed["series"]))
    colors = viz.series_colors(names)
    for index, name in enumerate(names):
        rows = routed[routed["series"] == name].sort_values("num_experts")
        method = rows["method"].iloc[0]
        # the plain soft mixture of a method has the method's colour, as the learner's line of it does
        color = viz.METHOD_COLORS.get(method) if name == f"{viz.method_label(method)} soft" else colors[name]
        offset = 0.07 * (index - (len(names) - 1) / 2)
        traces.append(go.Scatter(
            x=rows["num_experts"] + offset, y=100 * rows["mean"], mode="lines+markers", name=REFERENCE_PREFIX + name,
            line=dict(color=color or colors[name], width=1.5, dash="dash"), marker=dict(size=8, symbol="diamond-open"),
            error_y=dict(type="data", symmetric=False, array=100 * (rows["high"] - rows["mean"]),
                         arrayminus=100 * (rows["mean"] - rows["low"]), thickness=1),
            customdata=rows[["num_experts", "low", "high", "seeds"]].to_numpy(dtype=float) * [1, 100, 100, 1],
            hovertemplate=f"{html.escape(name)} (sweep)<br>E = %{{customdata[0]:.0f}}: %{{y:.1f}} %"
                          f"<br>95 % t interval %{{customdata[1]:.1f}} – %{{customdata[2]:.1f}} (%{{customdata[3]:.0f}} seeds)<extra></extra>",
            **group,
        ))
    flat = [(f"{row.label} (E·r budget)", row.mean, row.low, row.high, viz.METHOD_COLORS["lora"], "dash")
            for row in frame[frame["method"] == "lora"].itertuples()]
    ways, style = summary.get("baselines", {}).get("ways", {}), meta.get("prompt_style")
    if style and f"{style}/mean" in ways:
        flat.append((f"zero-shot ({style}/mean)", ways[f"{style}/mean"]["accuracy"], None, None, "#999999", "dot"))
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


# --- the experiment explorer ------------------------------------------------------------------
CONTROLLED_FIELDS = ("method", "num_experts", "top_k", "orthogonalize", "seed", "profile")  # RunConfig fields the controls set


class ExpertCountExplorer:
    """Pick experts, method, routing, orthogonalization and seed; Run; compare.

    Each click builds a ``RunConfig`` for ``profile`` and calls ``run_fn(config)`` (default:
    ``omoe_lab.experiments.run`` with ``cache_dir``; a finished configuration replays from the
    cache at once, and the status line says so). The three figures then redraw: accuracy against
    experts for every run of this session (one line per method, the latest run ringed), the CKA
    heatmap of the layer picked in the layer menu (filled from the run's adapted layers; changing
    it redraws without re-running), and the t-SNE of the top adapted layer's expert outputs (the
    only layer a run maps; the titles say which layer each panel shows). LoRA is the E = 1
    reference: one rank-r adapter, drawn at one expert. A failing run is reported in the status
    line and the run log, never raised into the notebook.

    ``model``/``tokenizer``: a loaded base model to reuse across runs (else the first run that is
    not cached loads one, and the explorer keeps it for the next); with a model, runs share one
    frozen-prefix cache. Display the explorer itself or ``.widget``; ``run()`` does what the button
    does, for scripted notebooks.

    ``reference``: a sweep summary (``omoe_lab.sweep``, e.g. ``"results/sweep-real-quick.json"``,
    a path or the loaded dict) drawn from the start as dashed lines with their 95 % t intervals
    over seeds, and named by a line above the plot (setting, profile, seeds, questions). The
    learner's runs are drawn as their own solid lines, under this explorer's profile, and are
    never averaged with the reference's arms, whatever their configuration. A missing or
    unreadable file leaves a note saying so, and only the learner's runs are drawn.

    ``run_options``: further ``RunConfig`` fields of every run (``tasks``, ``data_dir``,
    ``eval_per_task``, ...), e.g. to run on the reference's tasks; the controls set the rest.
    """

    def __init__(
        self,
        profile: str | None = None,
        cache_dir=None,
        run_fn: Callable[[RunConfig], RunResult] | None = None,
        *,
        model=None,
        tokenizer=None,
        max_experts: int = 8,
        reference=None,
        run_options: dict | None = None,
    ):
        self.profile = experiments.profile_from_env(profile).name  # fixed now, so every run of the session matches
        self.cache_dir = cache_dir
        self.run_options = dict(run_options or {})
        fields = {f.name for f in dataclasses.fields(RunConfig)}
        unknown, controlled = sorted(set(self.run_options) - fields), sorted(set(self.run_options) & set(CONTROLLED_FIELDS))
        if unknown or controlled:
            raise ValueError(f"run_options: {'unknown RunConfig fields ' + str(unknown) if unknown else ''}"
                             f"{'; ' if unknown and controlled else ''}"
                             f"{str(controlled) + ' are set by the controls' if controlled else ''}")
        RunConfig(profile=self.profile, **self.run_options).check()  # bad options fail now, not at the first press
        self.reference, self.reference_source, self.reference_problem = (None, None, None) if reference is None else load_reference(reference)
        self._run_fn = run_fn or self._run_with_experiments
        self._model, self._tokenizer = model, tokenizer
        # every run of the session adapts the same top blocks, so one frozen-prefix cache serves all
        self._prefix = experiments.frozen_prefix_for(model, RunConfig(profile=self.profile, **self.run_options)) if model is not None else None
        self.results: dict[str, RunResult] = {}  # by config key: a replayed run replaces itself
        self.result: RunResult | None = None
        self.presses = 0  # runs asked for in this session, failed ones included
        self._filling_layers = False

        self.experts = widgets.IntSlider(value=4, min=1, max=max_experts, description="experts E", style=LABEL_STYLE)
        self.method = widgets.Dropdown(options=METHOD_CHOICES, value="omoe", description="method", style=LABEL_STYLE)
        self.routing = widgets.ToggleButtons(options=ROUTING_CHOICES, value="soft", description="routing", style=LABEL_STYLE)
        self.top_k = widgets.IntSlider(value=2, min=1, max=4, description="k", disabled=True, style=LABEL_STYLE)
        self.orthogonalize = widgets.Dropdown(options=ORTHOGONALIZE_MODES, value="stiefel", description="orthogonalize",
                                              style=LABEL_STYLE)
        self.seed = widgets.BoundedIntText(value=0, min=0, max=1_000_000, description="seed", style=LABEL_STYLE,
                                           layout=widgets.Layout(width="150px"))
        self.layer = widgets.Dropdown(options=[], description="layer", disabled=True, style=LABEL_STYLE)
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play",
                                         tooltip="train this configuration, or replay it from the cache")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="", layout=widgets.Layout(width="160px"))
        self.status = widgets.HTML(f"profile <b>{self.profile}</b>: choose a configuration and press Run.")
        self.reference_note = widgets.HTML(self._reference_note())
        self.layer_metrics = widgets.HTML("")
        self.log = widgets.Output()  # training progress bars and tracebacks land here

        start = self._accuracy_figure([]) if self.reference else placeholder("Accuracy against the number of experts", "no runs yet: press Run")
        self.accuracy_plot = LiveFigure(start, **(dict(height=560, width=1000) if self.reference else dict(height=380)))
        self.cka_plot = LiveFigure(placeholder("CKA between experts", "no run yet"), height=430, width=480)
        self.tsne_plot = LiveFigure(placeholder("t-SNE of expert outputs", "no run yet"), height=430, width=560)

        self.experts.observe(self._sync_controls, "value")
        self.method.observe(self._sync_controls, "value")
        self.routing.observe(self._sync_controls, "value")
        self.layer.observe(self._on_layer, "value")
        self.run_button.on_click(lambda _: self.run())
        self._sync_controls()

        self.log_box = widgets.Accordion(children=[self.log], titles=("run log",), selected_index=None)
        self.widget = widgets.VBox([
            widgets.HBox([self.method, self.experts, self.orthogonalize]),
            widgets.HBox([self.routing, self.top_k, self.seed]),
            widgets.HBox([self.run_button, self.progress, self.status]),
            self.reference_note,
            self.accuracy_plot.widget,
            widgets.HBox([self.layer, self.layer_metrics]),
            widgets.HBox([self.cka_plot.widget, self.tsne_plot.widget]),
            self.log_box,
        ])

    # figures, for code and tests that read what is drawn
    @property
    def accuracy_figure(self) -> go.Figure:
        return self.accuracy_plot.figure

    @property
    def cka_figure(self) -> go.Figure:
        return self.cka_plot.figure

    @property
    def tsne_figure(self) -> go.Figure:
        return self.tsne_plot.figure

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # controls -----------------------------------------------------------------------------
    def _sync_controls(self, _change=None) -> None:
        """Enable only the controls that mean something for the chosen method and routing."""
        lora = self.method.value == "lora"
        self.experts.disabled = self.routing.disabled = lora
        self.top_k.max = self.experts.value  # top-k cannot pick more experts than exist (clamps k)
        self.top_k.disabled = lora or self.routing.value != "top_k"
        self.orthogonalize.disabled = self.method.value != "omoe"

    def config(self) -> RunConfig:
        """The configuration the controls describe now."""
        method = self.method.value
        routed = method != "lora"
        return RunConfig(
            method=method,
            num_experts=self.experts.value if routed else 1,
            top_k=self.top_k.value if routed and self.routing.value == "top_k" else None,
            orthogonalize=self.orthogonalize.value if method == "omoe" else None,
            seed=int(self.seed.value),
            profile=self.profile,
            **self.run_options,
        )

    # the reference ---------------------------------------------------------------------------
    def _own_setting(self) -> str:
        """What the learner's runs are: profile, tasks and data, in words."""
        config = RunConfig(profile=self.profile, **self.run_options).resolved()
        data = f"data <code>{html.escape(str(config.data_dir))}</code>" if config.data_dir else "the built-in suite"
        return f"profile <b>{self.profile}</b>, {len(config.tasks)} tasks ({html.escape(', '.join(config.tasks))}) from {data}"

    def _reference_note(self) -> str:
        own = f"<b>your runs</b> (solid): {self._own_setting()}; bars: min–max over your seeds; never averaged with the reference"
        if self.reference is None:
            if self.reference_problem is None:
                return own
            return (f"<b>no reference curve</b>: {html.escape(self.reference_problem)}. A sweep summary is made by "
                    f"<code>omoe-lab sweep</code> (it writes <code>results/sweep-&lt;setting&gt;-&lt;profile&gt;.json</code>); "
                    f"only your own runs are drawn.<br>{own}")
        meta = self.reference.get("meta", {})
        differs = []
        if meta.get("profile") not in (None, self.profile):
            differs.append(f"profile {html.escape(str(meta['profile']))} against your {self.profile}")
        own_tasks = list(RunConfig(profile=self.profile, **self.run_options).resolved().tasks)
        if meta.get("tasks") and list(meta["tasks"]) != own_tasks:
            differs.append("other tasks")
        caveat = (f"<br>The two differ ({'; '.join(differs)}): compare the shapes of the curves, not their heights."
                  if differs else "")
        return f"{reference_caption(self.reference, self.reference_source)}<br>{own}{caveat}"

    def _accuracy_figure(self, runs: Sequence[RunResult], latest: RunResult | None = None, how: str = "") -> go.Figure:
        """Accuracy against experts: the learner's runs (one line per series, ``latest`` ringed),
        and the reference's dashed lines beneath them when there is a reference."""
        title = f"Accuracy against the number of experts (profile {self.profile})"
        if runs:
            frame = accuracy_frame(runs)
            figure = viz.accuracy_vs_experts(frame, title=title)
            ring_latest_run(figure, frame.iloc[[r.key for r in runs].index(latest.key)], latest.label, how)
        else:
            figure = go.Figure().update_layout(template=viz.TEMPLATE)
        if self.reference is None:
            return figure
        mine = (f"solid: your {len(runs)} run{'s' if len(runs) != 1 else ''}, profile {self.profile} (bars: min–max)" if runs
                else f"solid: your runs, profile {self.profile}: press Run")
        for trace in figure.data:
            trace.update(legendgroup=OWN_GROUP, legendgrouptitle_text=mine)
        own_x = [r.config["num_experts"] for r in runs]
        sweep_x = reference_frame(self.reference)["num_experts"].tolist()
        experts = sorted({*own_x, *sweep_x}) or [1]
        reference = reference_traces(self.reference, (experts[0] - 0.3, experts[-1] + 0.3))
        figure = go.Figure(data=[*reference, *figure.data], layout=figure.layout)  # the reference beneath
        # one line: the first line of a two-line title, and a subtitle on a figure's first render, are
        # drawn over or out of sight under viz.TEMPLATE's title settings; the legend groups say the rest
        figure.update_layout(
            title_text="Accuracy against the number of experts: the committed sweep and your runs",
            legend=dict(groupclick="toggleitem", tracegroupgap=10, title_text=None, orientation="h", x=0, xanchor="left",
                        y=0, yref="container", yanchor="bottom"),  # under the plot: the bottom margin grows to fit it
        )
        figure.update_xaxes(title_text="experts per adapted layer", tickmode="array", tickvals=experts, range=[experts[0] - 0.5, experts[-1] + 0.5])
        figure.update_yaxes(title_text="accuracy (%)")  # the legend groups say what the bars are
        return figure

    # running ------------------------------------------------------------------------------
    def _run_with_experiments(self, config: RunConfig) -> RunResult:
        cached = (Path(self.cache_dir or experiments.default_cache_dir()) / config.key() / "result.json").is_file()
        if self._model is None and not cached:
            # the first run that trains loads the base model and keeps it, with one frozen-prefix cache, for
            # the next: a press then costs its training, not another model load and prefix pass
            from .models import load_model

            self._model, self._tokenizer = load_model(config.resolved().model, progress=True)
            self._prefix = experiments.frozen_prefix_for(self._model, config)
        return experiments.run(
            config, cache_dir=self.cache_dir, progress=True, model=self._model, tokenizer=self._tokenizer,
            prefix=self._prefix,
        )

    def run(self) -> RunResult | None:
        """Run (or replay) the configuration of the controls and redraw; None if it failed."""
        config = self.config()
        label = html.escape(config.label())
        self.presses += 1
        self.run_button.disabled = True
        self.progress.value, self.progress.bar_style = 0, "info"
        self.log.outputs = ()  # this run's progress bars only (clear_output would print outside a kernel)
        self.log_box.selected_index = 0  # open while training, so its progress bars are seen
        self.status.value = f"running <b>{label}</b> (profile {self.profile}) …"
        started = time.perf_counter()
        before = dict(self.results), self.result
        try:
            with self.log:
                result = self._run_fn(config)
            seconds = time.perf_counter() - started
            self._record(result, "replayed from the cache" if result.from_cache else f"trained in {seconds:.0f} s")
        except Exception as error:  # a failed run must not break the notebook around the widget
            self.results, self.result = before  # a result that cannot be drawn must not spoil later redraws
            self.progress.bar_style = "danger"
            self.status.value = f"<b>{label}</b> failed: {_error_text(error)} (traceback in the run log)"
            self.log.append_stderr(traceback.format_exc())
            return None
        finally:
            self.run_button.disabled = False
        self.progress.value, self.progress.bar_style = 1, "success"
        self.log_box.selected_index = None  # a failure leaves it open on the traceback
        metrics = result.metrics
        what = (f"replayed from cache: <b>{html.escape(result.label)}</b>" if result.from_cache
                else f"trained <b>{html.escape(result.label)}</b> in {seconds:.0f} s")
        where = "already in the plot, ringed" if result.key in before[0] else "added to the plot, ringed"
        self.status.value = (
            f"{what}, accuracy {100 * metrics['accuracy']:.1f} % (protocol {html.escape(str(metrics['protocol']))}, "
            f"n = {metrics['n']}, profile {self.profile}); {where} · run {self.presses} of this session, "
            f"{time.strftime('%H:%M:%S')}."
        )
        return result

    def _record(self, result: RunResult, how: str) -> None:
        self.results[result.key] = result
        self.result = result
        self.accuracy_plot.show(self._accuracy_figure(list(self.results.values()), result, how))
        self._fill_layers(result)
        self._draw_layer()
        self._draw_tsne(result)

    def _fill_layers(self, result: RunResult) -> None:
        rows = result.experts
        previous = self.layer.value
        names = [row["layer"] for row in rows]
        embedded = result.embedding[0]["layer"] if result.embedding else None
        chosen = previous if previous in names else embedded if embedded in names else (names[-1] if names else None)
        self._filling_layers = True  # one redraw after the menu is refilled, not one per change
        try:
            self.layer.options = [(viz.layer_label(row["layer"], row.get("block")), row["layer"]) for row in rows]
            self.layer.value = chosen
        finally:
            self._filling_layers = False
        self.layer.disabled = not names

    def _on_layer(self, _change) -> None:
        if not self._filling_layers and self.result is not None:
            self._draw_layer()
            self._draw_tsne(self.result)  # its title names the layer the CKA panel shows

    def _layer_name(self, result: RunResult, name: str | None) -> str:
        block = next((row.get("block") for row in result.experts if row["layer"] == name), None)
        return viz.layer_label(name, block)

    def _draw_layer(self) -> None:
        result = self.result
        row = next((r for r in result.experts if r["layer"] == self.layer.value), None)
        if row is None:
            redraw(self.cka_plot, placeholder("CKA between experts", "this run has no adapted layers"))
            self.layer_metrics.value = ""
            return
        name = viz.layer_label(row["layer"], row.get("block"))
        if "cka" in row:
            redraw(self.cka_plot, with_subtitle(viz.cka_heatmap(row["cka"]), f"Linear CKA between experts, {name}",
                                                f"{result.label} · layer chosen in the menu"))
        else:
            redraw(self.cka_plot, placeholder(f"CKA between experts, {name}", "a single expert: nothing to compare"))
        self.layer_metrics.value = layer_metrics_html(row)

    def _draw_tsne(self, result: RunResult) -> None:
        if not result.embedding:
            redraw(self.tsne_plot, placeholder("t-SNE of expert outputs", "a single expert: no map to draw"))
            return
        frame = pd.DataFrame(result.embedding)
        mapped = frame["layer"].iloc[0] if "layer" in frame.columns else None
        layer = self._layer_name(result, mapped) if mapped is not None else "top adapted layer"
        why = "the top adapted layer, the only one a run maps"
        if self.layer.value is not None and mapped is not None and self.layer.value != mapped:
            why += f"; CKA shows {self._layer_name(result, self.layer.value)}"
        redraw(self.tsne_plot, with_subtitle(viz.tsne_scatter(frame), f"t-SNE of expert outputs, {layer}", f"{result.label} · {why}"))


# --- the layer explorer -------------------------------------------------------------------------
def adapter_label(model) -> str:
    """What a model's adapters are, in the words of ``RunConfig.label``: ``"OMoE (stiefel) E=4
    soft"``, ``"MoE-LoRA E=4 top-2"``, ``"LoRA r=32"``."""
    config = getattr(model, "omoe_config", None)
    if config is None:
        layer = next(iter(adapter_layers(model).values()))
        method, experts, rank = layer.method, str(layer.num_experts), layer.rank
        top_k, top_p, mode = getattr(layer, "top_k", None), getattr(layer, "top_p", None), getattr(layer, "orthogonalize", None)
    else:
        method, rank, top_k, top_p, mode = config.method, config.rank, config.top_k, config.top_p, config.orthogonalize
        pattern = config.experts_pattern
        experts = f"{min(pattern)}–{max(pattern)}" if pattern and min(pattern) != max(pattern) else str(pattern[0] if pattern else config.num_experts)
    if method == "lora":
        return f"LoRA r={rank}"
    routing = f"top-{top_k}" if top_k else f"top-p {top_p:g}" if top_p else "soft"
    name = "MoE-LoRA" if method == "moe" else f"OMoE ({mode})"
    return f"{name} E={experts} {routing}"


def _measured(undefined: dict, name: str, compute: Callable):
    """``compute()``, or None with the reason kept in ``undefined`` (e.g. untrained MoE-LoRA
    experts output exactly zero, and their cosine and CKA do not exist)."""
    try:
        return compute()
    except ValueError as error:
        undefined[name] = str(error)
        return None


class LayerExplorer:
    """Expert similarity, routing and the Stiefel check of a trained model, one adapted layer at a time.

    The tokens are those the runs' analysis reads (``experiments.capture_for_analysis``): the
    ``examples``' prompts in ``prompt_style``, tokenized by ``experiments.prompt_batches`` (the
    scored prompts, without the answers), at most ``max_tokens`` of them sampled uniformly with
    ``seed`` (``analysis.capture_experts``). With a run's test questions, ``capture_tokens`` and
    seed — ``LayerExplorer.from_run`` — every number equals the run's own, so this explorer and
    ``ExpertCountExplorer`` show the same CKA for the same layer.

    Choosing a layer captures it, reduces it to the measures of an ``analyse_experts`` row
    (``analysis.layer_diversity``), routing load per task and entropy, and keeps only those:
    returning to a layer costs nothing, and memory does not grow with the layers visited. The
    top adapted layer (the one the runs' t-SNE maps) is shown first. The heading names the model
    shown (``label``, by default the adapters' configuration, ``adapter_label``).
    """

    def __init__(self, model, tokenizer, examples, max_tokens: int = 512, *, prompt_style: str = "cloze",
                 label: str | None = None, batch_size: int = 16, seed: int = 0, max_length: int | None = None):
        layers = adapter_layers(model)
        if not layers:
            raise ValueError("the model has no adapter layers; attach or load adapters first (omoe_lab.attach_adapters)")
        examples = list(examples)
        if not examples:
            raise ValueError("LayerExplorer needs at least one example to run the model on")
        if max_length is not None:
            warnings.warn("LayerExplorer(max_length=...) is ignored: the prompts are captured whole, as the runs' analysis "
                          "captures them (experiments.prompt_batches)", FutureWarning, stacklevel=2)
        self.model, self.max_tokens, self.seed, self.prompt_style = model, max_tokens, seed, prompt_style
        self.label = label or adapter_label(model)
        self.batches = experiments.prompt_batches(tokenizer, examples, prompt_style, batch_size=batch_size)
        self.analyses: dict[str, dict] = {}

        top = max(layers, key=lambda name: (layers[name].layer_index or 0, name))
        self.heading = widgets.HTML(
            f"<b>{html.escape(self.label)}</b> · {len(examples)} {html.escape(prompt_style)} prompts, up to {max_tokens} "
            f"tokens sampled per layer (seed {seed})")
        self.layer = widgets.Dropdown(
            options=[(viz.layer_label(name, layer.layer_index), name) for name, layer in layers.items()],
            value=top, description="layer", style=LABEL_STYLE,
        )
        self.status = widgets.HTML("")
        self.cka_plot = LiveFigure(placeholder("CKA between experts", ""), height=430, width=480)
        self.routing_plot = LiveFigure(placeholder("Expert load per task", ""), height=430, width=560)
        self.layer.observe(lambda change: self.show(change["new"]), "value")
        self.widget = widgets.VBox([
            self.heading, self.layer, self.status, widgets.HBox([self.cka_plot.widget, self.routing_plot.widget]),
        ])
        self.show(top)

    @classmethod
    def from_run(cls, result: RunResult, model, tokenizer, examples=None, **kwargs) -> "LayerExplorer":
        """The run's saved adapters loaded into ``model`` (the run's base model, bare or with the
        same adapters), explored on the tokens its analysis measured: its test questions (or
        ``examples``), prompt style, ``capture_tokens`` and seed."""
        if not result.folder or not (Path(result.folder) / "adapters").is_dir():
            raise ValueError(f"{result.label} has no saved adapters (a zero-shot run, or a result not read from its folder)")
        config = RunConfig(**result.config)
        load_adapters(model, Path(result.folder) / "adapters")
        if examples is None:  # the prompts the run's analysis measured
            examples = experiments.spread(experiments.test_examples(config), experiments.ANALYSIS_PROMPTS)
        options = {"max_tokens": config.capture_tokens, "prompt_style": config.prompt_style, "seed": config.seed,
                   "label": f"{result.label} (profile {config.profile})", **kwargs}
        return cls(model, tokenizer, examples, **options)

    @property
    def cka_figure(self) -> go.Figure:
        return self.cka_plot.figure

    @property
    def routing_figure(self) -> go.Figure:
        return self.routing_plot.figure

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def analyse(self, name: str) -> dict:
        """The layer's measures (captured once, then kept): the keys of an
        ``experiments.analyse_experts`` row, ``routing`` (``analysis.routing_summary`` rows) and
        ``undefined`` (measure → why it does not exist here)."""
        if name in self.analyses:
            return self.analyses[name]
        captured = capture_experts(self.model, self.batches, layers=[name], max_tokens=self.max_tokens, seed=self.seed, progress=False)
        layer = captured.layers[name]
        outputs, undefined = layer.expert_outputs, {}
        row = {"layer": name, "block": layer.layer_index, "method": layer.method, "experts": layer.num_experts,
               "tokens": len(outputs), "undefined": undefined}
        if layer.num_experts > 1:
            try:
                row.update(layer_diversity(outputs))
            except ValueError:  # some measure does not exist here: keep the others, and say why
                row["mean_abs_cosine"] = _measured(undefined, "mean |cosine|", lambda: mean_pairwise_cosine(outputs))
                cka = _measured(undefined, "CKA", lambda: cka_matrix(outputs))
                if cka is not None:
                    row["cka"], row["mean_cka"] = cka.tolist(), off_diagonal_mean(cka)
                row["effective_rank"] = _measured(undefined, "effective rank", lambda: expert_effective_rank(outputs))
            row["routing_entropy"] = routing_entropy(layer.gates, normalized=True)
            row["load"] = expert_load(layer.gates).tolist()
            row["routing"] = routing_summary(captured).to_dict(orient="records")
        if layer.orthogonal_outputs is not None:
            row["stiefel_error"] = direction_stiefel_error(layer.orthogonal_outputs)
        self.analyses[name] = row
        return row

    def show(self, name: str) -> None:
        """Draw one layer (capturing it first if it has not been)."""
        label = viz.layer_label(name, self.model.get_submodule(name).layer_index)
        model = html.escape(self.label)
        self.status.value = f"capturing the expert outputs of <b>{html.escape(label)}</b> …"
        try:
            row = self.analyse(name)
        except Exception as error:  # a capture failure is shown, not raised into the notebook
            self.status.value = f"<b>{html.escape(label)}</b>: capture failed: {_error_text(error)}"
            self.cka_plot.show(placeholder(f"CKA between experts, {label}", "capture failed"))
            self.routing_plot.show(placeholder(f"Expert load per task, {label}", "capture failed"))
            return
        self.status.value = layer_metrics_html(row)
        if "cka" in row:
            self.cka_plot.show(viz.cka_heatmap(row["cka"], title=f"Linear CKA between experts, {label}<br><sub>{model}</sub>"))
        else:
            reason = "a single expert: nothing to compare" if row["experts"] < 2 else "undefined here (see above)"
            self.cka_plot.show(placeholder(f"CKA between experts, {label}", reason))
        if row.get("routing"):
            figure = viz.routing_load_bars(pd.DataFrame(row["routing"]))
            figure.update_layout(title_text=f"Expert load per task, {label}<br><sub>{model} · routing entropy / log E = "
                                            f"{row['routing_entropy']:.2f}</sub>")
            self.routing_plot.show(figure)
        else:
            self.routing_plot.show(placeholder(f"Expert load per task, {label}", "LoRA has no router"))


# --- Gram–Schmidt in three dimensions ---------------------------------------------------------
ORDERS = tuple(itertools.permutations(range(3)))
# azimuth (°), elevation (°), length of e1, e2, e3: three clearly different, unequal experts
GEOMETRY_START = ((-20.0, 10.0, 1.5), (35.0, 25.0, 1.0), (60.0, 70.0, 0.7))


def order_label(order: Sequence[int]) -> str:
    return " → ".join(f"e{k + 1}" for k in order)


def spherical_vector(azimuth: float, elevation: float, length: float) -> torch.Tensor:
    """The float64 vector of ``length`` at ``azimuth`` (from x towards y) and ``elevation`` (above
    the x–y plane), in degrees. Equal angles give exactly proportional vectors (the same unit
    vector times two lengths), which is what makes "parallel" exact with the sliders."""
    a, e = math.radians(azimuth), math.radians(elevation)
    unit = torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)], dtype=torch.float64)
    return length * unit


def relative_residuals(ordered: torch.Tensor, tol: float) -> list[float]:
    """``‖u_k‖ / ‖e_k‖`` of each vector of ``ordered`` [E, d] (in that order): what is left of it
    after removing its components along the directions of the earlier *live* vectors — the
    number ``gram_schmidt`` compares with ``tol`` (NaN for a zero vector). Computed by
    ``gram_schmidt`` itself: the earlier unit directions, then the vector, in ``"orthogonal"``
    mode (q = u) with no threshold."""
    directions = gram_schmidt(ordered, mode="stiefel", tol=tol)
    residuals = []
    for k in range(ordered.shape[0]):
        earlier = directions[:k][directions[:k].norm(dim=-1) > 0]
        u = gram_schmidt(torch.cat([earlier, ordered[k : k + 1]]), mode="orthogonal", tol=0.0)[-1]
        size = float(ordered[k].norm())
        residuals.append(float(u.norm()) / size if size > 0 else math.nan)
    return residuals


def _arrow(tip: torch.Tensor, color: str, name: str, group: str, dash: str, width: int, head: float) -> list:
    """A line from the origin to ``tip`` and a cone at its tip (hidden for a zero vector)."""
    x, y, z = tip.tolist()
    length = float(tip.norm())
    u, v, w = (tip / length * head).tolist() if length > 0 else (0.0, 0.0, 0.0)
    return [
        go.Scatter3d(x=[0.0, x], y=[0.0, y], z=[0.0, z], mode="lines", name=name, legendgroup=group, meta=group,
                     line=dict(color=color, width=width, dash=dash),
                     hovertemplate=f"{name}<br>(%{{x:.3f}}, %{{y:.3f}}, %{{z:.3f}})<extra></extra>"),
        go.Cone(x=[x], y=[y], z=[z], u=[u], v=[v], w=[w], anchor="tip", sizemode="raw", sizeref=1.0,
                colorscale=[[0.0, color], [1.0, color]], showscale=False, hoverinfo="skip", name=name,
                legendgroup=group, meta=group, showlegend=False, visible=length > 0),
    ]


def gram_schmidt_figure(vectors: torch.Tensor, q: torch.Tensor, order: Sequence[int], mode: str, extent: float = 2.2) -> go.Figure:
    """Raw experts ``vectors`` [3, 3] (solid) and their Gram–Schmidt outputs ``q`` [3, 3] (dashed),
    both in expert-index order, in a fixed cube so that moving one arrow moves nothing else.
    Always 12 traces in the same order (e_k line, e_k cone, q_k line, q_k cone, per expert)."""
    fig = go.Figure()
    for k in range(vectors.shape[0]):
        color = viz.expert_color(k)
        redundant = not bool(q[k].abs().max() > 0)
        fig.add_traces(_arrow(vectors[k], color, f"e{k + 1} (raw)", f"e{k + 1}", "solid", 8, 0.22))
        fig.add_traces(_arrow(q[k], color, f"q{k + 1}" + (" = 0 (redundant)" if redundant else ""), f"q{k + 1}", "dash", 5, 0.16))
    axis = dict(range=[-extent, extent], autorange=False, zeroline=True)
    fig.update_layout(
        template=viz.TEMPLATE, uirevision="gram-schmidt", legend=dict(title_text="solid e, dashed q"),
        scene=dict(xaxis=dict(title="x", **axis), yaxis=dict(title="y", **axis), zaxis=dict(title="z", **axis),
                   aspectmode="cube", camera=dict(eye=dict(x=1.4, y=1.3, z=0.8))),
        margin=dict(l=0, r=0, t=70, b=0),
        title_text=f"Gram–Schmidt of three experts, order {order_label(order)}<br><sub>mode {mode}; the q's are "
                   f"omoe_lab.adapters.gram_schmidt's output</sub>",
    )
    return fig


class GramSchmidtGeometry:
    """Three expert outputs e1, e2, e3 in R³ and what Gram–Schmidt makes of them.

    Sliders set each e_k by azimuth, elevation (degrees) and length. ``order`` is the order
    Gram–Schmidt visits them in (OMoE uses expert-index order, so renumbering the experts
    changes the q's: the first keeps its direction, later ones lose what they share with earlier
    ones); ``mode`` is the layer's ``orthogonalize`` (``"stiefel"`` unit q's, ``"orthogonal"``
    the residuals u_k, ``"norm_preserving"`` the directions at ‖e_k‖); ``tol`` is the redundancy
    threshold: an expert whose relative residual ‖u_k‖/‖e_k‖ is at most ``tol`` gets q_k = 0.
    Give two experts the same angles (or press the button) and the later one's q vanishes.

    The q's drawn are ``omoe_lab.adapters.gram_schmidt``'s float64 output, not a re-implementation;
    the table prints each expert's relative residual next to ``tol``.
    """

    def __init__(self, vectors: Sequence[Sequence[float]] = GEOMETRY_START, mode: str = "stiefel",
                 order: Sequence[int] = (0, 1, 2), tol: float = 1e-4, max_length: float = 2.0):
        if len(vectors) != 3:
            raise ValueError(f"GramSchmidtGeometry draws three experts; got {len(vectors)} (azimuth, elevation, length) triples")
        if tuple(order) not in ORDERS:
            raise ValueError(f"order must be a permutation of (0, 1, 2), got {order}")
        self.extent = 1.1 * max_length
        slider = dict(continuous_update=True, style=LABEL_STYLE, layout=widgets.Layout(width="290px"))
        self.azimuth = [widgets.FloatSlider(value=a, min=-180, max=180, step=1, description=f"e{k + 1} azimuth °", **slider)
                        for k, (a, _, _) in enumerate(vectors)]
        self.elevation = [widgets.FloatSlider(value=e, min=-90, max=90, step=1, description=f"e{k + 1} elevation °", **slider)
                          for k, (_, e, _) in enumerate(vectors)]
        self.length = [widgets.FloatSlider(value=n, min=0, max=max_length, step=0.05, description=f"e{k + 1} length", **slider)
                       for k, (_, _, n) in enumerate(vectors)]
        self.mode = widgets.Dropdown(options=ORTHOGONALIZE_MODES, value=mode, description="mode", style=LABEL_STYLE)
        self.order = widgets.Dropdown(options=[(order_label(p), p) for p in ORDERS], value=tuple(order),
                                      description="order", style=LABEL_STYLE)
        self.tol = widgets.FloatLogSlider(value=tol, base=10, min=-6, max=math.log10(0.5), step=0.1,
                                          description="redundancy tol", readout_format=".1e", style=LABEL_STYLE)
        self.align_button = widgets.Button(description="make e2 ∥ e1", icon="link",
                                           tooltip="give e2 the direction of e1 (its length stays): one of them becomes redundant")
        self.readout = widgets.HTML()
        self._holding = False
        self.plot = LiveFigure(self._figure(), height=540, width=640)
        self.readout.value = self._readout()

        for control in (*self.azimuth, *self.elevation, *self.length, self.mode, self.order, self.tol):
            control.observe(self._redraw, "value")
        self.align_button.on_click(lambda _: self.align(1, 0))
        columns = [widgets.VBox([self.azimuth[k], self.elevation[k], self.length[k]]) for k in range(3)]
        self.widget = widgets.VBox([
            widgets.HBox([self.mode, self.order, self.tol, self.align_button]),
            widgets.HBox(columns),
            widgets.HBox([self.plot.widget, self.readout]),
        ])

    @property
    def figure(self) -> go.Figure:
        return self.plot.figure

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def expert_vectors(self) -> torch.Tensor:
        """e1, e2, e3 as the rows of a float64 [3, 3] tensor, in expert-index order."""
        return torch.stack([spherical_vector(self.azimuth[k].value, self.elevation[k].value, self.length[k].value)
                            for k in range(3)])

    def orthogonalized(self) -> torch.Tensor:
        """q1, q2, q3 [3, 3] in expert-index order: ``gram_schmidt`` of the experts taken in ``order``."""
        order = list(self.order.value)
        q = torch.empty(3, 3, dtype=torch.float64)
        q[order] = gram_schmidt(self.expert_vectors()[order], mode=self.mode.value, tol=self.tol.value)
        return q

    def drawn_q(self) -> torch.Tensor:
        """The tips of the q arrows as drawn, [3, 3] in expert-index order (read from the figure)."""
        lines = {t.meta: t for t in self.figure.data if t.type == "scatter3d"}
        return torch.tensor([[lines[f"q{k + 1}"][axis][1] for axis in "xyz"] for k in range(3)], dtype=torch.float64)

    def align(self, expert: int, onto: int) -> None:
        """Give expert ``expert`` (0-based) the direction of expert ``onto``; its length stays."""
        self._holding = True  # one redraw for the two sliders
        try:
            self.azimuth[expert].value = self.azimuth[onto].value
            self.elevation[expert].value = self.elevation[onto].value
        finally:
            self._holding = False
        self._redraw()

    def _figure(self) -> go.Figure:
        return gram_schmidt_figure(self.expert_vectors(), self.orthogonalized(), self.order.value, self.mode.value, self.extent)

    def _redraw(self, _change=None) -> None:
        if self._holding:
            return
        self.plot.update(self._figure())
        self.readout.value = self._readout()

    def _readout(self) -> str:
        """Per step of Gram–Schmidt: the expert, ‖e‖, its relative residual against ``tol``, ‖q‖."""
        order, tol = list(self.order.value), self.tol.value
        vectors, q = self.expert_vectors(), self.orthogonalized()
        residuals = relative_residuals(vectors[order], tol)
        def row(cells, tag="td"):
            return "<tr>" + "".join(f"<{tag} style='padding:2px 8px; text-align:left'>{c}</{tag}>" for c in cells) + "</tr>"

        lines = [row(("step", "expert", "‖e‖", "‖u‖ / ‖e‖", "", "‖q‖"), "th")]
        for step, (k, residual) in enumerate(zip(order, residuals), start=1):
            live = bool(q[k].abs().max() > 0)
            compared = "zero vector" if math.isnan(residual) else f"{residual:.2e} {'>' if live else '≤'} tol"
            lines.append(row((step, f"e{k + 1}", f"{float(vectors[k].norm()):.3f}", compared,
                              "live" if live else "<b>redundant: q = 0</b>", f"{float(q[k].norm()):.3f}")))
        error = direction_stiefel_error(q)
        lengths = "unit q's" if self.mode.value == "stiefel" else "their lengths: ‖q‖ above"
        return (f"<table style='border-collapse:collapse'>{''.join(lines)}</table>"
                f"<p>tol = {tol:.1e} · directions of the live q's: ‖QᵀQ − I‖ = {error:.1e} ({lengths})</p>")
