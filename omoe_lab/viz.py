"""Plotly figures for the notebooks, the widgets and the HTML report: one look, stable colours.

Every function takes plain data (a DataFrame or a matrix), returns a
``plotly.graph_objects.Figure`` and never shows it. Expert i has the same colour in every
figure (``expert_color``), and so does each method (``METHOD_COLORS``), so a reader can match
a t-SNE cloud to its bar in the routing plot without reading legends.
"""
from __future__ import annotations

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
METHOD_COLORS = {"lora": "#7F7F7F", "moe": "#D55E00", "omoe": "#0072B2"}
METHOD_NAMES = {"lora": "LoRA", "moe": "MoE-LoRA", "omoe": "OMoE"}
# Tasks get colours from a palette distinct from the experts' so the two are never confused.
TASK_COLORS = px.colors.qualitative.Set2 + px.colors.qualitative.Pastel1

TEMPLATE = go.layout.Template(pio.templates["plotly_white"])
TEMPLATE.layout.update(
    font=dict(family="Inter, Helvetica, Arial, sans-serif", size=13, color="#222222"),
    title=dict(x=0.02, xanchor="left", font=dict(size=16)),
    colorway=list(EXPERT_COLORS),
    legend=dict(title_font=dict(size=12)),
    margin=dict(l=70, r=30, t=70, b=60),
    hoverlabel=dict(font=dict(size=12)),
)
# CKA values live in [0, 1]: a sequential scale anchored at both ends.
SIMILARITY_COLORSCALE = "Blues"
# log axes cannot show 0: exact zeros are drawn at this floor (their hover shows the true value)
LOG_FLOOR = 1e-17


def expert_label(expert: int) -> str:
    return f"expert {int(expert)}"


def expert_color(expert: int) -> str:
    return EXPERT_COLORS[int(expert) % len(EXPERT_COLORS)]


def method_color(method: str, index: int = 0) -> str:
    """The method's fixed colour; unknown methods borrow a task colour by their position."""
    return METHOD_COLORS.get(method, TASK_COLORS[index % len(TASK_COLORS)])


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


def _finish(fig: go.Figure, title: str, legend_title: str | None = None) -> go.Figure:
    fig.update_layout(template=TEMPLATE, title_text=title)
    if legend_title is not None:
        fig.update_layout(legend_title_text=legend_title)
    return fig


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
    debiased CKA slightly below 0 shows as the lightest colour with its true value printed.
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
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain")
    fig.update_xaxes(constrain="domain", side="bottom")
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
    (layer, task) is used). One panel per method when the summary holds several.
    """
    _require_columns(summary_df, ["layer", "task", "entropy_normalized"], "routing_entropy_bars")
    frame, layer_order = _with_layer_labels(summary_df)
    keys = ["layer", "task"] + (["method"] if "method" in frame.columns else [])
    frame = frame.drop_duplicates(keys)
    tasks = sorted(frame["task"].astype(str).unique())
    several_methods = "method" in frame.columns and frame["method"].nunique() > 1
    fig = px.bar(
        frame, x="layer_label", y="entropy_normalized", color="task", barmode="group",
        facet_col="method" if several_methods else None,
        category_orders={"layer_label": layer_order, "task": tasks},
        color_discrete_map={t: TASK_COLORS[i % len(TASK_COLORS)] for i, t in enumerate(tasks)},
        hover_data={"entropy": ":.3f"} if "entropy" in frame.columns else None,
    )
    fig.update_yaxes(range=[0, 1.05], title_text=None)
    fig.update_yaxes(title_text="routing entropy / log E", col=1)
    fig.update_xaxes(title_text="adapter layer")
    _strip_facet_prefixes(fig)
    return _finish(fig, "Routing entropy (1 = uniform over experts)", "task")


# --- training and evaluation ---------------------------------------------------------------
def training_curves(history_df: pd.DataFrame, title: str = "Training loss") -> go.Figure:
    """Loss against optimizer step, one line per method (and per seed / split when present).

    Columns: ``step``, ``loss``, ``method``; optional ``split`` (train solid, anything else
    dashed) and ``seed``. Colour = method, so repeated seeds read as one family.
    """
    _require_columns(history_df, ["step", "loss", "method"], "training_curves")
    group_keys = ["method"] + [k for k in ("split", "seed") if k in history_df.columns]
    fig = go.Figure()
    methods = list(dict.fromkeys(history_df["method"]))
    shown = set()
    for keys, group in history_df.sort_values("step").groupby(group_keys, sort=False):
        values = dict(zip(group_keys, keys if isinstance(keys, tuple) else (keys,)))
        method = values["method"]
        split = values.get("split", "train")
        name = method_label(method) + (f" ({split})" if "split" in values else "")
        fig.add_trace(go.Scatter(
            x=group["step"], y=group["loss"], mode="lines", name=name,
            legendgroup=name, showlegend=name not in shown,
            line=dict(color=method_color(method, methods.index(method)), width=2, dash="solid" if split == "train" else "dash"),
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

    Columns: ``method``, ``task``, ``accuracy`` (a fraction), ``protocol``. Several rows per
    (protocol, method, task) — seeds — are averaged, with error bars from their min to max.
    """
    _require_columns(df, ["method", "task", "accuracy", "protocol"], "accuracy_by_task")
    _check_fraction(df, "accuracy_by_task")
    stats = _seed_interval(df, ["protocol", "method", "task"])
    protocols = list(dict.fromkeys(stats["protocol"]))
    methods = list(dict.fromkeys(stats["method"]))
    fig = go.Figure() if len(protocols) == 1 else _facets(len(protocols), [f"protocol: {p}" for p in protocols])
    for p_index, protocol in enumerate(protocols):
        for m_index, method in enumerate(methods):
            rows = stats[(stats["protocol"] == protocol) & (stats["method"] == method)]
            if rows.empty:
                continue
            with_interval = bool((rows["seeds"] > 1).any())
            trace = go.Bar(
                x=rows["task"], y=100 * rows["mean"], name=method_label(method), legendgroup=method,
                showlegend=p_index == 0, marker_color=method_color(method, m_index),
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
    methods = list(dict.fromkeys(df["method"]))
    fig = go.Figure()
    for index, method in enumerate(methods):
        rows = stats[stats["method"] == method]
        fig.add_trace(go.Scatter(
            x=rows["num_experts"], y=100 * rows["mean"], mode="lines+markers", name=method_label(method),
            line=dict(color=method_color(method, index), width=2), marker=dict(size=8),
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
    methods = list(dict.fromkeys(frame["method"]))
    fig = go.Figure()
    for index, method in enumerate(methods):
        rows = frame[frame["method"] == method]
        fig.add_trace(go.Scatter(
            x=rows["layer"] if numeric_layers else rows["layer"].astype(str),
            y=np.maximum(rows["error"].to_numpy(dtype=float), LOG_FLOOR),
            mode="lines+markers", name=method_label(method),
            line=dict(color=method_color(method, index), width=2), marker=dict(size=8),
            customdata=rows[["error"]].to_numpy(),
            hovertemplate=f"{method_label(method)}<br>layer %{{x}}<br>error %{{customdata[0]:.3g}}<extra></extra>",
        ))
    if tol is not None:
        fig.add_hline(y=tol, line=dict(color="#444444", dash="dash", width=1),
                      annotation_text=f"tolerance {tol:.1e}", annotation_position="top left")
    fig.update_yaxes(type="log", title_text="max over tokens of ‖QᵀQ − I‖_F", exponentformat="power")
    fig.update_xaxes(title_text="transformer block" if numeric_layers else "adapter layer")
    return _finish(fig, title, "method")
