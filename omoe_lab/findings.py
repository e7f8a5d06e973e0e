"""What the runs show, in words: every verdict sentence of the report, computed from the numbers.

- Fine-tuned runs against zero-shot: the zero-shot run itself (same protocol and prompt), or,
  when it scored every way (``metrics["baselines"]``), the best baseline per task, with the
  paired tests on the same questions (exact McNemar for one seed, Cochran–Mantel–Haenszel over
  several).
- How many questions: what n can and cannot resolve (Wilson half-widths at the observed accuracy).
- The random-start control: how much of the diversity gap between MoE-LoRA and OMoE the random
  start alone closes, and whether orthogonalization adds diversity beyond it.
- Expert diversity and the Stiefel check, summarized.

Sentences round first and compare the rounded numbers, so the words agree with the numbers
printed next to them. The CLI, the report and notebooks call the same functions.
"""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from .analysis.stats import cmh_test, paired_test, wilson_interval
from .experiments import RunResult, best_baselines
from .viz import format_fixed, format_percent, layer_label

# what must agree for two runs to have answered the same test questions, when runs do not list them
SAME_QUESTIONS = ("model", "tasks", "data_dir", "eval_per_task", "protocol")
# the diversity measures the random-start control is judged on, and which direction is "more diverse"
CONTROL_MEASURES = {"mean_abs_cosine": ("mean |cos|", -1), "mean_cka": ("mean CKA", -1), "effective_rank": ("effective rank", +1)}


# --- runs, grouped ---------------------------------------------------------------------------
def runs_by_label(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    """Runs grouped by label (a label's seeds together), lowest seed first."""
    grouped: dict[str, list[RunResult]] = {}
    for r in sorted(results, key=lambda r: r.config.get("seed") or 0):
        grouped.setdefault(r.label, []).append(r)
    return grouped


def first_run_per_label(results: Sequence[RunResult]) -> dict[str, RunResult]:
    """One run per label (the lowest seed): figures that cannot average seeds show this one."""
    return {label: runs[0] for label, runs in runs_by_label(results).items()}


def same_questions(a: RunResult, b: RunResult) -> bool:
    """Did a and b answer the same test questions, in the same order? (By their question ids when
    both list them, else by the settings that choose the questions.)"""
    if "questions" in a.metrics and "questions" in b.metrics:
        return a.metrics["questions"] == b.metrics["questions"]
    return (all(a.config.get(k) == b.config.get(k) for k in SAME_QUESTIONS)
            and len(a.metrics.get("correct", ())) == len(b.metrics.get("correct", ())))


def format_p_value(p: float) -> str:
    """``p = 0.035``, or ``p < 0.001`` below three decimals."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _prompt(metrics: dict) -> str:
    return metrics.get("prompt_style", "listed")


# --- against zero-shot as it was run -------------------------------------------------------------
def paired_with_zero_shot(results: Sequence[RunResult]) -> dict[str, dict]:
    """``analysis.stats.paired_test`` of every single-seed fine-tuned run against the zero-shot
    run that answered the same questions (same model, tasks, data, test size and protocol), by label."""
    zero_shot = [r for r in results if r.config.get("method") == "none" and "correct" in r.metrics]
    tests = {}
    for label, group in runs_by_label(results).items():
        run = group[0]
        if len(group) > 1 or run.config.get("method") == "none" or "correct" not in run.metrics:
            continue  # several seeds are compared by their interval over seeds instead
        base = [z for z in zero_shot if all(z.config.get(k) == run.config.get(k) for k in SAME_QUESTIONS)]
        if base and len(base[0].metrics["correct"]) == len(run.metrics["correct"]):
            tests[label] = paired_test(base[0].metrics["correct"], run.metrics["correct"])
    return tests


def compare_with_zero_shot(overall: pd.DataFrame, paired: dict[str, dict] | None = None) -> str:
    """Which fine-tuned methods beat zero-shot, and by how many points, per protocol.

    ``overall``: rows of ``experiments.summarize`` for task ``"all"``; ``paired``:
    ``paired_with_zero_shot`` by label, quoted where present (else the sentence says when the
    95 % intervals overlap).
    """
    paired = paired or {}

    def evidence(row, base) -> str:
        if row["label"] in paired:
            t = paired[row["label"]]
            return f"; {_questions(t['gained'])} gained, {t['lost']} lost, McNemar {format_p_value(t['p'])}"
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
        sentence = f"Under the {protocol} protocol zero-shot scores {format_percent(base['accuracy'])} %."
        sentences.append(sentence + _verdicts(tuned, base["accuracy"], lambda row: evidence(row, base)))
    return " ".join(sentences)


def _questions(count: int) -> str:
    return f"{count} question{'s' if count != 1 else ''}"


def _verdicts(tuned: pd.DataFrame, base_accuracy: float, evidence, prompt: bool = False, evidence_when_tied: bool = False) -> str:
    """" Beat it: …. Tied with it …. Did not beat it: …." for the rows of ``tuned``; ``prompt``:
    name each run's prompt style."""
    above, tied, below = [], [], []
    for _, row in tuned.iterrows():
        points = round(100 * (row["accuracy"] - base_accuracy), 1)
        label = f"{row['label']}, {row['prompt_style']} prompt" if prompt else row["label"]
        if points > 0:
            above.append(f"{label}, by {points:.1f} points ({format_percent(row['accuracy'])} %{evidence(row)})" if prompt else
                         f"{label} by {points:.1f} points ({format_percent(row['accuracy'])} %{evidence(row)})")
        elif points < 0:
            below.append(f"{label}, {-points:.1f} points below ({format_percent(row['accuracy'])} %{evidence(row)})")
        else:
            tied.append(f"{label} ({format_percent(row['accuracy'])} %{evidence(row) if evidence_when_tied else ''})")
    sentence = f" Beat it: {'; '.join(above)}." if above else " No fine-tuned method beat it."
    if tied:
        sentence += f" Tied with it (to 0.1 point): {'; '.join(tied)}."
    if below:
        sentence += f" Did not beat it: {'; '.join(below)}."
    return sentence


def _intervals_overlap(a, b) -> bool:
    bounds = [a["low"], a["high"], b["low"], b["high"]]
    if any(pd.isna(x) for x in bounds):
        return False
    return a["low"] <= b["high"] and b["low"] <= a["high"]


# --- against the best zero-shot baseline per task ----------------------------------------------
def zero_shot_baselines(results: Sequence[RunResult]) -> dict[str, dict[str, Any]]:
    """``experiments.best_baselines`` of each zero-shot run that scored every way, by protocol
    (baselines exist for ``loglik`` only), with the run it came from under ``"run"``."""
    found = {}
    for r in results:
        if (r.config.get("method") == "none" and r.config.get("eval_split", "test") == "test" and r.metrics.get("baselines")
                and r.metrics["protocol"] not in found):
            best = best_baselines(r, chosen_on=_dev_twin(r, results))
            correct = best["best_per_task_correct"]
            found[r.metrics["protocol"]] = {**best, "run": r, "accuracy": sum(correct) / len(correct) if correct else float("nan"),
                                            "n": len(correct)}
    return found


def _dev_twin(run: RunResult, results: Sequence[RunResult]) -> RunResult | None:
    """The same zero-shot configuration scored on the dev split, if ``results`` hold it: each task's
    best way is then chosen on dev (``experiments.best_baselines``)."""
    same = {k: v for k, v in run.config.items() if k != "eval_split"}
    return next((r for r in results if r.config.get("eval_split") == "dev" and r.metrics.get("baselines")
                 and {k: v for k, v in r.config.items() if k != "eval_split"} == same), None)


def paired_with_best_baseline(results: Sequence[RunResult]) -> dict[str, dict]:
    """Every fine-tuned label against the best zero-shot baseline per task on the same questions,
    under the same protocol: exact McNemar for one seed, Cochran–Mantel–Haenszel over several.

    Each test adds ``"test"`` (its name), ``"baseline_accuracy"`` and the per-task best it was against.
    """
    baselines = zero_shot_baselines(results)
    tests = {}
    for label, group in runs_by_label(results).items():
        base = baselines.get(group[0].metrics.get("protocol"))
        if base is None or group[0].config.get("method") == "none":
            continue
        pairs = [(base["best_per_task_correct"], r.metrics["correct"]) for r in group
                 if "correct" in r.metrics and same_questions(base["run"], r)]
        if len(pairs) != len(group):
            continue  # a seed answered other questions: no pairing for the label
        test = {**paired_test(*pairs[0]), "test": "exact McNemar"} if len(pairs) == 1 else cmh_test(pairs)
        tests[label] = {**test, "baseline_accuracy": base["accuracy"],
                        "best_per_task": {task: best["baseline"] for task, best in base["best_per_task"].items()}}
    return tests


def compare_with_best_baseline(overall: pd.DataFrame, results: Sequence[RunResult], paired: dict[str, dict] | None = None) -> str:
    """Which fine-tuned runs beat the best zero-shot baseline per task, by how many points, per protocol.

    Under a protocol whose zero-shot run has no baselines (older results, or ``label``), the
    sentence is ``compare_with_zero_shot``'s. ``paired``: ``paired_with_best_baseline``.
    """
    baselines = zero_shot_baselines(results)
    paired = paired if paired is not None else paired_with_best_baseline(results)
    sentences = []
    for protocol, rows in overall.groupby("protocol", sort=False):
        base = baselines.get(protocol)
        tuned = rows[rows["method"] != "none"]
        if base is None or tuned.empty:
            sentences.append(compare_with_zero_shot(rows, paired_with_zero_shot([r for r in results if r.metrics.get("protocol") == protocol])))
            continue
        which = ", ".join(f"{task} {b['baseline']} ({format_percent(b['accuracy'])} %)" for task, b in base["best_per_task"].items())

        def evidence(row) -> str:
            if row["label"] not in paired:
                return "; not paired: it answered other questions"
            t = paired[row["label"]]
            if t["test"] == "exact McNemar":
                return f"; {_questions(t['gained'])} gained, {t['lost']} lost, exact McNemar {format_p_value(t['p'])}"
            return f"; over {t['seeds']} seeds {t['gained']} gained, {t['lost']} lost, CMH {format_p_value(t['p'])}"

        prompts = list(dict.fromkeys(tuned["prompt_style"]))
        runs = f"fine-tuned runs with the {prompts[0]} prompt" if len(prompts) == 1 else "fine-tuned runs"
        sentence = (f"Under the {protocol} protocol ({runs}) the best zero-shot baseline for each task ({which}; picked "
                    f"on the test questions themselves, which flatters it) scores {format_percent(base['accuracy'])} % over "
                    f"all {base['n']} questions.")
        sentences.append(sentence + _verdicts(tuned, base["accuracy"], evidence, prompt=len(prompts) > 1, evidence_when_tied=True))
    return " ".join(sentences)


# --- how many questions ----------------------------------------------------------------------------
def _half_width(accuracy: float, n: int) -> float:
    low, high = wilson_interval(float(accuracy), int(n))
    return 100 * (high - low) / 2


def _range(values: Sequence[float], unit: str = " points") -> str:
    low, high = min(values), max(values)
    return f"±{low:.1f}{unit}" if f"{low:.1f}" == f"{high:.1f}" else f"±{low:.1f} to ±{high:.1f}{unit}"


def sample_size(summary: pd.DataFrame) -> dict[str, Any] | None:
    """How many questions were scored, per task and overall, and what that can resolve.

    ``summary``: ``experiments.summarize``. Returns the counts, the half-widths (points) of a
    single run's 95 % Wilson interval at each observed accuracy (their range over runs), and the
    two sentences; None without questions.
    """
    if summary.empty or int(summary["n"].max()) == 0:
        return None
    overall = summary[summary["task"] == "all"]
    tasks = summary[summary["task"] != "all"]
    n_per_task = {task: sorted({int(n) for n in part["n"]}) for task, part in tasks.groupby("task", sort=False)}
    n_all = sorted({int(n) for n in overall["n"]})
    widths_all = [_half_width(r.accuracy, r.n) for r in overall.itertuples() if r.n > 0]
    widths_task = [_half_width(r.accuracy, r.n) for r in tasks.itertuples() if r.n > 0]

    counts = {task: "/".join(str(n) for n in ns) for task, ns in n_per_task.items()}
    if len(set(counts.values())) == 1 and counts:
        scored = f"Each task was scored on {next(iter(counts.values()))} test questions ({', '.join(counts)})"
    elif counts:
        scored = "Tasks were scored on " + ", ".join(f"{task} {n}" for task, n in counts.items()) + " test questions"
    else:
        scored = "Per-task counts were not recorded"
    scored += f", {'/'.join(str(n) for n in n_all)} in all: one question is "
    if counts:
        scored += f"{100 / max(max(ns) for ns in n_per_task.values()):.1f} points of a task and "
    scored += f"{100 / max(n_all):.1f} of the whole."
    # two intervals stop overlapping when the accuracies differ by about the sum of their half-widths
    apart = f"about {2 * sum(widths_all) / len(widths_all):.0f} points overall"
    if widths_task:
        apart += f" ({2 * sum(widths_task) / len(widths_task):.0f} per task)"
    resolve = (f"At the accuracies observed here a single run's 95 % Wilson interval is {_range(widths_all)} overall"
               + (f" and {_range(widths_task, '')} per task" if widths_task else "")
               + f", so two runs' intervals overlap unless their accuracies differ by {apart} or more; a paired test "
               "on the same questions counts only the questions two runs answer differently and can resolve smaller differences.")
    return {"n": n_all, "n_per_task": n_per_task,
            "half_width_overall": [min(widths_all), max(widths_all)] if widths_all else None,
            "half_width_per_task": [min(widths_task), max(widths_task)] if widths_task else None,
            "sentence": f"{scored} {resolve}"}


# --- the random-start control ---------------------------------------------------------------------
def _b_init_std(run: RunResult) -> float:
    return float(run.config.get("b_init_std") or 0.0)


def mean_diversity(runs: Sequence[RunResult]) -> dict[str, float]:
    """Each diversity measure averaged over the adapted layers that have it, then over the runs (seeds)."""
    out = {}
    for measure in CONTROL_MEASURES:
        per_run = [values for values in ([row[measure] for row in r.experts if row.get(measure) is not None] for r in runs) if values]
        if per_run:
            out[measure] = sum(sum(v) / len(v) for v in per_run) / len(per_run)
    return out


def random_start_control(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Is OMoE's diversity just its random start? One answer per (MoE-LoRA with B = 0, control, OMoE)
    with the same experts and routing: MoE-LoRA started from OMoE's random B is the control.

    For each measure, ``share = (moe − control) / (moe − omoe)``: the part of the gap between
    MoE-LoRA and OMoE that the random start alone closes (None when there is no gap). Returns,
    per triple, the labels, the measures of each, the shares, the measures where OMoE is more
    diverse than the control, and the two sentences.
    """
    groups = runs_by_label(results)
    first = {label: runs[0] for label, runs in groups.items()}

    def kind(run: RunResult) -> str | None:
        method = run.config.get("method")
        if method == "moe":
            return "control" if _b_init_std(run) > 0 else "moe"
        return "omoe" if method == "omoe" else None

    def shape(run: RunResult) -> tuple:
        return run.config.get("num_experts"), run.config.get("top_k")

    found = []
    for moe_label, moe in first.items():
        if kind(moe) != "moe":
            continue
        for control_label, control in first.items():
            if kind(control) != "control" or shape(control) != shape(moe):
                continue
            for omoe_label, omoe in first.items():
                if kind(omoe) != "omoe" or shape(omoe) != shape(moe):
                    continue
                means = {role: mean_diversity(groups[label]) for role, label in
                         (("moe", moe_label), ("control", control_label), ("omoe", omoe_label))}
                measures = [m for m in CONTROL_MEASURES if all(m in values for values in means.values())]
                if measures:
                    found.append(_control_finding(moe_label, control_label, omoe_label, means, measures,
                                                  seeds=min(len(groups[l]) for l in (moe_label, control_label, omoe_label)),
                                                  std=_b_init_std(control)))
    return found


def _control_finding(moe_label, control_label, omoe_label, means, measures, seeds: int, std: float) -> dict[str, Any]:
    digits = {m: 2 if m == "effective_rank" else 3 for m in measures}
    shown = {role: {m: round(values[m], digits[m]) for m in measures} for role, values in means.items()}
    shares = {}
    for m in measures:
        gap = shown["moe"][m] - shown["omoe"][m]
        shares[m] = (shown["moe"][m] - shown["control"][m]) / gap if gap else None
    # more diverse: lower cosine and CKA, higher effective rank (compared as printed)
    beyond = [m for m in measures if CONTROL_MEASURES[m][1] * (shown["omoe"][m] - shown["control"][m]) > 0]

    def closed(m: str) -> str:
        values = " → ".join(format_fixed(shown[role][m], digits[m]) for role in ("moe", "control", "omoe"))
        share = "none (no gap)" if shares[m] is None else f"{100 * shares[m]:.0f} %"
        return f"{share} of the gap in {CONTROL_MEASURES[m][0]} ({values})"

    first = (f"Starting MoE-LoRA's experts from a random B ~ N(0, {std:g}²), as OMoE starts ({control_label}), closes "
             f"{_and([closed(m) for m in measures])} between {moe_label} and {omoe_label}, read as MoE-LoRA → control → OMoE.")
    names = [CONTROL_MEASURES[m][0] for m in measures]
    caveat = "one seed each, so point estimates" if seeds == 1 else f"means over {seeds} seeds"
    if len(beyond) == len(measures):
        second = f"OMoE is more diverse than the control on {_every(names)}, so orthogonalization adds diversity beyond the random start"
    elif not beyond:
        second = (f"The control is at least as diverse as OMoE on {_every(names)}, so the random start accounts for OMoE's "
                  "diversity here and orthogonalization adds none beyond it")
    else:
        rest = [CONTROL_MEASURES[m][0] for m in measures if m not in beyond]
        second = (f"OMoE is more diverse than the control in {_and([CONTROL_MEASURES[m][0] for m in beyond])} but not in "
                  f"{_and(rest)}, so whether orthogonalization adds diversity beyond the random start depends on the measure")
    return {"moe": moe_label, "control": control_label, "omoe": omoe_label, "measures": shown, "shares": shares,
            "omoe_more_diverse_than_control": beyond, "seeds": seeds, "sentence": f"{first} {second} ({caveat})."}


def _and(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _every(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ("both measures" if len(names) == 2 else f"all {len(names)} measures")


# --- diversity and the Stiefel check ------------------------------------------------------------
def diversity_sentence(per_run: pd.DataFrame) -> str:
    """Mean |cosine| and mean CKA of each label (columns ``label``, ``cosine``, ``cka``), and the most diverse."""
    parts = [f"{r.label}: mean |cosine| {format_fixed(r.cosine)}, mean CKA {format_fixed(r.cka)}" for r in per_run.itertuples()]
    sentence = "Averaged over adapted layers — " + "; ".join(parts) + "."
    if len(per_run) > 1 and per_run["cka"].notna().any():
        best = per_run.loc[per_run["cka"].idxmin()]
        sentence += f" The most diverse experts by CKA: {best['label']}."
    return sentence


def stiefel_sentence(checked: pd.DataFrame) -> str:
    """Whether every checked layer (columns ``label``, ``layer``, ``block``, ``error``, ``tolerance``;
    optional ``live``, the share of live experts: ``live_experts_sentence``) is within tolerance."""
    if checked.empty:
        return "No run used the \"stiefel\" mode, the one whose qᵢ must be orthonormal, so there is no tolerance to check against."
    failing = checked[checked["error"] > checked["tolerance"]]
    worst = checked.loc[checked["error"].idxmax()]
    live = ""
    if "live" in checked.columns:
        layers = [f"{r.label} {layer_label(r.layer, r.block)}" for r in checked.itertuples()]
        live = " " + live_experts_sentence(dict(zip(layers, checked["live"])))
    if failing.empty:
        return (f"All {len(checked)} checked layers are within tolerance: the worst error is {worst['error']:.2e} "
                f"(tolerance {worst['tolerance']:.1e}).{live}")
    names = ", ".join(f"{r.label} {layer_label(r.layer, r.block)} ({r.error:.2e})" for r in failing.itertuples())
    return (f"{len(failing)} of {len(checked)} checked layers exceed the tolerance: {names}. "
            f"The Gram–Schmidt construction did not hold there.{live}")


def live_experts_sentence(shares: dict[str, float]) -> str:
    """How many experts kept a q of their own: ``shares`` maps a layer to the share of its
    (token, expert) pairs whose q is not 0 (Gram–Schmidt sets a redundant expert's q to 0).
    A share is at most 1, so the sentence says "every expert" or "at least" a share below 100 %."""
    layers = "the one layer" if len(shares) == 1 else f"all {len(shares)} layers"
    lowest = min(shares, key=shares.get)
    if shares[lowest] >= 1:
        return f"Every expert was live (none redundant, no q set to 0) on every token, in {layers}."
    return (f"The share of live (non-redundant) experts was at least {format_percent(shares[lowest])} % (lowest in {lowest}); "
            "the others had nothing of their own left after Gram–Schmidt and got q = 0.")
