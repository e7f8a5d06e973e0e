"""What the report shows, computed from the runs: every section's tables, figures and sentences.

``build_report(results, ...)`` returns a ``Report``: the sections in order, each with the data
its template (``omoe_lab/templates/sections/<anchor>.html.j2``) shows, and the payload of
``metrics.json``. Nothing here writes HTML; ``report`` renders and writes. Table cells are
formatted here (``viz.format_*``), so a number in a table is the number in the sentence next to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import viz
from .experiments import PROFILES, RunResult, adapter_rank, results_table, summarize
from .findings import (
    compare_with_best_baseline, compare_with_zero_shot, diversity_sentence, first_run_per_label, format_p_value,
    paired_with_best_baseline, paired_with_zero_shot, random_start_control, runs_by_label, sample_size, stiefel_sentence,
    zero_shot_baselines,
)
from .viz import MISSING, format_count, format_fixed, format_percent, format_value

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
# The diversity measure the over-training figures of the report follow (viz.MEASURE_TITLES has all four).
OVER_TRAINING_MEASURE = "mean_cka"


@dataclass
class Table:
    """A table as its template shows it: formatted cells, right-aligned ``numeric`` columns and
    ``marked`` (row, column) cells (the best baseline of a task)."""

    header: list[str]
    rows: list[list[str]]
    numeric: frozenset[int] = frozenset()
    marked: frozenset[tuple[int, int]] = frozenset()

    def is_marked(self, row: int, column: int) -> bool:
        return (row, column) in self.marked


@dataclass
class Section:
    anchor: str
    title: str
    data: dict[str, Any]  # what sections/<anchor>.html.j2 shows


@dataclass
class Report:
    title: str
    created: str
    profiles: str  # each profile with its description
    runs: int
    notes: list[str]
    sections: list[Section]
    metrics: dict[str, Any] = field(default_factory=dict)  # the payload of metrics.json


def build_report(results: Sequence[RunResult], *, title: str, notes: str | None, environment: dict) -> Report:
    """The report's content for ``results`` (zero-shot first, as ``write_report`` orders them)."""
    series = series_names(results)
    summary = summarize(results_table(results))
    overall = summary[summary["task"] == "all"]
    paired = paired_with_zero_shot(results)
    comparison = compare_with_zero_shot(overall, paired)
    baselines = zero_shot_baselines(results)
    paired_best = paired_with_best_baseline(results)
    best_comparison = compare_with_best_baseline(overall, results, paired_best) if baselines else None
    questions = sample_size(summary)
    control = random_start_control(results)

    builders = {
        "headline": lambda: _headline(results, overall, best_comparison or comparison, questions, baselines, paired_best),
        "per-task": lambda: _per_task(summary, series, baselines),
        "training": lambda: _training(results, series),
        "diversity": lambda: _diversity(results, series, control),
        "tsne": lambda: _tsne(results),
        "routing": lambda: _routing(results, series),
        "stiefel": lambda: _stiefel(results, series),
        "config": lambda: _configuration(results, environment),
    }
    profiles = sorted({str(r.config.get("profile")) for r in results})
    metrics = _metrics(results, summary, title, environment, {
        "zero_shot_comparison": comparison, "paired_vs_zero_shot": paired,
        "baselines": {protocol: {k: v for k, v in b.items() if k != "run"} for protocol, b in baselines.items()},
        "best_baseline_comparison": best_comparison, "paired_vs_best_baseline": paired_best,
        "sample_size": questions, "random_start_control": control,
    })
    return Report(
        title=title,
        created=environment.get("date") or datetime.now().astimezone().isoformat(timespec="seconds"),
        profiles=", ".join(f"{p} ({PROFILES[p].description})" if p in PROFILES else p for p in profiles),
        runs=len(results),
        notes=[part for part in (notes or "").split("\n\n") if part.strip()],
        sections=[Section(anchor, heading, builders[anchor]()) for anchor, heading in SECTIONS],
        metrics=metrics,
    )


# --- sections ----------------------------------------------------------------------------------
def _headline(results, overall, comparison, questions, baselines, paired_best) -> dict:
    runs = runs_by_label(results)
    rows = []
    for _, row in overall.iterrows():
        group = runs[row["label"]]
        first = group[0]
        params = first.parameters or {}
        zero_shot = first.config.get("method") == "none"
        rows.append([
            row["label"], format_percent(row["accuracy"]), f"{format_percent(row['low'])}–{format_percent(row['high'])}",
            row["interval"], row["protocol"], row["prompt_style"], format_count(row["n"]), format_count(row["seeds"]),
            format_percent(first.metrics.get("chance")),
            format_count(params["trainable"]) if "trainable" in params else ("0" if zero_shot else MISSING),
            f"{params['percent']:.3f}" if "percent" in params else ("0" if zero_shot else MISSING),
            _duration(float(np.mean([r.seconds for r in group]))),
        ])
    table = Table(["method", "accuracy (%)", "95 % interval (%)", "interval", "protocol", "prompt", "n test", "seeds",
                   "chance (%)", "trainable params", "% of model", "run time"], rows, frozenset({1, 2, 6, 7, 8, 9, 10, 11}))
    return {"table": table, "comparison": comparison, "sample_size": questions and questions["sentence"],
            "baselines": [_baselines(protocol, base, overall, paired_best) for protocol, base in baselines.items()]}


def _baselines(protocol: str, base: dict, overall: pd.DataFrame, paired_best: dict) -> dict:
    """The table of every zero-shot way × task (best per task marked) and the fine-tuned runs against the best."""
    tasks = list(base["best_per_task"])
    ways = base["ways"]
    rows, marked = [], set()
    for i, (name, way) in enumerate(ways.items()):
        rows.append([name, format_percent(way["accuracy"])] + [format_percent(way["per_task"].get(t)) for t in tasks])
        marked |= {(i, 2 + j) for j, t in enumerate(tasks) if base["best_per_task"][t]["baseline"] == name}
        if base["best_overall"]["baseline"] == name:
            marked.add((i, 1))
    rows.append(["best per task"] + [format_percent(base["accuracy"])] + [format_percent(base["best_per_task"][t]["accuracy"]) for t in tasks])
    ways_table = Table(["way", "all"] + tasks, rows, frozenset(range(1, len(tasks) + 2)), frozenset(marked))

    versus = []
    for _, row in overall[(overall["protocol"] == protocol) & (overall["method"] != "none")].iterrows():
        test = paired_best.get(row["label"])
        points = round(100 * (row["accuracy"] - base["accuracy"]), 1)
        versus.append([row["label"], row["prompt_style"], row["protocol"], format_percent(row["accuracy"]),
                       format_percent(base["accuracy"]), f"{points:+.1f}",
                       format_count(test["gained"]) if test else MISSING, format_count(test["lost"]) if test else MISSING,
                       (test["test"] if test.get("test") == "exact McNemar" else f"CMH over {test['seeds']} seeds") if test else "not paired",
                       format_p_value(test["p"]).removeprefix("p = ") if test else MISSING])
    versus_table = Table(["method", "prompt", "protocol", "accuracy (%)", "best baseline (%)", "difference (points)",
                          "gained", "lost", "test", "p"], versus, frozenset({3, 4, 5, 6, 7, 9}))
    zero = base["run"]
    return {"protocol": protocol, "zero_shot_prompt": zero.metrics.get("prompt_style", "listed"), "n": base["n"],
            "ways": ways_table, "versus": versus_table if versus else None,
            "best_per_task": [(task, b["baseline"], format_percent(b["accuracy"])) for task, b in base["best_per_task"].items()]}


def _per_task(summary, series, baselines) -> dict:
    tasks = summary[summary["task"] != "all"]
    if tasks.empty:
        return {"figure": None}
    frame = tasks.assign(method=tasks["label"].map(series))
    labels = list(dict.fromkeys(tasks["label"]))
    best = next(iter(baselines.values()))["best_per_task"] if len(baselines) == 1 else {}
    rows = []
    for task, part in tasks.groupby("task", sort=False):
        by_label = dict(zip(part["label"], part["accuracy"]))
        sizes = "/".join(str(n) for n in dict.fromkeys(int(n) for n in part["n"]))
        row = [task, sizes] + [format_percent(by_label[l]) if l in by_label else MISSING for l in labels]
        if best:
            row.append(f"{format_percent(best[task]['accuracy'])} ({best[task]['baseline']})" if task in best else MISSING)
        rows.append(row)
    header = ["task", "n test"] + labels + (["best zero-shot baseline"] if best else [])
    return {"figure": viz.accuracy_by_task(frame), "table": Table(header, rows, frozenset(range(1, len(header))))}


def _training(results, series) -> dict:
    several_seeds = has_several_seeds(results)
    rows = [
        {"step": h["step"], "loss": h["loss"], "method": series[r.label],
         **({"seed": r.config.get("seed")} if several_seeds else {})}
        for r in results for h in r.history if "step" in h and "loss" in h
    ]
    return {"figure": viz.training_curves(pd.DataFrame(rows), title="Training loss per optimizer step") if rows else None}


def _diversity(results, series, control) -> dict:
    frame = _expert_frame(results, series)
    pairwise = frame.dropna(subset=["mean_cka"]) if not frame.empty else frame
    if pairwise.empty:
        return {"figure": None}
    figure = viz.layer_measure_bars(
        pairwise, [("mean_abs_cosine", "mean |cosine| of raw expert outputs"), ("mean_cka", "mean linear CKA between experts")],
        "Expert similarity per adapted layer (lower = more diverse)", y_range=(0, 1.05),
    )
    per_run = pairwise.groupby("label", sort=False).agg(
        layers=("layer", "nunique"), experts=("experts", "max"), cosine=("mean_abs_cosine", "mean"),
        cka=("mean_cka", "mean"), erank=("effective_rank", "mean"),
    ).reset_index()
    per_run_table = Table(
        ["method", "adapted layers", "experts", "mean |cosine|", "mean CKA", "effective rank (of E)"],
        [[r.label, format_count(r.layers), format_count(r.experts), format_fixed(r.cosine), format_fixed(r.cka),
          format_fixed(r.erank, 2)] for r in per_run.itertuples()],
        frozenset({1, 2, 3, 4, 5}),
    )
    per_layer = pairwise.groupby(["label", "block", "layer"], sort=False, dropna=False)[
        ["mean_abs_cosine", "mean_cka", "effective_rank", "routing_entropy"]].mean().reset_index()
    per_layer_table = Table(
        ["method", "layer", "mean |cosine|", "mean CKA", "effective rank", "routing entropy / log E"],
        [[r.label, viz.layer_label(r.layer, r.block), format_fixed(r.mean_abs_cosine), format_fixed(r.mean_cka),
          format_fixed(r.effective_rank, 2), format_fixed(r.routing_entropy)] for r in per_layer.itertuples()],
        frozenset({2, 3, 4, 5}),
    )
    heatmaps = []
    for label, run in first_run_per_label(results).items():
        top = top_layer([row for row in run.experts if row.get("cka")])
        if top is not None:
            fig = viz.set_title(viz.cka_heatmap(top["cka"]), label, viz.layer_label(top["layer"], top.get("block")))
            heatmaps.append(viz.fit_layout(fig.update_layout(margin=dict(l=70, r=20, b=50)), width=400, height=380))
    return {
        "figure": figure, "finding": diversity_sentence(per_run), "per_run": per_run_table, "per_layer": per_layer_table,
        "single_expert": list(dict.fromkeys(frame.loc[frame["experts"] < 2, "label"])), "heatmaps": heatmaps,
        "control": [_control(finding) for finding in control], "over_training": _over_training(results),
    }


def _control(finding: dict) -> dict:
    measures = list(finding["shares"])
    digits = {m: 2 if m == "effective_rank" else 3 for m in measures}
    rows = [[finding[role], name] + [format_fixed(finding["measures"][role][m], digits[m]) for m in measures]
            for role, name in (("moe", "MoE-LoRA, B = 0"), ("control", "MoE-LoRA, random B (control)"), ("omoe", "OMoE"))]
    rows.append(["share of the gap the random start closes", ""] +
                [MISSING if finding["shares"][m] is None else f"{100 * finding['shares'][m]:.0f} %" for m in measures])
    titles = {"mean_abs_cosine": "mean |cosine|", "mean_cka": "mean CKA", "effective_rank": "effective rank (of E)"}
    return {"table": Table(["method", "role"] + [titles[m] for m in measures], rows, frozenset(range(2, 2 + len(measures)))),
            "sentence": finding["sentence"]}


def _over_training(results) -> dict | None:
    recorded = [r for r in results if r.diversity]
    if not recorded:
        return None
    starts = {r.label: min(row["step"] for row in r.diversity) for r in recorded}
    earliest = min(starts.values())
    return {
        "lines": viz.diversity_over_training(recorded, measure=OVER_TRAINING_MEASURE),
        "animation": viz.diversity_animation(recorded, measure=OVER_TRAINING_MEASURE),
        "late_start": [label for label, step in starts.items() if step > earliest],  # MoE-LoRA with B = 0: no step-0 row
        "first_step": earliest,
    }


def _tsne(results) -> dict:
    frames = [pd.DataFrame(run.embedding).assign(method=label) for label, run in first_run_per_label(results).items() if run.embedding]
    if not frames:
        return {"figure": None}
    frame = pd.concat(frames, ignore_index=True)
    layers = ", ".join(dict.fromkeys(str(l) for l in frame["layer"])) if "layer" in frame.columns else "the top adapted layer"
    fig = viz.tsne_scatter(frame, facet_col="method", title="t-SNE of the top layer's expert outputs, coloured by expert")
    return {"figure": viz.fit_layout(fig, height=460), "layers": layers}


def _routing(results, series) -> dict:
    load_rows, entropy_rows, specialization = [], [], []
    for label, run in first_run_per_label(results).items():
        routed = [row for row in run.experts if row.get("load") is not None]
        for row in top_layers(routed, MAX_LOAD_PANELS):
            # per task where the analysis split it (its prompts carry their task), else one bar for all of them
            by_task = row.get("load_by_task") or {"all test prompts": row["load"]}
            load_rows += [{"layer": row["layer"], "block": row.get("block"), "method": label, "task": task,
                           "expert": expert, "load": load} for task, loads in by_task.items() for expert, load in enumerate(loads)]
        entropy_rows += [{"label": label, "series": series[label], "layer": row["layer"], "block": row.get("block"),
                          "routing_entropy": row["routing_entropy"]} for row in routed if row.get("routing_entropy") is not None]
        top = top_layer([row for row in run.experts if row.get("load_by_task")])
        if top is not None:  # the top layer only: one small map per run keeps the report small
            fig = viz.set_title(viz.specialization_heatmap(run, layer=top["layer"]), label, viz.layer_label(top["layer"], top.get("block")))
            tasks = len(top["load_by_task"])
            specialization.append(viz.fit_layout(fig.update_layout(margin=dict(l=90, r=20, b=50)), width=460, height=190 + 34 * tasks))
    data: dict[str, Any] = {"load": None, "entropy": None, "specialization": specialization, "load_truncated": False}
    if load_rows:
        loads = pd.DataFrame(load_rows)
        fig = viz.routing_load_bars(loads)
        methods = loads["method"].nunique()
        data["load"] = viz.fit_layout(fig, height=300 * methods + 120 if methods > 1 else 420)
        data["load_truncated"] = any(len([r for r in run.experts if r.get("load") is not None]) > MAX_LOAD_PANELS for run in results)
    if entropy_rows:
        data["entropy"] = viz.layer_measure_bars(
            pd.DataFrame(entropy_rows), [("routing_entropy", "routing entropy / log E")],
            "Normalized routing entropy per adapted layer (1 = uniform over experts)", y_range=(0, 1.05),
        )
    data["max_load_panels"] = MAX_LOAD_PANELS
    return data


def _stiefel(results, series) -> dict:
    import torch

    from .analysis import default_stiefel_tolerance

    rows = [
        {"label": label, "series": series[label], "mode": run.config.get("orthogonalize"), "experts": row.get("experts", 0),
         "layer": row["layer"], "block": row.get("block"), "error": row["stiefel_error"]}
        for label, run in first_run_per_label(results).items() for row in run.experts if row.get("stiefel_error") is not None
    ]
    if not rows:
        return {"figure": None}
    frame = pd.DataFrame(rows)
    frame["tolerance"] = [default_stiefel_tolerance(getattr(torch, STIEFEL_DTYPE), max(int(e), 1)) for e in frame["experts"]]
    checked = frame[frame["mode"] == "stiefel"]
    plotted = in_block_order(frame)
    plotted = plotted.assign(
        layer=[viz.layer_label(l, b) for l, b in zip(plotted["layer"], plotted["block"])], method=plotted["series"],
    )
    tol = float(checked["tolerance"].max()) if not checked.empty else None
    fig = viz.stiefel_error_by_layer(plotted, tol=tol, title="Worst-token Stiefel error per adapted layer (log scale)")
    table_rows = []
    for label, part in frame.groupby("label", sort=False):
        unit = part["mode"].iloc[0] == "stiefel"
        within = "yes" if (part["error"] <= part["tolerance"]).all() else "no"
        table_rows.append([label, format_value(part["mode"].iloc[0]), format_count(len(part)), f"{part['error'].max():.2e}",
                           f"{part['tolerance'].iloc[0]:.1e}" if unit else MISSING, within if unit else "not unit-norm by design"])
    table = Table(["method", "mode", "layers", "worst error", "tolerance", "all within tolerance"], table_rows, frozenset({2, 3, 4}))
    return {"figure": fig, "table": table, "finding": stiefel_sentence(checked)}


def _configuration(results, environment) -> dict:
    several_seeds = has_several_seeds(results)
    headers = [f"{r.label} (seed {r.config.get('seed')})" if several_seeds else r.label for r in results]
    keys = list(dict.fromkeys(k for r in results for k in r.config))
    rows = [[key] + [_config_cell(r.config, key) for r in results] for key in keys]
    rows.append(["cache key"] + [r.key for r in results])
    return {"config": Table(["setting"] + headers, rows),
            "environment": Table(["", "value"], [[key, format_value(value)] for key, value in environment.items()])}


def _config_cell(config: dict, key: str) -> str:
    """A setting as the table shows it; LoRA's rank is the E·r its layers get (its label's r), not
    the per-expert r its config records next to E."""
    rank = adapter_rank(config)
    if key == "rank" and config.get("method") == "lora" and rank != config.get("rank"):
        return f"{rank} (E·r = {format_value(config.get('num_experts'))} × {format_value(config.get('rank'))})"
    return format_value(config.get(key))


# --- metrics.json ------------------------------------------------------------------------------
def _metrics(results, summary, title, environment, findings: dict[str, Any]) -> dict[str, Any]:
    runs = [{
        "label": r.label, "key": r.key, "seed": r.config.get("seed"), "config": r.config, "metrics": r.metrics,
        "parameters": r.parameters, "seconds": r.seconds,
        "final_loss": r.history[-1].get("loss") if r.history else None,
        "experts": r.experts,  # per-layer measures; the t-SNE embedding stays in the run's cache folder
        "diversity": r.diversity,  # over training, for viz.diversity_over_training(metrics) in a notebook
    } for r in results]
    return {"title": title, "created": environment.get("date"), "environment": environment,
            "summary": summary.to_dict(orient="records"), **findings, "runs": runs}


# --- helpers ---------------------------------------------------------------------------------
def series_names(results: Sequence[RunResult]) -> dict[str, str]:
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


def has_several_seeds(results) -> bool:
    return any(len(runs) > 1 for runs in runs_by_label(results).values())


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
    return (-1 if block is None or pd.isna(block) else block, str(row["layer"]))


def top_layer(rows: list[dict]) -> dict | None:
    """The highest adapted layer, chosen as ``experiments.analyse_experts`` chooses it for t-SNE."""
    return max(rows, key=_sort_key) if rows else None


def top_layers(rows: list[dict], count: int) -> list[dict]:
    return sorted(rows, key=_sort_key)[-count:]


def in_block_order(frame: pd.DataFrame) -> pd.DataFrame:
    keys = frame.apply(lambda row: _sort_key(row.to_dict()), axis=1)
    return frame.iloc[sorted(range(len(frame)), key=lambda i: keys.iloc[i])].reset_index(drop=True)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"

