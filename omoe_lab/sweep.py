"""The evidence sweep: which method, how many experts, against which baseline — over seeds.

One grid of *arms* (a method with its routing and expert count) × seeds, run through
``experiments.run_all`` (cached, resumable: an interrupted sweep re-runs nothing finished), then
summarized into one JSON file under ``results/`` that notebooks and docs read without retraining:

- accuracy per arm, overall and per task, with a Student-t 95 % interval over seeds;
- the zero-shot baselines (every prompt style × normalization, calibrated PMI, the train split's
  majority answer) and, per task, the best of them;
- paired tests between arms on the same questions: exact McNemar per seed, and combined over
  seeds with the Cochran–Mantel–Haenszel test (``analysis.stats``);
- trainable parameters, the experts' diversity (mean |cos|, linear CKA biased and debiased,
  effective rank) with intervals over seeds, diversity over training, and routing mass per task.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .analysis.diversity import MEASURES, mean_over_layers
from .analysis.stats import cmh_test, paired_test, t_interval
from .experiments import RunConfig, RunResult, best_baselines, run_all
from .io import atomic_write_text, writable_folder

REAL_TASKS = ("ARC-Easy", "ARC-Challenge", "boolq", "openbookqa")  # the paper's multi-task mix, PIQA aside


@dataclass(frozen=True)
class Arm:
    """One line of the grid: a name and the RunConfig fields that make it."""

    name: str
    settings: dict = field(default_factory=dict)


ZERO_SHOT = Arm("zero-shot", {"method": "none"})
ARMS = {
    "lora": Arm("LoRA (E·r budget)", {"method": "lora", "num_experts": 4}),
    "moe2": Arm("MoE-LoRA E=2 soft", {"method": "moe", "num_experts": 2}),
    "moe4": Arm("MoE-LoRA E=4 soft", {"method": "moe", "num_experts": 4}),
    "moe8": Arm("MoE-LoRA E=8 soft", {"method": "moe", "num_experts": 8}),
    "moe8top2": Arm("MoE-LoRA E=8 top-2", {"method": "moe", "num_experts": 8, "top_k": 2}),
    "omoe2": Arm("OMoE E=2 soft", {"method": "omoe", "num_experts": 2}),
    "omoe4": Arm("OMoE E=4 soft", {"method": "omoe", "num_experts": 4}),
    "omoe8top2": Arm("OMoE E=8 top-2", {"method": "omoe", "num_experts": 8, "top_k": 2}),
    "control4": Arm("MoE-LoRA E=4 soft, B ~ N(0, 0.02²) (control)", {"method": "moe", "num_experts": 4, "b_init_std": 0.02}),
    # the lab's other answers to collapse (omoe_lab.adapters: MixLoRA's FFN experts, DeepSeekMoE's
    # shared expert, an orthogonality penalty in the loss instead of OMoE's constraint)
    "mixlora8top2": Arm("MixLoRA E=8 top-2 (FFN experts)", {"method": "mixlora", "num_experts": 8, "top_k": 2}),
    "moe4penalty": Arm("MoE-LoRA E=4 soft + orthogonality penalty 0.1", {"method": "moe", "num_experts": 4, "orthogonality_penalty": 0.1}),
    "moe4shared": Arm("MoE-LoRA E=4 soft + shared expert", {"method": "moe", "num_experts": 4, "shared_expert": True}),
}
CORE_ARMS = ("lora", "moe2", "moe4", "moe8", "moe8top2", "omoe2", "omoe4", "omoe8top2", "control4")
VARIANT_ARMS = ("mixlora8top2", "moe4penalty", "moe4shared")
# (a, b): is b better than a? The paper's claim is the first four: few orthogonal experts vs many vanilla ones.
COMPARISONS = (
    ("moe8", "omoe2"), ("moe8", "omoe4"), ("moe8top2", "omoe2"), ("moe8top2", "omoe4"), ("moe8top2", "omoe8top2"),
    ("moe4", "omoe4"), ("control4", "omoe4"), ("moe4", "control4"), ("moe2", "omoe2"), ("lora", "omoe4"), ("lora", "moe4"),
    ("mixlora8top2", "omoe4"), ("moe4penalty", "omoe4"), ("moe4", "moe4penalty"), ("moe4", "moe4shared"),
)


@dataclass(frozen=True)
class Setting:
    """Where a sweep runs: tasks, data, how many test questions, which arms."""

    name: str
    description: str
    arms: tuple[str, ...]
    run: dict  # RunConfig fields shared by every run


SETTINGS = {
    "real": Setting(
        "real", "multi-task training on the train splits of real ARC-Easy, ARC-Challenge, BoolQ and OpenBookQA; "
        "a fixed random subset of each test split",
        arms=CORE_ARMS, run={"tasks": REAL_TASKS, "data_dir": "../shared/data/commonsense"},
    ),
    "variants": Setting(
        "variants", "the real multi-task setting, for the lab's other experts (compared with the real setting's arms)",
        arms=("moe4", "omoe4", *VARIANT_ARMS), run={"tasks": REAL_TASKS, "data_dir": "../shared/data/commonsense"},
    ),
    "builtin": Setting(
        "builtin", "the built-in offline eight-task suite", arms=("lora", "moe4", "omoe4", "control4"), run={},
    ),
}


def sweep_configs(setting: Setting, seeds: Sequence[int], **common) -> list[RunConfig]:
    """Zero-shot once, then every arm × seed; ``common`` overrides RunConfig fields of all runs."""
    shared = {**setting.run, **common}
    configs = [RunConfig(**{**shared, **ZERO_SHOT.settings})]
    for key in setting.arms:
        configs += [RunConfig(**{**shared, **ARMS[key].settings, "seed": seed}) for seed in seeds]
    return configs


def sweep(
    setting: str = "real",
    seeds: Sequence[int] = (0, 1, 2),
    *,
    arms: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    out: str | Path | None = None,
    command: str | None = None,
    progress: bool = True,
    **common,
) -> dict[str, Any]:
    """Run (or replay) the grid of ``setting`` and return its summary; ``out`` writes it as JSON."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown sweep setting {setting!r}: choose one of {list(SETTINGS)}")
    chosen = SETTINGS[setting]
    if arms is not None:
        unknown = sorted(set(arms) - set(ARMS))
        if unknown:
            raise ValueError(f"unknown arms {unknown}: choose from {list(ARMS)}")
        chosen = dataclasses.replace(chosen, arms=tuple(arms))
    if len(set(seeds)) < 2:
        raise ValueError(f"a sweep needs at least 2 distinct seeds for intervals over seeds, got {list(seeds)}")
    configs = sweep_configs(chosen, seeds, **common)
    for config in configs:
        config.resolved()  # bad input fails here, before any folder is made or model loaded
    if out is not None:
        writable_folder(Path(out).parent, fix="choose another output file")
    results = run_all(configs, cache_dir=cache_dir, progress=progress)
    summary = summarize_sweep(chosen, configs, results, seeds, command=command)
    if out is not None:
        atomic_write_text(Path(out), json.dumps(summary, indent=1, allow_nan=False) + "\n")
    return summary


# --- the summary ----------------------------------------------------------------------------------
def summarize_sweep(setting: Setting, configs: Sequence[RunConfig], results: Sequence[RunResult], seeds: Sequence[int],
                    command: str | None = None) -> dict[str, Any]:
    zero, runs = results[0], results[1:]
    by_arm = {key: runs[i * len(seeds) : (i + 1) * len(seeds)] for i, key in enumerate(setting.arms)}
    questions = zero.metrics["questions"]
    for arm_runs in by_arm.values():
        for r in arm_runs:
            if r.metrics["questions"] != questions:
                raise ValueError(f"{r.label} (seed {r.config['seed']}) answered other questions than zero-shot; re-run it")
    baselines = best_baselines(zero)
    arms = [_arm_summary(key, by_arm[key], seeds, baselines) for key in setting.arms]
    comparisons = [_comparison(a, b, by_arm[a], by_arm[b]) for a, b in COMPARISONS if a in by_arm and b in by_arm]
    return {
        "meta": provenance(command) | {
            "setting": setting.name, "description": setting.description, "seeds": list(seeds),
            "profile": zero.config["profile"], "tasks": list(zero.config["tasks"]), "protocol": zero.metrics["protocol"],
            "prompt_style": runs[0].metrics["prompt_style"] if runs else zero.metrics["prompt_style"],
            "n": zero.metrics["n"], "n_per_task": zero.metrics["n_per_task"], "chance_per_task": zero.metrics["chance_per_task"],
            "sizes": {k: runs[0].config[k] for k in ("steps", "batch_size", "lr", "rank", "top_blocks", "train_per_task", "eval_per_task")} if runs else {},
        },
        "baselines": baselines,
        "arms": arms,
        "comparisons": comparisons,
    }


def _interval(values: Sequence[float]) -> dict[str, Any]:
    mean, low, high = t_interval(values)
    return {"mean": mean, "low": low, "high": high, "values": list(values)}


def _arm_summary(key: str, runs: Sequence[RunResult], seeds: Sequence[int], baselines: dict) -> dict[str, Any]:
    first = runs[0]
    accuracy = {"all": _interval([r.metrics["accuracy"] for r in runs])}
    accuracy |= {task: _interval([r.metrics["per_task"][task] for r in runs]) for task in first.metrics["per_task"]}
    best = baselines["best_per_task_correct"]
    summary = {
        "arm": key, "label": ARMS[key].name, "run_label": first.label, "config": {k: first.config[k] for k in ("method", "num_experts", "top_k", "orthogonalize", "b_init_std")},
        "parameters": first.parameters, "seconds": [r.seconds for r in runs], "accuracy": accuracy,
        "vs_best_baseline": {
            "per_seed": [paired_test(best, r.metrics["correct"]) for r in runs],
            "combined": cmh_test([(best, r.metrics["correct"]) for r in runs]),
        },
    }
    diversity = [mean_over_layers(r.experts) for r in runs]
    if all(diversity):
        summary["diversity"] = {m: _interval([d[m] for d in diversity]) for m in MEASURES}
        summary["diversity_over_training"] = _over_training(runs)
        summary["routing_by_task"] = _routing_by_task(runs)
    return summary


def _over_training(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Each measure's mean over seeds at every recorded step (steps every seed recorded), overall
    and per layer."""
    steps = sorted(set.intersection(*({row["step"] for row in r.diversity} for r in runs))) if all(r.diversity for r in runs) else []
    rows = []
    for step in steps:
        at = [next(row for row in r.diversity if row["step"] == step) for r in runs]
        layers = set.intersection(*(set(a["per_layer"]) for a in at))
        per_layer = {name: {"block": at[0]["per_layer"][name]["block"],
                            **{m: sum(a["per_layer"][name][m] for a in at) / len(at) for m in MEASURES}} for name in sorted(layers)}
        rows.append({"step": step, **{m: sum(a[m] for a in at) / len(at) for m in MEASURES}, "per_layer": per_layer})
    return rows


def _routing_by_task(runs: Sequence[RunResult]) -> dict[str, dict[str, list[float]]]:
    """Mean routing mass per (layer, task, expert), averaged over seeds."""
    out: dict[str, dict[str, list[float]]] = {}
    for row in runs[0].experts:
        if "load_by_task" not in row:
            continue
        out[row["layer"]] = {}
        for task in row["load_by_task"]:
            loads = [next(x for x in r.experts if x["layer"] == row["layer"])["load_by_task"][task] for r in runs]
            out[row["layer"]][task] = [sum(col) / len(col) for col in zip(*loads)]
    return out


def _comparison(a: str, b: str, runs_a: Sequence[RunResult], runs_b: Sequence[RunResult]) -> dict[str, Any]:
    """Is arm b better than arm a? Paired per seed (same seed, same questions), then combined."""
    pairs = [(ra.metrics["correct"], rb.metrics["correct"]) for ra, rb in zip(runs_a, runs_b)]
    differences = [rb.metrics["accuracy"] - ra.metrics["accuracy"] for ra, rb in zip(runs_a, runs_b)]
    out = {"a": a, "b": b, "label": f"{ARMS[b].name} vs {ARMS[a].name}", "difference": _interval(differences),
           "per_seed": [paired_test(*pair) for pair in pairs], "combined": cmh_test(pairs)}
    diversity_a, diversity_b = ([mean_over_layers(r.experts) for r in rs] for rs in (runs_a, runs_b))
    if all(diversity_a) and all(diversity_b):
        out["cka_difference"] = _interval([db["mean_cka"] - da["mean_cka"] for da, db in zip(diversity_a, diversity_b)])
    return out


def provenance(command: str | None = None) -> dict[str, Any]:
    """Which command, date, versions and machine produced a result file."""
    import torch
    import transformers

    from . import __version__

    return {
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"omoe_lab": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }
