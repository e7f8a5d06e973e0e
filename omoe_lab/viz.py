"""Plotly figures for the notebooks, the widgets and the HTML report: one look, stable colours.

Every function takes plain data (a DataFrame or a matrix) or finished runs (``RunResult``, the
runs of a ``metrics.json``, a sweep summary from ``results/``), returns a
``plotly.graph_objects.Figure`` and never shows it. The look is defined once, here:

- colours: expert i has the same colour in every figure (``expert_color``), and so does each
  method (``series_style``: LoRA, MoE-LoRA, OMoE, the random-start control, the variants,
  zero-shot), read from a run's label or config, so a reader can match a t-SNE cloud to its
  bar in the routing plot, or a run across the report, without reading legends;
- titles: ``set_title`` (one line, and a smaller subtitle under it) and ``fit_layout`` (a top
  margin that holds them below plotly's toolbar, axis titles wrapped to their axis, long or
  narrow legends under the plot); every figure function ends with them, and a figure resized
  later (a widget panel, the report's small maps) calls ``fit_layout`` again;
- sizes: nothing wider than ``OUTPUT_AREA_WIDTH``; figures autosize unless a panel needs a size.

``format_*`` print numbers the same way in the report's tables and the figures' hover text.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio

# Okabe–Ito, colour-blind safe, then two extra distinct hues for larger mixtures.
EXPERT_COLORS = (
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
    "#8C564B", "#7F7F7F",
)
# One hue per method family (Okabe–Ito and Paul Tol's muted set, colour-blind safe). A family's
# expert counts are shades of its hue (``series_style``).
FAMILY_COLORS = {
    "lora": "#009E73",
    "moe": "#D55E00",
    "omoe": "#0072B2",
    "control": "#CC79A7",  # MoE-LoRA started from a random B, as OMoE starts
    "mixlora": "#E69F00",
    "omoe_mixlora": "#332288",
    "shared_expert": "#8C564B",
    "null_experts": "#999933",
    "orthogonality_penalty": "#882255",
    "zero_shot": "#7F7F7F",  # and every zero-shot baseline
}
# the families that are methods of RunConfig (``"none"`` is zero-shot)
METHOD_COLORS = {**{m: FAMILY_COLORS[m] for m in ("lora", "moe", "omoe", "mixlora", "omoe_mixlora")},
                 "none": FAMILY_COLORS["zero_shot"]}
METHOD_NAMES = {"lora": "LoRA", "moe": "MoE-LoRA", "omoe": "OMoE", "mixlora": "MixLoRA", "omoe_mixlora": "MixLoRA + OMoE",
                "none": "zero-shot"}
# Tasks get colours from a palette distinct from the experts' so the two are never confused.
TASK_COLORS = px.colors.qualitative.Set2 + px.colors.qualitative.Pastel1
# Series no method explains (a name a caller made up): distinct hues without the families' own,
# so a dozen such lines never share a colour.
SERIES_COLORS = tuple(dict.fromkeys(
    c.upper() for c in ("#56B4E9", "#000000", *px.colors.qualitative.Dark24, *px.colors.qualitative.Alphabet)
    if c.upper() not in FAMILY_COLORS.values()
))
# More legend entries than this do not fit beside a report-sized figure: they go under the plot.
LEGEND_MAX_ENTRIES = 10
# px: the widest figure JupyterLab's output area shows without a scroll bar (the report's column
# is wider); an autosized figure is taken to be this wide when its titles are fitted
OUTPUT_AREA_WIDTH = 900
# px: plotly's toolbar (the mode bar) sits in the top-right corner; titles start below it
TOOLBAR_HEIGHT = 32
DEFAULT_HEIGHT = 450  # plotly's, for a figure that sets none
# a legend beside a figure narrower than this squeezes the plot or is cut: it goes under the plot
NARROW_WIDTH = 600

TITLE_SIZE, SUBTITLE_SIZE, FONT_SIZE = 16, 12, 13
TEMPLATE = go.layout.Template(pio.templates["plotly_white"])
TEMPLATE.layout.update(
    font=dict(family="Inter, Helvetica, Arial, sans-serif", size=FONT_SIZE, color="#222222"),
    # under the toolbar, in a top margin fit_layout sizes: plotly.js's automatic title margin
    # draws a two-line title's first line out of sight and a subtitle over its title
    title=dict(x=0, xref="container", xanchor="left", y=1, yref="container", yanchor="top",
               pad=dict(t=TOOLBAR_HEIGHT, l=12), automargin=False, font=dict(size=TITLE_SIZE),
               subtitle=dict(font=dict(size=SUBTITLE_SIZE, color="#555555"))),
    colorway=list(EXPERT_COLORS),
    legend=dict(title_font=dict(size=12), groupclick="toggleitem"),
    # t: room for a title and facet titles, for a figure that takes the template without fit_layout
    margin=dict(l=70, r=30, t=96, b=60),
    hoverlabel=dict(font=dict(size=12)),
    xaxis=dict(automargin=True, title=dict(standoff=12)),
    yaxis=dict(automargin=True, title=dict(standoff=12)),
)
# CKA values live in [0, 1]: a sequential scale anchored at both ends.
SIMILARITY_COLORSCALE = "Blues"
# log axes cannot show 0: exact zeros are drawn at this floor (their hover shows the true value)
LOG_FLOOR = 1e-17


def expert_label(expert: int) -> str:
    return f"expert {int(expert)}"


def expert_color(expert: int) -> str:
    return EXPERT_COLORS[int(expert) % len(EXPERT_COLORS)]


# --- one colour per method ---------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesStyle:
    """How one series (a method, a run label, a sweep arm) is drawn in every figure."""

    family: str | None  # a key of FAMILY_COLORS; None: no method this lab knows
    color: str  # the family's hue, lighter for fewer experts and darker for more
    dash: str = "solid"  # lines: fewer experts than BASE_EXPERTS dashed, more dotted, so coinciding lines stay visible
    symbol: str = "circle"  # markers: square / diamond for the orthogonal / norm_preserving modes, open under top-k
    pattern: str = ""  # bars: hatched under top-k routing


BASE_EXPERTS = 4  # the expert count drawn in a family's own hue, solid
# Families a label names although its config may not record them (a sweep arm keeps only the
# method); the first match wins, so the variants and the control come before their base method.
_FAMILY_IN_LABEL = (
    ("orthogonality_penalty", re.compile(r"orthogonality penalty", re.I)),
    ("shared_expert", re.compile(r"shared expert", re.I)),
    ("null_experts", re.compile(r"\bnull\b", re.I)),
    ("control", re.compile(r"\bcontrol\b|\brandom[- ](?:start|B)\b|MoE-LoRA\b.*\bB ~ N\(", re.I)),
    ("omoe_mixlora", re.compile(r"MixLoRA \+ OMoE|\bomoe_mixlora\b", re.I)),
    ("mixlora", re.compile(r"MixLoRA", re.I)),
    ("omoe", re.compile(r"\bOMoE\b", re.I)),
    ("moe", re.compile(r"\bMoE-LoRA\b|^moe$", re.I)),
    ("lora", re.compile(r"\bLoRA\b", re.I)),
    ("zero_shot", re.compile(r"zero-shot|baseline|majority|^none$|^(?:listed|cloze)/", re.I)),
)
_NAMED_ONLY_IN_LABELS = {"orthogonality_penalty", "shared_expert", "null_experts", "control"}
_EXPERTS_IN_NAME = re.compile(r"\bE\s*=\s*(\d+)\b")
_TOP_K_IN_NAME = re.compile(r"\btop-(?:\d+|p)\b")
_MODE_IN_NAME = re.compile(r"\b(stiefel|orthogonal|norm_preserving)\b")


def _config_family(config: Mapping) -> str | None:
    method = config.get("method")
    if config.get("orthogonality_penalty"):
        return "orthogonality_penalty"
    if config.get("shared_expert"):
        return "shared_expert"
    if config.get("null_experts"):
        return "null_experts"
    if method == "moe" and (config.get("b_init_std") or 0) > 0:
        return "control"
    if method == "none":
        return "zero_shot"
    return method if method in FAMILY_COLORS else None


def _config_and_name(series) -> tuple[Mapping, str]:
    """A series as (config, name): a name or method key, a config, a ``RunResult`` or a sweep arm."""
    if isinstance(series, str):
        return {}, series
    config = _field(series, "config")
    if config is None and isinstance(series, Mapping) and "method" in series:
        return series, ""
    return config or {}, str(_field(series, "run_label") or _field(series, "label") or "")


def series_traits(series) -> tuple[str | None, int | None, bool, str | None]:
    """``(family, experts, top_k, mode)`` of a series (see ``series_style``), from its config where
    it has one and its name otherwise; a variant or the control is recognised from either."""
    config, name = _config_and_name(series)
    named = next((family for family, pattern in _FAMILY_IN_LABEL if pattern.search(name)), None)
    configured = _config_family(config) if config else None
    family = named if configured is None or named in _NAMED_ONLY_IN_LABELS else configured
    experts = config.get("num_experts") if config.get("method") not in (None, "lora", "none") else None
    if experts is None and family not in ("lora", "zero_shot"):
        found = _EXPERTS_IN_NAME.search(name)
        experts = int(found.group(1)) if found else None
    top_k = bool(config.get("top_k") or config.get("top_p") or _TOP_K_IN_NAME.search(name))
    mode = config.get("orthogonalize") if family in ("omoe", "omoe_mixlora") else None
    if mode is None and family in ("omoe", "omoe_mixlora"):
        found = _MODE_IN_NAME.search(name)
        mode = found.group(1) if found else None
    return family, int(experts) if experts else None, top_k, mode


def _shade(color: str, experts: int | None) -> str:
    """``color`` mixed with white for fewer than ``BASE_EXPERTS`` experts and black for more:
    28 % a doubling, at most 60 %."""
    if not experts or experts == BASE_EXPERTS:
        return color
    amount = max(-0.6, min(0.6, 0.28 * math.log2(experts / BASE_EXPERTS)))
    target = 0 if amount > 0 else 255
    channels = (int(color.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4))
    return "#" + "".join(f"{round(c + abs(amount) * (target - c)):02X}" for c in channels)


def series_style(series, index: int = 0) -> SeriesStyle:
    """The look of a series in every figure: its method family's hue (``FAMILY_COLORS``) shaded by
    its expert count, dashed by it too, its marker by the orthogonalization mode, open (and bars
    hatched) under top-k routing.

    ``series``: a run label (``"MoE-LoRA E=8 top-2"``, ``"OMoE (stiefel) E=4 soft"``,
    ``"LoRA r=16"``, ``"zero-shot (cloze/mean)"``), a method key (``"omoe"``), a config dict, a
    ``RunResult`` or a sweep arm. A name no method explains takes ``SERIES_COLORS[index]``.
    """
    family, experts, top_k, mode = series_traits(series)
    if family is None:
        return SeriesStyle(None, SERIES_COLORS[index % len(SERIES_COLORS)])
    dash = "solid" if experts in (None, BASE_EXPERTS) else "dash" if experts < BASE_EXPERTS else "dot"
    symbol = {"orthogonal": "square", "norm_preserving": "diamond"}.get(mode, "circle") + ("-open" if top_k else "")
    return SeriesStyle(family, _shade(FAMILY_COLORS[family], experts), dash, symbol, "/" if top_k else "")


def series_styles(names: Iterable[str], described_by: Mapping[str, Any] | None = None) -> dict[str, SeriesStyle]:
    """A style per name, in order: ``series_style`` of the name (or of ``described_by[name]``, a
    config, run or arm that says more); names no method explains take the next fallback colour."""
    styles, unexplained = {}, 0
    for name in dict.fromkeys(names):
        style = series_style((described_by or {}).get(name, name), unexplained)
        unexplained += style.family is None
        styles[name] = style
    return styles


def series_colors(names: Iterable[str]) -> dict[str, str]:
    """The colour of each name of ``series_styles``."""
    return {name: style.color for name, style in series_styles(names).items()}


def method_color(series, index: int = 0) -> str:
    """The colour of one series (``series_style``): a method key, a run label, a config or an arm."""
    return series_style(series, index).color


MISSING = "—"  # what a table or a hover shows for a value that was not measured


def _missing(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)) or value is pd.NA


def format_count(value) -> str:
    """A whole number with thousands separators (``4``, ``12,345``; pandas' ``4.0`` too), ``—`` if missing."""
    return MISSING if _missing(value) else f"{int(round(float(value))):,}"


def format_fixed(value, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, ``—`` if missing."""
    return MISSING if _missing(value) else f"{float(value):.{digits}f}"


def format_percent(fraction, digits: int = 1) -> str:
    """A fraction in percent without the sign (``0.625`` → ``62.5``), ``—`` if missing."""
    return MISSING if _missing(fraction) else f"{100 * float(fraction):.{digits}f}"


# float32 holds about 7 significant digits: 6 print a float32 sum of gates as 1, not 0.9999999403953552
SIGNIFICANT_DIGITS = 6


def format_value(value) -> str:
    """Any setting or measured value as a table cell or a printed number: missing as ``—``, whole
    numbers without a decimal point (a count stored as ``4.0`` prints ``4``), other floats to
    ``SIGNIFICANT_DIGITS`` (float32 noise gone), lists comma-separated, others as ``str``."""
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value)
    if _missing(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else f"{float(value):.{SIGNIFICANT_DIGITS}g}"
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def method_label(method: str) -> str:
    return METHOD_NAMES.get(method, str(method))


def layer_label(name: str, block=None) -> str:
    """``"model.layers.3.self_attn.q_proj"`` → ``"L3 q_proj"`` (block index + projection)."""
    short = str(name).rsplit(".", 1)[-1]
    return short if block is None or pd.isna(block) else f"L{int(block)} {short}"


def _require_columns(df: pd.DataFrame, columns, figure: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{figure} needs columns {list(columns)}; missing {missing}")
    if df.empty:
        raise ValueError(f"{figure}: the DataFrame is empty")


# --- titles, margins, legends: one layout -------------------------------------------------------
_TAGS = re.compile(r"<[^>]+>")
_BREAK = re.compile(r"\s*<br\s*/?>\s*", re.I)


def text_width(text: str, size: float = FONT_SIZE) -> float:
    """Rough width in px of one line of ``text`` (HTML tags not counted) in the template's sans-serif
    font: 0.55 em a character, a little more than the average, so an estimate that fits does."""
    return 0.55 * size * len(_TAGS.sub("", text))


def wrap_text(text: str, width: float, size: float = FONT_SIZE) -> str:
    """``text`` with ``<br>`` between words wherever a line would be wider than ``width`` px (a
    word wider than that keeps its own line); line breaks already there are redone."""
    lines: list[str] = []
    for word in _BREAK.sub(" ", text).split():
        if lines and text_width(f"{lines[-1]} {word}", size) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return "<br>".join(lines)


def _line_count(text: str | None) -> int:
    return len(_BREAK.split(text)) if text else 0


def top_margin(title: str | None, subtitle: str | None, on_plot: int = 0) -> int:
    """px above the plot for plotly's toolbar, the title's lines, the subtitle's (plotly puts it
    1.6 em under the title) and ``on_plot`` px of facet titles or a menu standing on the plot."""
    height = TOOLBAR_HEIGHT + 12
    if title:
        height += 20 + 21 * (_line_count(title) - 1)
    if subtitle:
        height += 30 + 16 * (_line_count(subtitle) - 1)
    return height + on_plot


def _margin(fig: go.Figure, side: str) -> float:
    value = fig.layout.margin[side]
    return value if value is not None else TEMPLATE.layout.margin[side]


def _panel_titles(fig: go.Figure) -> list:
    """Facet and subplot titles: paper annotations standing, unrotated and without an arrow, on a panel."""
    return [note for note in fig.layout.annotations
            if note.xref in (None, "paper") and note.yref in (None, "paper") and note.yanchor == "bottom"
            and not note.showarrow and note.textangle not in (90, -90) and note.text]


def _fit_panel_titles(fig: go.Figure) -> int:
    """Wrap facet and subplot titles to their panel's width; return the px that they, or a menu,
    stand above the top of the plot (0: nothing does)."""
    plot_width = (fig.layout.width or OUTPUT_AREA_WIDTH) - _margin(fig, "l") - _margin(fig, "r")
    domains = [axis.domain or (0, 1) for axis in fig.select_xaxes()]
    on_plot = 0
    for note in _panel_titles(fig):
        low, high = next(((low, high) for low, high in domains if low - 1e-6 <= (note.x or 0) <= high + 1e-6), (0, 1))
        note.text = wrap_text(note.text, max((high - low) * plot_width, 60), note.font.size or FONT_SIZE)
        if note.y is not None and note.y >= 1:
            on_plot = max(on_plot, 10 + 16 * _line_count(note.text))
    if any(menu.y is not None and menu.y >= 1 and menu.yanchor == "bottom" for menu in fig.layout.updatemenus):
        on_plot = max(on_plot, 26)
    return on_plot


def set_title(fig: go.Figure, title: str, subtitle: str | None = None) -> go.Figure:
    """The one way a figure here gets its title: a line in the layout (wrapped only where wider than
    the figure) and an optional smaller ``subtitle`` under it (plotly's ``title.subtitle``), then
    ``fit_layout``. A title written the
    old way, ``"title<br><sub>more</sub>"``, has its second line moved into the subtitle: with it
    plotly.js drew the first line out of sight."""
    first, _, rest = str(title).partition("<br")
    moved = _TAGS.sub("", "<br" + rest).strip() if rest else ""
    subtitle = " · ".join(part for part in (moved, subtitle) if part) or None
    fig.update_layout(title=dict(text=first.strip(), subtitle=dict(text=subtitle)))
    return fit_layout(fig)


def fit_layout(fig: go.Figure, width: int | None = None, height: int | None = None) -> go.Figure:
    """Fit what depends on a figure's size, after sizing it to ``width`` × ``height`` (if given;
    an autosized figure counts as ``OUTPUT_AREA_WIDTH`` wide): the title and subtitle wrap to the
    width and the top margin holds them below the toolbar; axis titles wrap to their axis; the
    legend goes under the plot when it is long or the figure narrow; facet and subplot titles
    wrap to their panel. Call it again after resizing a figure: it starts from the unwrapped texts."""
    fig.update_layout({name: size for name, size in (("width", width), ("height", height)) if size is not None})
    if fig.layout.height is None:  # JupyterLab would draw it 360 px high, a page 450: one size everywhere,
        fig.update_layout(height=DEFAULT_HEIGHT + _tick_label_room(fig))  # and slanted labels take none of the plot's
    room = (fig.layout.width or OUTPUT_AREA_WIDTH) - 2 * TEMPLATE.layout.title.pad.l
    title = wrap_text(fig.layout.title.text, room, TITLE_SIZE) if fig.layout.title.text else None
    subtitle = wrap_text(fig.layout.title.subtitle.text, room, SUBTITLE_SIZE) if fig.layout.title.subtitle.text else None
    fig.update_layout(title=dict(text=title, subtitle=dict(text=subtitle)),
                      margin=dict(t=top_margin(title, subtitle, _fit_panel_titles(fig))))
    _wrap_axis_titles(fig)
    _place_legend(fig)
    return fig


def _tick_label_room(fig: go.Figure) -> float:
    """px that slanted category labels under the plot take from its height (0 when they stand level).

    plotly.js slants an x axis's category labels once they are wider, together, than the axis
    (``automargin`` then grows the bottom margin by about half the longest label); one panel's
    labels are counted against that panel's share of the width."""
    plot_width = (fig.layout.width or OUTPUT_AREA_WIDTH) - _margin(fig, "l") - _margin(fig, "r")
    room = 0.0
    for axis in fig.select_xaxes():
        name = "x" + axis.plotly_name[len("xaxis"):]
        labels = {str(v) for t in fig.data if (getattr(t, "xaxis", None) or "x") == name and t.x is not None
                  for v in t.x if isinstance(v, str)}
        low, high = axis.domain or (0, 1)
        if labels and sum(text_width(label) + 8 for label in labels) > (high - low) * plot_width:
            room = max(room, 0.6 * max(text_width(label) for label in labels))
    return room


def _wrap_axis_titles(fig: go.Figure) -> None:
    """Axis titles longer than their axis run into the figure's title: they wrap onto more lines."""
    plot_width = (fig.layout.width or OUTPUT_AREA_WIDTH) - _margin(fig, "l") - _margin(fig, "r")
    plot_height = (fig.layout.height or DEFAULT_HEIGHT) - _margin(fig, "t") - _margin(fig, "b") - _tick_label_room(fig)
    for axes, length in ((fig.select_xaxes(), plot_width), (fig.select_yaxes(), plot_height)):
        for axis in axes:
            if axis.title.text:
                low, high = axis.domain or (0, 1)
                axis.title.text = wrap_text(axis.title.text, max(0.9 * (high - low) * length, 60))


def _legend_entries(fig: go.Figure) -> int:
    """Entries of the main legend (a second one, ``legend2``, places itself); heatmaps, whose
    colour bar is their legend, have none unless asked for one."""
    return len({(t.legendgroup, t.name) for t in fig.data
                if (getattr(t, "legend", None) or "legend") == "legend" and t.name
                and (t.showlegend or (t.showlegend is None and t.type != "heatmap"))})


def _place_legend(fig: go.Figure) -> None:
    """A long legend, or any legend of a narrow figure, goes under the plot (it wraps, and the
    bottom margin grows to fit it) instead of a column that runs off the figure or is cut. Its
    title goes on top ('top': beside the entries, or at 'top left', plotly.js shifts them past the edge)."""
    entries = _legend_entries(fig)
    narrow = fig.layout.width is not None and fig.layout.width < NARROW_WIDTH
    if entries > LEGEND_MAX_ENTRIES or (narrow and entries):
        fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=0, yref="container", yanchor="bottom",
                                      title_side="top"))


def _finish(fig: go.Figure, title: str, legend_title: str | None = None) -> go.Figure:
    fig.update_layout(template=TEMPLATE)
    if legend_title is not None:
        fig.update_layout(legend_title_text=legend_title)
    return set_title(fig, title)


def _categorical_axis(values: list[str]) -> dict:
    """Axis settings that list every category as its own tick. plotly.js still ticks a category
    axis every range / (length / 15 px) categories, so such an axis must keep a length of its
    own: tied to the other axis by ``scaleanchor``/``constrain``, it gets 0 px while that one is
    empty or of another size (a heatmap replaced in a widget) and logs ``ax.dtick error: Infinity``."""
    return dict(type="category", tickmode="array", tickvals=values, ticktext=values, categoryorder="array", categoryarray=values)


def _whole_number_axis(values) -> dict:
    """Ticks at the whole numbers present (steps, blocks, expert counts), never at 2.5."""
    ticks = sorted({int(v) for v in values if not _missing(v)})
    return dict(tickmode="array", tickvals=ticks, ticktext=[format_count(t) for t in ticks]) if len(ticks) <= 12 else dict(tickformat=",d")


def _hover_ready(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Whole-number columns stored as floats (a missing value turns pandas ints into floats) as
    text: ``17``, not ``17.0``, and ``—``, not ``NaN``."""
    frame = frame.copy()
    for column in columns:
        values = frame[column]
        if pd.api.types.is_float_dtype(values) and values.dropna().map(float.is_integer).all():
            frame[column] = values.map(format_count)
        elif values.isna().any():
            frame[column] = values.map(lambda v: MISSING if _missing(v) else v)
    return frame


def _strip_facet_prefixes(fig: go.Figure) -> None:
    """px labels facets "column=value"; the value alone reads better."""
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))


def _protocol_note(df: pd.DataFrame) -> str:
    """OMOE_SPEC §7: every accuracy names its protocol."""
    if "protocol" not in df.columns:
        return ""
    protocols = sorted(df["protocol"].astype(str).unique())
    return f" — protocol: {', '.join(protocols)}"


# --- expert outputs ------------------------------------------------------------------------
_AXIS_TITLES = {
    "tsne": ("t-SNE 1 (no units)", "t-SNE 2 (no units)"),
    "pca": ("PC 1 (output units)", "PC 2 (output units)"),
}


def tsne_scatter(df: pd.DataFrame, facet_col: str | None = None, facet_row: str | None = None, title: str | None = None) -> go.Figure:
    """2-D map of expert outputs (from ``analysis.embed``), one colour per expert.

    Facet by ``method`` or ``layer`` to put collapse (overlapping clouds) next to diversity
    (separate clouds). Each facet keeps its own axis range: t-SNE coordinates of two runs are
    not comparable. Hover shows task and token where the frame has them.
    """
    _require_columns(df, ["x", "y", "expert"], "tsne_scatter")
    frame = df.copy()
    frame["expert_label"] = frame["expert"].map(expert_label)
    experts = sorted(frame["expert"].unique())
    hover = [c for c in ("task", "token_text", "token", "layer", "method") if c in frame.columns]
    frame = _hover_ready(frame, hover)
    projection = str(frame["projection"].iloc[0]) if "projection" in frame.columns else "tsne"
    x_title, y_title = _AXIS_TITLES.get(projection, ("dimension 1", "dimension 2"))
    fig = px.scatter(
        frame, x="x", y="y", color="expert_label", facet_col=facet_col, facet_row=facet_row,
        hover_data={c: True for c in hover} | {"x": False, "y": False, "expert_label": True},
        labels={"expert_label": "expert"},
        category_orders={"expert_label": [expert_label(e) for e in experts]},
        color_discrete_map={expert_label(e): expert_color(e) for e in experts},
    )
    fig.update_traces(marker=dict(size=6, opacity=0.75, line=dict(width=0)))
    fig.update_xaxes(matches=None, title_text=None, showticklabels=False)
    fig.update_yaxes(matches=None, title_text=None, showticklabels=False)
    fig.update_xaxes(title_text=x_title, row=1)
    fig.update_yaxes(title_text=y_title, col=1)
    _strip_facet_prefixes(fig)
    name = {"tsne": "t-SNE", "pca": "PCA"}.get(projection, projection)
    return _finish(fig, title or f"{name} of expert outputs, coloured by expert", "expert")


def cka_heatmap(matrix, labels=None, title: str = "CKA between experts") -> go.Figure:
    """Heatmap of an expert × expert similarity matrix on a fixed 0..1 colour scale, values printed.

    The scale is fixed so two heatmaps (e.g. MoE-LoRA vs OMoE) can be compared by colour; a
    debiased CKA slightly below 0 shows as the lightest colour with its true value printed. The
    cells are square when the figure is (no ``scaleanchor``: see ``_categorical_axis``).
    """
    z = np.asarray(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix, dtype=float)
    if z.ndim != 2 or z.shape[0] != z.shape[1]:
        raise ValueError(f"cka_heatmap needs a square matrix, got shape {z.shape}")
    labels = [expert_label(i) for i in range(z.shape[0])] if labels is None else [str(l) for l in labels]
    if len(labels) != z.shape[0]:
        raise ValueError(f"{len(labels)} labels for a {z.shape[0]} × {z.shape[0]} matrix")
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, zmin=0.0, zmax=1.0, colorscale=SIMILARITY_COLORSCALE,
        texttemplate="%{z:.2f}", hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>",
        colorbar=dict(title=dict(text="similarity")),
    ))
    fig.update_yaxes(autorange="reversed", **_categorical_axis(labels))
    fig.update_xaxes(side="bottom", **_categorical_axis(labels))
    return _finish(fig, title)


# --- routing -------------------------------------------------------------------------------
def _with_layer_labels(summary: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The summary with a short ``layer_label`` column, and the labels in block order."""
    frame = summary.copy()
    blocks = frame["block"] if "block" in frame.columns else pd.Series([None] * len(frame), index=frame.index)
    frame["layer_label"] = [layer_label(n, b) for n, b in zip(frame["layer"], blocks)]
    sort_keys = ["block", "layer"] if "block" in frame.columns else ["layer"]
    frame = frame.sort_values(sort_keys, kind="stable")
    return frame, frame["layer_label"].drop_duplicates().tolist()


def routing_load_bars(summary_df: pd.DataFrame, value: str = "load") -> go.Figure:
    """Stacked bars per task: how the gate mass (or the routed tokens) splits over the experts.

    Input: ``analysis.routing_summary``. With ``value="load"`` each bar sums to 1 and a balanced
    router shows equal slices; ``value="frequency"`` shows the fraction of tokens routed to each
    expert (sums to k under top-k, to E under soft routing). One panel per layer, and a row per
    method when the summary holds several.
    """
    _require_columns(summary_df, ["layer", "task", "expert", value], "routing_load_bars")
    frame, layer_order = _with_layer_labels(summary_df)
    frame["expert_label"] = frame["expert"].map(expert_label)
    experts = sorted(frame["expert"].unique())
    several_methods = "method" in frame.columns and frame["method"].nunique() > 1
    fig = px.bar(
        frame, x="task", y=value, color="expert_label", barmode="stack",
        facet_col="layer_label", facet_col_wrap=0 if several_methods else 4,
        facet_row="method" if several_methods else None,
        category_orders={"expert_label": [expert_label(e) for e in experts], "layer_label": layer_order},
        color_discrete_map={expert_label(e): expert_color(e) for e in experts},
        hover_data={"tokens": True} if "tokens" in frame.columns else None,
    )
    y_title = {"load": "share of gate mass", "frequency": "fraction of tokens routed"}.get(value, value)
    fig.update_yaxes(title_text=None)
    fig.update_yaxes(title_text=y_title, col=1)
    fig.update_xaxes(title_text=None)
    _strip_facet_prefixes(fig)
    title = {"load": "Expert load per task", "frequency": "How often each expert is selected"}.get(value, value)
    return _finish(fig, title, "expert")


def routing_entropy_bars(summary_df: pd.DataFrame) -> go.Figure:
    """Routing entropy per layer and task, normalized by log E (0 = one expert, 1 = uniform).

    Input: ``analysis.routing_summary`` (the entropy repeats per expert; one value per
    (layer, task) is used). One marker per layer and task, the tasks side by side at each layer
    (a bar each is hair-thin past a few layers); one panel per method when the summary holds several.
    """
    _require_columns(summary_df, ["layer", "task", "entropy_normalized"], "routing_entropy_bars")
    frame, layer_order = _with_layer_labels(summary_df)
    keys = ["layer", "task"] + (["method"] if "method" in frame.columns else [])
    frame = frame.drop_duplicates(keys)
    tasks = sorted(frame["task"].astype(str).unique())
    several_methods = "method" in frame.columns and frame["method"].nunique() > 1
    fig = px.scatter(
        frame, x="layer_label", y="entropy_normalized", color="task",
        facet_col="method" if several_methods else None,
        category_orders={"layer_label": layer_order, "task": tasks},
        color_discrete_map={t: TASK_COLORS[i % len(TASK_COLORS)] for i, t in enumerate(tasks)},
        hover_data={"entropy": ":.3f"} if "entropy" in frame.columns else None,
    )
    fig.update_traces(marker=dict(size=8, line=dict(width=0.5, color="#444444")))
    fig.update_layout(scattermode="group", scattergap=0.35)
    fig.update_yaxes(range=[0, 1.05], title_text=None)
    fig.update_yaxes(title_text="routing entropy / log E", col=1)
    fig.update_xaxes(title_text="adapter layer")
    _strip_facet_prefixes(fig)
    return _finish(fig, "Routing entropy (1 = uniform over experts)", "task")


def routing_entropy_over_training(runs, title: str = "Routing entropy during training (1 = uniform over experts)") -> go.Figure:
    """Routing entropy / log E of every adapted layer at every recorded training step, one heatmap
    per run label (layers in block order, the top block at the top; steps across): a colour scale
    keeps any number of layers readable, where a line per layer would need a colour each.

    ``runs``: ``RunResult``s (or their dicts) with ``routing`` rows as training records them
    (``step``, ``layer``, ``normalized_entropy``); runs that recorded none (LoRA, zero-shot) are
    left out, and runs sharing a label (seeds) are averaged.
    """
    rows = [{"label": _field(run, "label"), "step": row["step"], "layer": row["layer"], "entropy": row["normalized_entropy"]}
            for run in runs for row in _field(run, "routing") or []]
    if not rows:
        raise ValueError("routing_entropy_over_training: no run recorded routing during training (LoRA has no router)")
    from plotly.subplots import make_subplots

    frame = pd.DataFrame(rows)
    frame["block"] = frame["layer"].map(_block_of)
    frame, order = _with_layer_labels(frame)
    labels = list(dict.fromkeys(frame["label"]))
    fig = make_subplots(rows=1, cols=len(labels), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[str(label) for label in labels])
    for col, label in enumerate(labels, start=1):
        grid = frame[frame["label"] == label].pivot_table(index="layer_label", columns="step", values="entropy", aggfunc="mean")
        grid = grid.reindex(order)
        fig.add_trace(go.Heatmap(
            z=grid.to_numpy(), x=grid.columns.tolist(), y=order, coloraxis="coloraxis", name=str(label),
            hovertemplate=f"{label}<br>%{{y}}, step %{{x}}: %{{z:.3f}}<extra></extra>",
        ), row=1, col=col)
        fig.update_xaxes(title_text="optimizer step", row=1, col=col)
    fig.update_yaxes(**_categorical_axis(order))
    fig.update_layout(coloraxis=dict(cmin=0, cmax=1, colorscale="Viridis", colorbar=dict(title=dict(text="entropy<br>/ log E"))),
                      height=min(900, 160 + 22 * len(order)))
    return _finish(fig, title)


# --- training and evaluation ---------------------------------------------------------------
def training_curves(history_df: pd.DataFrame, title: str = "Training loss") -> go.Figure:
    """Loss against optimizer step, one line per method (and per seed / split when present).

    Columns: ``step``, ``loss``, ``method`` (a method key or a run label: ``series_style``);
    optional ``split`` (train in the method's own dash, anything else dashed) and ``seed``.
    Colour = method, so repeated seeds read as one family.
    """
    _require_columns(history_df, ["step", "loss", "method"], "training_curves")
    group_keys = ["method"] + [k for k in ("split", "seed") if k in history_df.columns]
    fig = go.Figure()
    styles = series_styles(history_df["method"])
    shown = set()
    for keys, group in history_df.sort_values("step").groupby(group_keys, sort=False):
        values = dict(zip(group_keys, keys if isinstance(keys, tuple) else (keys,)))
        method = values["method"]
        split = values.get("split", "train")
        name = method_label(method) + (f" ({split})" if "split" in values else "")
        fig.add_trace(go.Scatter(
            x=group["step"], y=group["loss"], mode="lines", name=name,
            legendgroup=name, showlegend=name not in shown,
            line=dict(color=styles[method].color, width=2, dash=styles[method].dash if split == "train" else "dash"),
            hovertemplate=f"{name}" + (f" seed {values['seed']}" if "seed" in values else "") + "<br>step %{x}<br>loss %{y:.4f}<extra></extra>",
        ))
        shown.add(name)
    fig.update_xaxes(title_text="optimizer step")
    fig.update_yaxes(title_text="loss (nats per token)")
    return _finish(fig, title, "method")


def _seed_interval(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, min and max of ``accuracy`` over the rows (seeds) of each group, and their count."""
    return (
        df.groupby(keys, sort=False)["accuracy"]
        .agg(mean="mean", low="min", high="max", seeds="count")
        .reset_index()
    )


def _check_fraction(df: pd.DataFrame, figure: str) -> None:
    if ((df["accuracy"] < 0) | (df["accuracy"] > 1)).any():
        raise ValueError(f"{figure}: accuracy must be a fraction in [0, 1] (it is shown in %)")


def accuracy_by_task(df: pd.DataFrame, title: str = "Accuracy by task") -> go.Figure:
    """Grouped bars: accuracy (%) per task, one colour per method; one panel per protocol.

    Columns: ``method`` (a method key or a run label: ``series_style``), ``task``, ``accuracy``
    (a fraction), ``protocol``. Several rows per
    (protocol, method, task) — seeds — are averaged, with error bars from their min to max.
    """
    _require_columns(df, ["method", "task", "accuracy", "protocol"], "accuracy_by_task")
    _check_fraction(df, "accuracy_by_task")
    stats = _seed_interval(df, ["protocol", "method", "task"])
    protocols = list(dict.fromkeys(stats["protocol"]))
    styles = series_styles(stats["method"])
    fig = go.Figure() if len(protocols) == 1 else _facets(len(protocols), [f"protocol: {p}" for p in protocols])
    for p_index, protocol in enumerate(protocols):
        for method, style in styles.items():
            rows = stats[(stats["protocol"] == protocol) & (stats["method"] == method)]
            if rows.empty:
                continue
            with_interval = bool((rows["seeds"] > 1).any())
            trace = go.Bar(
                x=rows["task"], y=100 * rows["mean"], name=method_label(method), legendgroup=method,
                showlegend=p_index == 0, marker=dict(color=style.color, pattern_shape=style.pattern),
                error_y=dict(type="data", symmetric=False, array=100 * (rows["high"] - rows["mean"]),
                             arrayminus=100 * (rows["mean"] - rows["low"]), visible=with_interval),
                customdata=rows[["seeds"]].to_numpy(),
                hovertemplate=f"{method_label(method)}<br>%{{x}}: %{{y:.1f}} %<br>seeds: %{{customdata[0]}}<extra></extra>",
            )
            if len(protocols) == 1:
                fig.add_trace(trace)
            else:
                fig.add_trace(trace, row=1, col=p_index + 1)
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 100])
    return _finish(fig, title + _protocol_note(df), "method")


def _facets(columns: int, titles: list[str]) -> go.Figure:
    from plotly.subplots import make_subplots

    return make_subplots(rows=1, cols=columns, subplot_titles=titles, shared_yaxes=True)


def accuracy_vs_experts(df: pd.DataFrame, title: str = "Accuracy against the number of experts") -> go.Figure:
    """Mean accuracy (%) over seeds against experts per layer, one line per method.

    Columns: ``method``, ``num_experts``, ``accuracy`` (a fraction), ``seed``; optional
    ``protocol`` (named in the title). Error bars span the min and max over seeds: with the two
    or three seeds affordable here a standard deviation would be noise itself.
    """
    _require_columns(df, ["method", "num_experts", "accuracy", "seed"], "accuracy_vs_experts")
    _check_fraction(df, "accuracy_vs_experts")
    stats = _seed_interval(df, ["method", "num_experts"]).sort_values(["method", "num_experts"], kind="stable")
    fig = go.Figure()
    for method, style in series_styles(df["method"]).items():
        rows = stats[stats["method"] == method]
        fig.add_trace(go.Scatter(
            x=rows["num_experts"], y=100 * rows["mean"], mode="lines+markers", name=method_label(method),
            line=dict(color=style.color, width=2, dash=style.dash), marker=dict(size=8, symbol=style.symbol),
            error_y=dict(type="data", symmetric=False, array=100 * (rows["high"] - rows["mean"]),
                         arrayminus=100 * (rows["mean"] - rows["low"])),
            customdata=rows[["seeds"]].to_numpy(),
            hovertemplate=f"{method_label(method)}<br>%{{x}} experts: %{{y:.1f}} %<br>seeds: %{{customdata[0]}}<extra></extra>",
        ))
    fig.update_xaxes(title_text="experts per adapted layer", tickmode="array", tickvals=sorted(df["num_experts"].unique()))
    fig.update_yaxes(title_text="accuracy (%, mean over seeds, bars: min–max)")
    return _finish(fig, title + _protocol_note(df), "method")


# --- checks --------------------------------------------------------------------------------
def stiefel_error_by_layer(df: pd.DataFrame, tol: float | None = None, title: str = "Stiefel error per layer") -> go.Figure:
    """Worst-token ``‖QᵀQ − I‖_F`` per layer on a log axis, one line per method.

    Columns: ``layer`` (block index or name), ``method``, ``error``. Exact zeros are drawn at
    ``LOG_FLOOR`` (a log axis has no 0); hover shows the true value. ``tol`` adds the tolerance
    as a dashed line (``analysis.default_stiefel_tolerance``).
    """
    _require_columns(df, ["layer", "method", "error"], "stiefel_error_by_layer")
    if (df["error"] < 0).any():
        raise ValueError("stiefel_error_by_layer: errors are norms and cannot be negative")
    numeric_layers = pd.api.types.is_numeric_dtype(df["layer"])
    frame = df.sort_values("layer") if numeric_layers else df
    fig = go.Figure()
    for method, style in series_styles(frame["method"]).items():
        rows = frame[frame["method"] == method]
        fig.add_trace(go.Scatter(
            x=rows["layer"] if numeric_layers else rows["layer"].astype(str),
            y=np.maximum(rows["error"].to_numpy(dtype=float), LOG_FLOOR),
            mode="lines+markers", name=method_label(method),
            line=dict(color=style.color, width=2, dash=style.dash), marker=dict(size=8, symbol=style.symbol),
            customdata=rows[["error"]].to_numpy(),
            hovertemplate=f"{method_label(method)}<br>layer %{{x}}<br>error %{{customdata[0]:.3g}}<extra></extra>",
        ))
    if tol is not None:
        fig.add_hline(y=tol, line=dict(color="#444444", dash="dash", width=1))
        # an annotation on a log axis takes log10 of the value as its y (add_hline's own label
        # lands at 10^tol ≈ 1 instead of on the line)
        fig.add_annotation(text=f"tolerance {tol:.1e}", x=0, xref="paper", xanchor="left", y=math.log10(tol), yref="y",
                           yanchor="bottom", showarrow=False, font=dict(size=11, color="#444444"))
    fig.update_yaxes(type="log", title_text="max over tokens of ‖QᵀQ − I‖_F", exponentformat="power")
    fig.update_xaxes(title_text="transformer block" if numeric_layers else "adapter layer",
                     **(_whole_number_axis(frame["layer"]) if numeric_layers else {}))
    return _finish(fig, title, "method")


def layer_measure_bars(frame: pd.DataFrame, measures: list[tuple[str, str]], title: str, y_range=None) -> go.Figure:
    """Grouped bars per adapted layer (block order), one colour per series, one panel per measure.

    ``frame``: columns ``series`` (a method key, or a run label), ``layer``, ``block`` and each
    measure column of ``measures`` (``(column, panel title)`` pairs); several rows of a series and
    layer (seeds) are averaged.
    """
    from plotly.subplots import make_subplots

    _require_columns(frame, ["series", "layer", "block", *(m for m, _ in measures)], "layer_measure_bars")
    frame, order = _with_layer_labels(frame)
    means = frame.groupby(["series", "layer_label"], sort=False)[[m for m, _ in measures]].mean().reset_index()
    styles = series_styles(means["series"])
    fig = make_subplots(rows=len(measures), cols=1, shared_xaxes=True, vertical_spacing=0.14,
                        subplot_titles=[name for _, name in measures])
    for name, style in styles.items():
        rows = means[means["series"] == name]
        for row, (measure, measure_name) in enumerate(measures, start=1):
            fig.add_trace(go.Bar(
                x=rows["layer_label"], y=rows[measure], name=method_label(name), legendgroup=name,
                showlegend=row == 1, marker=dict(color=style.color, pattern_shape=style.pattern),
                hovertemplate=f"{method_label(name)}<br>%{{x}}<br>{measure_name}: %{{y:.3f}}<extra></extra>",
            ), row=row, col=1)
    fig.update_xaxes(**_categorical_axis(order))
    fig.update_xaxes(title_text="adapted layer", row=len(measures), col=1)
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    fig.update_layout(barmode="group", height=280 * len(measures) + 140)
    return _finish(fig, title, "method")


# --- diversity over training and routing by task -------------------------------------------
# the measures of analysis.diversity.MEASURES, as axis titles (lower = more diverse, except the rank)
MEASURE_TITLES = {
    "mean_abs_cosine": "mean |cosine| between experts",
    "mean_cka": "mean linear CKA between experts",
    "mean_cka_debiased": "mean debiased linear CKA between experts",
    "effective_rank": "effective rank of the experts (of E)",
}
# cosine and CKA live in [0, 1]: a fixed axis lets frames and figures compare by height
_UNIT_MEASURES = ("mean_abs_cosine", "mean_cka")
MEAN_OVER_LAYERS = "mean over adapted layers"  # the one "layer" a sweep summary (means only) has


def _field(item, name: str, default=None):
    return item.get(name, default) if isinstance(item, Mapping) else getattr(item, name, default)


def _recorded_runs(source) -> list[dict[str, Any]]:
    """``(label, method, seed, diversity rows)`` of each run in ``source``: a list of ``RunResult``
    (or their dicts), a ``metrics.json`` payload (``{"runs": [...]}``) or a sweep summary
    (``{"arms": [...]}``, whose rows are already means over seeds)."""
    if isinstance(source, Mapping) and "arms" in source:
        return [{"label": arm["label"], "method": arm.get("config", {}).get("method"), "seed": None,
                 "rows": arm.get("diversity_over_training") or []} for arm in source["arms"]]
    if isinstance(source, Mapping) and "runs" in source:
        source = source["runs"]
    return [{"label": _field(r, "label"), "method": (_field(r, "config") or {}).get("method"),
             "seed": (_field(r, "config") or {}).get("seed"), "rows": _field(r, "diversity") or []} for r in source]


def diversity_frame(source, per_layer: bool = False) -> pd.DataFrame:
    """Diversity over training as a tidy frame: one row per run, step (and layer with ``per_layer``).

    Columns ``label``, ``method``, ``seed``, ``step`` (``layer``, ``block``) and the measures of
    ``MEASURE_TITLES``. ``source``: see ``diversity_over_training``. A sweep summary keeps only the
    means over layers: with ``per_layer`` it gives one row per step with ``layer`` =
    ``MEAN_OVER_LAYERS`` (unless its rows carry ``per_layer``).
    """
    out = []
    for run in _recorded_runs(source):
        base = {"label": run["label"], "method": run["method"], "seed": run["seed"]}
        for row in run["rows"]:
            measures = {m: row.get(m) for m in MEASURE_TITLES}
            if not per_layer:
                out.append({**base, "step": row["step"], **measures})
            elif row.get("per_layer"):
                out += [{**base, "step": row["step"], "layer": name, "block": layer.get("block"),
                         **{m: layer.get(m) for m in MEASURE_TITLES}} for name, layer in row["per_layer"].items()]
            else:
                out.append({**base, "step": row["step"], "layer": MEAN_OVER_LAYERS, "block": None, **measures})
    columns = ["label", "method", "seed", "step", *(["layer", "block"] if per_layer else []), *MEASURE_TITLES]
    return pd.DataFrame(out, columns=columns)


def _check_measure(measure: str, figure: str) -> None:
    if measure not in MEASURE_TITLES:
        raise ValueError(f"{figure}: unknown measure {measure!r}; choose one of {list(MEASURE_TITLES)}")


def _label_styles(frame: pd.DataFrame) -> dict[str, SeriesStyle]:
    """The style of each run label, its method telling what the label alone does not."""
    methods = dict(zip(frame["label"], frame["method"]))
    return series_styles(methods, {label: {"label": label, "config": {"method": method}} for label, method in methods.items()})


def _transparent(color: str, alpha: float) -> str:
    red, green, blue = (int(color.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({red}, {green}, {blue}, {alpha})"


def diversity_over_training(source, measure: str = "mean_cka", title: str | None = None) -> go.Figure:
    """How diverse the experts are at each training step: one line per run label.

    ``source``: finished runs (``RunResult`` with ``diversity`` recorded every K steps, or the
    ``runs`` of a ``metrics.json``) or a sweep summary (``sweep.summarize_sweep``, whose arms
    hold ``diversity_over_training``). Runs that share a label (seeds) are averaged, with a band
    from their min to max; a sweep summary has the means over seeds only. A LoRA run records
    nothing (one expert), and MoE-LoRA with B = 0 starts at its first measured step: zero experts
    have no direction.
    """
    _check_measure(measure, "diversity_over_training")
    frame = diversity_frame(source).dropna(subset=[measure])
    if frame.empty:
        raise ValueError("diversity_over_training: no run recorded diversity over training "
                         "(mixture runs with RunConfig(diversity_every=K) do; LoRA has a single expert)")
    styles = _label_styles(frame)
    fig = go.Figure()
    for label, part in frame.groupby("label", sort=False):
        stats = part.groupby("step")[measure].agg(mean="mean", low="min", high="max", runs="count").reset_index()
        style = styles[label]
        if (stats["runs"] > 1).any():
            fig.add_trace(go.Scatter(x=stats["step"], y=stats["high"], mode="lines", line=dict(width=0), legendgroup=label,
                                     showlegend=False, hoverinfo="skip", name=f"{label} max"))
            fig.add_trace(go.Scatter(x=stats["step"], y=stats["low"], mode="lines", line=dict(width=0), fill="tonexty",
                                     fillcolor=_transparent(style.color, 0.18), legendgroup=label, showlegend=False,
                                     hoverinfo="skip", name=f"{label} min"))
        fig.add_trace(go.Scatter(
            x=stats["step"], y=stats["mean"], mode="lines+markers", name=str(label), legendgroup=label,
            line=dict(color=style.color, width=2, dash=style.dash), marker=dict(size=6, symbol=style.symbol),
            customdata=stats[["runs"]].to_numpy(),
            hovertemplate=f"{label}<br>step %{{x}}<br>{measure}: %{{y:.3f}}<br>runs: %{{customdata[0]}}<extra></extra>",
        ))
    fig.update_xaxes(title_text="optimizer step", **_whole_number_axis(frame["step"]))
    fig.update_yaxes(title_text=MEASURE_TITLES[measure], **({"range": [0, 1.05]} if measure in _UNIT_MEASURES else {}))
    several = bool(frame.groupby(["label", "step"]).size().gt(1).any())
    default = f"Expert diversity over training ({'mean over runs, band: min–max' if several else 'one run per line'})"
    return _finish(fig, title or default, "run")


def _animation_range(values: pd.Series, measure: str) -> list[float]:
    if measure in _UNIT_MEASURES:
        return [0, 1.05]
    low, high = float(values.min()), float(values.max())
    return [min(0.0, low) - 0.05 * abs(low), 1.1 * max(high, 1.0 if measure == "mean_cka_debiased" else high)]


def diversity_animation(source, measure: str = "mean_cka", title: str | None = None) -> go.Figure:
    """Watch collapse happen (or not): the per-layer value of ``measure`` at each recorded step.

    Frames are the steps (a play button and a step slider move through them); x is the adapted
    layer in block order, one bar group per run label (seeds averaged). The y axis stays fixed
    across frames. ``source`` as in ``diversity_over_training``; a sweep summary, which keeps the
    means over layers only, gives one group ``MEAN_OVER_LAYERS``. A label with nothing at a step
    (MoE-LoRA with B = 0 at step 0) shows no bar there.
    """
    _check_measure(measure, "diversity_animation")
    frame = diversity_frame(source, per_layer=True).dropna(subset=[measure])
    if frame.empty:
        raise ValueError("diversity_animation: no run recorded diversity over training "
                         "(mixture runs with RunConfig(diversity_every=K) do; LoRA has a single expert)")
    frame, order = _with_layer_labels(frame)
    means = frame.groupby(["label", "step", "layer_label"], sort=False)[measure].mean()
    labels = list(dict.fromkeys(frame["label"]))
    steps = sorted(frame["step"].unique())
    styles = _label_styles(frame)

    def bars(step) -> list[go.Bar]:
        return [go.Bar(
            x=order, y=[means.get((label, step, layer)) for layer in order], name=str(label),
            marker=dict(color=styles[label].color, pattern_shape=styles[label].pattern),
            hovertemplate=f"{label}<br>%{{x}}<br>{measure}: %{{y:.3f}}<extra>step {step}</extra>",
        ) for label in labels]

    fig = go.Figure(data=bars(steps[0]), frames=[go.Frame(data=bars(step), name=str(step)) for step in steps])
    still = {"frame": {"duration": 0, "redraw": True}, "mode": "immediate", "transition": {"duration": 0}}
    fig.update_layout(
        barmode="group",
        # below the layer names (paper coordinates: sliders and buttons have no container reference)
        updatemenus=[dict(
            type="buttons", direction="left", x=0, xanchor="left", y=-0.3, yanchor="top", pad=dict(t=0),
            showactive=False, buttons=[
                dict(label="▶ play", method="animate",
                     args=[None, {"frame": {"duration": 600, "redraw": True}, "fromcurrent": True, "transition": {"duration": 300}}]),
                dict(label="❚❚ pause", method="animate", args=[[None], still]),
            ],
        )],
        sliders=[dict(
            active=0, x=0.2, len=0.8, y=-0.22, yanchor="top", pad=dict(t=0),
            currentvalue=dict(prefix="step ", font=dict(size=13)),
            steps=[dict(label=str(step), method="animate", args=[[str(step)], still]) for step in steps],
        )],
        margin=dict(b=180), height=560,
    )
    fig.update_xaxes(title_text="adapted layer", **_categorical_axis(order))
    fig.update_yaxes(title_text=MEASURE_TITLES[measure], range=_animation_range(frame[measure], measure))
    return _finish(fig, title or f"{MEASURE_TITLES[measure].capitalize()} per layer over training (press play)", "run")


def _block_of(name: str):
    """The transformer block in a module name (``model.layers.3.self_attn.q_proj`` → 3), else None."""
    found = re.search(r"\.(\d+)\.", f".{name}.")
    return int(found.group(1)) if found else None


def _routing_by_task(source) -> dict[str, tuple[Any, dict[str, list[float]]]]:
    """``{layer: (block, {task: mean gate per expert})}`` of a run (``experts`` rows with
    ``load_by_task``) or of a sweep arm (``routing_by_task``), in block order."""
    by_layer = {}
    routing = _field(source, "routing_by_task")
    if routing:
        by_layer = {name: (_block_of(name), tasks) for name, tasks in routing.items()}
    for row in _field(source, "experts") or []:
        if row.get("load_by_task"):
            by_layer[row["layer"]] = (row.get("block"), row["load_by_task"])
    ordered = sorted(by_layer.items(), key=lambda item: (-1 if item[1][0] is None else item[1][0], item[0]))
    return dict(ordered)


def specialization_heatmap(result, layer: str | None = None, title: str | None = None) -> go.Figure:
    """Which expert each task uses: task × expert heatmap of the mean gate (routing mass) in one layer.

    ``result``: a ``RunResult`` whose ``experts`` rows have ``load_by_task`` (or a sweep arm with
    ``routing_by_task``). ``layer``: a module name; None shows the top adapted layer with a
    dropdown over every layer. White is 1/E, an even share; red is more than that, blue less, so
    a row with one red cell is a task routed to its own expert, and an all-white map is a router
    that does not tell tasks apart.
    """
    layers = _routing_by_task(result)
    if not layers:
        raise ValueError("specialization_heatmap: the run has no routing by task (experts rows with 'load_by_task'); "
                         "LoRA has no router")
    if layer is not None and layer not in layers:
        raise ValueError(f"specialization_heatmap: no routing recorded for layer {layer!r}; layers: {list(layers)}")
    shown = [layer] if layer is not None else list(layers)
    experts = max(len(loads) for _, tasks in layers.values() for loads in tasks.values())
    columns = [expert_label(e) for e in range(experts)]
    fig = go.Figure()
    for name in shown:
        block, tasks = layers[name]
        z = [[loads[e] if e < len(loads) else None for e in range(experts)] for loads in tasks.values()]
        fig.add_trace(go.Heatmap(
            z=z, x=columns, y=list(tasks), zmin=0.0, zmax=min(1.0, 2.0 / experts), colorscale="RdBu_r",
            text=[[format_fixed(v, 2) for v in row] for row in z], texttemplate="%{text}",
            hovertemplate="%{y}, %{x}: mean gate %{z:.3f}<extra>" + layer_label(name, block) + "</extra>",
            colorbar=dict(title=dict(text="mean gate<br>(white = 1/E)")), name=layer_label(name, block),
            visible=name == shown[-1],
        ))
    tasks = list(dict.fromkeys(t for name in shown for t in layers[name][1]))
    fig.update_xaxes(title_text="expert", side="bottom", **_categorical_axis(columns))
    fig.update_yaxes(title_text="task", autorange="reversed", **_categorical_axis(tasks))

    def heading(name: str) -> str:
        return title or f"Routing mass per task and expert, {layer_label(name, layers[name][0])}"

    if len(shown) > 1:
        fig.update_layout(updatemenus=[dict(
            type="dropdown", active=len(shown) - 1, x=1, xanchor="right", y=1, yanchor="bottom", pad=dict(b=6),
            buttons=[dict(label=layer_label(name, layers[name][0]), method="update",
                          args=[{"visible": [other == name for other in shown]}, {"title.text": heading(name)}])
                     for name in shown],
        )])
    return _finish(fig, heading(shown[-1]))


# --- cost ------------------------------------------------------------------------------------
_SWEEP_AXES = {"experts": ("experts", "experts E per layer"), "tokens": ("tokens", "tokens per batch")}


def _sweep_title(held, sweep: str) -> str:
    """What a sweep's panel varies, and what it keeps fixed (read off one of its rows)."""
    width = f", d {format_count(held['d'])}" if "d" in held else ""
    if sweep == "experts":
        return f"against E ({format_count(held['tokens'])} tokens{width})"
    return f"against tokens (E = {format_count(held['experts'])}{width})"


def cost_scaling(result, title: str = "Cost of one adapted layer (forward + backward)") -> go.Figure:
    """Time and saved-for-backward memory against the number of experts and against tokens.

    ``result``: the ``scaling`` benchmark's result (``omoe-lab bench --part scaling``, its JSON
    ``benchmarks/results/scaling.json`` read back, or its ``rows`` as a DataFrame) with columns
    ``sweep`` (``"experts"`` / ``"tokens"``), ``tokens``, ``experts``, ``method``, ``ms``,
    ``saved_mib``. Columns: one sweep each; rows: time (median, ms), then saved memory (MiB).
    Log x axes, so a doubling is one step; one colour per method, as in every other figure.
    """
    from plotly.subplots import make_subplots

    frame = pd.DataFrame(result["rows"] if isinstance(result, Mapping) else result)
    _require_columns(frame, ["sweep", "tokens", "experts", "method", "ms", "saved_mib"], "cost_scaling")
    sweeps = [s for s in _SWEEP_AXES if s in set(frame["sweep"])]
    fig = make_subplots(rows=2, cols=len(sweeps), shared_xaxes="columns", vertical_spacing=0.12, horizontal_spacing=0.1,
                        subplot_titles=[_sweep_title(frame[frame["sweep"] == s].iloc[0], s) for s in sweeps]
                        + [""] * len(sweeps))
    styles = series_styles(frame["method"])
    for col, sweep in enumerate(sweeps, start=1):
        x_column, x_title = _SWEEP_AXES[sweep]
        part = frame[frame["sweep"] == sweep].sort_values(x_column)
        for method, style in styles.items():
            rows = part[part["method"] == method]
            if rows.empty:
                continue
            for row, (value, unit) in enumerate((("ms", "ms"), ("saved_mib", "MiB")), start=1):
                fig.add_trace(go.Scatter(
                    x=rows[x_column], y=rows[value], mode="lines+markers", name=method_label(method), legendgroup=method,
                    showlegend=col == 1 and row == 1, line=dict(color=style.color, width=2, dash=style.dash),
                    marker=dict(size=7, symbol=style.symbol),
                    hovertemplate=f"{method_label(method)}<br>{x_column} %{{x}}: %{{y:.3g}} {unit}<extra></extra>",
                ), row=row, col=col)
        ticks = sorted({int(v) for v in part[x_column]})
        fig.update_xaxes(type="log", tickmode="array", tickvals=ticks, ticktext=[format_count(t) for t in ticks], col=col)
        fig.update_xaxes(title_text=x_title, row=2, col=col)
    fig.update_yaxes(rangemode="tozero")
    fig.update_yaxes(title_text="time (ms, median)", row=1, col=1)
    fig.update_yaxes(title_text="saved for backward (MiB)", row=2, col=1)
    fig.update_layout(height=640)
    return _finish(fig, title, "method")
