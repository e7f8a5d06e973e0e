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
