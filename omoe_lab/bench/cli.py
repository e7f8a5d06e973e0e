"""``omoe-lab bench``: run the benchmark parts and write ``<out>/<part>.json`` and ``<out>/<part>.md``.

Parts (``--part``, default all, in this order):
  layer       one adapted linear at the layer target's shapes: omoe, omoe-f32, omoe-kept, omoe-naive, moe, lora
  peers       PEFT's LoRA vs ours; mixlora's MixLoraSparseMoe vs our MoE-LoRA / OMoE / MixLoRA on a Llama MLP
  scaling     time and saved memory against E and against tokens (+ the figure docs/figures/cost_scaling.html)
  end_to_end  training steps (with and without the frozen-prefix cache) and scoring on the default model
  scoring     the loglik scorer's examples/s vs full-vocabulary logits at every position

Targets are ratios within one run (medians of --repeats, at least 5 for the issue's targets);
absolute times count only on a quiet machine or a GPU. `--smoke` runs tiny shapes and the tiny
random model in seconds: well-formed output, no measurement.

    omoe-lab bench                        the full benchmark (`make bench`; about 7 minutes on 2 quiet cores)
    omoe-lab bench --part layer peers     some parts
    omoe-lab bench --smoke --out /tmp/b   everything, tiny, elsewhere
    omoe-lab bench --device cuda          on a GPU
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from . import end_to_end, layer, peers, scaling, scoring
from .options import DEFAULT_REPEATS, Options
from .record import environment, format_number, load_average, targets_table, write_part

PARTS = {"layer": layer, "peers": peers, "scaling": scaling, "end_to_end": end_to_end, "scoring": scoring}
OUT = Path("benchmarks/results")
SMOKE_OUT = OUT / "smoke"  # never over the real results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omoe-lab bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", default=["all"], choices=[*PARTS, "all"], metavar="PART",
                        help=f"which parts to run: {', '.join(PARTS)} or all (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repeat, the tiny model: seconds, for CI")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed repetitions per row, the median is reported (default: {DEFAULT_REPEATS}; 1 with --smoke)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--model", default=None,
                        help="model of end_to_end and scoring (default: the default SmolLM2-135M-Instruct; tiny with --smoke)")
    parser.add_argument("--out", type=Path, default=None, help=f"results folder (default: {OUT}; {SMOKE_OUT} with --smoke)")
    parser.add_argument("--figure", type=Path, default=None,
                        help=f"where scaling writes its figure (default: {scaling.FIGURE}; "
                             "<out>/cost_scaling.html with --smoke)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def parse_options(args: argparse.Namespace) -> Options:
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit(f"omoe-lab bench: error: --repeats must be >= 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"omoe-lab bench: error: --threads must be >= 1, got {args.threads}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("omoe-lab bench: error: --device cuda, but torch.cuda.is_available() is False on this machine")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"omoe-lab bench: error: --device must be cpu or cuda, got {args.device!r}")
    repeats = args.repeats or (1 if args.smoke else DEFAULT_REPEATS)
    return Options(device=device, repeats=repeats, smoke=args.smoke, model=args.model, progress=not args.quiet)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """Run the chosen parts, writing each part's files as soon as it ends; returns {part: result}."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    options = parse_options(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(PARTS) if "all" in args.part else list(dict.fromkeys(args.part))
    out = args.out or (SMOKE_OUT if args.smoke else OUT)
    figure = args.figure or (out / "cost_scaling.html" if args.smoke else scaling.FIGURE)
    command = shlex.join(["omoe-lab", "bench", *argv])
    results = {}
    for name in names:
        started = time.perf_counter()
        header = environment(command, options.device)
        options.say(f"== {name} (device {options.device}, {torch.get_num_threads()} threads, {options.repeats} repeats, "
                    f"load {format_number(header['machine']['load_average_at_start'])})")
        part = PARTS[name].run(options, figure) if name == "scaling" else PARTS[name].run(options)
        result = {"part": name, **header, "smoke": options.smoke, "repeats": options.repeats, **part,
                  "seconds": time.perf_counter() - started, "load_average_at_end": load_average()}
        json_path, md_path = write_part(result, out)
        results[name] = result
        options.say(f"wrote {json_path} and {md_path} ({result['seconds']:.0f} s)")
    if options.progress:
        targets = [t for r in results.values() for t in r["targets"]]
        if targets:
            print("\n" + "\n".join(targets_table(targets)))
    return results


if __name__ == "__main__":
    main()
