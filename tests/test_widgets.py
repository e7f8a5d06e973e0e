"""The explorers, driven headless from Python: controls set by assignment, buttons clicked, and
the figure data read back. Runs are hand-built ``RunResult``s from a fake ``run_fn``; the layer
explorer runs a tiny random Llama."""
from __future__ import annotations

import base64
import dataclasses
import html
import os
import re

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import omoe_lab
from omoe_lab import experiments, viz, widgets
from omoe_lab.adapters import gram_schmidt
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

    Accuracy: ``base[(method, E)] + 0.1 · seed``; ``fail`` raises instead. LoRA, as in
    ``experiments.run``, has no expert rows: one adapter per layer, nothing to compare.
    """

    base = {("omoe", 2): 0.5, ("omoe", 4): 0.75, ("omoe", 3): 0.6, ("moe", 2): 0.25, ("moe", 3): 0.3, ("lora", 4): 0.4}

    def __init__(self, fail: str | None = None, accuracy: float | None = None):
        self.configs, self.fail, self.accuracy = [], fail, accuracy
        self.finished: set[str] = set()  # like the run cache: a configuration run before replays

    def __call__(self, config):
        self.configs.append(config)
        if self.fail:
            raise RuntimeError(self.fail)
        c = config.resolved()
        experts_per_layer = c.num_experts
        accuracy = self.accuracy if self.accuracy is not None else self.base[(c.method, experts_per_layer)] + 0.1 * c.seed
        rows = []
        for name in LAYERS if c.method != "lora" else ():
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
        ] if experts_per_layer > 1 and c.method != "lora" else []
        metrics = {"protocol": "label", "accuracy": accuracy, "per_task": {"boolq": accuracy}, "n": 20,
                   "n_per_task": {"boolq": 20}, "chance": 0.5}
        replay = config.key() in self.finished
        self.finished.add(config.key())
        return RunResult(config=dataclasses.asdict(c), key=config.key(), label=config.label(), metrics=metrics,
                         experts=rows, embedding=embedding, from_cache=replay)


def explorer_with(fake, **kwargs):
    return widgets.ExpertCountExplorer(profile="ci", run_fn=fake, **kwargs)


def run_with(explorer, method="omoe", experts=4, seed=0):
    explorer.method.value, explorer.experts.value, explorer.seed.value = method, experts, seed
    explorer.run_button.click()


def traces_by_name(figure):
    """The accuracy lines (or any figure's traces) by name, without the ring around the latest run."""
    return {trace.name: trace for trace in figure.data if trace.name != widgets.LATEST_RUN}


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

    explorer.method.value = "lora"  # E sets LoRA's budget, rank E·r; it has no routing
    assert not explorer.experts.disabled and explorer.routing.disabled and explorer.top_k.disabled and explorer.orthogonalize.disabled
    config = explorer.config()
    assert (config.method, config.num_experts, config.top_k, config.orthogonalize) == ("lora", 2, None, None)
    explorer.method.value = "omoe"
    assert not explorer.experts.disabled and not explorer.top_k.disabled


NO_EXPERTS = "LoRA: one adapter per layer, no experts to compare"


def test_lora_has_the_budget_of_e_experts_as_the_reference_lora_has():
    # the sweeps give LoRA rank E·r, the mixtures' A/B budget: a LoRA press must too, or a rank-4
    # LoRA is drawn against the reference's rank-16 line
    fake = FakeRuns()
    explorer = explorer_with(fake, reference=sweep_summary())
    run_with(explorer, method="lora", experts=4)
    (config,) = fake.configs
    reference = next(arm for arm in sweep_summary()["arms"] if arm["config"]["method"] == "lora")
    assert experiments.adapter_rank(config.resolved()) == config.resolved().rank * reference["config"]["num_experts"]
    assert config.label() == reference["run_label"] == "LoRA r=16"
    lora = traces_by_name(explorer.accuracy_figure)["LoRA (rank E·r)"]
    assert list(lora.x) == [4] and list(lora.y) == pytest.approx([40.0])
    # it has adapted layers, and no experts: the panels say so
    assert [a.text for a in explorer.cka_figure.layout.annotations] == [NO_EXPERTS]
    assert len(explorer.cka_figure.data) == 0 and len(explorer.tsne_figure.data) == 0
    assert "no experts" in explorer.tsne_figure.layout.annotations[0].text


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
    from omoe_lab import models
    from omoe_lab.prefix import FrozenPrefix
    from tests.conftest import make_tiny_llama

    fake, calls, loads = FakeRuns(), [], []

    def fake_run(config, **kwargs):
        calls.append(kwargs)
        return fake(config)

    def fake_load(name, **kwargs):
        loads.append(name)
        return make_tiny_llama(layers=4), "tokenizer"

    monkeypatch.setattr(experiments, "run", fake_run)
    monkeypatch.setattr(models, "load_model", fake_load)
    explorer = widgets.ExpertCountExplorer(profile="ci", cache_dir=tmp_path)
    explorer.experts.value = 2
    finished = tmp_path / explorer.config().key()
    finished.mkdir()
    (finished / "result.json").write_text("{}")  # E = 2 is in the cache: it replays without a model
    run_with(explorer, experts=2)
    assert loads == [] and calls[0]["model"] is None and calls[0]["prefix"] is None
    run_with(explorer, experts=4)  # trains: loads the base model once ...
    run_with(explorer, experts=3)  # ... and keeps it, with its frozen-prefix cache, for the next run
    assert [c.num_experts for c in fake.configs] == [2, 4, 3] and loads == ["default"]
    assert all(kw["cache_dir"] == tmp_path for kw in calls)
    assert calls[1]["model"] is calls[2]["model"] is not None and calls[1]["tokenizer"] == "tokenizer"
    assert isinstance(calls[1]["prefix"], FrozenPrefix) and calls[2]["prefix"] is calls[1]["prefix"]


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


# --- what the browser draws ---------------------------------------------------------------------
def decoded(value):
    """A value of a widget's serialized state as plain numbers (plotly sends arrays as typed buffers)."""
    if isinstance(value, dict) and "dtype" in value and ("value" in value or "bdata" in value or "buffer" in value):
        raw = value.get("value", value.get("buffer"))
        data = base64.b64decode(value["bdata"]) if "bdata" in value else bytes(raw)
        array = np.frombuffer(data, dtype=value["dtype"])
        shape = value.get("shape")
        if shape:
            array = array.reshape([int(n) for n in str(shape).split(",")] if isinstance(shape, str) else shape)
        return array
    return value


def displayed_figure(panel):
    """The FigureWidget a page shows for a ``LiveFigure``: the child its Box's synced state names."""
    if isinstance(panel.widget, go.FigureWidget):  # a panel that is the figure itself
        return panel.widget
    (child,) = panel.widget.get_state()["children"]
    (figure,) = panel.widget.children
    assert child == f"IPY_MODEL_{figure.model_id}", "the Box's synced children do not name the figure drawn"
    return figure


def merged(base: dict, update: dict) -> dict:
    """``update`` merged into ``base`` as plotly.js relayout merges it: keys it does not name are
    kept, ``None`` (null) removes one; dotted keys (``"title.text"``) address nested ones."""
    out = dict(base)
    for key, value in update.items():
        head, _, rest = key.partition(".")
        if rest:
            out[head] = merged(out.get(head) if isinstance(out.get(head), dict) else {}, {rest: value})
        elif value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def front_end(monkeypatch):
    """``drawn_layout(figure)``: the layout a browser shows for a FigureWidget, i.e. the state its
    view was rendered from with every relayout sent to it since merged in (the browser never
    drops a key that a message leaves out)."""
    sent: dict[str, list[dict]] = {}
    relayout, update = go.FigureWidget._send_relayout_msg, go.FigureWidget._send_update_msg

    def record_relayout(self, layout_data, source_view_id=None):
        sent.setdefault(self.model_id, []).append(layout_data)
        return relayout(self, layout_data, source_view_id)

    def record_update(self, restyle_data, relayout_data, trace_indexes=None, source_view_id=None):
        sent.setdefault(self.model_id, []).append(relayout_data)
        return update(self, restyle_data, relayout_data, trace_indexes, source_view_id)

    monkeypatch.setattr(go.FigureWidget, "_send_relayout_msg", record_relayout)
    monkeypatch.setattr(go.FigureWidget, "_send_update_msg", record_update)

    def drawn_layout(figure) -> dict:
        layout = figure.get_state()["_widget_layout"]
        for message in sent.get(figure.model_id, []):
            layout = merged(layout, message)
        return layout

    return drawn_layout


def test_real_plots_carry_no_placeholder_text_in_the_browser(front_end):
    explorer = explorer_with(FakeRuns())
    shown = [displayed_figure(panel) for panel in (explorer.accuracy_plot, explorer.cka_plot, explorer.tsne_plot)]
    panels = (explorer.accuracy_plot, explorer.cka_plot, explorer.tsne_plot)
    assert all(front_end(displayed_figure(panel)).get("annotations") for panel in panels)  # "no run yet"
    run_with(explorer, experts=3)
    for panel in panels:
        layout = front_end(displayed_figure(panel))
        assert not layout.get("annotations"), f"{panel.figure.layout.title.text!r} still shows {layout['annotations']}"
        assert layout.get("xaxis", {}).get("visible") is not False  # the placeholder hid its axes
    run_with(explorer, method="lora")  # and back: a placeholder replaces a heatmap
    assert [a["text"] for a in front_end(displayed_figure(explorer.cka_plot))["annotations"]] == [NO_EXPERTS]
    # redrawn in place: the page keeps one FigureWidget per panel (each new one sends it plotly.js again)
    assert [displayed_figure(panel) for panel in (explorer.accuracy_plot, explorer.cka_plot, explorer.tsne_plot)] == shown


def test_a_reloaded_page_draws_the_last_run_not_the_placeholders():
    # a reload (or reopening the notebook while its kernel runs) renders each figure from the
    # state synced to the front end, not from the messages sent while the page was open
    explorer = explorer_with(FakeRuns())
    run_with(explorer, experts=3)
    heatmap_state = displayed_figure(explorer.cka_plot).get_state()
    (heatmap,) = heatmap_state["_widget_data"]
    assert heatmap["type"] == "heatmap"
    np.testing.assert_allclose(np.asarray(decoded(heatmap["z"]), dtype=float), layer_cka(29, 3))
    assert "L29 q_proj" in heatmap_state["_widget_layout"]["title"]["text"]
    assert len(displayed_figure(explorer.tsne_plot).get_state()["_widget_data"]) == 3  # one cloud per expert
    accuracy = [t for t in displayed_figure(explorer.accuracy_plot).get_state()["_widget_data"] if t.get("name") == "OMoE"]
    assert [list(decoded(t["y"])) for t in accuracy] == [pytest.approx([60.0])]
    assert displayed_figure(explorer.cka_plot) is explorer.cka_figure  # the widget the page shows, not a copy



@pytest.fixture
def sent_messages(monkeypatch):
    """The kinds of message each FigureWidget sends its browser view, in order."""
    sent: dict[str, list[str]] = {}
    for kind in ("relayout", "restyle", "addTraces", "deleteTraces", "update"):
        original = getattr(go.FigureWidget, f"_send_{kind}_msg")

        def record(self, *args, _kind=kind, _original=original, **kwargs):
            sent.setdefault(self.model_id, []).append(_kind)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(go.FigureWidget, f"_send_{kind}_msg", record)
    return sent


def test_cka_redraws_in_the_order_plotly_js_takes(sent_messages):
    # plotly.js fails ("ax.dtick error: Infinity") when category axes listing tick values are drawn
    # without the data they list: a heatmap of another size, a removed heatmap, a placeholder's axes
    # given a heatmap layout before its trace (seen in Chromium; tests/test_browser.py checks the console)
    explorer = explorer_with(FakeRuns())
    run_with(explorer, experts=4)  # placeholder → heatmap: the trace first, then its layout
    cka = explorer.cka_figure.model_id
    first = sent_messages[cka]
    assert "addTraces" in first and first.index("addTraces") < len(first) - 1 - first[::-1].index("relayout")
    sent_messages[cka].clear()
    run_with(explorer, experts=2)  # heatmap → smaller heatmap: edited in place, traces and layout in one message
    assert sent_messages[cka] == ["update"]
    np.testing.assert_allclose(np.asarray(explorer.cka_figure.data[0].z), layer_cka(29, 2))
    assert list(explorer.cka_figure.layout.xaxis.tickvals) == ["expert 0", "expert 1"]
    sent_messages[cka].clear()
    run_with(explorer, method="lora")  # heatmap → placeholder: the layout first, then the trace goes
    kinds = sent_messages[cka]
    assert "deleteTraces" in kinds and kinds.index("deleteTraces") > kinds.index("relayout")
    assert len(explorer.cka_figure.data) == 0 and explorer.cka_figure.layout.xaxis.tickvals is None
    assert [a.text for a in explorer.cka_figure.layout.annotations] == [NO_EXPERTS]

def test_a_layer_change_redraws_the_layer_explorers_heatmap_in_place(sent_messages, tokenizer):
    # the heatmap replaced by another layer's, trace and layout in one message: drawn apart, plotly.js
    # logged "ax.dtick error: Infinity" on every layer change
    explorer = widgets.LayerExplorer(tiny_model("omoe"), tokenizer, EXAMPLES[:2], max_tokens=32)
    cka = explorer.cka_figure.model_id
    sent_messages[cka].clear()
    explorer.layer.value = explorer.layer.options[0][1]
    assert sent_messages[cka] == ["update"] and "L0 q_proj" in explorer.cka_figure.layout.title.text


def test_replaying_a_cached_configuration_says_so_and_rings_it():
    explorer = explorer_with(FakeRuns())
    run_with(explorer, experts=2)
    run_with(explorer, experts=4)
    assert "trained <b>OMoE (stiefel) E=4 soft</b>" in explorer.status.value
    before = explorer.status.value
    run_with(explorer, experts=2)  # finished before: replays from the cache, and no point moves
    status = explorer.status.value
    assert status != before
    assert "replayed from cache: <b>OMoE (stiefel) E=2 soft</b>, accuracy 50.0 %" in status
    assert "already in the plot, ringed" in status and "run 3 of this session" in status
    (ring,) = [t for t in explorer.accuracy_figure.data if t.name == widgets.LATEST_RUN]
    assert (list(ring.x), list(ring.y)) == ([2], [pytest.approx(50.0)])
    assert "replayed from the cache" in ring.hovertemplate
    omoe = traces_by_name(explorer.accuracy_figure)["OMoE"]
    assert omoe.line.width == 4 and ring.marker.color == omoe.line.color

    run_with(explorer, method="moe", experts=2)  # the ring and the wide line follow the latest run
    (ring,) = [t for t in explorer.accuracy_figure.data if t.name == widgets.LATEST_RUN]
    assert (list(ring.x), list(ring.y)) == ([2], [pytest.approx(25.0)])
    traces = traces_by_name(explorer.accuracy_figure)
    assert traces["MoE-LoRA"].line.width == 4 and traces["OMoE"].opacity < 1


def title_of(figure) -> str:
    """A figure's title and subtitle as one line of text (viz.fit_layout wraps them to the figure's width;
    a live panel writes its subtitle as the title's last lines)."""
    text = f"{figure.layout.title.text} · {figure.layout.title.subtitle.text or ''}".replace("<br>", " ")
    return re.sub(r"<[^>]+>", "", text)


def test_cka_and_tsne_titles_say_which_layer_and_why():
    explorer = explorer_with(FakeRuns())
    run_with(explorer, experts=3)
    assert "L29 q_proj" in explorer.cka_figure.layout.title.text and "menu" in title_of(explorer.cka_figure)
    tsne_title = title_of(explorer.tsne_figure)
    assert "L29 q_proj" in tsne_title and "only one a run maps" in tsne_title and "CKA shows" not in tsne_title

    explorer.layer.value = LAYERS[0]  # the t-SNE cannot follow: a run maps only its top adapted layer
    assert "L28 q_proj" in explorer.cka_figure.layout.title.text
    tsne_title = title_of(explorer.tsne_figure)
    assert "t-SNE of expert outputs, L29 q_proj" in tsne_title and "CKA shows L28 q_proj" in tsne_title


def test_live_panels_write_their_subtitle_as_the_titles_last_lines():
    # plotly.js puts a subtitle under its title's measured box, and a widget's figure is first drawn off
    # the page, where boxes measure 0: the subtitle landed on top of the title (01's explorers, in Chromium)
    explorer = explorer_with(FakeRuns(), reference=sweep_summary())
    run_with(explorer, experts=3)
    for figure in (explorer.cka_figure, explorer.tsne_figure):
        first, *rest = figure.layout.title.text.split("<br>")
        assert not figure.layout.title.subtitle.text and "span" not in first
        assert rest and all(line.startswith(widgets.live_figure.SUBTITLE_LINE) and line.endswith("</span>") for line in rest)
    # fitting again (a redraw passes the figure on) leaves the lines as they are
    fitted = widgets.live_figure.fit(viz.set_title(go.Figure(), "A title", "a subtitle"), width=440)
    assert widgets.live_figure.fit(fitted, width=440).layout.title.text == fitted.layout.title.text
    assert fitted.layout.title.text == f"A title<br>{widgets.live_figure.SUBTITLE_LINE}a subtitle</span>"
    # the accuracy plot is drawn from the start: one line
    assert "<br>" not in explorer.accuracy_figure.layout.title.text and not explorer.accuracy_figure.layout.title.subtitle.text


def description_fits(control) -> bool:
    """Whether a control's label shows whole: sized to its text, or ~8 px a character at most."""
    width = control.style.description_width
    if width == "initial":
        return True
    return width.endswith("px") and float(width[:-2]) >= 8 * len(control.description)


def test_control_labels_are_not_cut():
    explorer = explorer_with(FakeRuns())
    labelled = [explorer.experts, explorer.method, explorer.routing, explorer.top_k, explorer.orthogonalize, explorer.seed,
                explorer.layer]
    assert [c.description for c in labelled if not description_fits(c)] == []


# --- the committed sweep as a reference ---------------------------------------------------------
def sweep_arm(arm, label, method, experts, values, top_k=None, run_label=None):
    mean = sum(values) / len(values)
    return {"arm": arm, "label": label, "run_label": run_label or label,
            "config": {"method": method, "num_experts": experts, "top_k": top_k, "orthogonalize": "stiefel" if method == "omoe" else None,
                       "b_init_std": 0.0},
            "accuracy": {"all": {"mean": mean, "low": mean - 0.05, "high": mean + 0.05, "values": values}}}


def sweep_summary():
    """A hand-made summary in the format of ``sweep.summarize_sweep`` (the parts the explorer reads)."""
    return {
        "meta": {"setting": "real", "profile": "quick", "seeds": [0, 1, 2], "tasks": ["ARC-Easy", "boolq"], "protocol": "loglik",
                 "prompt_style": "cloze", "n": 400, "n_per_task": {"ARC-Easy": 200, "boolq": 200}},
        "baselines": {"ways": {"cloze/mean": {"accuracy": 0.40}, "listed/mean": {"accuracy": 0.30}}},
        "arms": [
            sweep_arm("lora", "LoRA (E·r budget)", "lora", 4, [0.42, 0.43, 0.44], run_label="LoRA r=16"),
            sweep_arm("moe2", "MoE-LoRA E=2 soft", "moe", 2, [0.41, 0.42, 0.43]),
            sweep_arm("moe8", "MoE-LoRA E=8 soft", "moe", 8, [0.44, 0.45, 0.46]),
            sweep_arm("moe8top2", "MoE-LoRA E=8 top-2", "moe", 8, [0.40, 0.41, 0.42], top_k=2),
            sweep_arm("omoe2", "OMoE E=2 soft", "omoe", 2, [0.45, 0.46, 0.47]),
            sweep_arm("omoe4", "OMoE E=4 soft", "omoe", 4, [0.70, 0.75, 0.80]),
            sweep_arm("control4", "MoE-LoRA E=4 soft, B ~ N(0, 0.02²) (control)", "moe", 4, [0.43, 0.44, 0.45]),
        ],
    }


def reference_traces_of(figure):
    return {t.name: t for t in figure.data if t.name.startswith(widgets.REFERENCE_PREFIX)}


def test_reference_sweep_is_drawn_from_the_start_with_its_t_intervals():
    explorer = explorer_with(FakeRuns(), reference=sweep_summary())
    traces = reference_traces_of(explorer.accuracy_figure)
    assert set(traces) == {"sweep · MoE-LoRA soft", "sweep · MoE-LoRA top-2", "sweep · OMoE soft",
                           "sweep · MoE-LoRA soft, B ~ N(0, 0.02²) (control)", "sweep · LoRA r=16 (E·r budget)",
                           "sweep · LoRA r=16 (E·r budget) interval", "sweep · zero-shot (cloze/mean)"}
    moe = traces["sweep · MoE-LoRA soft"]
    assert [round(x) for x in moe.x] == [2, 8] and list(moe.y) == pytest.approx([42.0, 45.0])  # sideways nudge < 0.5
    assert list(np.asarray(moe.customdata)[:, 0]) == [2, 8]  # the true E, for the hover
    assert list(moe.error_y.array) == pytest.approx([5.0, 5.0]) and list(moe.error_y.arrayminus) == pytest.approx([5.0, 5.0])
    assert moe.line.dash == "dash" and moe.line.color == viz.METHOD_COLORS["moe"]
    assert traces["sweep · OMoE soft"].line.color == viz.METHOD_COLORS["omoe"]
    # top-2 is MoE-LoRA too: its hue, told apart by a dash-dot line; the control has its own hue
    assert traces["sweep · MoE-LoRA top-2"].line.color == viz.METHOD_COLORS["moe"] and traces["sweep · MoE-LoRA top-2"].line.dash == "dashdot"
    assert traces["sweep · MoE-LoRA soft, B ~ N(0, 0.02²) (control)"].line.color == viz.FAMILY_COLORS["control"]
    lora = traces["sweep · LoRA r=16 (E·r budget)"]
    assert list(lora.y) == pytest.approx([43.0, 43.0]) and lora.x[0] < 2 and lora.x[1] > 8  # across every E
    assert list(traces["sweep · zero-shot (cloze/mean)"].y) == pytest.approx([40.0, 40.0])
    assert not explorer.accuracy_figure.layout.annotations  # no placeholder: the reference is the first picture
    assert {t.legendgroup for t in traces.values()} == {widgets.REFERENCE_GROUP}
    (group_title,) = {t.legendgrouptitle.text for t in traces.values() if t.legendgrouptitle.text}
    assert "sweep real" in group_title and "profile quick" in group_title and "seeds 0, 1, 2" in group_title and "95 % t" in group_title
    assert "<br>" not in explorer.accuracy_figure.layout.title.text  # one line: see test_live_panels_write_their_subtitle_as_the_titles_last_lines
    note = explorer.reference_note.value
    for words in ("setting <b>real</b>", "profile <b>quick</b>", "seeds 0, 1, 2", "n = 400", "95 % Student-t", "cloze prompt",
                  "profile quick against your ci"):
        assert words in note, words


def test_learner_runs_are_their_own_series_never_averaged_with_the_reference():
    fake = FakeRuns()
    explorer = explorer_with(fake, reference=sweep_summary())
    before = {name: (list(t.x), list(t.y)) for name, t in reference_traces_of(explorer.accuracy_figure).items()}
    run_with(explorer, experts=4)  # the same method and E as the sweep's omoe4 arm (75 %), but another setting
    run_with(explorer, experts=2)
    figure = explorer.accuracy_figure
    after = {name: (list(t.x), list(t.y)) for name, t in reference_traces_of(figure).items()}
    assert after.keys() == before.keys()
    for name in before:  # unchanged by the learner's runs (only the flat lines stretch over the new E)
        assert after[name][1] == pytest.approx(before[name][1])
    own = traces_by_name(figure)["OMoE"]
    assert list(own.x) == [2, 4] and list(own.y) == pytest.approx([50.0, 75.0])
    assert own.legendgroup == widgets.OWN_GROUP and own.line.dash in (None, "solid")
    assert [round(x) for x in traces_by_name(figure)["sweep · OMoE soft"].x] == [2, 4]
    assert list(traces_by_name(figure)["sweep · OMoE soft"].y) == pytest.approx([46.0, 75.0])
    assert own.legendgrouptitle.text == "solid: your 2 runs, profile ci (bars: min–max)"
    (ring,) = [t for t in figure.data if t.name == widgets.LATEST_RUN]
    assert (list(ring.x), list(ring.y)) == ([2], [pytest.approx(50.0)])


def test_reference_from_a_path_relative_to_the_repository(tmp_path, monkeypatch):
    import json

    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep_summary()))
    explorer = explorer_with(FakeRuns(), reference=str(path))
    assert explorer.reference == sweep_summary() and str(path) in explorer.reference_note.value
    # a notebook runs in notebooks/: "results/..." is found from the repository root as well
    monkeypatch.setattr(widgets.reference, "repository_root", lambda: tmp_path)  # where load_reference looks it up
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "sweep-real-quick.json").write_text(json.dumps(sweep_summary()))
    monkeypatch.chdir(tmp_path / "results")
    summary, source, problem = widgets.load_reference("results/sweep-real-quick.json")
    assert problem is None and summary["meta"]["setting"] == "real" and source == "results/sweep-real-quick.json"


@pytest.mark.parametrize("content, why", [(None, "was not found"), ("{not json", "could not be read"),
                                          ('{"meta": {}}', "is not a sweep summary")])
def test_a_missing_or_broken_reference_leaves_a_note_and_the_explorer_works(tmp_path, content, why):
    path = tmp_path / "sweep-real-quick.json"
    if content is not None:
        path.write_text(content)
    explorer = explorer_with(FakeRuns(), reference=path)
    assert explorer.reference is None and why in explorer.reference_problem
    assert "no reference curve" in explorer.reference_note.value and why in explorer.reference_note.value
    assert "omoe-lab sweep" in explorer.reference_note.value
    assert [a.text for a in explorer.accuracy_figure.layout.annotations] == ["no runs yet: press Run"]
    run_with(explorer, experts=2)
    assert set(traces_by_name(explorer.accuracy_figure)) == {"OMoE"}


def test_run_options_reach_every_run_and_bad_ones_fail_at_once(tmp_path):
    fake = FakeRuns()
    explorer = explorer_with(fake, reference=sweep_summary(), run_options={"tasks": ("ARC-Easy", "boolq"), "eval_per_task": 6})
    run_with(explorer, experts=2)
    (config,) = fake.configs
    assert (config.tasks, config.eval_per_task, config.num_experts, config.profile) == (("ARC-Easy", "boolq"), 6, 2, "ci")
    assert "2 tasks (ARC-Easy, boolq) from the built-in suite" in explorer.reference_note.value
    assert "other tasks" not in explorer.reference_note.value  # the reference's own tasks
    data = tmp_path / "commonsense"
    data.mkdir()
    with_data = explorer_with(FakeRuns(), reference=sweep_summary(), run_options={"data_dir": str(data)})
    shown = os.path.relpath(data, widgets.repository_root())
    assert f"from data <code>{html.escape(shown)}</code>" in with_data.reference_note.value  # no absolute path
    assert f"<code>{html.escape(str(data))}" not in with_data.reference_note.value
    with pytest.raises(ValueError, match="set by the controls"):
        explorer_with(FakeRuns(), run_options={"num_experts": 3})
    with pytest.raises(ValueError, match="unknown RunConfig fields"):
        explorer_with(FakeRuns(), run_options={"experts": 3})
    with pytest.raises(ValueError, match="unknown prompt style"):
        explorer_with(FakeRuns(), run_options={"prompt_style": "chat"})


def test_the_note_says_how_the_runs_differ_from_the_reference():
    """Profile sizes and the training objective, when they differ (the learn sweep's rank objective)."""
    learn = {**sweep_summary(), "meta": {**sweep_summary()["meta"], "profile": "learn", "tasks": ["social_i_qa"],
                                          "sizes": {"steps": 200, "top_blocks": 4, "train_per_task": 1600}}}
    note = explorer_with(FakeRuns(), reference=learn, run_options={"tasks": ("social_i_qa",)}).reference_note.value
    assert "profile learn (200 steps, top 4 blocks, 1600 training questions per task) against your ci (40 steps, top 2 blocks" in note
    assert "objective rank against your lm" in note and "1 task (social_i_qa)" in note and "other tasks" not in note
    same = explorer_with(FakeRuns(), reference=learn, run_options={"tasks": ("social_i_qa",), "objective": "rank"}).reference_note.value
    assert "objective" not in same and "profile learn" in same  # the objective matches; the sizes still differ


def test_the_reference_carries_no_placeholder_in_the_browser(front_end):
    explorer = explorer_with(FakeRuns(), reference=sweep_summary())
    shown = displayed_figure(explorer.accuracy_plot)
    assert not front_end(shown).get("annotations")
    run_with(explorer, experts=3)
    layout = front_end(shown)
    assert not layout.get("annotations")
    synced = {t["name"]: t for t in shown.get_state()["_widget_data"]}  # what a reloaded page draws
    assert "sweep · OMoE soft" in synced and "your 1 run" in synced["OMoE"]["legendgrouptitle"]["text"]


# --- LayerExplorer on a tiny random Llama -----------------------------------------------------
EXAMPLES = [
    Example("boolq", "Is the sky blue on a clear day?", ("true", "false"), 0),
    Example("boolq", "Do fish climb trees?", ("true", "false"), 1),
    Example("piqa", "How do you open a jar?", ("Twist the lid.", "Paint the lid."), 0),
    Example("piqa", "How do you dry wet hands?", ("Use a towel.", "Use more water."), 0),
    Example("openbookqa", "Which is a mammal?", ("trout", "whale", "ant", "fern"), 1),
]


def tiny_base():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=352, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    )).eval()


def tiny_model(method: str, **adapter):
    return omoe_lab.attach_adapters(tiny_base(), omoe_lab.AdapterConfig(method=method, num_experts=3, rank=4, **adapter))


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

    monkeypatch.setattr(widgets.layer_explorer, "capture_experts", counting_capture)  # where LayerExplorer looks it up
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


def test_layer_explorer_counts_the_batches_of_a_capture(tokenizer):
    # a capture runs the whole model on every batch: the bar and the status line say how far it is
    explorer = widgets.LayerExplorer(tiny_model("omoe"), tokenizer, EXAMPLES, max_tokens=64, batch_size=2)
    total = len(explorer.batches)
    assert total == 3 and (explorer.progress.value, explorer.progress.max, explorer.progress.bar_style) == (total, total, "success")
    seen = []
    explorer.progress.observe(lambda change: seen.append((change["new"], explorer.status.value)), "value")
    explorer.layer.value = "model.layers.0.self_attn.q_proj"
    assert [value for value, _ in seen] == list(range(total + 1))  # reset, then one step per batch
    assert all(f"L0 q_proj</b>: batch {value} of {total}" in status for value, status in seen[1:])  # the batch just captured
    assert (explorer.progress.value, explorer.progress.bar_style) == (total, "success") and "Stiefel error" in explorer.status.value
    seen.clear()
    explorer.layer.value = "model.layers.1.self_attn.v_proj"  # seen before: no capture, the bar stays full
    assert seen == [] and explorer.progress.value == total


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


def assert_same_rows(explorer, rows):
    """The explorer's measures of every layer equal ``experiments.analyse_experts``' rows."""
    for row in rows:
        mine = explorer.analyse(row["layer"])
        assert mine["tokens"] == row["tokens"]
        np.testing.assert_allclose(mine["cka"], row["cka"], rtol=1e-6, atol=1e-9)
        for key in ("mean_abs_cosine", "mean_cka", "mean_cka_debiased", "effective_rank", "routing_entropy", "stiefel_error"):
            assert mine[key] == pytest.approx(row[key], rel=1e-6, abs=1e-12), key


def test_layer_explorer_captures_the_scored_prompts_as_the_runs_do(tokenizer):
    # the same tokens as experiments.capture_for_analysis (and so as ExpertCountExplorer's CKA panel):
    # the scored prompts without their answers, tokenized by experiments.prompt_batches
    model = tiny_model("omoe")
    config = experiments.RunConfig(method="omoe", num_experts=3, profile="ci", prompt_style="cloze", capture_tokens=64, seed=0)
    rows, _ = experiments.analyse_experts(experiments.capture_for_analysis(model, tokenizer, EXAMPLES, config, progress=False), config)
    explorer = widgets.LayerExplorer(model, tokenizer, EXAMPLES, max_tokens=64, prompt_style="cloze", seed=0)
    assert [b["input_ids"].tolist() for b in explorer.batches] == [
        b["input_ids"].tolist() for b in experiments.prompt_batches(tokenizer, EXAMPLES, "cloze")]
    assert_same_rows(explorer, rows)


def test_layer_explorer_says_which_model_it_shows(tokenizer):
    explorer = widgets.LayerExplorer(tiny_model("omoe"), tokenizer, EXAMPLES[:2], max_tokens=32)
    assert "OMoE (stiefel) E=3 soft" in explorer.heading.value
    assert "OMoE (stiefel) E=3 soft" in title_of(explorer.cka_figure)
    assert "OMoE (stiefel) E=3 soft" in title_of(explorer.routing_figure)
    moe = widgets.LayerExplorer(tiny_model("moe", top_k=2), tokenizer, EXAMPLES[:2], max_tokens=32)
    assert "MoE-LoRA E=3 top-2" in moe.heading.value
    named = widgets.LayerExplorer(tiny_model("omoe"), tokenizer, EXAMPLES[:2], max_tokens=32, label="my run")
    assert "my run" in named.heading.value and "my run" in title_of(named.cka_figure)


@pytest.mark.parametrize("mode", ["orthogonal", "norm_preserving"])
def test_layer_explorer_stiefel_error_is_that_of_the_directions(tokenizer, mode):
    # only "stiefel" makes the q_k unit length: under the other modes the raw q's QᵀQ is their
    # lengths squared, an O(1) "error" that says nothing about orthogonality
    explorer = widgets.LayerExplorer(tiny_model("omoe", orthogonalize=mode), tokenizer, EXAMPLES, max_tokens=64)
    error = explorer.analyse(explorer.layer.value)["stiefel_error"]
    assert error < 1e-5
    assert f"Stiefel error: {error:.3g}" in explorer.status.value


def test_layer_explorer_from_a_run_shows_the_runs_numbers(tokenizer, tmp_path):
    trained = tiny_model("omoe", orthogonalize="norm_preserving")
    with torch.no_grad():  # as if trained: m != 0, so the adapters change the model's outputs
        for layer in omoe_lab.adapter_layers(trained).values():
            layer.magnitude.fill_(0.5)
    omoe_lab.save_adapters(trained, tmp_path / "adapters")
    config = experiments.RunConfig(method="omoe", num_experts=3, orthogonalize="norm_preserving", profile="ci",
                                   tasks=("boolq",), eval_per_task=4, capture_tokens=48, seed=1)
    result = RunResult(config=dataclasses.asdict(config.resolved()), key=config.key(), label=config.label(), metrics={},
                       folder=str(tmp_path))
    resolved = config.resolved()
    rows, _ = experiments.analyse_experts(
        experiments.capture_for_analysis(trained, tokenizer, experiments.test_examples(config), resolved, progress=False), resolved)

    explorer = widgets.LayerExplorer.from_run(result, tiny_base(), tokenizer)
    assert (explorer.max_tokens, explorer.seed, explorer.prompt_style) == (48, 1, "cloze")
    assert "OMoE (norm_preserving) E=3 soft (profile ci)" in explorer.heading.value
    assert_same_rows(explorer, rows)


def test_layer_explorer_warns_that_max_length_no_longer_applies(tokenizer):
    with pytest.warns(FutureWarning, match="max_length"):
        widgets.LayerExplorer(tiny_model("omoe"), tokenizer, EXAMPLES[:2], max_tokens=16, max_length=64)


# --- GramSchmidtGeometry: three experts in 3-D --------------------------------------------------
def line(figure, group):
    """The line trace of arrow ``group`` ("e1" … "q3")."""
    return next(t for t in figure.data if t.meta == group and t.type == "scatter3d")


def cone(figure, group):
    return next(t for t in figure.data if t.meta == group and t.type == "cone")


def expected_q(geometry) -> torch.Tensor:
    """``gram_schmidt`` of the experts taken in the widget's order, back in expert-index order."""
    order = list(geometry.order.value)
    q = torch.empty(3, 3, dtype=torch.float64)
    q[order] = gram_schmidt(geometry.expert_vectors()[order], mode=geometry.mode.value, tol=geometry.tol.value)
    return q


def test_geometry_moving_a_slider_redraws_in_place_and_for_a_reload():
    geometry = widgets.GramSchmidtGeometry()
    figure = geometry.figure
    q_before = geometry.drawn_q()
    geometry.azimuth[0].value = 100.0
    assert geometry.figure is figure  # edited in place: no new view, the user's 3-D camera stays
    e1 = line(figure, "e1")
    np.testing.assert_allclose([e1.x[1], e1.y[1], e1.z[1]], widgets.spherical_vector(100.0, 10.0, 1.5).tolist(), rtol=0, atol=1e-15)
    assert not torch.allclose(geometry.drawn_q(), q_before)  # e1 leads Gram–Schmidt: every q moves
    # and a reloaded page draws the moved arrow, not the first one
    synced = next(t for t in displayed_figure(geometry.plot).get_state()["_widget_data"]
                  if t.get("meta") == "e1" and t["type"] == "scatter3d")
    assert list(decoded(synced["x"])) == pytest.approx(list(e1.x), abs=1e-15)
    geometry.length[2].value = 0.5
    assert float(torch.tensor([line(figure, "e3")[axis][1] for axis in "xyz"]).norm()) == pytest.approx(0.5)


@pytest.mark.parametrize("mode", ["stiefel", "orthogonal", "norm_preserving"])
def test_geometry_draws_gram_schmidts_own_output_in_every_mode_and_order(mode):
    geometry = widgets.GramSchmidtGeometry(mode=mode)
    firsts = []
    for order in widgets.ORDERS:
        geometry.order.value = order
        drawn = geometry.drawn_q()
        torch.testing.assert_close(drawn, expected_q(geometry), atol=1e-12, rtol=0)
        first = order[0]  # the first expert visited keeps its own direction
        e = geometry.expert_vectors()[first]
        assert float(torch.linalg.cross(drawn[first], e).norm()) < 1e-12
        firsts.append(drawn)
        if mode == "stiefel":
            assert drawn.norm(dim=-1).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
        if mode == "norm_preserving":
            assert drawn.norm(dim=-1).tolist() == pytest.approx(geometry.expert_vectors().norm(dim=-1).tolist(), abs=1e-12)
    assert not torch.allclose(firsts[0], firsts[-1])  # the order matters
    geometry.mode.value = "stiefel" if mode != "stiefel" else "orthogonal"  # the menu redraws too
    torch.testing.assert_close(geometry.drawn_q(), expected_q(geometry), atol=1e-12, rtol=0)


def test_geometry_parallel_experts_make_the_later_one_redundant():
    geometry = widgets.GramSchmidtGeometry()
    geometry.align_button.click()  # e2 gets e1's direction, keeps its length
    q = geometry.drawn_q()
    assert torch.count_nonzero(q[1]) == 0 and q[0].norm() > 0 and q[2].norm() > 0
    assert line(geometry.figure, "q2").name == "q2 = 0 (redundant)" and cone(geometry.figure, "q2").visible is False
    assert "redundant: q = 0" in geometry.readout.value
    torch.testing.assert_close(q, expected_q(geometry), atol=1e-12, rtol=0)

    geometry.order.value = (1, 0, 2)  # e2 first: now e1 is the one with nothing of its own
    q = geometry.drawn_q()
    assert torch.count_nonzero(q[0]) == 0 and q[1].norm() > 0

    # the threshold: 2° apart, the relative residual is sin(angle) — live at tol 1e-4, redundant at 0.1
    geometry.order.value = (0, 1, 2)
    geometry.azimuth[1].value = geometry.azimuth[0].value + 2
    e = geometry.expert_vectors()
    sine = float(torch.linalg.cross(e[0], e[1]).norm() / (e[0].norm() * e[1].norm()))
    assert widgets.relative_residuals(e, geometry.tol.value)[1] == pytest.approx(sine, abs=1e-12)
    assert geometry.drawn_q()[1].norm() > 0 and f"{sine:.2e} > tol" in geometry.readout.value
    geometry.tol.value = 0.1
    assert torch.count_nonzero(geometry.drawn_q()[1]) == 0 and f"{sine:.2e} ≤ tol" in geometry.readout.value


def test_geometry_view_is_not_end_on_to_any_starting_expert():
    # the old view looked almost along e2 (8° off), which then drew as a stub
    eye = torch.tensor([widgets.GEOMETRY_EYE[axis] for axis in "xyz"], dtype=torch.float64)
    in_plane = ((-20.0, 0.0, 1.5), (35.0, 0.0, 1.0), (60.0, 0.0, 0.7))  # notebook 05's three experts
    for azimuth, elevation, _ in (*widgets.GEOMETRY_START, *in_plane):
        cosine = float(widgets.spherical_vector(azimuth, elevation, 1.0) @ eye / eye.norm())
        assert np.degrees(np.arccos(abs(cosine))) >= 45
    camera = widgets.GramSchmidtGeometry().figure.layout.scene.camera.eye
    assert (camera.x, camera.y, camera.z) == tuple(widgets.GEOMETRY_EYE.values())


def test_geometry_without_figurewidget_draws_static_figures(monkeypatch):
    def no_figure_widget(*args, **kwargs):
        raise ImportError("anywidget is not installed")

    monkeypatch.setattr(widgets.go, "FigureWidget", no_figure_widget)
    geometry = widgets.GramSchmidtGeometry()
    geometry.align_button.click()
    (output,) = geometry.plot.widget.outputs
    assert "application/vnd.plotly.v1+json" in output["data"]
    assert torch.count_nonzero(geometry.drawn_q()[1]) == 0
