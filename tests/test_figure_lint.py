"""Figure lint: every public figure of ``viz``, the widgets' panels and the report's figures,
built from small hand-made inputs, checked for what a learner saw go wrong in a browser.

- a title, not written as ``"title<br><sub>more</sub>"`` (plotly.js drew its first line out of
  sight), starting below plotly's toolbar, in a top margin that holds it, its subtitle and any
  facet titles, and no wider than the figure;
- axis titles no longer than their axis, facet and subplot titles no wider than their panel;
- at most ``LEGEND_LIMIT`` entries in a legend, and bars no thinner than ``MIN_BAR_PX``;
- no figure, and no row of widget panels that does not wrap, wider than JupyterLab's output area;
- each method one colour everywhere: one colour per series name across all figures, one hue per
  method family (its expert counts may be shades of it, told apart), different families
  clearly different.

The limits are written out here, independently of ``viz``'s own constants, and every width is
a lower bound (half an em a character), so what fails surely overflows. Only APIs that existed
before the look was defined once are used, so the lint can be run against older code.
"""
from __future__ import annotations

import colorsys
import inspect
import math
import re
from collections import defaultdict

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from omoe_lab import viz, widgets
from omoe_lab.report_content import build_report
from tests.test_report import ENVIRONMENT, _evidence_runs, _runs
from tests.test_viz import _embedding_frame, _summary
from tests.test_widgets import EXAMPLES, FakeRuns, sweep_summary

LEGEND_LIMIT = 10
OUTPUT_AREA = 900  # px: JupyterLab's output area
TOOLBAR = 30  # px: plotly's mode bar, in the top-right corner
TITLE_LINE, SUBTITLE_LINE, ON_PLOT = 18, 14, 18  # px a title line, a subtitle line, facet titles need at least
PLOTLY_HEIGHT = 450  # plotly's default height
MIN_BAR_PX = 4
EM_PER_CHARACTER = 0.5


# --- the figures --------------------------------------------------------------------------------
def viz_figures() -> dict[str, go.Figure]:
    """One figure per public figure function of viz, with the series the report and sweeps name."""
    labels = {"lora": "LoRA r=16", "moe": "MoE-LoRA E=4 soft", "control": "MoE-LoRA E=4 soft, B ~ N(0, 0.02²)",
              "omoe": "OMoE (stiefel) E=4 soft"}
    history = pd.DataFrame([{"step": s, "loss": 2 - s / 10, "method": label} for label in labels.values() for s in (1, 2, 3)])
    accuracy = pd.DataFrame([{"method": label, "task": task, "accuracy": 0.5, "protocol": "loglik"}
                             for label in ["zero-shot", *labels.values()] for task in ("boolq", "piqa")])
    per_e = pd.DataFrame([{"method": m, "num_experts": e, "accuracy": 0.5, "seed": 0} for m in ("moe", "omoe", "lora") for e in (2, 4)])
    stiefel = pd.DataFrame([{"layer": b, "method": m, "error": 1e-7} for m in ("omoe", "OMoE (orthogonal) E=4 soft") for b in (0, 1)])
    measures = pd.DataFrame([{"series": label, "layer": f"model.layers.{b}.q_proj", "block": b, "cka": 0.5, "cos": 0.4}
                             for label in labels.values() for b in (0, 1)])
    sweep = {"meta": {}, "arms": [
        {"arm": arm, "label": label, "config": config,
         "diversity_over_training": [{"step": s, "mean_abs_cosine": 0.4, "mean_cka": 0.5, "mean_cka_debiased": 0.4,
                                      "effective_rank": 2.0} for s in (0, 10, 20)]}
        for arm, label, config in (
            ("moe2", "MoE-LoRA E=2 soft", {"method": "moe", "num_experts": 2}),
            ("moe4", "MoE-LoRA E=4 soft", {"method": "moe", "num_experts": 4}),
            ("moe8", "MoE-LoRA E=8 soft", {"method": "moe", "num_experts": 8}),
            ("moe8top2", "MoE-LoRA E=8 top-2", {"method": "moe", "num_experts": 8, "top_k": 2}),
            ("omoe2", "OMoE E=2 soft", {"method": "omoe", "num_experts": 2}),
            ("omoe4", "OMoE E=4 soft", {"method": "omoe", "num_experts": 4}),
            ("control4", "MoE-LoRA E=4 soft, B ~ N(0, 0.02²) (control)", {"method": "moe", "num_experts": 4, "b_init_std": 0.02}),
            ("moe4shared", "MoE-LoRA E=4 soft + shared expert", {"method": "moe", "num_experts": 4}),
        )]}
    # fourteen adapted layers and eight tasks, as the default model's top blocks and the real mix give
    many = pd.DataFrame([{"layer": f"model.layers.{16 + b}.self_attn.{p}", "block": 16 + b, "task": t, "expert": 0,
                          "entropy_normalized": 0.9, "method": m}
                         for b in range(7) for p in ("q_proj", "v_proj") for t in "abcdefgh" for m in ("moe", "omoe")])
    routed = {"label": "OMoE", "experts": [{"layer": f"model.layers.{b}.self_attn.q_proj", "block": b,
                                            "load_by_task": {"boolq": [0.7, 0.1, 0.1, 0.1], "piqa": [0.25] * 4}} for b in (2, 3)]}
    scaling = [dict(sweep="experts", tokens=2048, d=576, experts=e, method=m, ms=1.0 * e, saved_mib=1.0 * e)
               for e in (1, 2, 4) for m in ("lora", "moe", "omoe")]
    scaling += [dict(sweep="tokens", tokens=t, d=576, experts=4, method=m, ms=t / 100, saved_mib=t / 1000)
                for t in (512, 1024) for m in ("lora", "moe", "omoe")]
    figures = {
        "tsne_scatter": viz.tsne_scatter(_embedding_frame(), facet_col="method"),
        "cka_heatmap": viz.cka_heatmap(np.eye(3)),
        "routing_load_bars": viz.routing_load_bars(_summary(("moe", "omoe"))),
        "routing_entropy_bars": viz.routing_entropy_bars(many),
        "training_curves": viz.training_curves(history),
        "accuracy_by_task": viz.accuracy_by_task(accuracy),
        "accuracy_vs_experts": viz.accuracy_vs_experts(per_e),
        "stiefel_error_by_layer": viz.stiefel_error_by_layer(stiefel, tol=4.8e-6),
        "layer_measure_bars": viz.layer_measure_bars(measures, [("cka", "mean linear CKA"), ("cos", "mean |cosine|")], "Similarity"),
        "diversity_over_training": viz.diversity_over_training(sweep),
        "diversity_animation": viz.diversity_animation(sweep),
        "specialization_heatmap": viz.specialization_heatmap(routed),
        "cost_scaling": viz.cost_scaling({"rows": scaling}),
    }
    if hasattr(viz, "routing_entropy_over_training"):
        runs = [{"label": label, "routing": [{"step": s, "layer": f"model.layers.{b}.q_proj", "normalized_entropy": 0.9}
                                             for s in (1, 2) for b in range(14)]} for label in labels.values()]
        figures["routing_entropy_over_training"] = viz.routing_entropy_over_training(runs)
    return figures


def explorer_panels():
    """The expert-count explorer after a session of runs (with the sweep as a reference), its figures and its widget."""
    explorer = widgets.ExpertCountExplorer(profile="ci", run_fn=FakeRuns(), reference=sweep_summary())
    for method, experts, routing, mode in (("omoe", 2, "soft", "stiefel"), ("omoe", 4, "soft", "stiefel"), ("moe", 2, "soft", "stiefel"),
                                           ("moe", 2, "top_k", "stiefel"), ("omoe", 2, "soft", "norm_preserving"), ("lora", 4, "soft", "stiefel"),
                                           ("omoe", 3, "soft", "stiefel")):
        explorer.method.value, explorer.experts.value, explorer.routing.value, explorer.orthogonalize.value = method, experts, routing, mode
        explorer.run()
    figures = {"explorer accuracy": explorer.accuracy_figure, "explorer CKA": explorer.cka_figure, "explorer t-SNE": explorer.tsne_figure}
    return figures, explorer.widget


def layer_explorer_panels():
    import omoe_lab
    from omoe_lab.models import byte_tokenizer
    from tests.test_widgets import tiny_base

    model = omoe_lab.attach_adapters(tiny_base(), omoe_lab.AdapterConfig(method="omoe", num_experts=3, rank=4))
    explorer = widgets.LayerExplorer(model, byte_tokenizer(), EXAMPLES[:3], max_tokens=32)
    explorer.layer.value = explorer.layer.options[0][1]  # a layer change redraws both panels
    return {"layer explorer CKA": explorer.cka_figure, "layer explorer routing": explorer.routing_figure}, explorer.widget


def geometry_panels():
    geometry = widgets.GramSchmidtGeometry()
    return {"Gram–Schmidt geometry": geometry.figure}, geometry.widget


def report_figures() -> dict[str, go.Figure]:
    figures = {}
    for name, runs in (("evidence", _evidence_runs()), ("demo", _runs())):
        report = build_report(runs, title="lint", notes=None, environment=ENVIRONMENT)
        for section in report.sections:
            for index, figure in enumerate(_figures_in(section.data)):
                figures[f"report {name} {section.anchor} {index}"] = figure
    return figures


def _figures_in(value):
    if isinstance(value, go.Figure):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _figures_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _figures_in(item)


@pytest.fixture(scope="module")
def panels():
    torch.set_num_threads(1)  # tiny tensors; the machine is shared
    figures, boxes = {}, {}
    for build in (explorer_panels, layer_explorer_panels, geometry_panels):
        built, widget = build()
        figures.update(built)
        boxes[build.__name__] = widget
    return figures, boxes


@pytest.fixture(scope="module")
def every_figure(panels) -> dict[str, go.Figure]:
    return {**viz_figures(), **panels[0], **report_figures(),
            "placeholder": widgets.placeholder("CKA between experts", "no run yet")}


def test_every_public_figure_function_of_viz_is_linted():
    public = {name for name, function in inspect.getmembers(viz, inspect.isfunction)
              if not name.startswith("_") and function.__module__ == viz.__name__
              and inspect.signature(function).return_annotation in (go.Figure, "go.Figure")
              and name not in ("set_title", "fit_layout")}  # they finish a figure, they do not draw one
    assert public <= set(viz_figures())


# --- reading a figure ----------------------------------------------------------------------------
def setting(figure: go.Figure, *path):
    """A layout value as plotly.js resolves it: the figure's own, else its template's."""
    for layout in (figure.layout, figure.layout.template.layout):
        value = layout
        for key in path:
            value = value[key] if value is not None else None
        if value is not None:
            return value
    return None


SMALL_LINE = re.compile(r'<span style="font-size:(\d+)px')


def lines(text: str | None) -> list[str]:
    return [re.sub(r"<[^>]+>", "", line) for line in re.split(r"<br\s*/?>", text, flags=re.I)] if text else []


def text_px(text: str, size: float) -> float:
    return EM_PER_CHARACTER * size * len(text)


def figure_width(figure: go.Figure) -> float:
    return figure.layout.width or OUTPUT_AREA


def plot_size(figure: go.Figure) -> tuple[float, float]:
    margin = lambda side: setting(figure, "margin", side) or 0  # noqa: E731
    return (figure_width(figure) - margin("l") - margin("r"),
            (figure.layout.height or PLOTLY_HEIGHT) - margin("t") - margin("b"))


def stands_on_plot(figure: go.Figure) -> bool:
    titles = any(a.yref in (None, "paper") and a.y is not None and a.y >= 1 and a.textangle not in (90, -90)
                 for a in figure.layout.annotations)
    return titles or any(m.y is not None and m.y >= 1 and m.yanchor == "bottom" for m in figure.layout.updatemenus)


def check(name: str, figure: go.Figure) -> list[str]:
    """What is wrong with one figure, in words (empty: nothing)."""
    problems = []
    title, subtitle = figure.layout.title.text, figure.layout.title.subtitle.text
    automargin = setting(figure, "title", "automargin")
    if not (title or "").strip():
        problems.append("no title")
    elif "<sub>" in title or ("<br" in title and automargin):
        problems.append(f"title written as '<br><sub>' lines, whose first line plotly.js draws out of sight: {title!r}")
    size = setting(figure, "title", "font", "size") or 17
    # a live panel writes its subtitle as the title's last lines, each in a smaller span (widgets.live_figure.fit)
    small = [int(m.group(1)) if (m := SMALL_LINE.match(line)) else None for line in re.split(r"<br\s*/?>", title or "")]
    if any(text_px(line, font or size) > figure_width(figure) for line, font in zip(lines(title), small)):
        problems.append(f"title wider than the {figure_width(figure):.0f}-px figure: {title!r}")
    subtitle_lines = len(lines(subtitle)) + sum(font is not None for font in small)
    if title:
        y, yref, yanchor = setting(figure, "title", "y"), setting(figure, "title", "yref"), setting(figure, "title", "yanchor")
        pad = setting(figure, "title", "pad", "t") or 0
        if not (yref == "container" and yanchor == "top" and y == 1 and pad >= TOOLBAR):
            problems.append(f"title not placed below the toolbar (y {y}, yref {yref}, yanchor {yanchor}, pad.t {pad})")
        title_lines = len(lines(title)) - sum(font is not None for font in small)
        needed = TOOLBAR + TITLE_LINE * title_lines + SUBTITLE_LINE * subtitle_lines + ON_PLOT * stands_on_plot(figure)
        if setting(figure, "margin", "t") < needed:
            problems.append(f"top margin {setting(figure, 'margin', 't')} px for {needed} px of toolbar, title and what stands on the plot")
    if figure.layout.width is not None and figure.layout.width > OUTPUT_AREA:
        problems.append(f"fixed width {figure.layout.width} px, wider than the {OUTPUT_AREA}-px output area")
    problems += axis_title_problems(figure) + panel_title_problems(figure) + legend_problems(figure) + bar_problems(figure)
    return problems


def axis_title_problems(figure: go.Figure) -> list[str]:
    width, height = plot_size(figure)
    problems = []
    for axes, length in ((figure.select_xaxes(), width), (figure.select_yaxes(), height)):
        for axis in axes:
            low, high = axis.domain or (0, 1)
            room = (high - low) * length
            for line in lines(axis.title.text):
                if text_px(line, 13) > room:
                    problems.append(f"axis title {line!r} longer than its {room:.0f}-px axis")
    return problems


def panel_title_problems(figure: go.Figure) -> list[str]:
    """Facet and subplot titles (annotations standing on a panel) wider than the panel."""
    width, _ = plot_size(figure)
    domains = [axis.domain or (0, 1) for axis in figure.select_xaxes()]
    problems = []
    for note in figure.layout.annotations:
        if note.yref not in (None, "paper") or note.xref not in (None, "paper") or note.y is None or note.y < 0.05:
            continue
        if note.textangle in (90, -90) or note.showarrow:
            continue
        panel = next(((low, high) for low, high in domains if low - 1e-6 <= (note.x or 0) <= high + 1e-6), (0, 1))
        room = (panel[1] - panel[0]) * width
        size = note.font.size or setting(figure, "font", "size") or 12  # an annotation's font is the figure's
        if any(text_px(line, size) > room for line in lines(note.text)):
            problems.append(f"panel title {note.text!r} wider than its {room:.0f}-px panel")
    return problems


def legend_problems(figure: go.Figure) -> list[str]:
    entries = defaultdict(set)
    for trace in figure.data:
        shown = trace.showlegend if trace.showlegend is not None else trace.type not in ("heatmap", "cone")
        if trace.name and shown:
            entries[getattr(trace, "legend", None) or "legend"].add((trace.legendgroup, trace.name))  # a group lists each name
    return [f"{legend}: {len(names)} entries, more than {LEGEND_LIMIT}" for legend, names in entries.items() if len(names) > LEGEND_LIMIT]


def bar_problems(figure: go.Figure) -> list[str]:
    bars = [t for t in figure.data if t.type == "bar"]
    if not bars:
        return []
    width, _ = plot_size(figure)
    stacked = figure.layout.barmode in ("stack", "relative")
    per_axis = defaultdict(set)
    for trace in bars:
        for x in trace.x:
            per_axis[trace.xaxis or "x"].add(x if stacked else (x, trace.name))
    problems = []
    for axis, count in ((a, len(b)) for a, b in per_axis.items()):
        low, high = figure.layout[axis.replace("x", "xaxis", 1)].domain or (0, 1)
        px_per_bar = 0.8 * (high - low) * width / count
        if px_per_bar < MIN_BAR_PX:
            problems.append(f"{count} bars in a {(high - low) * width:.0f}-px panel: {px_per_bar:.1f} px each")
    return problems


# --- the layout checks ---------------------------------------------------------------------------
def test_every_figure_has_a_title_margins_axes_legends_and_a_width_that_fit(every_figure):
    problems = {name: found for name, figure in every_figure.items() if (found := check(name, figure))}
    assert not problems, "\n".join(f"{name}: {'; '.join(found)}" for name, found in problems.items())


def figure_widths(widget) -> list[float]:
    """Fixed widths of the figures a widget holds (a FigureWidget, or the Output a static one is drawn in)."""
    if isinstance(widget, go.FigureWidget):
        return [widget.layout.width or OUTPUT_AREA]
    for output in getattr(widget, "outputs", ()):
        layout = output.get("data", {}).get("application/vnd.plotly.v1+json", {}).get("layout", {})
        return [layout.get("width") or OUTPUT_AREA]
    return []


def test_rows_of_panels_fit_the_output_area_or_wrap(panels):
    _, boxes = panels
    problems = []
    for name, root in boxes.items():
        stack = [root]
        while stack:
            node = stack.pop()
            children = list(getattr(node, "children", ()))
            stack.extend(children)
            if type(node).__name__ != "HBox" or "wrap" in (node.layout.flex_flow or ""):
                continue
            width = sum(w for child in children for w in figure_widths(child))
            if len([c for c in children if figure_widths(c)]) and width > OUTPUT_AREA:
                problems.append(f"{name}: a row of panels {width:.0f} px wide that does not wrap")
    assert not problems, "\n".join(problems)


# --- one colour per method -----------------------------------------------------------------------
FAMILIES = (  # the lint's own reading of a series name: variants and the control before their base method
    ("shared expert", r"shared expert"), ("orthogonality penalty", r"orthogonality penalty"), ("null experts", r"\bnull\b"),
    ("control", r"\bcontrol\b|B ~ N\(|random B"), ("MixLoRA", r"MixLoRA"), ("OMoE", r"\bOMoE\b"), ("MoE-LoRA", r"MoE-LoRA"),
    ("LoRA", r"\bLoRA\b"), ("zero-shot", r"zero-shot|baseline"),
)


def family_of(name: str) -> str | None:
    return next((family for family, pattern in FAMILIES if re.search(pattern, name)), None)


def rgb(color: str) -> tuple[float, float, float]:
    if color.startswith("#"):
        return tuple(int(color[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return tuple(float(v) / 255 for v in re.findall(r"[\d.]+", color)[:3])


def lab(color: str) -> tuple[float, float, float]:
    """CIE L*a*b* (D65) of an sRGB colour, for a perceptual distance."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb(color)]
    x = (0.4124 * linear[0] + 0.3576 * linear[1] + 0.1805 * linear[2]) / 0.95047
    y = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    z = (0.0193 * linear[0] + 0.1192 * linear[1] + 0.9505 * linear[2]) / 1.08883
    f = [t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in (x, y, z)]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def distance(a: str, b: str) -> float:
    return math.dist(lab(a), lab(b))


def hue(color: str) -> float | None:
    """The hue in degrees, None for a grey."""
    h, s, v = colorsys.rgb_to_hsv(*rgb(color))
    return None if s < 0.15 else 360 * h


def method_series(every_figure):
    """``(figure, series name, colour, dash, marker symbol, pattern)`` of every trace that draws a method."""
    for figure_name, figure in every_figure.items():
        for trace in figure.data:
            if trace.type not in ("scatter", "bar") or not trace.name or getattr(trace, "fill", None):
                continue
            name = trace.name.removeprefix("sweep · ")
            line = getattr(trace, "line", None)
            color = (line.color if line is not None and trace.type == "scatter" and "lines" in (trace.mode or "lines") else None) \
                or trace.marker.color
            if family_of(name) and isinstance(color, str):
                pattern = trace.marker.pattern.shape if trace.type == "bar" else None
                yield (figure_name, name, color, line.dash if line is not None and trace.type == "scatter" else None,
                       trace.marker.symbol if trace.type == "scatter" else None, pattern)


def test_a_series_has_one_colour_in_every_figure(every_figure):
    colours = defaultdict(set)
    for figure, name, color, *_ in method_series(every_figure):
        colours[name].add((color.upper(), figure))
    varied = {name: sorted(found) for name, found in colours.items() if len({c for c, _ in found}) > 1}
    assert not varied, "\n".join(f"{name}: {found}" for name, found in varied.items())


def test_a_method_family_keeps_one_hue_and_families_differ(every_figure):
    hues = defaultdict(set)
    for _, name, color, *_ in method_series(every_figure):
        hues[family_of(name)].add(color.upper())
    problems = []
    for family, colors in hues.items():
        found = {hue(c) for c in colors}
        if family == "zero-shot":
            if found != {None}:
                problems.append(f"zero-shot in colours {sorted(colors)}: it is drawn grey")
        elif None in found or max(found) - min(found) > 8:
            problems.append(f"{family} in several hues: {sorted(colors)}")
    bases = {family: next(iter(colors)) for family, colors in hues.items()}
    for a in bases:
        for b in bases:
            if a < b and min(distance(x, y) for x in hues[a] for y in hues[b]) < 15:
                problems.append(f"{a} and {b} look alike: {sorted(hues[a])} vs {sorted(hues[b])}")
    assert not problems, "\n".join(problems)


def test_series_of_one_figure_are_told_apart(every_figure):
    by_figure = defaultdict(dict)
    for figure, name, *look in method_series(every_figure):
        by_figure[figure].setdefault(name, look)
    problems = []
    for figure, looks in by_figure.items():
        names = list(looks)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                (color_a, *rest_a), (color_b, *rest_b) = looks[a], looks[b]
                same_family = family_of(a) == family_of(b)
                if distance(color_a, color_b) < (3 if same_family else 15) and (not same_family or rest_a == rest_b):
                    problems.append(f"{figure}: {a!r} and {b!r} are drawn alike ({color_a}, {color_b})")
    assert not problems, "\n".join(problems)
