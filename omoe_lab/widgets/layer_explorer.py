"""``LayerExplorer``: one adapted layer of a trained model at a time: expert similarity, routing
and the Stiefel check, captured exactly as the runs' own analysis captures them."""
from __future__ import annotations

import html
import warnings
from collections.abc import Callable
from pathlib import Path

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go

from .. import experiments, viz
from ..analysis import (
    capture_experts, cka_matrix, direction_stiefel_error, expert_effective_rank, expert_load, mean_pairwise_cosine,
    routing_entropy, routing_summary,
)
from ..analysis.diversity import layer_diversity, off_diagonal_mean
from ..experiments import RunConfig, RunResult
from ..inject import adapter_layers, load_adapters
from .live_figure import PANEL_WIDTH, LiveFigure, placeholder, redraw, side_by_side
from .readouts import LABEL_STYLE, error_text, layer_metrics_html


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
    shown (``label``, by default the adapters' configuration, ``adapter_label``). A capture runs
    the whole model on every batch (seconds to a minute on a CPU): ``progress`` counts its batches
    and ``status`` names the phase and the layer.
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
        self.progress = widgets.IntProgress(value=0, min=0, max=len(self.batches), description="",
                                            layout=widgets.Layout(width="160px"))
        self.cka_plot = LiveFigure(placeholder("CKA between experts", ""), height=440, width=PANEL_WIDTH)
        self.routing_plot = LiveFigure(placeholder("Expert load per task", ""), height=440, width=PANEL_WIDTH)
        self.layer.observe(lambda change: self.show(change["new"]), "value")
        self.widget = widgets.VBox([
            self.heading, self.layer, widgets.HBox([self.progress, self.status]), side_by_side(self.cka_plot.widget, self.routing_plot.widget),
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
        captured = capture_experts(self.model, self._counted(name), layers=[name], max_tokens=self.max_tokens, seed=self.seed,
                                   progress=False)
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

    def _counted(self, name: str):
        """``batches``, advancing ``progress`` and the status line as each one is captured."""
        label = html.escape(viz.layer_label(name, self.model.get_submodule(name).layer_index))
        total = len(self.batches)
        self.progress.max, self.progress.value, self.progress.bar_style = total, 0, "info"
        for index, batch in enumerate(self.batches):
            self.status.value = f"capturing the expert outputs of <b>{label}</b>: batch {index + 1} of {total} …"
            yield batch
            self.progress.value = index + 1
        self.status.value = f"measuring the captured outputs of <b>{label}</b> …"

    def show(self, name: str) -> None:
        """Draw one layer (capturing it first if it has not been)."""
        label = viz.layer_label(name, self.model.get_submodule(name).layer_index)
        model = html.escape(self.label)
        self.status.value = f"capturing the expert outputs of <b>{html.escape(label)}</b> …"
        try:
            row = self.analyse(name)
        except Exception as error:  # a capture failure is shown, not raised into the notebook
            self.progress.bar_style = "danger"
            self.status.value = f"<b>{html.escape(label)}</b>: capture failed: {error_text(error)}"
            redraw(self.cka_plot, placeholder(f"CKA between experts, {label}", "capture failed"))
            redraw(self.routing_plot, placeholder(f"Expert load per task, {label}", "capture failed"))
            return
        self.progress.value, self.progress.bar_style = self.progress.max, "success"
        self.status.value = layer_metrics_html(row)
        if "cka" in row:
            redraw(self.cka_plot, viz.set_title(viz.cka_heatmap(row["cka"]), f"Linear CKA between experts, {label}", model))
        else:
            reason = "a single expert: nothing to compare" if row["experts"] < 2 else "undefined here (see above)"
            redraw(self.cka_plot, placeholder(f"CKA between experts, {label}", reason))
        if row.get("routing"):
            figure = viz.set_title(viz.routing_load_bars(pd.DataFrame(row["routing"])), f"Expert load per task, {label}",
                                   f"{model} · routing entropy / log E = {row['routing_entropy']:.2f}")
            redraw(self.routing_plot, figure)
        else:
            redraw(self.routing_plot, placeholder(f"Expert load per task, {label}", "LoRA has no router"))
