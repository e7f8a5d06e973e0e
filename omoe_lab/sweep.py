"""The evidence sweep: which method, how many experts, against which baseline — over seeds.

One grid of *arms* (a method with its routing and expert count) × seeds, run through
``experiments.run_all`` (cached, resumable: an interrupted sweep re-runs nothing finished), then
summarized into one JSON file under ``results/`` that notebooks and docs read without retraining:

- accuracy per arm, overall and per task, with a Student-t 95 % interval over seeds;
- the zero-shot baselines (every prompt style × normalization, calibrated PMI, the train split's
  majority answer) and, per task, the best of them;
- paired tests between arms on the same questions: exact McNemar per seed, combined over seeds
  with the Cochran–Mantel–Haenszel test, and with the question as the unit (a permutation test
  over questions of the seed-averaged correctness, with its minimum detectable difference);
  Holm-adjusted over the family of tests the summary makes (``analysis.stats``);
- every arm's per-question answers (``correct``, one 0/1 list per seed, aligned with
  ``meta.questions``), so that any test can be re-run without the models;
- for the arms that measured it, what merging their experts costs (``analysis.merging``);
- trainable parameters, the experts' diversity (mean |cos|, linear CKA biased and debiased,
  effective rank) with intervals over seeds, diversity over training, and routing mass per task;
- provenance (``meta``): the command, versions and machine, the code that summarized and the code
  that made the runs (commit, dirty flag, numerics fingerprint), and the data files' hashes. Runs
  of different numerics fingerprints are not combined unless asked (``allow_mixed_fingerprints``).

``record_dir`` keeps each run's result as ``<key>.json`` as it finishes (``experiments.run``).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import provenance
from .analysis.diversity import MEASURES, mean_over_layers
from .analysis.stats import cmh_test, holm, paired_test, question_level_test, t_interval
from .experiments import VARIANT_DEFAULTS, RunConfig, RunResult, best_baselines, run_all
from .io import atomic_write_text, writable_folder

REAL_TASKS = ("ARC-Easy", "ARC-Challenge", "boolq", "openbookqa")  # the paper's multi-task mix, PIQA aside
LEARN_TASKS = ("social_i_qa",)  # where fine-tuning learns on a CPU budget (the regime pilot, docs/results.md)


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
    # rank-wise experts (SMoRA): 16 rank-1 experts are one LoRA of rank 16, the A/B budget of "lora", "moe4" and
    # "omoe4" (E·r = 16), so the arm changes only how finely that budget is routed; top-4 activates 4 ranks per
    # token, the rank of one E=4 expert. The router (16 rows per linear, moe4's has 4) is the only extra cost.
    "smora16top4": Arm("SMoRA E=16 top-4 (rank-1 experts)", {"method": "smora", "num_experts": 16, "top_k": 4}),
}
CORE_ARMS = ("lora", "moe2", "moe4", "moe8", "moe8top2", "omoe2", "omoe4", "omoe8top2", "control4")
VARIANT_ARMS = ("mixlora8top2", "moe4penalty", "moe4shared")
# (a, b): is b better than a? The paper's claim is the first four: few orthogonal experts vs many vanilla ones.
COMPARISONS = (
    ("moe8", "omoe2"), ("moe8", "omoe4"), ("moe8top2", "omoe2"), ("moe8top2", "omoe4"), ("moe8top2", "omoe8top2"),
    ("moe4", "omoe4"), ("control4", "omoe4"), ("moe4", "control4"), ("moe2", "omoe2"), ("lora", "omoe4"), ("lora", "moe4"),
    ("mixlora8top2", "omoe4"), ("moe4penalty", "omoe4"), ("moe4", "moe4penalty"), ("moe4", "moe4shared"),
    ("moe4", "smora16top4"), ("lora", "smora16top4"), ("smora16top4", "omoe4"),
)


@dataclass(frozen=True)
class Setting:
    """Where a sweep runs: tasks, data, how many test questions, which arms."""

    name: str
    description: str
    arms: tuple[str, ...]
    run: dict  # RunConfig fields shared by every run
    # arms whose runs also measure what merging their experts costs (RunConfig.collapse_cost)
    collapse_arms: tuple[str, ...] = ()


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
    "learn": Setting(
        "learn", "where fine-tuning moved accuracy most (profile learn: rank objective, chosen on dev): real Social IQa, "
        "a fixed random subset of its test split",
        arms=("lora", "moe4", "moe8", "moe8top2", "omoe2", "omoe4", "control4"),
        run={"tasks": LEARN_TASKS, "data_dir": "../shared/data/commonsense", "profile": "learn"},
        collapse_arms=("moe8", "omoe4", "control4"),  # the headline pair and the control
    ),
    "builtin": Setting(
        "builtin", "the built-in offline eight-task suite", arms=("lora", "moe4", "omoe4", "control4"), run={},
    ),
}


def sweep_configs(setting: Setting, seeds: Sequence[int], **common) -> list[RunConfig]:
    """Zero-shot on test, zero-shot on dev (where each task's best way is chosen), then every
    arm × seed; ``common`` overrides RunConfig fields of all runs."""
    shared = {**setting.run, **common}
    configs = [RunConfig(**{**shared, **ZERO_SHOT.settings}), RunConfig(**{**shared, **ZERO_SHOT.settings, "eval_split": "dev"})]
    for key in setting.arms:
        collapse = {"collapse_cost": True} if key in setting.collapse_arms else {}
        configs += [RunConfig(**{**shared, **ARMS[key].settings, **collapse, "seed": seed}) for seed in seeds]
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
    record_dir: str | Path | None = None,
    allow_mixed_fingerprints: bool = False,
    seed_major: bool = False,
    **common,
) -> dict[str, Any]:
    """Run (or replay) the grid of ``setting`` and return its summary; ``out`` writes it as JSON.

    ``record_dir``: each run's result is also written there as ``<key>.json`` when it finishes.
    ``allow_mixed_fingerprints``: see :func:`summarize_sweep`.
    ``seed_major``: run every arm of the first seed, then of the next (default: every seed of the
    first arm, then the next arm), so that a grid cut short holds whole seeds to compare.
    """
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
    order = list(range(len(configs)))  # the zero-shot runs (0, 1) first either way
    if seed_major:
        order.sort(key=lambda i: configs[i].seed if i >= 2 else -1)  # stable: the arms' order within a seed
    results: list[RunResult] = [None] * len(configs)  # type: ignore[list-item]
    for i, result in zip(order, run_all([configs[i] for i in order], cache_dir=cache_dir, progress=progress, record_dir=record_dir)):
        results[i] = result  # back in sweep_configs' order, which the summary reads
    summary = summarize_sweep(chosen, configs, results, seeds, command=command, allow_mixed_fingerprints=allow_mixed_fingerprints)
    if out is not None:
        atomic_write_text(Path(out), json.dumps(summary, indent=1, allow_nan=False) + "\n")
    return summary


# --- the summary ----------------------------------------------------------------------------------
def summarize_sweep(setting: Setting, configs: Sequence[RunConfig], results: Sequence[RunResult], seeds: Sequence[int],
                    command: str | None = None, allow_mixed_fingerprints: bool = False) -> dict[str, Any]:
    """The summary of a finished grid (``results`` in the order of ``sweep_configs``).

    Refuses (ValueError) runs whose code had different numerics fingerprints (a run from an older
    cache without ``meta`` counts as fingerprint None), since their numbers need not be
    comparable; ``allow_mixed_fingerprints=True`` combines them and lists them in
    ``meta["warnings"]``. Runs whose recorded data hashes differ from the files now are listed there too.
    """
    warnings = _mixed_fingerprints(results, allow_mixed_fingerprints)
    zero, zero_dev, runs = results[0], results[1], results[2:]
    by_arm = {key: runs[i * len(seeds) : (i + 1) * len(seeds)] for i, key in enumerate(setting.arms)}
    questions = zero.metrics["questions"]
    for arm_runs in by_arm.values():
        for r in arm_runs:
            if r.metrics["questions"] != questions:
                raise ValueError(f"{r.label} (seed {r.config['seed']}) answered other questions than zero-shot; re-run it")
    baselines = best_baselines(zero, chosen_on=zero_dev)  # chosen on dev, scored on test
    arms = [_arm_summary(key, by_arm[key], seeds, baselines) for key in setting.arms]
    comparisons = [_comparison(a, b, by_arm[a], by_arm[b]) for a, b in COMPARISONS if a in by_arm and b in by_arm]
    family = _adjust_for_multiplicity(arms, comparisons)
    data = provenance.data_hashes(zero.config["tasks"], zero.config["data_dir"], ("train", zero.config.get("eval_split", "test")))
    warnings += _changed_data(results, data)
    return {
        "meta": {
            "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            **provenance.environment(),
            "code": provenance.code_identity(),  # of this summary; the runs may be older
            "run_code": _run_code(results),
            "data": data,
            "warnings": warnings,
            "setting": setting.name, "description": setting.description, "seeds": list(seeds),
            "profile": zero.config["profile"], "tasks": list(zero.config["tasks"]), "protocol": zero.metrics["protocol"],
            "prompt_style": runs[0].metrics["prompt_style"] if runs else zero.metrics["prompt_style"],
            "n": zero.metrics["n"], "n_per_task": zero.metrics["n_per_task"], "chance_per_task": zero.metrics["chance_per_task"],
            "questions": questions,  # the test questions, in the order of every ``correct`` list
            "holm_family": family,
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
        # the variant fields too (absent from results made before the variants: their defaults), so
        # that a variant arm is not recorded with the config of the arm it varies
        "arm": key, "label": ARMS[key].name, "run_label": first.label, "settings": dict(ARMS[key].settings),
        "config": {k: first.config.get(k, VARIANT_DEFAULTS.get(k))
                   for k in ("method", "num_experts", "top_k", "orthogonalize", "b_init_std", *VARIANT_DEFAULTS)},
        "parameters": first.parameters, "seconds": [r.seconds for r in runs], "accuracy": accuracy,
        "correct": [r.metrics["correct"] for r in runs],  # per seed, aligned with meta.questions
        "vs_best_baseline": {
            "per_seed": [paired_test(best, r.metrics["correct"]) for r in runs],
            "combined": cmh_test([(best, r.metrics["correct"]) for r in runs]),
            "questions": question_level_test([best], [r.metrics["correct"] for r in runs]),
        },
    }
    diversity = [mean_over_layers(r.experts) for r in runs]
    if all(diversity):
        summary["diversity"] = {m: _interval([d[m] for d in diversity]) for m in MEASURES}
        summary["diversity_over_training"] = _over_training(runs)
        summary["routing_by_task"], summary["routing_by_task_per_seed"] = _routing_by_task(runs)
    if all(r.collapse for r in runs):
        summary["collapse"] = _collapse_summary(runs)
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


def _routing_by_task(runs: Sequence[RunResult]) -> tuple[dict, list[dict]]:
    """Routing mass per (layer, task, expert) of the first seed, and of every seed.

    Never averaged over seeds: expert k of one seed has nothing to do with expert k of another
    (their roles are permuted at random), so a mean over seeds hides the specialization there is.
    """
    per_seed = [{row["layer"]: row["load_by_task"] for row in r.experts if "load_by_task" in row} for r in runs]
    return per_seed[0], per_seed


def _collapse_summary(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Per variant (merged, without expert j): accuracy lost and output change over seeds, and the
    question-level test of the variant against the full mixture."""
    rows = []
    for i, first in enumerate(runs[0].collapse["variants"]):
        variants = [r.collapse["variants"][i] for r in runs]
        rows.append({
            "variant": first["variant"],
            "accuracy": _interval([v["accuracy"] for v in variants]),
            "accuracy_lost": _interval([v["accuracy_lost"] for v in variants]),
            "output_change": _interval([v["output_change"] for v in variants]),
            "vs_full": question_level_test([r.metrics["correct"] for r in runs], [v["correct"] for v in variants]),
        })
    return rows


def _adjust_for_multiplicity(arms: list[dict], comparisons: list[dict]) -> list[str]:
    """Holm-adjust the question-level p-values of the family the summary tests (every arm against
    the best baseline, every comparison between arms), in place as ``holm_p``; returns the family."""
    tests = [(f"{arm['arm']} vs best baseline", arm["vs_best_baseline"]["questions"]) for arm in arms]
    tests += [(f"{c['b']} vs {c['a']}", c["questions"]) for c in comparisons]
    for (_, test), adjusted in zip(tests, holm([test["p"] for _, test in tests])):
        test["holm_p"] = adjusted
    return [name for name, _ in tests]


def _comparison(a: str, b: str, runs_a: Sequence[RunResult], runs_b: Sequence[RunResult]) -> dict[str, Any]:
    """Is arm b better than arm a? Paired per seed (same seed, same questions), then combined."""
    pairs = [(ra.metrics["correct"], rb.metrics["correct"]) for ra, rb in zip(runs_a, runs_b)]
    differences = [rb.metrics["accuracy"] - ra.metrics["accuracy"] for ra, rb in zip(runs_a, runs_b)]
    out = {"a": a, "b": b, "label": f"{ARMS[b].name} vs {ARMS[a].name}", "difference": _interval(differences),
           "per_seed": [paired_test(*pair) for pair in pairs], "combined": cmh_test(pairs),
           "questions": question_level_test([ra.metrics["correct"] for ra in runs_a], [rb.metrics["correct"] for rb in runs_b])}
    diversity_a, diversity_b = ([mean_over_layers(r.experts) for r in rs] for rs in (runs_a, runs_b))
    if all(diversity_a) and all(diversity_b):
        out["cka_difference"] = _interval([db["mean_cka"] - da["mean_cka"] for da, db in zip(diversity_a, diversity_b)])
    return out


# --- provenance -------------------------------------------------------------------------------------
def _describe(run: RunResult) -> str:
    return f"{run.label} (seed {run.config['seed']}, key {run.key})"


def _mixed_fingerprints(results: Sequence[RunResult], allow: bool) -> list[dict[str, Any]]:
    """[] when every run has the same numerics fingerprint; else a warning, or a ValueError unless ``allow``."""
    groups: dict[str | None, list[str]] = {}
    for r in results:
        groups.setdefault(r.meta.get("code", {}).get("fingerprint"), []).append(_describe(r))
    if len(groups) < 2:
        return []
    if not allow:
        found = "; ".join(f"{fingerprint or 'none (a run from an older cache)'}: {len(runs)} run(s), e.g. {runs[0]}"
                          for fingerprint, runs in groups.items())
        raise ValueError(
            f"these runs were made by code of {len(groups)} different numerics fingerprints ({found}), so their numbers "
            "need not be comparable. Re-run them with this code (a run's cache key includes the fingerprint, so a fresh "
            "sweep re-runs the others), or pass allow_mixed_fingerprints=True (CLI: --allow-mixed-fingerprints) to "
            "combine them anyway, with a warning in the summary's meta"
        )
    return [{"warning": "runs of different numerics fingerprints combined (allow_mixed_fingerprints)",
             "fingerprints": [{"fingerprint": fingerprint, "runs": runs} for fingerprint, runs in groups.items()]}]


def _changed_data(results: Sequence[RunResult], now: dict[str, str]) -> list[dict[str, Any]]:
    """A warning naming the runs whose recorded data hashes differ from the files' hashes now."""
    changed = {}
    for r in results:
        files = sorted(name for name, digest in r.meta.get("data", {}).items() if name in now and now[name] != digest)
        if files:
            changed[_describe(r)] = files
    return [{"warning": "data files changed since these runs were made", "runs": changed}] if changed else []


def _run_code(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """The distinct code identities (commit, dirty, fingerprint) that made the runs, with counts."""
    counts: dict[tuple, int] = {}
    for r in results:
        code = r.meta.get("code", {})
        identity = (code.get("commit"), code.get("dirty"), code.get("fingerprint"))
        counts[identity] = counts.get(identity, 0) + 1
    return [{"commit": commit, "dirty": dirty, "fingerprint": fingerprint, "runs": n}
            for (commit, dirty, fingerprint), n in counts.items()]
