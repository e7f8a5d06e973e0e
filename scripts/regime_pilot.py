"""The regime pilot: which CPU setting makes fine-tuning learn, every choice made on the dev split.

One seed, LoRA at the E = 4 budget (rank 16), the real five-task mix read from ``--data-dir``,
one factor varied at a time from a sensible start; every run is scored on a fixed 100 dev
questions per task (never the test questions), next to every zero-shot way on the same dev
questions. Runs go through ``experiments.run`` (cached, resumable) and share one loaded model
and one frozen-prefix cache per adapted-block count, so each question's frozen blocks run once
for the whole pilot. The table goes to ``--out`` after every row.

    python scripts/regime_pilot.py --data-dir ../shared/data/commonsense --out results/regime-pilot.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from omoe_lab import provenance
from omoe_lab.analysis.stats import paired_test
from omoe_lab.experiments import RunConfig, best_baselines, frozen_prefix_for, run
from omoe_lab.io import atomic_write_text
from omoe_lab.models import load_model

REAL_MIX = ("ARC-Easy", "ARC-Challenge", "boolq", "openbookqa", "social_i_qa")
START = dict(method="lora", num_experts=4, rank=4, profile="quick", tasks=REAL_MIX, eval_split="dev", eval_per_task=100,
             train_per_task=400, batch_size=8, steps=200, lr=1e-3, objective="rank", unlikelihood=0.0)
# (label, what differs from START): the start, then one factor at a time
ROWS = [
    ("start: rank objective, 200 steps, lr 1e-3, top 4 blocks", {}),
    ("today's objective (the gold option's likelihood)", {"objective": "lm"}),
    ("+ unlikelihood 1.0 on the wrong options", {"unlikelihood": 1.0}),
    ("lr 3e-3", {"lr": 3e-3}),
    ("400 steps", {"steps": 400}),
    ("lr 3e-4", {"lr": 3e-4}),
    ("top 8 blocks", {"top_blocks": 8}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default="results/regime-pilot.json")
    parser.add_argument("--cache-dir", default=None, help="the run cache (default: $OMOE_LAB_RUNS/cache)")
    parser.add_argument("--rows", type=int, default=len(ROWS), help="run only the first N rows")
    parser.add_argument("--tasks", nargs="+", default=list(REAL_MIX), help="the training and dev mix (default: all five)")
    parser.add_argument("--train-per-task", type=int, default=START["train_per_task"])
    parser.add_argument("--eval-per-task", type=int, default=START["eval_per_task"], help="dev questions per task")
    args = parser.parse_args()
    common = {**START, "data_dir": args.data_dir, "tasks": tuple(args.tasks), "train_per_task": args.train_per_task,
              "eval_per_task": args.eval_per_task}
    model, tokenizer = load_model("default")
    prefixes = {}  # by adapted-block count

    def run_row(config: RunConfig):
        blocks = config.resolved().top_blocks
        if blocks not in prefixes:
            prefixes.clear()  # one at a time: each holds every sequence's states
            prefixes[blocks] = frozen_prefix_for(model, config)
        return run(config, cache_dir=args.cache_dir, model=model, tokenizer=tokenizer, prefix=prefixes[blocks])

    zero = run_row(RunConfig(**{**common, "method": "none"}))
    base = best_baselines(zero)
    table = {"meta": {"code": provenance.code_identity(), "environment": provenance.environment(),
                      "data": provenance.data_hashes(args.tasks, args.data_dir, ("train",)),
                      "command": "python scripts/regime_pilot.py " + " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items() if v is not None),
                      "start": {k: v for k, v in common.items() if k != "data_dir"}, "split": "dev", "seed": 0},
             "zero_shot": {"ways": {n: w["accuracy"] for n, w in base["ways"].items()}, "best_per_task": base["best_per_task"],
                           "best_per_task_accuracy": sum(base["best_per_task_correct"]) / len(base["best_per_task_correct"]),
                           "seconds": zero.seconds},
             "rows": []}
    for label, change in ROWS[: args.rows]:
        started = time.perf_counter()
        result = run_row(RunConfig(**{**common, **change}))
        test = paired_test(base["best_per_task_correct"], result.metrics["correct"])
        table["rows"].append({
            "label": label, "change": change, "accuracy": result.metrics["accuracy"], "per_task": result.metrics["per_task"],
            "vs_best_zero_shot": {"gained": test["gained"], "lost": test["lost"], "p": test["p"]},
            "seconds": result.seconds, "wall_seconds": time.perf_counter() - started, "from_cache": result.from_cache,
            "loss_curve": [round(h["loss"], 4) for h in result.history],
        })
        atomic_write_text(args.out, json.dumps(table, indent=1) + "\n")
        print(f"{label}: dev {result.metrics['accuracy']:.3f} vs best zero-shot {table['zero_shot']['best_per_task_accuracy']:.3f} "
              f"(+{test['gained']} −{test['lost']}, p = {test['p']:.3g}), {result.seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
