"""The demo's deliverable: one self-contained HTML report plus a machine-readable ``metrics.json``.

``write_report(results, out_dir)`` turns finished runs (``experiments.RunResult``) into eight
sections — headline accuracy, accuracy per task, training curves, expert diversity, t-SNE,
routing, the Stiefel check, configuration — each opened by a plain-language paragraph on what
to look at. Every number and every verdict sentence is computed from the runs passed in.
The figures come from ``viz`` so the report, the notebooks and the widgets look the same;
plotly.js is inlined once, so the file opens offline.
"""
from __future__ import annotations

import html
import importlib.metadata
import json
import math
import os
import platform
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import __version__, viz
from .experiments import PROFILES, RunResult, paired_test, results_table, summarize
from .io import atomic_write_text

SECTIONS = (
    ("headline", "Headline results"),
    ("per-task", "Accuracy per task"),
    ("training", "Training curves"),
    ("diversity", "Expert diversity"),
    ("tsne", "t-SNE of expert outputs"),
    ("routing", "Routing"),
    ("stiefel", "Stiefel check"),
    ("config", "Configuration and environment"),
)
# Past this many adapted layers the per-expert load panels become unreadable; the top ones
# are where the paper (and the t-SNE and heatmaps here) look.
MAX_LOAD_PANELS = 8
# The Stiefel tolerance is 10·E·eps of the dtype the q_i were computed in; runs here use float32.
STIEFEL_DTYPE = "float32"

_EXPLAIN = {
    "headline": (
        "Accuracy is the share of held-out test questions answered correctly, scored with the protocol "
        "named in each row (label: the answer-label token with the highest logit; loglik: the option with "
        "the highest log-likelihood; generate: the first answer found in generated text). The 95 % interval "
        "shows how far the number could move by chance alone: with one seed it is a Wilson interval over the "
        "n test examples, with several seeds a Student-t interval over the seeds. The sentence under the table "
        "pairs each single-seed fine-tuned run with zero-shot on the same questions: it counts the questions the "
        "run gained (right where zero-shot was wrong) and lost, and gives the exact McNemar p-value, the chance "
        "of a split at least that uneven if both were equally accurate (below 0.05 is the usual bar). Pairing "
        "removes how hard each question is, so it can tell two methods apart when their intervals overlap. "
        "Chance is what random guessing would score. Trainable parameters are the adapter weights being "
        "learned, as a count and as a share of the whole model; zero-shot trains nothing and shows the frozen "
        "model as it is. "
        "Run time covers training, evaluation and the expert analysis."
    ),
    "per-task": (
        "The same accuracy broken down by task. A method can lead on average by winning a single task by a "
        "wide margin, so look for methods that help on most tasks. Tasks differ in their number of options "
        "(and so in chance level), and a task with few test examples has a wide uncertainty."
    ),
    "training": (
        "Training loss is the cross-entropy of the answer tokens, in nats per token, after each optimizer "
        "step (lower is better). A curve that falls and flattens has learned what it can at this learning "
        "rate; a curve far below the others whose test accuracy is no better is memorizing the training set. "
        "Wiggles are normal with small batches."
    ),
    "diversity": (
        "A mixture of LoRA experts is only worth its extra parameters if the experts learn different things. "
        "Vanilla MoE-LoRA tends to collapse: its experts end up producing nearly the same output. Diversity is "
        "measured here on the raw expert outputs eᵢ (what each expert computes before any orthogonalization), "
        "collected over many held-out tokens. Mean |cosine| averages, over tokens and expert pairs, the "
        "absolute cosine between two experts' outputs for the same token (0: unrelated directions, 1: the same "
        "direction). Linear CKA compares two experts across all tokens at once (0: unrelated, 1: the same "
        "representation up to rotation and scale). For both, lower means more diverse. Effective rank counts "
        "how many distinct directions the E experts span per token, from 1 (collapsed) to E. OMoE's "
        "Gram–Schmidt makes the mixed vectors qᵢ orthogonal per token, which does not force the eᵢ apart "
        "across tokens: that is why these measures are evidence and the Stiefel check below is not. A plain "
        "LoRA adapter is a single expert, so it has no pairwise measure."
    ),
    "heatmaps": (
        "Each square compares two experts of the top adapted layer by linear CKA: dark off-diagonal squares "
        "mean two experts produce similar outputs (collapse), light ones mean they differ. The colour scale "
        "is fixed to 0–1 so the panels compare by colour."
    ),
    "tsne": (
        "t-SNE squeezes every expert output (one point per token and expert) into two dimensions, keeping "
        "near neighbours near. If the colours (experts) mix in one cloud, the experts produce "
        "interchangeable outputs; separate clouds mean each expert does its own thing. The axes, the "
        "distances between clouds and the positions across panels carry no meaning."
    ),
    "routing": (
        "The router decides how much each expert contributes to each token. Load is the average gate weight "
        "an expert receives over held-out tokens: equal slices (1/E each) mean a balanced router, one large "
        "slice means the router leans on one expert. Normalized entropy is the per-token routing entropy "
        "divided by log E: 1 means every token spreads its weight evenly over all experts, 0 means every "
        "token uses a single expert (top-k routing caps it at log k / log E). Uniform gates over similar "
        "experts is what collapse looks like from the router's side."
    ),
    "stiefel": (
        "OMoE orthonormalizes the expert outputs of every token by Gram–Schmidt into qᵢ before mixing them. "
        "The Stiefel error, the largest ‖QᵀQ − I‖ over tokens, checks that this construction held in "
        "floating point: it should stay below the tolerance 10·E·eps(float32). It is a correctness check "
        "of the implementation, not evidence of diversity: it is small by construction whatever the experts "
        "learned. The evidence is the cosine and CKA of the raw outputs above. Modes other than \"stiefel\" "
        "rescale the qᵢ on purpose, so their error measures those scales, not a failure."
    ),
    "config": (
        "Every setting each run resolved to (profile defaults filled in), and the software and hardware "
        "that produced this report, so that a result can be reproduced or questioned."
    ),
}

_CSS = """
body { margin: 0; background: #fafafa; color: #222; font: 15px/1.55 system-ui, -apple-system,
  "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 64px; background: #fff; }
h1 { margin: 0 0 4px; font-size: 28px; }
h2 { margin-top: 44px; padding-bottom: 4px; border-bottom: 1px solid #ddd; font-size: 21px; }
h3 { margin-top: 26px; font-size: 16px; }
.meta { color: #666; margin: 0; }
.explain { color: #333; max-width: 820px; }
.finding { background: #f2f6fb; border-left: 3px solid #0072B2; padding: 8px 12px; max-width: 820px; }
.note { color: #666; font-style: italic; }
nav ol { columns: 2; padding-left: 22px; }
table { border-collapse: collapse; margin: 12px 0; font-size: 13.5px; }
th, td { border: 1px solid #e3e3e3; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.wide { overflow-x: auto; }
.side-by-side { display: flex; flex-wrap: wrap; gap: 8px; }
details { margin: 10px 0; }
summary { cursor: pointer; color: #0072B2; }
"""


# --- public API --------------------------------------------------------------------------------
def environment_info() -> dict[str, Any]:
    """Versions, platform, CPU/threads and CUDA device behind a report (absent packages: None)."""
    import torch

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "accelerate": version("accelerate"),
        "omoe_lab": __version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def write_report(
    results: Sequence[RunResult],
    out_dir: str | os.PathLike,
    *,
    title: str = "omoe_lab demo",
    notes: str | None = None,
    environment: dict | None = None,
) -> Path:
    """Write ``report.html`` and ``metrics.json`` into ``out_dir`` (created if missing); return the HTML path.

    Each file is written atomically (a temporary file renamed over the target), so a reader
    never sees half a report. Raises ValueError without runs, OSError naming the folder when it
    cannot be written.
    """
    # zero-shot first everywhere: it is the baseline every other row is read against
    results = sorted(results, key=lambda r: r.config.get("method") != "none")
    if not results:
        raise ValueError("write_report needs at least one RunResult")
    environment = environment if environment is not None else environment_info()
    summary = summarize(results_table(results))
    overall = summary[summary["task"] == "all"]
    paired = paired_with_zero_shot(results)
    comparison = compare_with_zero_shot(overall, paired)
    page = _render(results, summary, overall, comparison, title, notes, environment)
    metrics = _metrics(results, summary, comparison, paired, title, environment)

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "metrics.json", metrics)
        return atomic_write_text(out_dir / "report.html", page)
    except OSError as error:
        raise OSError(f"cannot write the report into {out_dir}: {error.strerror or error}") from error


def paired_with_zero_shot(results: Sequence[RunResult]) -> dict[str, dict]:
    """``experiments.paired_test`` of every single-seed fine-tuned run against the zero-shot run
    that answered the same questions (same model, tasks, data, test size and protocol), by label."""
    same = ("model", "tasks", "data_dir", "eval_per_task", "protocol")
    zero_shot = [r for r in results if r.config.get("method") == "none" and "correct" in r.metrics]
    tests = {}
    for label, group in _runs_by_label(results).items():
        run = group[0]
        if len(group) > 1 or run.config.get("method") == "none" or "correct" not in run.metrics:
            continue  # several seeds are compared by their interval over seeds instead
        base = [z for z in zero_shot if all(z.config.get(k) == run.config.get(k) for k in same)]
        if base and len(base[0].metrics["correct"]) == len(run.metrics["correct"]):
            tests[label] = paired_test(base[0].metrics["correct"], run.metrics["correct"])
    return tests


def compare_with_zero_shot(overall: pd.DataFrame, paired: dict[str, dict] | None = None) -> str:
    """Which fine-tuned methods beat zero-shot, and by how many points, per protocol.

    ``overall``: rows of ``summarize`` for task ``"all"``; ``paired``: ``paired_with_zero_shot``
    by label, quoted where present (else the sentence says when the 95 % intervals overlap).
    Differences are rounded to 0.1 point first, so the words agree with the numbers next to them.
    """
    paired = paired or {}

    def evidence(row, base) -> str:
        if row["label"] in paired:
            t = paired[row["label"]]
            return f"; {t['gained']} questions gained, {t['lost']} lost, McNemar {format_p_value(t['p'])}"
        return ", though the 95 % intervals overlap" if _intervals_overlap(row, base) else ""

    sentences = []
    for protocol, rows in overall.groupby("protocol", sort=False):
        zero_shot = rows[rows["method"] == "none"]
        tuned = rows[rows["method"] != "none"]
        if tuned.empty:
            sentences.append(f"Only zero-shot was run under the {protocol} protocol: there is no fine-tuned method to compare.")
            continue
        if zero_shot.empty:
            sentences.append(f"No zero-shot run under the {protocol} protocol, so no fine-tuned method can be compared with it.")
            continue
        base = zero_shot.iloc[0]
        above, tied, below = [], [], []
        for _, row in tuned.iterrows():
            points = round(100 * (row["accuracy"] - base["accuracy"]), 1)
            if points > 0:
                above.append(f"{row['label']} by {points:.1f} points ({_percent(row['accuracy'])} %{evidence(row, base)})")
            elif points < 0:
                below.append(f"{row['label']}, {-points:.1f} points below ({_percent(row['accuracy'])} %{evidence(row, base)})")
            else:
                tied.append(f"{row['label']} ({_percent(row['accuracy'])} %)")
        sentence = f"Under the {protocol} protocol zero-shot scores {_percent(base['accuracy'])} %."
        sentence += f" Beat it: {'; '.join(above)}." if above else " No fine-tuned method beat it."
        if tied:
            sentence += f" Tied with it (to 0.1 point): {'; '.join(tied)}."
        if below:
            sentence += f" Did not beat it: {'; '.join(below)}."
        sentences.append(sentence)
    return " ".join(sentences)


# --- page ------------------------------------------------------------------------------------
class _Figures:
    """Turns figures into HTML divs, inlining plotly.js with the first one only."""

    def __init__(self) -> None:
        self.plotly_included = False

    def html(self, fig: go.Figure) -> str:
        div = fig.to_html(
            full_html=False, include_plotlyjs=False if self.plotly_included else "inline",
            config={"displaylogo": False, "responsive": True},
        )
        self.plotly_included = True
        return f'<div class="figure">{div}</div>'


def _render(results, summary, overall, comparison, title, notes, environment) -> str:
    figures = _Figures()
    series = _series_names(results)
    builders = {
        "headline": lambda: _headline(results, overall, comparison),
        "per-task": lambda: _per_task(summary, series, figures),
        "training": lambda: _training(results, series, figures),
        "diversity": lambda: _diversity(results, series, figures),
        "tsne": lambda: _tsne(results, figures),
        "routing": lambda: _routing(results, series, figures),
        "stiefel": lambda: _stiefel(results, series, figures),
        "config": lambda: _configuration(results, environment),
    }
    body = []
    for number, (anchor, heading) in enumerate(SECTIONS, start=1):
        body.append(
            f'<section id="{anchor}"><h2>{number}. {_esc(heading)}</h2>'
            f'<p class="explain">{_esc(_EXPLAIN[anchor])}</p>{builders[anchor]()}</section>'
        )
    contents = "".join(f'<li><a href="#{anchor}">{_esc(heading)}</a></li>' for anchor, heading in SECTIONS)
    profiles = sorted({str(r.config.get("profile")) for r in results})
    described = ", ".join(f"{p} ({PROFILES[p].description})" if p in PROFILES else p for p in profiles)
    created = environment.get("date") or datetime.now().astimezone().isoformat(timespec="seconds")
    notes_html = "".join(f'<p class="explain">{_esc(part)}</p>' for part in (notes or "").split("\n\n") if part.strip())
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body><main>"
        f'<header><h1>{_esc(title)}</h1><p class="meta">Created {_esc(created)} · profile: {_esc(described)} · '
        f"{len(results)} run{'s' if len(results) != 1 else ''}</p>{notes_html}</header>"
        f"<nav><h2>Contents</h2><ol>{contents}</ol></nav>{''.join(body)}</main></body></html>\n"
    )


def _headline(results, overall, comparison) -> str:
    runs = _runs_by_label(results)
    rows = []
    for _, row in overall.iterrows():
        group = runs[row["label"]]
        first = group[0]
        params = first.parameters or {}
        chance = first.metrics.get("chance")
        rows.append([
            row["label"], _percent(row["accuracy"]), f"{_percent(row['low'])}–{_percent(row['high'])}", row["interval"],
            row["protocol"], f"{int(row['n']):,}", str(int(row["seeds"])),
            _percent(chance) if chance is not None else "—",
            f"{params['trainable']:,}" if "trainable" in params else ("0" if first.config.get("method") == "none" else "—"),
            f"{params['percent']:.3f}" if "percent" in params else ("0" if first.config.get("method") == "none" else "—"),
            _duration(float(np.mean([r.seconds for r in group]))),
        ])
    table = _table(
        ["method", "accuracy (%)", "95 % interval (%)", "interval", "protocol", "n test", "seeds", "chance (%)",
         "trainable params", "% of model", "run time"],
        rows, numeric={1, 2, 5, 6, 7, 8, 9, 10},
    )
    return table + f'<p class="finding">{_esc(comparison)}</p>'


def _per_task(summary, series, figures) -> str:
    tasks = summary[summary["task"] != "all"]
    if tasks.empty:
        return _note("No per-task accuracies were recorded.")
    frame = tasks.assign(method=tasks["label"].map(series))
    fig = viz.accuracy_by_task(frame)
    labels = list(dict.fromkeys(tasks["label"]))
    rows = []
    for task, part in tasks.groupby("task", sort=False):
        by_label = dict(zip(part["label"], part["accuracy"]))
        sizes = "/".join(str(n) for n in dict.fromkeys(int(n) for n in part["n"]))
        rows.append([task, sizes] + [_percent(by_label[l]) if l in by_label else "—" for l in labels])
    table = _table(["task", "n test"] + labels, rows, numeric=set(range(1, len(labels) + 2)))
    return figures.html(fig) + f'<div class="wide">{table}</div>'


def _training(results, series, figures) -> str:
    several_seeds = _has_several_seeds(results)
    rows = [
        {"step": h["step"], "loss": h["loss"], "method": series[r.label],
         **({"seed": r.config.get("seed")} if several_seeds else {})}
        for r in results for h in r.history if "step" in h and "loss" in h
    ]
    if not rows:
        return _note("No run was trained (zero-shot only), so there are no training curves.")
    return figures.html(viz.training_curves(pd.DataFrame(rows), title="Training loss per optimizer step"))


def _diversity(results, series, figures) -> str:
    frame = _expert_frame(results, series)
    pairwise = frame.dropna(subset=["mean_cka"]) if not frame.empty else frame
    if pairwise.empty:
        return _note("No mixture run (two or more experts per layer) was analysed, so there is no diversity to show.")
    parts = [figures.html(_layer_bars(
        pairwise, [("mean_abs_cosine", "mean |cosine| of raw expert outputs"), ("mean_cka", "mean linear CKA between experts")],
        "Expert similarity per adapted layer (lower = more diverse)", y_range=(0, 1.05),
    ))]
    per_run = pairwise.groupby("label", sort=False).agg(
        layers=("layer", "nunique"), experts=("experts", "max"), cosine=("mean_abs_cosine", "mean"),
        cka=("mean_cka", "mean"), erank=("effective_rank", "mean"),
    ).reset_index()
    parts.append(f'<p class="finding">{_esc(_diversity_sentence(per_run))}</p>')
    parts.append(_table(
        ["method", "adapted layers", "experts", "mean |cosine|", "mean CKA", "effective rank (of E)"],
        [[r.label, str(r.layers), str(r.experts), _fixed(r.cosine), _fixed(r.cka), _fixed(r.erank, 2)] for r in per_run.itertuples()],
        numeric={1, 2, 3, 4, 5},
    ))
    per_layer = pairwise.groupby(["label", "block", "layer"], sort=False, dropna=False)[
        ["mean_abs_cosine", "mean_cka", "effective_rank", "routing_entropy"]].mean().reset_index()
    parts.append("<details><summary>Every adapted layer</summary>" + _table(
        ["method", "layer", "mean |cosine|", "mean CKA", "effective rank", "routing entropy / log E"],
        [[r.label, viz.layer_label(r.layer, r.block), _fixed(r.mean_abs_cosine), _fixed(r.mean_cka), _fixed(r.effective_rank, 2),
          _fixed(r.routing_entropy)] for r in per_layer.itertuples()],
        numeric={2, 3, 4, 5},
    ) + "</details>")
    single = list(dict.fromkeys(frame.loc[frame["experts"] < 2, "label"]))
    if single:
        parts.append(_note(f"{', '.join(single)}: a single expert per layer, so no pairwise similarity."))

    heatmaps = []
    for label, run in _first_run_per_label(results).items():
        top = _top_layer([row for row in run.experts if row.get("cka")])
        if top is None:
            continue
        fig = viz.cka_heatmap(top["cka"], title=f"{label}<br>{viz.layer_label(top['layer'], top.get('block'))}")
        heatmaps.append(figures.html(fig.update_layout(width=400, height=380, margin=dict(l=70, r=20, t=80, b=50))))
    if heatmaps:
        parts.append(f"<h3>CKA between the experts of the top adapted layer</h3><p class=\"explain\">{_esc(_EXPLAIN['heatmaps'])}</p>")
        parts.append(f'<div class="side-by-side">{"".join(heatmaps)}</div>')
    return "".join(parts)


def _tsne(results, figures) -> str:
    frames = []
    for label, run in _first_run_per_label(results).items():
        if run.embedding:
            frames.append(pd.DataFrame(run.embedding).assign(method=label))
    if not frames:
        return _note("No mixture run stored an embedding of its expert outputs.")
    frame = pd.concat(frames, ignore_index=True)
    layers = ", ".join(dict.fromkeys(str(l) for l in frame["layer"])) if "layer" in frame.columns else "the top adapted layer"
    fig = viz.tsne_scatter(frame, facet_col="method", title="t-SNE of the top layer's expert outputs, coloured by expert")
    return figures.html(fig.update_layout(height=460)) + _note(f"Layer: {layers}. One panel per method, first seed.")


def _routing(results, series, figures) -> str:
    load_rows, entropy_rows = [], []
    for label, run in _first_run_per_label(results).items():
        routed = [row for row in run.experts if row.get("load") is not None]
        for row in _top_layers(routed, MAX_LOAD_PANELS):
            load_rows += [{"layer": row["layer"], "block": row.get("block"), "method": label, "task": "held-out test",
                           "expert": expert, "load": load} for expert, load in enumerate(row["load"])]
        entropy_rows += [{"label": label, "series": series[label], "layer": row["layer"], "block": row.get("block"),
                          "routing_entropy": row["routing_entropy"]} for row in routed if row.get("routing_entropy") is not None]
    if not load_rows and not entropy_rows:
        return _note("No run has a router (two or more experts per layer), so there is no routing to show.")
    parts = []
    if load_rows:
        loads = pd.DataFrame(load_rows)
        fig = viz.routing_load_bars(loads)
        methods = loads["method"].nunique()
        fig.update_layout(height=300 * methods + 120 if methods > 1 else 420)
        parts.append(figures.html(fig))
        if any(len([r for r in run.experts if r.get("load") is not None]) > MAX_LOAD_PANELS for run in results):
            parts.append(_note(f"Load is shown for the top {MAX_LOAD_PANELS} adapted layers of each method."))
    if entropy_rows:
        parts.append(figures.html(_layer_bars(
            pd.DataFrame(entropy_rows), [("routing_entropy", "routing entropy / log E")],
            "Normalized routing entropy per adapted layer (1 = uniform over experts)", y_range=(0, 1.05),
        )))
    return "".join(parts)


def _stiefel(results, series, figures) -> str:
    import torch

    from .analysis import default_stiefel_tolerance

    rows = [
        {"label": label, "series": series[label], "mode": run.config.get("orthogonalize"), "experts": row.get("experts", 0),
         "layer": row["layer"], "block": row.get("block"), "error": row["stiefel_error"]}
        for label, run in _first_run_per_label(results).items() for row in run.experts if row.get("stiefel_error") is not None
    ]
    if not rows:
        return _note("No OMoE run was analysed, so there is nothing to check.")
    frame = pd.DataFrame(rows)
    frame["tolerance"] = [default_stiefel_tolerance(getattr(torch, STIEFEL_DTYPE), max(int(e), 1)) for e in frame["experts"]]
    checked = frame[frame["mode"] == "stiefel"]
    plotted = _in_block_order(frame)
    plotted = plotted.assign(
        layer=[viz.layer_label(l, b) for l, b in zip(plotted["layer"], plotted["block"])], method=plotted["series"],
    )
    tol = float(checked["tolerance"].max()) if not checked.empty else None
    fig = viz.stiefel_error_by_layer(plotted, tol=tol, title="Worst-token Stiefel error per adapted layer (log scale)")
    table_rows = []
    for label, part in frame.groupby("label", sort=False):
        unit = part["mode"].iloc[0] == "stiefel"
        within = "yes" if (part["error"] <= part["tolerance"]).all() else "no"
        table_rows.append([label, str(part["mode"].iloc[0]), str(len(part)), f"{part['error'].max():.2e}",
                           f"{part['tolerance'].iloc[0]:.1e}" if unit else "—", within if unit else "not unit-norm by design"])
    table = _table(["method", "mode", "layers", "worst error", "tolerance", "all within tolerance"], table_rows, numeric={2, 3, 4})
    return figures.html(fig) + table + f'<p class="finding">{_esc(_stiefel_sentence(checked))}</p>'


def _configuration(results, environment) -> str:
    several_seeds = _has_several_seeds(results)
    headers = [f"{r.label} (seed {r.config.get('seed')})" if several_seeds else r.label for r in results]
    keys = list(dict.fromkeys(k for r in results for k in r.config))
    rows = [[key] + [_config_value(r.config.get(key)) for r in results] for key in keys]
    rows.append(["cache key"] + [r.key for r in results])
    config = f'<h3>Resolved run configurations</h3><div class="wide">{_table(["setting"] + headers, rows)}</div>'
    env = _table(["", "value"], [[key, _config_value(value)] for key, value in environment.items()])
    return config + f"<h3>Environment</h3>{env}"


# --- figures viz does not have ------------------------------------------------------------
def _layer_bars(frame: pd.DataFrame, measures: list[tuple[str, str]], title: str, y_range=None) -> go.Figure:
    """Grouped bars per adapted layer (block order), one colour per method, one panel per measure.

    ``frame``: columns ``label``, ``series`` (the method name viz colours by), ``layer``,
    ``block`` and each measure; several seeds of a label are averaged.
    """
    from plotly.subplots import make_subplots

    frame = _in_block_order(frame)
    frame["layer_label"] = [viz.layer_label(l, b) for l, b in zip(frame["layer"], frame["block"])]
    order = list(dict.fromkeys(frame["layer_label"]))
    means = frame.groupby(["series", "layer_label"], sort=False)[[m for m, _ in measures]].mean().reset_index()
    fig = make_subplots(rows=len(measures), cols=1, shared_xaxes=True, vertical_spacing=0.14,
                        subplot_titles=[name for _, name in measures])
    for index, name in enumerate(dict.fromkeys(means["series"])):
        rows = means[means["series"] == name]
        for row, (measure, measure_name) in enumerate(measures, start=1):
            fig.add_trace(go.Bar(
                x=rows["layer_label"], y=rows[measure], name=viz.method_label(name), legendgroup=name,
                showlegend=row == 1, marker_color=viz.method_color(name, index),
                hovertemplate=f"{viz.method_label(name)}<br>%{{x}}<br>{measure_name}: %{{y:.3f}}<extra></extra>",
            ), row=row, col=1)
    fig.update_xaxes(categoryorder="array", categoryarray=order)
    fig.update_xaxes(title_text="adapted layer", row=len(measures), col=1)
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    fig.update_layout(barmode="group", height=280 * len(measures) + 140, template=viz.TEMPLATE, title_text=title,
                      legend_title_text="method")
    return fig


# --- metrics.json ------------------------------------------------------------------------------
def _metrics(results, summary, comparison, paired, title, environment) -> str:
    runs = [{
        "label": r.label, "key": r.key, "seed": r.config.get("seed"), "config": r.config, "metrics": r.metrics,
        "parameters": r.parameters, "seconds": r.seconds,
        "final_loss": r.history[-1].get("loss") if r.history else None,
        "experts": r.experts,  # per-layer measures; the t-SNE embedding stays in the run's cache folder
    } for r in results]
    payload = {
        "title": title, "created": environment.get("date"), "environment": environment,
        "summary": summary.to_dict(orient="records"), "zero_shot_comparison": comparison,
        "paired_vs_zero_shot": paired, "runs": runs,
    }
    # strict JSON: NaN (e.g. an interval over 0 examples) becomes null, numpy scalars plain numbers
    return json.dumps(_jsonable(payload), indent=1, allow_nan=False) + "\n"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- helpers ---------------------------------------------------------------------------------
def _series_names(results: Iterable[RunResult]) -> dict[str, str]:
    """The name each run label goes by in figures.

    A method's own key (``"omoe"``) when it is the only label of that method, so viz gives it
    its fixed colour and name; otherwise (say E=4 and E=8 of one method) the full label.
    """
    labels_of_method: dict[str, set[str]] = {}
    for r in results:
        labels_of_method.setdefault(r.config.get("method"), set()).add(r.label)
    def name(r: RunResult) -> str:
        method = r.config.get("method")
        return method if method in viz.METHOD_COLORS and len(labels_of_method[method]) == 1 else r.label

    return {r.label: name(r) for r in results}


def _runs_by_label(results) -> dict[str, list[RunResult]]:
    grouped: dict[str, list[RunResult]] = {}
    for r in sorted(results, key=lambda r: r.config.get("seed") or 0):
        grouped.setdefault(r.label, []).append(r)
    return grouped


def _first_run_per_label(results) -> dict[str, RunResult]:
    """One run per label (the lowest seed): figures that cannot average seeds show this one."""
    return {label: runs[0] for label, runs in _runs_by_label(results).items()}


def _has_several_seeds(results) -> bool:
    return any(len(runs) > 1 for runs in _runs_by_label(results).values())


def _expert_frame(results, series) -> pd.DataFrame:
    rows = [
        {"label": r.label, "series": series[r.label], "seed": r.config.get("seed"), "block": row.get("block"),
         "layer": row["layer"], "experts": row.get("experts", 1), "mean_abs_cosine": row.get("mean_abs_cosine"),
         "mean_cka": row.get("mean_cka"), "effective_rank": row.get("effective_rank"), "routing_entropy": row.get("routing_entropy")}
        for r in results for row in r.experts
    ]
    return pd.DataFrame(rows)


def _sort_key(row: dict) -> tuple:
    block = row.get("block")
    return (-1 if block is None else block, str(row["layer"]))


def _top_layer(rows: list[dict]) -> dict | None:
    """The highest adapted layer, chosen as ``experiments.analyse_experts`` chooses it for t-SNE."""
    return max(rows, key=_sort_key) if rows else None


def _top_layers(rows: list[dict], count: int) -> list[dict]:
    return sorted(rows, key=_sort_key)[-count:]


def _in_block_order(frame: pd.DataFrame) -> pd.DataFrame:
    keys = frame.apply(lambda row: _sort_key(row.to_dict()), axis=1)
    return frame.iloc[sorted(range(len(frame)), key=lambda i: keys.iloc[i])].reset_index(drop=True)


def format_p_value(p: float) -> str:
    """``p = 0.035``, or ``p < 0.001`` below three decimals."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _intervals_overlap(a, b) -> bool:
    bounds = [a["low"], a["high"], b["low"], b["high"]]
    if any(pd.isna(x) for x in bounds):
        return False
    return a["low"] <= b["high"] and b["low"] <= a["high"]


def _diversity_sentence(per_run: pd.DataFrame) -> str:
    parts = [f"{r.label}: mean |cosine| {_fixed(r.cosine)}, mean CKA {_fixed(r.cka)}" for r in per_run.itertuples()]
    sentence = "Averaged over adapted layers — " + "; ".join(parts) + "."
    if len(per_run) > 1 and per_run["cka"].notna().any():
        best = per_run.loc[per_run["cka"].idxmin()]
        sentence += f" The most diverse experts by CKA: {best['label']}."
    return sentence


def _stiefel_sentence(checked: pd.DataFrame) -> str:
    if checked.empty:
        return "No run used the \"stiefel\" mode, the one whose qᵢ must be orthonormal, so there is no tolerance to check against."
    failing = checked[checked["error"] > checked["tolerance"]]
    worst = checked.loc[checked["error"].idxmax()]
    if failing.empty:
        return (f"All {len(checked)} checked layers are within tolerance: the worst error is {worst['error']:.2e} "
                f"(tolerance {worst['tolerance']:.1e}).")
    names = ", ".join(f"{r.label} {viz.layer_label(r.layer, r.block)} ({r.error:.2e})" for r in failing.itertuples())
    return (f"{len(failing)} of {len(checked)} checked layers exceed the tolerance: {names}. "
            "The Gram–Schmidt construction did not hold there.")


def _table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    """An HTML table; every cell is escaped, the ``numeric`` columns right-aligned."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{_esc(cell)}</td>' for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _percent(fraction) -> str:
    return "—" if fraction is None or pd.isna(fraction) else f"{100 * float(fraction):.1f}"


def _fixed(value, digits: int = 3) -> str:
    return "—" if value is None or pd.isna(value) else f"{float(value):.{digits}f}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _config_value(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)
