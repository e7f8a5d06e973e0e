"""``ExpertCountExplorer``: pick a configuration, Run (or replay it from the cache), compare
accuracy against the number of experts, and look at the run's CKA heatmap and t-SNE."""
from __future__ import annotations

import dataclasses
import html
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go

from .. import experiments, viz
from ..adapters.config import ORTHOGONALIZE_MODES
from ..experiments import RunConfig, RunResult
from .live_figure import PANEL_WIDTH, LiveFigure, placeholder, redraw, side_by_side
from .readouts import LABEL_STYLE, error_text, layer_metrics_html
from .reference import OWN_GROUP, load_reference, reference_caption, reference_frame, reference_traces, shown_path

METHOD_CHOICES = (("MoE-LoRA (vanilla)", "moe"), ("OMoE (Gram–Schmidt)", "omoe"), ("LoRA (rank E·r, the same budget)", "lora"))
LORA_SERIES = "LoRA (rank E·r)"  # LoRA's line: drawn at the E whose A/B budget it has
# why a LoRA run has no CKA or t-SNE panel: its layers are adapted, by one adapter each
LORA_HAS_NO_EXPERTS = "LoRA: one adapter per layer, no experts to {}"
ROUTING_CHOICES = (("soft", "soft"), ("top-k", "top_k"))


# --- accuracy against the number of experts --------------------------------------------------
def series_name(config: dict) -> str:
    """The accuracy line a run belongs to: its method, split off by routing and by
    orthogonalization when they differ from soft and ``"stiefel"``, so that variants never
    average together as if they were seeds of one configuration; LoRA's says its rank is E·r."""
    method = config["method"]
    if method == "lora":
        return LORA_SERIES
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



def _sizes_text(sizes: dict) -> str:
    """`` (200 steps, top 4 blocks, 1600 training questions per task)`` from a sweep's ``meta.sizes``
    or a resolved ``RunConfig``; empty when none of them is known."""
    parts = [f"{sizes[key]} {what}" if key != "top_blocks" else f"top {sizes[key]} blocks"
             for key, what in (("steps", "steps"), ("top_blocks", ""), ("train_per_task", "training questions per task"))
             if sizes.get(key) is not None]
    return f" ({', '.join(parts)})" if parts else ""


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
    only layer a run maps; the titles say which layer each panel shows). LoRA gets the A/B budget
    of E experts, rank E·r, as in the sweeps (``experiments.adapter_rank``), and is drawn at that
    E; it has no experts, so its CKA and t-SNE panels say so. A failing run is reported in the
    status line and the run log, never raised into the notebook.

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
        # the accuracy plot autosizes to the output area; the two maps share its width
        self.accuracy_plot = LiveFigure(start, height=560 if self.reference else 400)
        self.cka_plot = LiveFigure(placeholder("CKA between experts", "no run yet"), height=440, width=PANEL_WIDTH)
        self.tsne_plot = LiveFigure(placeholder("t-SNE of expert outputs", "no run yet"), height=440, width=PANEL_WIDTH)

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
            side_by_side(self.cka_plot.widget, self.tsne_plot.widget),
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
        self.routing.disabled = lora  # E stays: it sets LoRA's rank E·r
        self.top_k.max = self.experts.value  # top-k cannot pick more experts than exist (clamps k)
        self.top_k.disabled = lora or self.routing.value != "top_k"
        self.orthogonalize.disabled = self.method.value != "omoe"

    def config(self) -> RunConfig:
        """The configuration the controls describe now."""
        method = self.method.value
        routed = method != "lora"
        return RunConfig(
            method=method,
            num_experts=self.experts.value,  # LoRA: its rank is E·r
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
        data = f"data <code>{html.escape(shown_path(config.data_dir))}</code>" if config.data_dir else "the built-in suite"
        tasks = f"{len(config.tasks)} task{'s' if len(config.tasks) != 1 else ''}"
        return f"profile <b>{self.profile}</b>, {tasks} ({html.escape(', '.join(config.tasks))}) from {data}"

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
        mine = RunConfig(profile=self.profile, **self.run_options).resolved()
        if meta.get("profile") not in (None, self.profile):
            differs.append(f"profile {html.escape(str(meta['profile']))}{_sizes_text(meta.get('sizes') or {})} against your "
                           f"{self.profile}{_sizes_text(dataclasses.asdict(mine))}")
        if meta.get("tasks") and list(meta["tasks"]) != list(mine.tasks):
            differs.append("other tasks")
        theirs = experiments.PROFILES[meta["profile"]].objective if meta.get("profile") in experiments.PROFILES else None
        if theirs is not None and theirs != mine.objective:
            differs.append(f"objective {theirs} against your {mine.objective}")
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
        # two legends of a few entries each: your runs beside the plot, the sweep's lines (legend2,
        # see reference_traces) under it, where the bottom margin grows to fit them
        figure.update_layout(
            legend=dict(groupclick="toggleitem", title_text=None, orientation="v", x=1.02, xanchor="left", y=1, yanchor="top"),
            legend2=dict(groupclick="toggleitem", title_text=None, orientation="h", x=0, xanchor="left",
                         y=0, yref="container", yanchor="bottom"),
        )
        figure.update_xaxes(title_text="experts per adapted layer", tickmode="array", tickvals=experts, range=[experts[0] - 0.5, experts[-1] + 0.5])
        figure.update_yaxes(title_text="accuracy (%)")  # the legend groups say what the bars are
        # the legend groups say what is whose, so the title stays one line
        return viz.set_title(figure, "Accuracy against the number of experts: the committed sweep and your runs")

    # running ------------------------------------------------------------------------------
    def _run_with_experiments(self, config: RunConfig) -> RunResult:
        cached = (Path(self.cache_dir or experiments.default_cache_dir()) / config.key() / "result.json").is_file()
        if self._model is None and not cached:
            # the first run that trains loads the base model and keeps it, with one frozen-prefix cache, for
            # the next: a press then costs its training, not another model load and prefix pass
            from ..models import load_model

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
            self.status.value = f"<b>{label}</b> failed: {error_text(error)} (traceback in the run log)"
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
            why = LORA_HAS_NO_EXPERTS.format("compare") if result.config["method"] == "lora" else "no expert measures recorded"
            redraw(self.cka_plot, placeholder("CKA between experts", why))
            self.layer_metrics.value = ""
            return
        name = viz.layer_label(row["layer"], row.get("block"))
        if "cka" in row:
            redraw(self.cka_plot, viz.set_title(viz.cka_heatmap(row["cka"]), f"Linear CKA between experts, {name}",
                                                f"{result.label} · layer chosen in the menu"))
        else:
            redraw(self.cka_plot, placeholder(f"CKA between experts, {name}", "a single expert: nothing to compare"))
        self.layer_metrics.value = layer_metrics_html(row)

    def _draw_tsne(self, result: RunResult) -> None:
        if not result.embedding:
            why = LORA_HAS_NO_EXPERTS.format("map") if result.config["method"] == "lora" else "a single expert: no map to draw"
            redraw(self.tsne_plot, placeholder("t-SNE of expert outputs", why))
            return
        frame = pd.DataFrame(result.embedding)
        mapped = frame["layer"].iloc[0] if "layer" in frame.columns else None
        layer = self._layer_name(result, mapped) if mapped is not None else "top adapted layer"
        why = "the top adapted layer, the only one a run maps"
        if self.layer.value is not None and mapped is not None and self.layer.value != mapped:
            why += f"; CKA shows {self._layer_name(result, self.layer.value)}"
        redraw(self.tsne_plot, viz.set_title(viz.tsne_scatter(frame), f"t-SNE of expert outputs, {layer}", f"{result.label} · {why}"))
