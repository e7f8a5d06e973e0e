"""JupyterLab explorers: move a control, watch expert collapse (MoE-LoRA) or diversity (OMoE).

- ``ExpertCountExplorer`` trains (or replays from the cache) one configuration per click through
  ``omoe_lab.experiments.run`` and redraws, in place, accuracy against the number of experts
  (every run of the session), the CKA heatmap of a chosen adapted layer and the t-SNE of the
  experts' outputs.
- ``LayerExplorer`` looks inside an already-trained model, one adapted layer at a time: expert
  similarity (CKA, mean |cosine|) and routing (load per task, entropy).

Neither computes anything of its own: runs come from ``experiments``, measures from
``analysis``, figures from ``viz``, so a number seen here is the number in the report.
Building and displaying them runs nothing heavy and needs no frontend, so notebooks executed
headless (nbval, nbclient) do not block; the figures are plotly ``FigureWidget``s when
anywidget is available, else plain figures redrawn inside an ``Output``.
"""
from __future__ import annotations

import html
import time
import traceback
from collections.abc import Callable, Sequence

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from . import experiments, viz
from .adapters.config import ORTHOGONALIZE_MODES
from .analysis import (
    capture_experts, cka_matrix, expert_effective_rank, expert_load, mean_pairwise_cosine, routing_entropy,
    routing_summary, stiefel_error,
)
from .data.collate import TrainCollator
from .experiments import RunConfig, RunResult
from .inject import adapter_layers

METHOD_CHOICES = (("MoE-LoRA (vanilla)", "moe"), ("OMoE (Gram–Schmidt)", "omoe"), ("LoRA (E = 1 reference)", "lora"))
ROUTING_CHOICES = (("soft", "soft"), ("top-k", "top_k"))


# --- figures that redraw in place ----------------------------------------------------------
class LiveFigure:
    """A plotly figure shown once and redrawn in place by ``show``.

    ``figure`` is a ``go.FigureWidget`` (and ``widget`` the same object) when one can be made;
    otherwise ``figure`` is a ``go.Figure`` and ``widget`` an ``Output`` whose single display is
    replaced on every redraw. ``size`` (plotly ``width``/``height``) is applied to every figure
    shown, since a new figure brings its own layout.
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
        if self.live:
            with self.figure.batch_update():  # one message to the frontend, not one per trace
                self.figure.data = []
                self.figure.add_traces(list(figure.data))
                self.figure.layout = figure.layout
        else:
            self.figure = figure
            self._render()

    def _render(self) -> None:
        # Written as an output record rather than with display(): display() outside a kernel
        # prints the figure's repr, and JupyterLab renders this MIME type natively.
        bundle = pio.renderers["plotly_mimetype"].to_mimebundle(self.figure.to_dict())
        bundle["text/plain"] = f"<plotly figure: {self.figure.layout.title.text or 'untitled'}>"
        self.widget.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)


def placeholder(title: str, message: str) -> go.Figure:
    """An empty figure that says why it is empty."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14, color="#666666"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig.update_layout(template=viz.TEMPLATE, title_text=title)


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


# --- the experiment explorer ------------------------------------------------------------------
class ExpertCountExplorer:
    """Pick experts, method, routing, orthogonalization and seed; Run; compare.

    Each click builds a ``RunConfig`` for ``profile`` and calls ``run_fn(config)`` (default:
    ``omoe_lab.experiments.run`` with ``cache_dir``; a finished configuration replays from the
    cache at once). The three figures then redraw in place: accuracy against experts for every
    run of this session (one line per method), the CKA heatmap of the layer picked in the layer
    menu (filled from the run's adapted layers; changing it redraws without re-running), and the
    t-SNE of the top adapted layer's expert outputs. LoRA is the E = 1 reference: one rank-r
    adapter, drawn at one expert. A failing run is reported in the status line and the run log,
    never raised into the notebook.

    ``model``/``tokenizer``: a loaded base model to reuse across runs (else each run that is not
    cached loads its own); with a model, runs share one frozen-prefix cache. Display the explorer
    itself or ``.widget``; ``run()`` does what the button does, for scripted notebooks.
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
    ):
        self.profile = experiments.profile_from_env(profile).name  # fixed now, so every run of the session matches
        self.cache_dir = cache_dir
        self._run_fn = run_fn or self._run_with_experiments
        self._model, self._tokenizer = model, tokenizer
        # every run of the session adapts the same top blocks, so one frozen-prefix cache serves all
        self._prefix = experiments.frozen_prefix_for(model, RunConfig(profile=self.profile)) if model is not None else None
        self.results: dict[str, RunResult] = {}  # by config key: a replayed run replaces itself
        self.result: RunResult | None = None
        self._filling_layers = False

        self.experts = widgets.IntSlider(value=4, min=1, max=max_experts, description="experts E")
        self.method = widgets.Dropdown(options=METHOD_CHOICES, value="omoe", description="method")
        self.routing = widgets.ToggleButtons(options=ROUTING_CHOICES, value="soft", description="routing")
        self.top_k = widgets.IntSlider(value=2, min=1, max=4, description="k", disabled=True)
        self.orthogonalize = widgets.Dropdown(options=ORTHOGONALIZE_MODES, value="stiefel", description="orthogonalize")
        self.seed = widgets.BoundedIntText(value=0, min=0, max=1_000_000, description="seed")
        self.layer = widgets.Dropdown(options=[], description="layer", disabled=True)
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play",
                                         tooltip="train this configuration, or replay it from the cache")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="", layout=widgets.Layout(width="160px"))
        self.status = widgets.HTML(f"profile <b>{self.profile}</b>: choose a configuration and press Run.")
        self.layer_metrics = widgets.HTML("")
        self.log = widgets.Output()  # training progress bars and tracebacks land here

        self.accuracy_plot = LiveFigure(placeholder("Accuracy against the number of experts", "no runs yet: press Run"), height=380)
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
        )

    # running ------------------------------------------------------------------------------
    def _run_with_experiments(self, config: RunConfig) -> RunResult:
        return experiments.run(
            config, cache_dir=self.cache_dir, progress=True, model=self._model, tokenizer=self._tokenizer,
            prefix=self._prefix,
        )

    def run(self) -> RunResult | None:
        """Run (or replay) the configuration of the controls and redraw; None if it failed."""
        config = self.config()
        label = html.escape(config.label())
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
            self._record(result)
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
        how = "replayed from the cache" if result.from_cache else f"finished in {time.perf_counter() - started:.0f} s"
        metrics = result.metrics
        self.status.value = (
            f"<b>{html.escape(result.label)}</b>: accuracy {100 * metrics['accuracy']:.1f} % "
            f"(protocol {html.escape(str(metrics['protocol']))}, n = {metrics['n']}, profile {self.profile}), {how}."
        )
        return result

    def _record(self, result: RunResult) -> None:
        self.results[result.key] = result
        self.result = result
        self.accuracy_plot.show(viz.accuracy_vs_experts(
            accuracy_frame(list(self.results.values())),
            title=f"Accuracy against the number of experts (profile {self.profile})",
        ))
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

    def _draw_layer(self) -> None:
        result = self.result
        row = next((r for r in result.experts if r["layer"] == self.layer.value), None)
        if row is None:
            self.cka_plot.show(placeholder("CKA between experts", "this run has no adapted layers"))
            self.layer_metrics.value = ""
            return
        name = viz.layer_label(row["layer"], row.get("block"))
        if "cka" in row:
            self.cka_plot.show(viz.cka_heatmap(row["cka"], title=f"Linear CKA between experts, {name}<br><sub>{result.label}</sub>"))
        else:
            self.cka_plot.show(placeholder(f"CKA between experts, {name}", "a single expert: nothing to compare"))
        self.layer_metrics.value = layer_metrics_html(row)

    def _draw_tsne(self, result: RunResult) -> None:
        if not result.embedding:
            self.tsne_plot.show(placeholder("t-SNE of expert outputs", "a single expert: no map to draw"))
            return
        frame = pd.DataFrame(result.embedding)
        if "layer" in frame.columns:
            name = frame["layer"].iloc[0]
            block = next((row.get("block") for row in result.experts if row["layer"] == name), None)
            layer = viz.layer_label(name, block)
        else:
            layer = "top adapted layer"
        self.tsne_plot.show(viz.tsne_scatter(frame, title=f"t-SNE of expert outputs, {layer}<br><sub>{result.label}</sub>"))


# --- the layer explorer -------------------------------------------------------------------------
def _measured(undefined: dict, name: str, compute: Callable):
    """``compute()``, or None with the reason kept in ``undefined`` (e.g. untrained MoE-LoRA
    experts output exactly zero, and their cosine and CKA do not exist)."""
    try:
        return compute()
    except ValueError as error:
        undefined[name] = str(error)
        return None


class LayerExplorer:
    """Expert similarity and routing of an already-trained model, one adapted layer at a time.

    Choosing a layer captures that layer's expert outputs on ``examples`` (prompt + answer, at
    most ``max_tokens`` tokens sampled uniformly, ``analysis.capture_experts``), reduces them to
    the CKA matrix, mean |cosine|, effective rank, routing load per task and entropy, and keeps
    only those small results: returning to a layer costs nothing, and memory does not grow with
    the tokens or the number of layers visited. The top adapted layer (the one the experiments'
    t-SNE maps) is shown first.
    """

    def __init__(self, model, tokenizer, examples, max_tokens: int = 512, *, max_length: int = 256,
                 batch_size: int = 16, seed: int = 0):
        layers = adapter_layers(model)
        if not layers:
            raise ValueError("the model has no adapter layers; attach or load adapters first (omoe_lab.attach_adapters)")
        examples = list(examples)
        if not examples:
            raise ValueError("LayerExplorer needs at least one example to run the model on")
        self.model, self.max_tokens, self.seed = model, max_tokens, seed
        collate = TrainCollator(tokenizer, max_length=max_length)
        self.batches = [
            {**collate(examples[i : i + batch_size]), "task": [ex.task for ex in examples[i : i + batch_size]]}
            for i in range(0, len(examples), batch_size)
        ]
        self.analyses: dict[str, dict] = {}

        top = max(layers, key=lambda name: (layers[name].layer_index or 0, name))
        self.layer = widgets.Dropdown(
            options=[(viz.layer_label(name, layer.layer_index), name) for name, layer in layers.items()],
            value=top, description="layer",
        )
        self.status = widgets.HTML("")
        self.cka_plot = LiveFigure(placeholder("CKA between experts", ""), height=430, width=480)
        self.routing_plot = LiveFigure(placeholder("Expert load per task", ""), height=430, width=560)
        self.layer.observe(lambda change: self.show(change["new"]), "value")
        self.widget = widgets.VBox([
            self.layer, self.status, widgets.HBox([self.cka_plot.widget, self.routing_plot.widget]),
        ])
        self.show(top)

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
            row["mean_abs_cosine"] = _measured(undefined, "mean |cosine|", lambda: mean_pairwise_cosine(outputs))
            cka = _measured(undefined, "CKA", lambda: cka_matrix(outputs))
            if cka is not None:
                row["cka"] = cka.tolist()
                row["mean_cka"] = float((cka.sum() - cka.trace()) / (layer.num_experts * (layer.num_experts - 1)))
            row["effective_rank"] = _measured(undefined, "effective rank", lambda: expert_effective_rank(outputs))
            row["routing_entropy"] = routing_entropy(layer.gates, normalized=True)
            row["load"] = expert_load(layer.gates).tolist()
            row["routing"] = routing_summary(captured).to_dict(orient="records")
        if layer.orthogonal_outputs is not None:
            row["stiefel_error"] = stiefel_error(layer.orthogonal_outputs, active=layer.orthogonal_outputs.norm(dim=-1) > 0)
        self.analyses[name] = row
        return row

    def show(self, name: str) -> None:
        """Draw one layer (capturing it first if it has not been)."""
        label = viz.layer_label(name, self.model.get_submodule(name).layer_index)
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
            self.cka_plot.show(viz.cka_heatmap(row["cka"], title=f"Linear CKA between experts, {label}"))
        else:
            reason = "a single expert: nothing to compare" if row["experts"] < 2 else "undefined here (see above)"
            self.cka_plot.show(placeholder(f"CKA between experts, {label}", reason))
        if row.get("routing"):
            figure = viz.routing_load_bars(pd.DataFrame(row["routing"]))
            figure.update_layout(title_text=f"Expert load per task, {label} (routing entropy / log E = {row['routing_entropy']:.2f})")
            self.routing_plot.show(figure)
        else:
            self.routing_plot.show(placeholder(f"Expert load per task, {label}", "LoRA has no router"))
