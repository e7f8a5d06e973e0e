import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from omoe_lab import viz


def _embedding_frame():
    """Hand-made embed() output: 2 methods × 2 tokens × 3 experts."""
    rows = []
    for method in ("moe", "omoe"):
        for token_row, (task, token) in enumerate([("boolq", 17), ("piqa", 42)]):
            for expert in range(3):
                rows.append(dict(x=float(10 * expert + token_row), y=float(-expert), expert=expert, token_row=token_row,
                                 projection="tsne", task=task, token=token, method=method))
    return pd.DataFrame(rows)


def _summary(methods=("moe",)):
    rows = []
    for method in methods:
        for block in (1, 0):  # unsorted on purpose: panels must come out in block order
            for task, loads in (("boolq", [0.5, 0.3, 0.2]), ("piqa", [0.1, 0.1, 0.8])):
                for expert, load in enumerate(loads):
                    rows.append(dict(layer=f"model.layers.{block}.self_attn.q_proj", block=block, method=method, task=task,
                                     expert=expert, tokens=5, load=load, frequency=1.0,
                                     entropy=0.9 + block, entropy_normalized=(0.9 + block) / 3 + (task == "piqa") / 10))
    return pd.DataFrame(rows)


def test_tsne_scatter_one_trace_per_expert_and_facet_with_stable_colours():
    fig = viz.tsne_scatter(_embedding_frame(), facet_col="method")
    assert isinstance(fig, go.Figure)
    assert len(fig.data) == 3 * 2
    assert sorted({t.name for t in fig.data}) == ["expert 0", "expert 1", "expert 2"]
    for trace in fig.data:
        expert = int(trace.name.split()[-1])
        assert trace.marker.color == viz.expert_color(expert)
        assert list(trace.x) == [10 * expert, 10 * expert + 1]
        assert list(trace.y) == [-expert, -expert]
        assert "task" in trace.hovertemplate and "token" in trace.hovertemplate
    assert sorted(a.text for a in fig.layout.annotations) == ["moe", "omoe"]
    assert fig.layout.xaxis.title.text == "t-SNE 1 (no units)" and fig.layout.yaxis.title.text == "t-SNE 2 (no units)"
    assert fig.layout.xaxis2.matches is None  # t-SNE coordinates of two runs are not comparable
    assert "t-SNE" in fig.layout.title.text
    single = viz.tsne_scatter(_embedding_frame().query("method == 'omoe'").assign(projection="pca"))
    assert len(single.data) == 3 and single.layout.xaxis.title.text == "PC 1 (output units)"


def test_cka_heatmap_values_scale_and_labels():
    matrix = torch.tensor([[1.0, 0.25], [0.25, 1.0]], dtype=torch.float64)
    fig = viz.cka_heatmap(matrix, labels=["e0", "e1"], title="Layer 8 CKA")
    (heatmap,) = fig.data
    np.testing.assert_array_equal(np.asarray(heatmap.z), matrix.numpy())
    assert (heatmap.zmin, heatmap.zmax) == (0.0, 1.0)
    assert list(heatmap.x) == ["e0", "e1"] and list(heatmap.y) == ["e0", "e1"]
    assert heatmap.texttemplate == "%{z:.2f}"
    assert fig.layout.title.text == "Layer 8 CKA"
    assert list(viz.cka_heatmap(np.eye(3)).data[0].x) == ["expert 0", "expert 1", "expert 2"]
    with pytest.raises(ValueError, match="square"):
        viz.cka_heatmap(np.ones((2, 3)))
    with pytest.raises(ValueError, match="labels"):
        viz.cka_heatmap(np.eye(2), labels=["a"])


def test_routing_load_bars_stack_experts_per_task_and_panel_per_layer():
    fig = viz.routing_load_bars(_summary())
    assert len(fig.data) == 3 * 2  # expert × layer panel
    assert fig.layout.barmode == "stack"
    assert [a.text for a in fig.layout.annotations] == ["L0 q_proj", "L1 q_proj"]
    expert_2 = [t for t in fig.data if t.name == "expert 2"]
    assert all(t.marker.color == viz.expert_color(2) for t in expert_2)
    assert list(expert_2[0].x) == ["boolq", "piqa"] and list(expert_2[0].y) == [0.2, 0.8]
    # stacked slices of each bar sum to 1
    totals = {}
    for trace in fig.data:
        for task, y in zip(trace.x, trace.y):
            totals[(trace.xaxis, task)] = totals.get((trace.xaxis, task), 0.0) + y
    assert all(v == pytest.approx(1.0) for v in totals.values())
    assert fig.layout.yaxis.title.text == "share of gate mass"

    two_methods = viz.routing_load_bars(_summary(("moe", "omoe")), value="frequency")
    assert len(two_methods.data) == 3 * 2 * 2
    assert {"moe", "omoe"} <= {a.text for a in two_methods.layout.annotations}
    with pytest.raises(ValueError, match="missing"):
        viz.routing_load_bars(_summary().drop(columns="load"))


def test_routing_entropy_bars_one_value_per_layer_and_task():
    fig = viz.routing_entropy_bars(_summary())
    assert [t.name for t in fig.data] == ["boolq", "piqa"]
    boolq, piqa = fig.data
    assert list(boolq.x) == ["L0 q_proj", "L1 q_proj"]
    assert list(boolq.y) == pytest.approx([0.3, 1.9 / 3])
    assert list(piqa.y) == pytest.approx([0.4, 1.9 / 3 + 0.1])
    assert list(fig.layout.yaxis.range) == [0, 1.05]
    assert len(viz.routing_entropy_bars(_summary(("moe", "omoe"))).data) == 4


def test_training_curves_colour_by_method_and_dash_by_split():
    history = pd.DataFrame({
        "step": [2, 1, 1, 2, 1, 2],
        "loss": [2.0, 3.0, 3.1, 1.5, 2.9, 2.5],
        "method": ["moe", "moe", "omoe", "omoe", "omoe", "omoe"],
        "split": ["train", "train", "train", "train", "eval", "eval"],
    })
    fig = viz.training_curves(history)
    assert [t.name for t in fig.data] == ["MoE-LoRA (train)", "OMoE (train)", "OMoE (eval)"]
    assert list(fig.data[0].x) == [1, 2] and list(fig.data[0].y) == [3.0, 2.0]  # sorted by step
    assert fig.data[1].line.color == fig.data[2].line.color == viz.METHOD_COLORS["omoe"]
    assert [t.line.dash for t in fig.data] == ["solid", "solid", "dash"]
    assert fig.layout.yaxis.title.text == "loss (nats per token)"
    seeds = pd.DataFrame({"step": [1, 2, 1, 2], "loss": [3, 2, 3, 1], "method": ["lora"] * 4, "seed": [0, 0, 1, 1]})
    seeded = viz.training_curves(seeds)
    assert len(seeded.data) == 2 and [t.showlegend for t in seeded.data] == [True, False]


def test_accuracy_by_task_in_percent_with_protocol_named():
    df = pd.DataFrame({
        "method": ["lora", "omoe", "lora", "omoe", "omoe"],
        "task": ["arc_e", "arc_e", "boolq", "boolq", "boolq"],
        "accuracy": [0.5, 0.6, 0.7, 0.8, 0.9],
        "protocol": "loglik",
    })
    fig = viz.accuracy_by_task(df)
    assert [t.name for t in fig.data] == ["LoRA", "OMoE"]
    lora, omoe = fig.data
    assert list(lora.x) == ["arc_e", "boolq"] and list(lora.y) == pytest.approx([50, 70])
    assert list(omoe.y) == pytest.approx([60, 85])  # boolq: two seeds averaged
    assert list(omoe.error_y.array) == pytest.approx([0, 5]) and list(omoe.error_y.arrayminus) == pytest.approx([0, 5])
    assert "protocol: loglik" in fig.layout.title.text
    assert fig.layout.yaxis.title.text == "accuracy (%)"

    both = viz.accuracy_by_task(pd.concat([df, df.assign(protocol="label")]))
    assert len(both.data) == 4
    assert [a.text for a in both.layout.annotations] == ["protocol: loglik", "protocol: label"]
    assert "loglik" in both.layout.title.text and "label" in both.layout.title.text
    with pytest.raises(ValueError, match="fraction"):
        viz.accuracy_by_task(df.assign(accuracy=df.accuracy * 100))


def test_accuracy_vs_experts_mean_and_seed_interval():
    df = pd.DataFrame({
        "method": ["omoe"] * 5 + ["moe"] * 2,
        "num_experts": [2, 2, 2, 8, 8, 2, 8],
        "accuracy": [0.50, 0.60, 0.55, 0.70, 0.80, 0.40, 0.45],
        "seed": [0, 1, 2, 0, 1, 0, 0],
        "protocol": "label",
    })
    fig = viz.accuracy_vs_experts(df)
    omoe, moe = fig.data
    assert omoe.name == "OMoE" and list(omoe.x) == [2, 8]
    assert list(omoe.y) == pytest.approx([55, 75])
    assert list(omoe.error_y.array) == pytest.approx([5, 5]) and list(omoe.error_y.arrayminus) == pytest.approx([5, 5])
    assert list(moe.y) == pytest.approx([40, 45]) and list(moe.error_y.array) == pytest.approx([0, 0])
    assert list(fig.layout.xaxis.tickvals) == [2, 8]
    assert "protocol: label" in fig.layout.title.text


def test_stiefel_error_by_layer_log_axis_floor_and_tolerance():
    df = pd.DataFrame({"layer": [1, 0, 0, 1], "method": ["omoe", "omoe", "moe", "moe"], "error": [2e-7, 0.0, 1.3, 0.9]})
    fig = viz.stiefel_error_by_layer(df, tol=4.8e-6)
    omoe, moe = fig.data
    assert list(omoe.x) == [0, 1] and list(omoe.y) == [viz.LOG_FLOOR, 2e-7]
    assert omoe.customdata[0][0] == 0.0  # hover shows the true value
    assert list(moe.y) == [1.3, 0.9]
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.shapes[0].y0 == 4.8e-6 and fig.layout.shapes[0].line.dash == "dash"
    assert fig.layout.xaxis.title.text == "transformer block"
    named = viz.stiefel_error_by_layer(df.assign(layer=["b", "a", "a", "b"]))
    assert list(named.data[0].x) == ["b", "a"] and named.layout.xaxis.title.text == "adapter layer"
    with pytest.raises(ValueError, match="negative"):
        viz.stiefel_error_by_layer(df.assign(error=-1.0))


def test_all_figures_share_the_template():
    figures = [
        viz.tsne_scatter(_embedding_frame()),
        viz.cka_heatmap(np.eye(2)),
        viz.routing_load_bars(_summary()),
        viz.routing_entropy_bars(_summary()),
        viz.training_curves(pd.DataFrame({"step": [1], "loss": [1.0], "method": ["omoe"]})),
        viz.stiefel_error_by_layer(pd.DataFrame({"layer": [0], "method": ["omoe"], "error": [1e-7]})),
    ]
    for fig in figures:
        assert fig.layout.template.layout.font.family == viz.TEMPLATE.layout.font.family
        assert fig.layout.title.text


# --- numbers, colours, legends, axes ----------------------------------------------------------
def test_numbers_print_whole_as_integers_and_missing_as_a_dash():
    assert viz.format_count(4.0) == "4" and viz.format_count(12345) == "12,345" and viz.format_count(np.int64(3)) == "3"
    assert [viz.format_count(v) for v in (None, float("nan"), pd.NA)] == ["—"] * 3
    assert viz.format_fixed(0.25) == "0.250" and viz.format_fixed(np.nan) == "—" and viz.format_fixed(1.0, 2) == "1.00"
    assert viz.format_percent(0.625) == "62.5" and viz.format_percent(None) == "—"
    assert [viz.format_value(v) for v in (4.0, 0.02, None, float("nan"), ["q_proj", "v_proj"], True, np.float64(2.0), "x")] == \
        ["4", "0.02", "—", "—", "q_proj, v_proj", "True", "2", "x"]


def test_tsne_hover_shows_token_ids_as_integers_and_missing_ones_as_a_dash():
    frame = _embedding_frame()
    frame["token"] = frame["token"].astype(float)
    frame.loc[0, "token"] = np.nan
    fig = viz.tsne_scatter(frame)
    tokens = {str(value) for trace in fig.data for row in trace.customdata for value in row}
    assert {"17", "42", "—"} <= tokens and not any(t.endswith(".0") or t == "nan" for t in tokens)


def test_series_colours_differ_for_thirty_names_and_keep_the_methods_own():
    names = ["omoe", *[f"run {i}" for i in range(29)]]
    colors = viz.series_colors(names)
    assert colors["omoe"] == viz.METHOD_COLORS["omoe"]
    assert len(set(colors.values())) == 30
    assert not set(viz.SERIES_COLORS) & set(viz.METHOD_COLORS.values())


def test_a_long_legend_goes_under_the_plot_and_a_short_one_stays():
    def curves(methods: int) -> go.Figure:
        history = pd.DataFrame({"step": [1, 2] * methods, "loss": [2.0, 1.0] * methods,
                                "method": [f"run {i}" for i in range(methods) for _ in range(2)]})
        return viz.training_curves(history)

    many = curves(viz.LEGEND_MAX_ENTRIES + 2)
    assert many.layout.legend.orientation == "h" and many.layout.legend.yref == "container"
    assert len({t.line.color for t in many.data}) == viz.LEGEND_MAX_ENTRIES + 2  # no colour used twice
    assert curves(3).layout.legend.orientation is None


def _curves() -> go.Figure:
    return viz.training_curves(pd.DataFrame({"step": [1, 2], "loss": [2.0, 1.0], "method": ["omoe"] * 2}))


def test_titles_sit_under_the_toolbar_in_a_top_margin_sized_for_them():
    title = viz.TEMPLATE.layout.title
    # plotly.js's automatic title margin drew a two-line title's first line out of sight and a
    # subtitle over its title: the margin is sized here instead, below plotly's toolbar
    assert title.automargin is False and title.yref == "container" and title.yanchor == "top"
    assert title.pad.t >= viz.TOOLBAR_HEIGHT
    assert viz.TEMPLATE.layout.xaxis.automargin is True and viz.TEMPLATE.layout.yaxis.title.standoff > 0
    plain = _curves()
    subtitled = viz.set_title(_curves(), "Training loss", "profile ci, seed 0")
    faceted = viz.tsne_scatter(_embedding_frame(), facet_col="method")
    assert plain.layout.margin.t == viz.top_margin("Training loss", None)
    assert subtitled.layout.margin.t > plain.layout.margin.t and subtitled.layout.title.subtitle.text == "profile ci, seed 0"
    assert faceted.layout.margin.t == viz.top_margin(faceted.layout.title.text, None, 26)  # facet titles stand on the plot
    crowded = viz.fit_layout(viz.tsne_scatter(_embedding_frame().assign(method="OMoE (norm_preserving) E=8 top-2, shared expert"),
                                              facet_col="method"), width=300)
    assert "<br>" in crowded.layout.annotations[0].text and crowded.layout.margin.t > faceted.layout.margin.t
    legacy = viz.cka_heatmap(np.eye(2), title="CKA, L3 q_proj<br><sub>OMoE E=2</sub>")
    assert (legacy.layout.title.text, legacy.layout.title.subtitle.text) == ("CKA, L3 q_proj", "OMoE E=2")


def test_long_titles_wrap_to_the_figure_and_refit_after_resizing():
    fig = viz.set_title(_curves(), "Training loss " + "with a long explanation " * 6)
    narrow = viz.fit_layout(fig, width=400)
    lines = narrow.layout.title.text.split("<br>")
    assert len(lines) > 2 and all(viz.text_width(line, viz.TITLE_SIZE) <= 400 for line in lines)
    narrow_margin = narrow.layout.margin.t
    wide = viz.fit_layout(narrow, width=900)
    assert wide.layout.title.text.count("<br>") < len(lines) - 1 and wide.layout.margin.t < narrow_margin
    assert wide.layout.title.text.replace("<br>", " ") == ("Training loss " + "with a long explanation " * 6).strip()
    low = viz.fit_layout(viz.accuracy_vs_experts(pd.DataFrame({"method": ["omoe"], "num_experts": [2], "accuracy": [0.5], "seed": [0]})),
                         height=300)
    assert "<br>" in low.layout.yaxis.title.text  # longer than the 150-px-high plot: wrapped, not run into the title


def test_each_method_has_one_look_read_from_its_label_or_config():
    omoe = viz.series_style("omoe")
    assert omoe == viz.series_style("OMoE (stiefel) E=4 soft") == viz.series_style({"method": "omoe", "num_experts": 4})
    assert omoe.color == viz.FAMILY_COLORS["omoe"] and omoe.dash == "solid"
    assert viz.series_style("LoRA r=16") == viz.series_style("lora") == viz.series_style({"method": "lora", "num_experts": 4})
    assert viz.series_style("zero-shot (cloze/mean)").color == viz.series_style("none").color == viz.FAMILY_COLORS["zero_shot"]
    # the expert counts of one method: shades of its hue and dashes, never the same line twice
    moe = [viz.series_style(f"MoE-LoRA E={e} soft") for e in (1, 2, 4, 8, 16)]
    assert {s.family for s in moe} == {"moe"} and len({s.color for s in moe}) == 5
    assert [s.dash for s in moe] == ["dash", "dash", "solid", "dot", "dot"]
    top2 = viz.series_style("MoE-LoRA E=8 top-2")
    assert top2.color == moe[3].color and (top2.pattern, top2.symbol) == ("/", "circle-open") and moe[3].pattern == ""
    assert viz.series_style("OMoE (norm_preserving)").symbol == "diamond"
    # the random-start control and the variants have hues of their own, from a label or a config
    control = viz.series_style("MoE-LoRA E=4 soft, B ~ N(0, 0.02²)")
    assert control.family == "control" and control == viz.series_style({"method": "moe", "num_experts": 4, "b_init_std": 0.02})
    assert viz.series_style({"method": "omoe", "b_init_std": 0.05, "label": "OMoE E=4 soft, B ~ N(0, 0.05²)"}).family == "omoe"
    arm = {"label": "MoE-LoRA E=4 soft + shared expert", "config": {"method": "moe", "num_experts": 4, "b_init_std": 0.0}}
    assert viz.series_style(arm).family == "shared_expert"
    assert viz.series_style("MixLoRA E=8 top-2 (FFN experts)").family == "mixlora"
    assert viz.series_style("MoE-LoRA E=4 soft, orthogonality penalty 0.1").family == "orthogonality_penalty"
    assert len(set(viz.FAMILY_COLORS.values())) == len(viz.FAMILY_COLORS)
    assert viz.series_style("run 3").family is None and viz.method_color("run 3", 2) == viz.SERIES_COLORS[2]


def test_heatmap_axes_list_their_categories_so_plotly_computes_no_dtick():
    fig = viz.cka_heatmap(np.eye(3))
    for axis in (fig.layout.xaxis, fig.layout.yaxis):
        assert axis.type == "category" and axis.tickmode == "array"
        assert list(axis.tickvals) == ["expert 0", "expert 1", "expert 2"]


def test_stiefel_tolerance_label_sits_on_its_dashed_line():
    df = pd.DataFrame({"layer": [0, 1], "method": ["omoe", "omoe"], "error": [1e-7, 2e-7]})
    fig = viz.stiefel_error_by_layer(df, tol=4.8e-6)
    (label,) = fig.layout.annotations
    assert label.text == "tolerance 4.8e-06"
    assert label.yref == "y" and label.y == pytest.approx(np.log10(4.8e-6))  # a log axis places annotations at log10(y)
    assert list(fig.layout.xaxis.tickvals) == [0, 1]  # whole blocks, no tick at 0.5


def test_layer_measure_bars_one_panel_per_measure_in_block_order():
    frame = pd.DataFrame({"series": ["moe", "moe", "omoe", "omoe", "omoe"], "block": [3, 2, 3, 2, 2],
                          "layer": ["model.layers.3.q", "model.layers.2.q"] * 2 + ["model.layers.2.q"],
                          "cka": [0.9, 0.8, 0.3, 0.2, 0.4], "cos": [0.5] * 5})
    fig = viz.layer_measure_bars(frame, [("cka", "CKA"), ("cos", "cos")], "similarity", y_range=(0, 1))
    assert len(fig.data) == 4 and [t.showlegend for t in fig.data] == [True, False, True, False]
    moe, _, omoe, _ = fig.data
    assert list(moe.x) == ["L2 q", "L3 q"] and list(moe.y) == pytest.approx([0.8, 0.9])
    assert list(omoe.y) == pytest.approx([0.3, 0.3])  # block 2 averaged over two rows (seeds)
    assert omoe.marker.color == viz.METHOD_COLORS["omoe"] and list(fig.layout.yaxis.range) == [0, 1]
    with pytest.raises(ValueError, match="missing"):
        viz.layer_measure_bars(frame.drop(columns="cos"), [("cos", "cos")], "x")


# --- diversity over training ------------------------------------------------------------------
def _over_training_run(label, method, seed, steps, value, layers=("model.layers.0.q_proj", "model.layers.1.q_proj")):
    """A RunResult-like dict whose measures are value + step / 100 (+ block / 10 per layer)."""
    rows = []
    for step in steps:
        per_layer = {name: {"block": block, **{m: value + step / 100 + block / 10 for m in viz.MEASURE_TITLES}}
                     for block, name in enumerate(layers)}
        rows.append({"step": step, **{m: value + step / 100 for m in viz.MEASURE_TITLES}, "per_layer": per_layer})
    return {"label": label, "config": {"method": method, "seed": seed}, "diversity": rows}


def _over_training_runs():
    return [
        _over_training_run("MoE-LoRA", "moe", 0, (5, 10), 0.5),  # B = 0: no step 0
        _over_training_run("OMoE", "omoe", 0, (0, 5, 10), 0.2),
        _over_training_run("OMoE", "omoe", 1, (0, 5, 10), 0.4),
        {"label": "LoRA", "config": {"method": "lora", "seed": 0}, "diversity": []},
    ]


def test_measure_titles_cover_the_analysis_measures():
    from omoe_lab.analysis.diversity import MEASURES

    assert tuple(viz.MEASURE_TITLES) == MEASURES


def test_diversity_over_training_averages_seeds_with_a_min_max_band():
    fig = viz.diversity_over_training(_over_training_runs())
    assert [t.name for t in fig.data] == ["MoE-LoRA", "OMoE max", "OMoE min", "OMoE"]
    moe, high, low, omoe = fig.data
    assert list(moe.x) == [5, 10] and list(moe.y) == pytest.approx([0.55, 0.6])
    assert list(omoe.x) == [0, 5, 10] and list(omoe.y) == pytest.approx([0.3, 0.35, 0.4])  # mean of 0.2 and 0.4 starts
    assert list(low.y) == pytest.approx([0.2, 0.25, 0.3]) and list(high.y) == pytest.approx([0.4, 0.45, 0.5])
    assert low.fill == "tonexty" and not high.showlegend and not low.showlegend
    assert moe.line.color == viz.METHOD_COLORS["moe"] and omoe.line.color == viz.METHOD_COLORS["omoe"]
    assert list(fig.layout.yaxis.range) == [0, 1.05] and list(fig.layout.xaxis.tickvals) == [0, 5, 10]
    assert "min–max" in fig.layout.title.text
    rank = viz.diversity_over_training(_over_training_runs(), measure="effective_rank")
    assert rank.layout.yaxis.range is None and rank.layout.yaxis.title.text.startswith("effective rank")
    with pytest.raises(ValueError, match="unknown measure"):
        viz.diversity_over_training(_over_training_runs(), measure="cka")
    with pytest.raises(ValueError, match="no run recorded"):
        viz.diversity_over_training(_over_training_runs()[-1:])


def _sweep_summary():
    return {"meta": {}, "arms": [
        {"arm": "moe4", "label": "MoE-LoRA E=4 soft", "config": {"method": "moe"},
         "diversity_over_training": [{"step": 5, "mean_abs_cosine": 0.5, "mean_cka": 0.7, "mean_cka_debiased": 0.6, "effective_rank": 1.5}]},
        {"arm": "omoe4", "label": "OMoE E=4 soft", "config": {"method": "omoe"},
         "diversity_over_training": [{"step": s, "mean_abs_cosine": 0.2, "mean_cka": 0.3 + s / 100, "mean_cka_debiased": 0.1, "effective_rank": 3.0}
                                     for s in (0, 5)]},
        {"arm": "lora", "label": "LoRA (E·r budget)", "config": {"method": "lora"}},
    ]}


def test_diversity_over_training_from_a_sweep_summary():
    fig = viz.diversity_over_training(_sweep_summary())
    assert [t.name for t in fig.data] == ["MoE-LoRA E=4 soft", "OMoE E=4 soft"]  # no band: the summary has means only
    assert list(fig.data[1].y) == pytest.approx([0.3, 0.35])
    assert "one run per line" in fig.layout.title.text


def test_diversity_animation_one_frame_per_step_with_play_and_slider():
    fig = viz.diversity_animation(_over_training_runs())
    assert [f.name for f in fig.frames] == ["0", "5", "10"]
    assert [t.name for t in fig.data] == ["MoE-LoRA", "OMoE"] and list(fig.data[0].x) == ["L0 q_proj", "L1 q_proj"]
    first, last = fig.frames[0], fig.frames[-1]
    assert list(first.data[0].y) == [None, None]  # MoE-LoRA (B = 0) has nothing at step 0
    assert list(first.data[1].y) == pytest.approx([0.3, 0.4])  # OMoE, seeds averaged, per layer
    assert list(last.data[0].y) == pytest.approx([0.6, 0.7])
    (buttons,) = fig.layout.updatemenus
    assert [b.label for b in buttons.buttons] == ["▶ play", "❚❚ pause"] and buttons.buttons[0].method == "animate"
    (slider,) = fig.layout.sliders
    assert [s.label for s in slider.steps] == ["0", "5", "10"] and list(slider.steps[1].args[0]) == ["5"]
    assert list(fig.layout.yaxis.range) == [0, 1.05]  # fixed across frames
    assert fig.layout.xaxis.tickmode == "array"
    summary = viz.diversity_animation(_sweep_summary())
    assert list(summary.data[0].x) == [viz.MEAN_OVER_LAYERS] and [f.name for f in summary.frames] == ["0", "5"]


# --- routing by task ---------------------------------------------------------------------------
def _routed_run():
    experts = [{"layer": f"model.layers.{block}.self_attn.q_proj", "block": block, "experts": 4,
                "load_by_task": {"boolq": [0.7, 0.1, 0.1, 0.1], "piqa": [0.1, 0.1, 0.1 + block / 10, 0.7 - block / 10]}}
               for block in (3, 2)]  # unsorted: the default is the top block, not the last row
    return {"label": "OMoE", "config": {"method": "omoe"}, "experts": experts + [{"layer": "lora_only", "block": 1}]}


def test_specialization_heatmap_shows_the_top_layer_with_a_dropdown_over_every_layer():
    fig = viz.specialization_heatmap(_routed_run())
    assert [t.name for t in fig.data] == ["L2 q_proj", "L3 q_proj"]
    assert [t.visible for t in fig.data] == [False, True]
    top = fig.data[1]
    assert list(top.y) == ["boolq", "piqa"] and list(top.x) == ["expert 0", "expert 1", "expert 2", "expert 3"]
    assert top.z[1] == pytest.approx([0.1, 0.1, 0.4, 0.4])
    assert (top.zmin, top.zmax) == (0.0, 0.5)  # white at 1/E
    assert top.text[0][0] == "0.70"
    (menu,) = fig.layout.updatemenus
    assert [b.label for b in menu.buttons] == ["L2 q_proj", "L3 q_proj"] and menu.active == 1
    assert menu.buttons[0].args[0] == {"visible": [True, False]}
    assert "L3 q_proj" in fig.layout.title.text
    assert fig.layout.xaxis.tickmode == "array" and fig.layout.yaxis.type == "category"

    one = viz.specialization_heatmap(_routed_run(), layer="model.layers.2.self_attn.q_proj")
    assert len(one.data) == 1 and not one.layout.updatemenus and "L2 q_proj" in one.layout.title.text
    with pytest.raises(ValueError, match="no routing recorded"):
        viz.specialization_heatmap(_routed_run(), layer="model.layers.9.q_proj")
    with pytest.raises(ValueError, match="no routing by task"):
        viz.specialization_heatmap({"experts": [{"layer": "x", "block": 0}]})


def test_specialization_heatmap_from_a_sweep_arm():
    arm = {"label": "OMoE E=4 soft", "routing_by_task": {
        "model.layers.29.self_attn.v_proj": {"boolq": [0.5, 0.5], "piqa": [0.2, 0.8]},
        "model.layers.28.self_attn.v_proj": {"boolq": [0.5, 0.5], "piqa": [0.5, 0.5]},
    }}
    fig = viz.specialization_heatmap(arm)
    assert [t.name for t in fig.data] == ["L28 v_proj", "L29 v_proj"] and fig.data[1].visible
    assert fig.data[1].zmax == 1.0  # two experts: 2/E caps at 1


def test_cost_scaling_one_line_per_method_in_each_of_four_panels_on_log_axes():
    rows = [dict(sweep="experts", tokens=2048, d=576, experts=e, method=m, ms=float(e * (i + 1)), saved_mib=float(e))
            for e in (1, 2, 4) for i, m in enumerate(("lora", "moe", "omoe"))]
    rows += [dict(sweep="tokens", tokens=t, d=576, experts=4, method=m, ms=t / 100, saved_mib=t / 1000)
             for t in (512, 1024) for m in ("lora", "moe", "omoe")]
    fig = viz.cost_scaling({"rows": rows})
    assert len(fig.data) == 3 * 4 and sum(bool(t.showlegend) for t in fig.data) == 3  # 3 methods × (2 sweeps × time, memory)
    assert {t.line.color for t in fig.data if t.name == "OMoE"} == {viz.METHOD_COLORS["omoe"]}
    assert fig.layout.xaxis.type == "log" and list(fig.layout.xaxis.tickvals) == [1, 2, 4]
    assert "2,048 tokens" in fig.layout.annotations[0].text and "E = 4" in fig.layout.annotations[1].text
    with pytest.raises(ValueError, match="cost_scaling needs columns"):
        viz.cost_scaling({"rows": [dict(sweep="tokens", tokens=1)]})


def test_routing_entropy_over_training_is_a_map_per_run_with_every_layer_and_no_legend():
    def run(label, entropy):
        return {"label": label, "routing": [{"step": step, "layer": f"model.layers.{block}.self_attn.q_proj",
                                             "normalized_entropy": entropy + block / 100 + step / 1000}
                                            for step in (2, 1) for block in (13, *range(13))]}

    fig = viz.routing_entropy_over_training([run("MoE-LoRA E=4 soft", 0.5), run("OMoE (stiefel) E=4 soft", 0.8),
                                             {"label": "LoRA r=16", "routing": []}])
    assert [(t.type, t.name) for t in fig.data] == [("heatmap", "MoE-LoRA E=4 soft"), ("heatmap", "OMoE (stiefel) E=4 soft")]
    moe = fig.data[0]
    assert list(moe.y) == [f"L{block} q_proj" for block in range(14)] and list(moe.x) == [1, 2]  # blocks in order, steps sorted
    assert np.asarray(moe.z)[13].tolist() == pytest.approx([0.5 + 0.13 + 0.001, 0.5 + 0.13 + 0.002])
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0, 1)
    assert not any(t.showlegend for t in fig.data)  # fourteen layers, and no legend entry for any of them
    with pytest.raises(ValueError, match="no run recorded routing"):
        viz.routing_entropy_over_training([{"label": "LoRA r=16", "routing": []}])


def test_float32_noise_prints_as_the_number_it_stands_for():
    # gates summed in float32 give 0.9999999403953552 (notebook 00), and float32 0.1 is 0.10000000149011612
    assert viz.format_value(0.9999999403953552) == "1"
    assert viz.format_value(np.float32(0.1)) == "0.1" and viz.format_value(2e-4) == "0.0002" and viz.format_value(1e-7) == "1e-07"
    assert viz.format_value([0.9999999403953552, 1.0000001192092896, 1.0]) == "1, 1, 1"
    assert viz.format_value(0.123456789) == "0.123457" and viz.format_value(3.0) == "3"


def test_heatmap_axes_take_no_length_from_each_other():
    # plotly.js ticks a category axis every range / (length / 15 px) categories: an axis whose length
    # scaleanchor/constrain derive from the other axis gets 0 px while that one is empty or of
    # another size (a heatmap replaced in a widget), and logs "ax.dtick error: Infinity"
    for fig in (viz.cka_heatmap(np.eye(3)), viz.specialization_heatmap(_routed_run())):
        for axis in (fig.layout.xaxis, fig.layout.yaxis):
            assert axis.scaleanchor is None and axis.constrain is None


def test_every_figure_has_one_height_and_slanted_labels_take_none_of_the_plot():
    """JupyterLab draws a figure without a height 360 px high (a page, 450): 01's Stiefel figure, 14 layer
    names slanted under it, kept 170 px of plot for a 214-px axis title, and its 8-task legend scrolled."""
    import pandas as pd

    layers = [f"L{block} {name}" for block in (28, 29) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")]
    slanted = viz.stiefel_error_by_layer(pd.DataFrame({"layer": layers, "method": "omoe", "error": 3e-8}), tol=4.8e-6)
    room = 0.6 * max(viz.text_width(name) for name in layers)
    assert slanted.layout.height == pytest.approx(viz.DEFAULT_HEIGHT + room)
    plot = slanted.layout.height - slanted.layout.margin.t - viz.TEMPLATE.layout.margin.b - room
    assert viz.text_width(slanted.layout.yaxis.title.text.split("<br>")[0]) <= plot
    level = viz.stiefel_error_by_layer(pd.DataFrame({"layer": ["L1", "L2"], "method": "omoe", "error": 3e-8}))
    assert level.layout.height == viz.DEFAULT_HEIGHT  # two short labels stand level
