"""The explorers, driven headless from Python: controls set by assignment, buttons clicked, and
the figure data read back. Runs are hand-built ``RunResult``s from a fake ``run_fn``; the layer
explorer runs a tiny random Llama."""
from __future__ import annotations

import base64
import dataclasses

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import omoe_lab
from omoe_lab import experiments, viz, widgets
from omoe_lab.analysis import capture_experts, cka_matrix, mean_pairwise_cosine
from omoe_lab.data import Example
from omoe_lab.experiments import RunResult

LAYERS = ("model.layers.28.self_attn.q_proj", "model.layers.29.self_attn.q_proj")


@pytest.fixture(autouse=True)
def one_thread():
    # tiny tensors: threads cost more than they save, and the machine is shared
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def layer_cka(block: int, experts: int) -> list[list[float]]:
    """A symmetric matrix that differs per layer, so a heatmap shows which layer it came from."""
    return [[1.0 if i == j else round(0.1 * (block - 27) + 0.01 * (i + j), 4) for j in range(experts)] for i in range(experts)]


class FakeRuns:
    """Stands in for ``experiments.run``: records the configs and returns hand-built results.

    Accuracy: ``base[(method, E)] + 0.1 · seed``; ``fail`` raises instead.
    """

    base = {("omoe", 2): 0.5, ("omoe", 4): 0.75, ("omoe", 3): 0.6, ("moe", 2): 0.25, ("moe", 3): 0.3, ("lora", 1): 0.4}

    def __init__(self, fail: str | None = None, accuracy: float | None = None):
        self.configs, self.fail, self.accuracy = [], fail, accuracy

    def __call__(self, config):
        self.configs.append(config)
        if self.fail:
            raise RuntimeError(self.fail)
        c = config.resolved()
        experts_per_layer = c.num_experts
        accuracy = self.accuracy if self.accuracy is not None else self.base[(c.method, experts_per_layer)] + 0.1 * c.seed
        rows = []
        for name in LAYERS:
            block = int(name.split(".")[2])
            row = {"layer": name, "block": block, "method": c.method, "experts": experts_per_layer, "tokens": 6}
            if experts_per_layer > 1:
                cka = layer_cka(block, experts_per_layer)
                row.update(cka=cka, mean_abs_cosine=0.01 * block, mean_cka=0.5, effective_rank=1.5,
                           routing_entropy=0.9, load=[1 / experts_per_layer] * experts_per_layer)
            rows.append(row)
        embedding = [
            {"x": float(token + 10 * expert), "y": float(expert), "expert": expert, "token_row": token,
             "projection": "tsne", "task": "boolq", "layer": LAYERS[-1]}
            for token in range(3) for expert in range(experts_per_layer)
        ] if experts_per_layer > 1 else []
        metrics = {"protocol": "label", "accuracy": accuracy, "per_task": {"boolq": accuracy}, "n": 20,
                   "n_per_task": {"boolq": 20}, "chance": 0.5}
        return RunResult(config=dataclasses.asdict(c), key=config.key(), label=config.label(), metrics=metrics,
                         experts=rows, embedding=embedding)


def explorer_with(fake, **kwargs):
    return widgets.ExpertCountExplorer(profile="ci", run_fn=fake, **kwargs)


def run_with(explorer, method="omoe", experts=4, seed=0):
    explorer.method.value, explorer.experts.value, explorer.seed.value = method, experts, seed
    explorer.run_button.click()


def traces_by_name(figure):
    return {trace.name: trace for trace in figure.data}


def test_accuracy_figure_collects_every_run_of_the_session():
    fake = FakeRuns()
    explorer = explorer_with(fake)
    assert isinstance(explorer.accuracy_figure, go.FigureWidget)
    run_with(explorer, experts=2)
    run_with(explorer, experts=4)
    omoe = traces_by_name(explorer.accuracy_figure)["OMoE"]
    assert list(omoe.x) == [2, 4] and list(omoe.y) == pytest.approx([50.0, 75.0])
    assert [(c.method, c.num_experts, c.orthogonalize, c.top_k, c.profile) for c in fake.configs] == [
        ("omoe", 2, "stiefel", None, "ci"), ("omoe", 4, "stiefel", None, "ci")]
    assert "profile ci" in explorer.accuracy_figure.layout.title.text
    assert "75.0 %" in explorer.status.value and explorer.progress.bar_style == "success"
    assert explorer.log_box.selected_index is None  # the run log folds away after a success

    run_with(explorer, method="moe", experts=2)
    run_with(explorer, experts=2)  # the same config again: replaces itself, is not a second seed
    run_with(explorer, experts=2, seed=1)  # a second seed is averaged: (0.5 + 0.6) / 2
    traces = traces_by_name(explorer.accuracy_figure)
    assert set(traces) == {"OMoE", "MoE-LoRA"}
    assert traces["MoE-LoRA"].line.color == viz.METHOD_COLORS["moe"]
    assert list(traces["MoE-LoRA"].x) == [2] and list(traces["MoE-LoRA"].y) == pytest.approx([25.0])
    assert list(traces["OMoE"].y) == pytest.approx([55.0, 75.0])
    assert [int(s) for s in np.asarray(traces["OMoE"].customdata)[:, 0]] == [2, 1]


def test_variants_get_their_own_line_instead_of_averaging_as_seeds():
    explorer = explorer_with(FakeRuns())
    run_with(explorer, experts=2)
    explorer.orthogonalize.value = "norm_preserving"
    run_with(explorer, experts=2)
    explorer.routing.value, explorer.top_k.value = "top_k", 1
    run_with(explorer, method="moe", experts=2)
    assert set(traces_by_name(explorer.accuracy_figure)) == {"OMoE", "OMoE (norm_preserving)", "MoE-LoRA (top-1)"}


def test_cka_heatmap_follows_the_layer_menu_without_running_again():
    fake = FakeRuns()
    explorer = explorer_with(fake)
    run_with(explorer, experts=3)
    assert [value for _, value in explorer.layer.options] == list(LAYERS)
    assert [label for label, _ in explorer.layer.options] == ["L28 q_proj", "L29 q_proj"]
    assert explorer.layer.value == LAYERS[-1]  # the layer the t-SNE maps
    (heatmap,) = explorer.cka_figure.data
    np.testing.assert_allclose(np.asarray(heatmap.z), layer_cka(29, 3))
    assert "L29 q_proj" in explorer.cka_figure.layout.title.text
    assert "mean |cosine| of raw outputs: 0.29" in explorer.layer_metrics.value

    explorer.layer.value = LAYERS[0]
    np.testing.assert_allclose(np.asarray(explorer.cka_figure.data[0].z), layer_cka(28, 3))
    assert "L28 q_proj" in explorer.layer_metrics.value
    assert len(fake.configs) == 1

    run_with(explorer, method="moe", experts=2)  # the chosen layer survives a new run
    assert explorer.layer.value == LAYERS[0]
    np.testing.assert_allclose(np.asarray(explorer.cka_figure.data[0].z), layer_cka(28, 2))


def test_tsne_has_one_trace_per_expert():
    explorer = explorer_with(FakeRuns())
    run_with(explorer, experts=4)
    assert len(explorer.tsne_figure.data) == 4
    assert "L29 q_proj" in explorer.tsne_figure.layout.title.text
    assert sorted(t.name for t in explorer.tsne_figure.data) == [f"expert {i}" for i in range(4)]
    run_with(explorer, method="moe", experts=2)
    assert len(explorer.tsne_figure.data) == 2


def test_controls_enable_what_the_method_and_routing_use():
    fake = FakeRuns()
    explorer = explorer_with(fake)
    explorer.method.value = "moe"
    assert explorer.orthogonalize.disabled
    explorer.method.value = "omoe"
    assert not explorer.orthogonalize.disabled
    assert explorer.top_k.disabled  # soft routing has no k
    explorer.routing.value = "top_k"
    assert not explorer.top_k.disabled

    explorer.experts.value = 3
    assert explorer.top_k.max == 3
    explorer.top_k.value = 3
    explorer.experts.value = 2
    assert (explorer.top_k.max, explorer.top_k.value) == (2, 2)
    explorer.method.value = "moe"
    config = explorer.config()
    assert (config.method, config.num_experts, config.top_k, config.orthogonalize) == ("moe", 2, 2, None)

    explorer.method.value = "lora"
    assert explorer.experts.disabled and explorer.routing.disabled and explorer.top_k.disabled and explorer.orthogonalize.disabled
    config = explorer.config()
    assert (config.method, config.num_experts, config.top_k, config.orthogonalize) == ("lora", 1, None, None)
    explorer.method.value = "omoe"
    assert not explorer.experts.disabled and not explorer.top_k.disabled


def test_lora_is_the_one_expert_reference():
    explorer = explorer_with(FakeRuns())
    run_with(explorer, method="lora")
    run_with(explorer, experts=2)
    lora = traces_by_name(explorer.accuracy_figure)["LoRA"]
    assert list(lora.x) == [1] and list(lora.y) == pytest.approx([40.0])
    run_with(explorer, method="lora")
    assert len(explorer.cka_figure.data) == 0 and len(explorer.tsne_figure.data) == 0
    assert "single expert" in explorer.cka_figure.layout.annotations[0].text


def test_a_failing_run_is_reported_not_raised():
    explorer = explorer_with(FakeRuns())
    run_with(explorer, experts=2)
    drawn = np.asarray(explorer.cka_figure.data[0].z)
    explorer._run_fn = FakeRuns(fail="out of memory <here>")
    run_with(explorer, experts=4)  # the button's handler must not raise
    assert "RuntimeError: out of memory &lt;here&gt;" in explorer.status.value
    assert explorer.progress.bar_style == "danger" and not explorer.run_button.disabled
    assert any("out of memory" in output.get("text", "") for output in explorer.log.outputs)
    assert explorer.log_box.selected_index == 0  # left open on the traceback
    np.testing.assert_allclose(np.asarray(explorer.cka_figure.data[0].z), drawn)
    assert list(traces_by_name(explorer.accuracy_figure)["OMoE"].x) == [2]


def test_a_result_that_cannot_be_drawn_does_not_spoil_later_runs():
    explorer = explorer_with(FakeRuns())
    run_with(explorer, experts=2)
    explorer._run_fn = FakeRuns(accuracy=1.5)  # not a fraction: viz refuses it
    assert explorer.run() is None
    assert "ValueError" in explorer.status.value and len(explorer.results) == 1
    explorer._run_fn, explorer.experts.value = FakeRuns(), 4
    assert explorer.run() is not None
    assert list(traces_by_name(explorer.accuracy_figure)["OMoE"].x) == [2, 4]


def test_default_runner_is_experiments_run_with_the_cache_folder(monkeypatch, tmp_path):
    fake, calls = FakeRuns(), []

    def fake_run(config, **kwargs):
        calls.append(kwargs)
        return fake(config)

    monkeypatch.setattr(experiments, "run", fake_run)
    explorer = widgets.ExpertCountExplorer(profile="ci", cache_dir=tmp_path)
    run_with(explorer, experts=2)
    run_with(explorer, experts=4)
    assert [c.num_experts for c in fake.configs] == [2, 4]
    assert all(kw["cache_dir"] == tmp_path and kw["model"] is None for kw in calls)
    assert all(kw["prefix"] is None for kw in calls)  # no model given: each run brings its own


def test_falls_back_to_static_figures_without_figurewidget(monkeypatch):
    def no_figure_widget(*args, **kwargs):
        raise ImportError("anywidget is not installed")

    monkeypatch.setattr(widgets.go, "FigureWidget", no_figure_widget)
    explorer = explorer_with(FakeRuns())
    assert not explorer.cka_plot.live and isinstance(explorer.cka_plot.widget, widgets.widgets.Output)
    run_with(explorer, experts=3)
    (output,) = explorer.cka_plot.widget.outputs
    z = output["data"]["application/vnd.plotly.v1+json"]["data"][0]["z"]
    if isinstance(z, dict):  # plotly sends numpy arrays as base64 typed arrays
        shape = [int(n) for n in str(z["shape"]).split(",")]
        z = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).reshape(shape)
    np.testing.assert_allclose(np.asarray(z), layer_cka(29, 3))
    assert len(explorer.tsne_figure.data) == 3


def test_displays_as_one_widget_without_a_frontend():
    explorer = explorer_with(FakeRuns())
    bundle = explorer._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.widget.model_id
    shown = [explorer.accuracy_plot.widget, explorer.cka_plot.widget, explorer.tsne_plot.widget]
    flat = []
    stack = [explorer.widget]
    while stack:
        node = stack.pop()
        flat.append(node)
        stack.extend(getattr(node, "children", ()))
    assert all(any(w is s for w in flat) for s in shown)


# --- LayerExplorer on a tiny random Llama -----------------------------------------------------
EXAMPLES = [
    Example("boolq", "Is the sky blue on a clear day?", ("true", "false"), 0),
    Example("boolq", "Do fish climb trees?", ("true", "false"), 1),
    Example("piqa", "How do you open a jar?", ("Twist the lid.", "Paint the lid."), 0),
    Example("piqa", "How do you dry wet hands?", ("Use a towel.", "Use more water."), 0),
    Example("openbookqa", "Which is a mammal?", ("trout", "whale", "ant", "fern"), 1),
]


def tiny_model(method: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=352, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    )).eval()
    return omoe_lab.attach_adapters(model, omoe_lab.AdapterConfig(method=method, num_experts=3, rank=4))


@pytest.fixture(scope="module")
def tokenizer():
    from omoe_lab.models import byte_tokenizer

    return byte_tokenizer()


def test_layer_explorer_shows_the_captured_similarity_and_routing(tokenizer, monkeypatch):
    model = tiny_model("omoe")
    captures = []
    real_capture = capture_experts

    def counting_capture(*args, **kwargs):
        captures.append(kwargs["layers"])
        return real_capture(*args, **kwargs)

    monkeypatch.setattr(widgets, "capture_experts", counting_capture)
    explorer = widgets.LayerExplorer(model, tokenizer, EXAMPLES, max_tokens=64)
    top = "model.layers.1.self_attn.v_proj"
    assert explorer.layer.value == top and len(explorer.layer.options) == 4

    expected = real_capture(model, explorer.batches, layers=[top], max_tokens=64, seed=0, progress=False).layers[top]
    np.testing.assert_allclose(np.asarray(explorer.cka_figure.data[0].z), cka_matrix(expected.expert_outputs).numpy(), rtol=1e-6)
    assert f"mean |cosine| of raw outputs: {mean_pairwise_cosine(expected.expert_outputs):.3g}" in explorer.status.value
    assert "64 tokens" in explorer.status.value and "Stiefel error" in explorer.status.value
    loads = explorer.routing_figure.data
    assert sorted(t.name for t in loads) == ["expert 0", "expert 1", "expert 2"]
    assert set(loads[0].x) == {"boolq", "piqa", "openbookqa"}
    per_task = {task: sum(t.y[list(t.x).index(task)] for t in loads) for task in loads[0].x}
    assert all(total == pytest.approx(1.0) for total in per_task.values())  # gates sum to 1

    explorer.layer.value = "model.layers.0.self_attn.q_proj"
    assert "L0 q_proj" in explorer.status.value and "L0 q_proj" in explorer.cka_figure.layout.title.text
    explorer.layer.value = top  # seen before: no second capture
    assert captures == [[top], ["model.layers.0.self_attn.q_proj"]]
    np.testing.assert_allclose(np.asarray(explorer.cka_figure.data[0].z), cka_matrix(expected.expert_outputs).numpy(), rtol=1e-6)


def test_layer_explorer_explains_undefined_measures_of_untrained_moe(tokenizer):
    # vanilla MoE-LoRA starts with B = 0: every expert outputs exactly zero
    explorer = widgets.LayerExplorer(tiny_model("moe"), tokenizer, EXAMPLES[:2], max_tokens=32)
    assert "undefined" in explorer.status.value and "exactly zero" in explorer.status.value
    assert len(explorer.cka_figure.data) == 0
    assert len(explorer.routing_figure.data) == 3  # the router works even when the experts are still zero


def test_layer_explorer_needs_adapters(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    bare = LlamaForCausalLM(LlamaConfig(vocab_size=352, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ValueError, match="no adapter layers"):
        widgets.LayerExplorer(bare, tokenizer, EXAMPLES)
