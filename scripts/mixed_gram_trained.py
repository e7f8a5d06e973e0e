"""The mixed-precision Gram on adapters that train: how many tokens fall back to float64, and what changes.

Trains the same OMoE configuration twice from the same seed, once with the float64 Gram (the default)
and once with ``OMoELinear.mixed_precision_gram`` (float32, the tokens its guard does not trust
recomputed in float64), and writes both runs' losses, answers and the fallback rate of every OMoE layer
over everything the second run computed (training, scoring, capture). The benchmark's ``omoe-mixed`` row
measures the rate on random experts; this measures it where the experts have learned.

    python scripts/mixed_gram_trained.py --data-dir ../shared/data/commonsense --out results/mixed-gram-trained.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from omoe_lab import provenance
from omoe_lab.adapters import OMoELinear
from omoe_lab.experiments import RunConfig, run
from omoe_lab.io import atomic_write_text
from omoe_lab.models import load_model

# the learn regime's task and objective (docs/results.md) at sizes that train in minutes on 2 cores
SETTING = dict(method="omoe", num_experts=4, profile="learn", tasks=("social_i_qa",), steps=100, train_per_task=800,
               eval_per_task=200)


def trained(config: RunConfig, mixed: bool, model, tokenizer, cache: Path) -> tuple[dict, list[dict]]:
    """Run ``config`` fresh with the Gram in float64 or mixed; the run's result and, when mixed, every
    OMoE layer's token and fallback counts."""
    layers: list[OMoELinear] = []
    init = OMoELinear.__init__

    def recording_init(self, *args, **kwargs):  # the run attaches and detaches its layers itself
        init(self, *args, **kwargs)
        layers.append(self)

    OMoELinear.__init__, OMoELinear.mixed_precision_gram = recording_init, mixed
    try:
        result = run(config, cache_dir=cache / ("mixed" if mixed else "float64"), force=True, model=model, tokenizer=tokenizer)
    finally:
        OMoELinear.__init__, OMoELinear.mixed_precision_gram = init, False
    counts = [{"tokens": layer.gram_stats.get("tokens", 0), "fallback_tokens": layer.gram_stats.get("fallback_tokens", 0)}
              for layer in layers] if mixed else []
    return json.loads(result.to_json()), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="the commonsense data folder (Social IQa is read from it)")
    parser.add_argument("--out", default="results/mixed-gram-trained.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = RunConfig(**SETTING, data_dir=args.data_dir, seed=args.seed)
    # read before the runs: the commit that ran, whatever is committed while they train
    meta = {"code": provenance.code_identity(), "environment": provenance.environment(),
            "data": provenance.data_hashes(config.tasks, args.data_dir), "command": " ".join(["python", *sys.argv])}
    model, tokenizer = load_model(config.resolved().model)
    with tempfile.TemporaryDirectory() as scratch:
        exact, _ = trained(config, False, model, tokenizer, Path(scratch))
        mixed, counts = trained(config, True, model, tokenizer, Path(scratch))
    tokens = sum(c["tokens"] for c in counts)
    fallback = sum(c["fallback_tokens"] for c in counts)
    losses = [(a["loss"], b["loss"]) for a, b in zip(exact["history"], mixed["history"])]
    answers = list(zip(exact["metrics"]["correct"], mixed["metrics"]["correct"]))
    summary = {
        "meta": meta,
        "config": exact["config"],
        "fallback": {"tokens": tokens, "fallback_tokens": fallback, "rate": fallback / tokens if tokens else None,
                     "layers": len(counts), "max_layer_rate": max((c["fallback_tokens"] / c["tokens"] for c in counts if c["tokens"]), default=None)},
        "loss": {"steps": len(losses), "max_abs_difference": max(abs(a - b) for a, b in losses),
                 "final": {"float64": losses[-1][0], "mixed": losses[-1][1]}},
        "accuracy": {"float64": exact["metrics"]["accuracy"], "mixed": mixed["metrics"]["accuracy"], "n": len(answers),
                     "answers_that_differ": sum(a != b for a, b in answers)},
        "seconds": {"float64": exact["seconds"], "mixed": mixed["seconds"]},
        "runs": {"float64": exact, "mixed": mixed},
    }
    atomic_write_text(Path(args.out), json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: summary[k] for k in ("fallback", "loss", "accuracy", "seconds")}, indent=1))


if __name__ == "__main__":
    main()
