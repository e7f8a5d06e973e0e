"""Experiments: one run (train, evaluate, analyse the experts) and comparisons, cached on disk.

Everything that shows a result — the CLI, the report, the widgets, the notebooks — calls these
functions, so a finished run is computed once and replayed from its cache folder afterwards.
A run's cache key is a hash of its fully resolved configuration, ``SCHEMA_VERSION`` and the
numerics fingerprint (``provenance.numerics_fingerprint``): a change that makes the library compute
other numbers retires older cached runs by itself. Each fresh run records in ``RunResult.meta`` the
code (commit, dirty flag, fingerprint), the data files' hashes, the environment and the command.

Profiles (``OMOE_LAB_PROFILE=ci|quick|learn|full`` or ``profile=``) set every size at once:
``ci`` fits CI and notebook tests on 2 CPU cores, ``quick`` is a learner's laptop run,
``learn`` the CPU setting where fine-tuning moved accuracy most (the rank objective), ``full`` is the
paper's setting for a GPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from . import __version__, provenance
from .adapters import AdapterConfig
from .adapters.config import DEFAULT_B_INIT_STD, METHODS, ORTHOGONAL_METHODS, RANK_ONE_METHODS
from .analysis.diversity import layer_diversity
from .analysis.merging import collapse_cost
from .analysis.stats import paired_test, t_interval, wilson_interval  # noqa: F401 (paired_test: public here too)
from .data.collate import encode_prompt, pad_rows, pad_token_id
from .data.prompts import PROMPT_STYLES
from .data.tasks import TASK_NAMES, load_tasks
from .evaluate import PROTOCOLS, evaluate, majority_baseline, score_all_ways
from .inject import attach_adapters, detach_adapters, save_adapters, trainable_parameters
from .io import atomic_write_text, writable_folder
from .prefix import FrozenPrefix, supports_prefix_cache
from .train import OBJECTIVES, TrainConfig, train

# Part of every run's cache key: raise it whenever a change makes a run compute other numbers, so
# older cached runs are never replayed as if they were new. 2: per-sequence prefix states replayed
# on every pass, prompt styles, a fixed random test subset, zero-shot baselines, debiased CKA.
# 3: a dev split carved from each train file (training reads the rest), the rank objective.
SCHEMA_VERSION = 3
# The prompt style of loglik runs (training and scoring), chosen by measurement (docs/decisions.md);
# the label and generate protocols need the listed options
DEFAULT_PROMPT_STYLE = {"loglik": "cloze", "label": "listed", "generate": "listed"}
TEST_SUBSET_SEED = 0
VARIANT_DEFAULTS = {"shared_expert": False, "null_experts": 0, "orthogonality_penalty": 0.0}
# RunConfig fields left out of the cache key at these values, so that keys made before they existed stay valid
KEY_DEFAULTS = {**VARIANT_DEFAULTS, "collapse_cost": False}

@dataclass(frozen=True)
class Profile:
    """Sizes for one budget. ``top_blocks``: adapt only the top N transformer blocks (None: all)."""

    name: str
    top_blocks: int | None
    target_modules: tuple[str, ...]
    rank: int
    steps: int
    batch_size: int
    lr: float
    magnitude_lr: float
    train_per_task: int | None
    eval_per_task: int | None
    capture_tokens: int
    max_length: int
    description: str
    objective: str = "lm"  # TrainConfig's: "lm" (the answer's likelihood) or "rank" (rank classification)
    unlikelihood: float = 0.0


ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

PROFILES = {
    "ci": Profile(
        "ci", top_blocks=2, target_modules=ALL_PROJECTIONS, rank=4, steps=40, batch_size=8, lr=1e-3,
        magnitude_lr=5e-2, train_per_task=40, eval_per_task=24, capture_tokens=256, max_length=192,
        description="the smallest real run: CI and notebook tests on 2 CPU cores",
    ),
    "quick": Profile(
        "quick", top_blocks=4, target_modules=ALL_PROJECTIONS, rank=4, steps=120, batch_size=8, lr=1e-3,
        magnitude_lr=5e-2, train_per_task=100, eval_per_task=32, capture_tokens=512, max_length=256,
        description="a learner's CPU laptop run (minutes)",
    ),
    "learn": Profile(
        "learn", top_blocks=4, target_modules=ALL_PROJECTIONS, rank=4, steps=200, batch_size=8, lr=1e-3,
        magnitude_lr=5e-2, train_per_task=1600, eval_per_task=600, capture_tokens=512, max_length=256,
        objective="rank",
        description="the CPU setting where fine-tuning moved accuracy most (rank objective, one epoch of 1600 Social "
        "IQa questions; chosen on dev; not significantly above the best zero-shot way on test, docs/results.md)",
    ),
    "full": Profile(
        "full", top_blocks=None, target_modules=ALL_PROJECTIONS, rank=16, steps=2000, batch_size=16, lr=2e-4,
        magnitude_lr=2e-3, train_per_task=None, eval_per_task=None, capture_tokens=2048, max_length=512,
        description="the paper's setting (r=16, alpha=32, lr 2e-4, batch 16) for a GPU",
    ),
}


def profile_from_env(name: str | None = None) -> Profile:
    """The named profile, else ``$OMOE_LAB_PROFILE``, else ``quick``."""
    name = name or os.environ.get("OMOE_LAB_PROFILE") or "quick"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {list(PROFILES)}")
    return PROFILES[name]


@dataclass
class RunConfig:
    """One experiment. ``None`` fields take the profile's value; ``method="none"`` is zero-shot.

    Training teaches what the protocol scores: the option text under ``loglik`` (the default,
    and the protocol a 135M model does best with), the label word under ``label``.

    For ``method="lora"`` the rank is ``num_experts × rank`` so that LoRA has the same A/B
    parameter budget as the mixtures it is compared with. For ``method="smora"`` every expert has
    rank 1 (the profile's rank does not apply), so ``num_experts`` is the LoRA's total rank: 16
    rank-1 experts have the A/B budget of LoRA r = 16 and of 4 experts of rank 4.
    """

    method: str = "omoe"
    num_experts: int = 4
    top_k: int | None = None
    orthogonalize: str | None = "stiefel"
    seed: int = 0
    profile: str | None = None
    model: str = "default"
    tasks: tuple[str, ...] = tuple(TASK_NAMES)
    data_dir: str | None = None
    protocol: str = "loglik"
    rank: int | None = None
    top_blocks: int | None = None
    target_modules: tuple[str, ...] | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    magnitude_lr: float | None = None
    train_per_task: int | None = None
    eval_per_task: int | None = None
    capture_tokens: int | None = None
    max_length: int | None = None
    objective: str | None = None  # TrainConfig's "lm" or "rank" (None: the profile's)
    unlikelihood: float | None = None
    eval_split: str = "test"  # "dev" for every choice (prompt, baseline, regime); "test" only to score
    b_init_std: float | None = None  # AdapterConfig's (None: the method's default); > 0 for "moe" is the random-start control
    prompt_style: str | None = None  # None: cloze under loglik, listed under label / generate
    diversity_every: int | None = None  # measure the experts' diversity every K training steps
    # the variants (AdapterConfig's): an always-active expert, null experts, an orthogonality penalty
    shared_expert: bool = False
    null_experts: int = 0
    orthogonality_penalty: float = 0.0
    # after training, score the mixture merged into one LoRA and without each expert (E <= 4): analysis.merging
    collapse_cost: bool = False

    def check(self) -> None:
        """Refuse a configuration that cannot run, before any model is loaded or trained."""
        if self.method not in ("none", *METHODS):
            raise ValueError(f"unknown method {self.method!r}: choose one of {['none', *METHODS]} (none = zero-shot)")
        if self.prompt_style is not None and self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"unknown prompt style {self.prompt_style!r}: choose one of {list(PROMPT_STYLES)}")
        if self.eval_split not in ("dev", "test"):
            raise ValueError(f"eval_split must be 'dev' (to choose) or 'test' (to score), got {self.eval_split!r}")
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}: choose one of {list(OBJECTIVES)}")
        if self.objective == "rank" and self.protocol != "loglik":
            raise ValueError("the rank objective ranks options by their log-likelihood: use it with protocol 'loglik'")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}: choose one of {list(PROTOCOLS)}")
        if not self.tasks:
            raise ValueError(f"no tasks given; known tasks: {', '.join(TASK_NAMES)}")
        if self.prompt_style == "cloze" and self.protocol != "loglik":
            raise ValueError(f"the cloze prompt does not show the options, so protocol {self.protocol!r} cannot name them: use loglik")
        if self.method in RANK_ONE_METHODS and self.rank not in (None, 1):
            raise ValueError(f"method={self.method!r} has rank-1 experts, got rank={self.rank}: leave rank out and set "
                             "num_experts to the total rank (e.g. num_experts=16, top_k=4)")
        if self.method != "none" and self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        if self.method not in ("none", "lora") and self.top_k is not None and not 1 <= self.top_k <= self.num_experts + self.null_experts:
            raise ValueError(f"top_k={self.top_k} must be between 1 and num_experts={self.num_experts}"
                             + (f" + null_experts={self.null_experts}" if self.null_experts else ""))

    def resolved(self) -> "RunConfig":
        """A copy with every size filled from the profile (and the profile's name fixed)."""
        self.check()
        profile = profile_from_env(self.profile)
        values = dataclasses.asdict(self)
        for name in ("rank", "top_blocks", "target_modules", "steps", "batch_size", "lr", "magnitude_lr",
                     "train_per_task", "eval_per_task", "capture_tokens", "max_length", "objective", "unlikelihood"):
            if values[name] is None:
                values[name] = getattr(profile, name)
        values["profile"] = profile.name
        if self.method in RANK_ONE_METHODS:
            values["rank"] = 1  # the profile's rank is per expert, and these experts have rank 1
        values["prompt_style"] = self.prompt_style or DEFAULT_PROMPT_STYLE[self.protocol]
        values["tasks"] = tuple(values["tasks"])
        values["target_modules"] = tuple(values["target_modules"])
        if self.method not in ORTHOGONAL_METHODS:
            values["orthogonalize"] = None
        if self.method in ("lora", "none"):
            values.update(top_k=None, collapse_cost=False)  # no experts to merge
        if values["protocol"] != "loglik" and self.objective is None:
            values.update(objective="lm", unlikelihood=0.0)  # a profile's rank objective needs loglik
        if values["objective"] == "lm":
            values["unlikelihood"] = 0.0
        if self.method == "none":
            values.update(num_experts=0, steps=0, b_init_std=None, objective=None, unlikelihood=None)
        elif values["b_init_std"] is None:  # filled in, so that equal runs share a cache key
            values["b_init_std"] = DEFAULT_B_INIT_STD[self.method]
        return RunConfig(**values)

    def key(self) -> str:
        fields = dataclasses.asdict(self.resolved())
        for name, default in KEY_DEFAULTS.items():  # left out at their defaults: older keys stay valid
            if fields[name] == default:
                del fields[name]
        # the fingerprint, read through the module so that tests (and a notebook) can replace it
        payload = json.dumps({"version": __version__, "schema": SCHEMA_VERSION, "numerics": provenance.numerics_fingerprint(), **fields},
                             sort_keys=True, default=list)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def adapter_config(self, num_blocks: int) -> AdapterConfig:
        c = self.resolved()
        first = 0 if c.top_blocks is None else max(0, num_blocks - c.top_blocks)
        rank = adapter_rank(c)
        return AdapterConfig(
            method=c.method, num_experts=max(c.num_experts, 1), rank=rank, alpha=2 * rank, top_k=c.top_k,
            orthogonalize=c.orthogonalize or "stiefel", target_modules=list(c.target_modules),
            layers=list(range(first, num_blocks)), seed=c.seed, b_init_std=c.b_init_std,
            shared_expert=c.shared_expert, null_experts=c.null_experts, orthogonality_penalty=c.orthogonality_penalty,
        )

    def train_config(self) -> TrainConfig:
        c = self.resolved()
        return TrainConfig(
            steps=c.steps, batch_size=c.batch_size, lr=c.lr, magnitude_lr=c.magnitude_lr, seed=c.seed,
            max_length=c.max_length, warmup_steps=max(1, c.steps // 10),
            target="option" if c.protocol == "loglik" else "label",  # train on what is scored
            objective=c.objective, unlikelihood=c.unlikelihood,
            prompt_style=c.prompt_style, diversity_every=c.diversity_every,
        )

    def label(self) -> str:
        """What a reader calls the run; dev-split runs say so, so that no table mixes them with test runs."""
        c = self.resolved()
        return self._name(c) + (" [dev]" if c.eval_split == "dev" else "")

    @staticmethod
    def _name(c: "RunConfig") -> str:
        if c.method == "none":
            return "zero-shot"
        start = f", B ~ N(0, {c.b_init_std}²)" if c.b_init_std != DEFAULT_B_INIT_STD[c.method] else ""
        if c.method == "lora":
            return f"LoRA r={adapter_rank(c)}{start}"
        routing = f"top-{c.top_k}" if c.top_k else "soft"
        name = {"moe": "MoE-LoRA", "omoe": f"OMoE ({c.orthogonalize})", "mixlora": "MixLoRA",
                "omoe_mixlora": f"MixLoRA + OMoE ({c.orthogonalize})", "smora": "SMoRA (rank-1 experts)"}[c.method]
        extras = "".join([", shared expert" if c.shared_expert else "", f", +{c.null_experts} null" if c.null_experts else "",
                          f", orthogonality penalty {c.orthogonality_penalty:g}" if c.orthogonality_penalty else ""])
        return f"{name} E={c.num_experts} {routing}{extras}{start}"


def adapter_rank(config: RunConfig | dict) -> int | None:
    """The rank each adapter layer gets: ``rank`` (r) per expert for a mixture, E·r for LoRA, the
    A/B budget of the E-expert mixtures it is compared with (``RunConfig``'s rule); None for
    zero-shot or an unresolved rank. ``config``: a resolved ``RunConfig`` or a run's config dict."""
    get = config.get if isinstance(config, dict) else lambda name: getattr(config, name)
    if get("method") == "none" or get("rank") is None:
        return None
    return get("rank") * get("num_experts") if get("method") == "lora" else get("rank")


@dataclass
class RunResult:
    """What one run produced; every field is JSON-friendly and saved in ``folder/result.json``."""

    config: dict[str, Any]
    key: str
    label: str
    metrics: dict[str, Any]
    history: list[dict] = field(default_factory=list)
    routing: list[dict] = field(default_factory=list)
    experts: list[dict] = field(default_factory=list)
    embedding: list[dict] = field(default_factory=list)
    diversity: list[dict] = field(default_factory=list)  # over training: {"step", measures..., "per_layer"}
    collapse: dict[str, Any] = field(default_factory=dict)  # analysis.merging.collapse_cost, when the config asks
    parameters: dict[str, Any] = field(default_factory=dict)
    # provenance of a fresh run: {"code", "data", "environment", "command"} (empty in older results)
    meta: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    folder: str | None = None
    from_cache: bool = False

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data.pop("from_cache")
        return json.dumps(data, indent=1)


def default_cache_dir() -> Path:
    return Path(os.environ.get("OMOE_LAB_RUNS", "runs")) / "cache"


# --- one run ------------------------------------------------------------------------------
def run(
    config: RunConfig,
    *,
    cache_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    model=None,
    tokenizer=None,
    prefix: FrozenPrefix | None = None,
    record_dir: str | Path | None = None,
) -> RunResult:
    """Train, evaluate and analyse one configuration, or replay it from the cache.

    Pass ``model``/``tokenizer`` to reuse a loaded base model (its adapters are detached again
    at the end), and a ``FrozenPrefix`` of that model so runs share the frozen blocks' work.
    ``record_dir``: also write the run's ``result.json`` there as ``<key>.json`` (a replayed run's
    too, if missing), to commit as each run of a long grid finishes: the whole result but the
    adapters and its t-SNE points (``RECORD_OMITS``); copied back as ``<cache>/<key>/result.json``
    it replays the run with an empty embedding.
    """
    from .models import load_model

    resolved = config.resolved()
    key = config.key()
    folder = Path(cache_dir or default_cache_dir()) / key
    if record_dir is not None:
        writable_folder(record_dir, fix="choose another record folder")
    if (folder / "result.json").is_file() and not force:
        if record_dir is not None and not (Path(record_dir) / f"{key}.json").is_file():
            _write_record(record_dir, key, (folder / "result.json").read_text(encoding="utf-8"))
        return _read_result(folder)
    started = time.perf_counter()
    if model is None:
        model, tokenizer = load_model(resolved.model, progress=progress)
    test = test_examples(resolved)
    # through JSON, so that a fresh result equals its replay from the cache (tuples become lists)
    result = RunResult(config=json.loads(json.dumps(dataclasses.asdict(resolved))), key=key, label=config.label(), metrics={})
    if resolved.method != "none":
        train_examples = load_tasks(list(resolved.tasks), "train", resolved.data_dir, limit_per_task=resolved.train_per_task, seed=resolved.seed)
        attach_adapters(model, config.adapter_config(model.config.num_hidden_layers))
    if prefix is None:
        prefix = frozen_prefix_for(model, resolved)
    try:
        with prefix.active() if prefix else contextlib.nullcontext():
            if resolved.method != "none":
                summary = trainable_parameters(model)
                result.parameters = {"trainable": summary.trainable, "total": summary.total, "percent": summary.percent, **summary.by_kind}
                probe = prompt_batches(tokenizer, spread(test, PROBE_PROMPTS), resolved.prompt_style) if resolved.method != "lora" else None
                trained = train(model, tokenizer, train_examples, config.train_config(), progress=progress, prefix=prefix, diversity_probe=probe)
                result.history, result.routing, result.diversity = trained.history, trained.routing, trained.diversity
            # whole (prompt + option) sequences replay the frozen blocks from the prefix cache
            full_sequences = prefix is not None and resolved.protocol == "loglik"
            if resolved.method == "none" and resolved.protocol == "loglik":
                # whole sequences (what the prefix cache keeps) only in the style fine-tuned runs score
                ways = score_all_ways(model, tokenizer, test, batch_size=16, progress=progress,
                                      full_sequences=[resolved.prompt_style] if full_sequences else False)
                scored = ways[f"{resolved.prompt_style}/mean"]
                majority = majority_baseline(load_tasks(list(resolved.tasks), "train", resolved.data_dir, shuffle=False), test)
                result.metrics["baselines"] = {name: _scores(way) for name, way in {**ways, "majority": majority}.items()}
            else:
                def score_test():
                    return evaluate(model, tokenizer, test, protocol=resolved.protocol, batch_size=16, progress=progress,
                                    prompt_style=resolved.prompt_style, full_sequences=full_sequences)
                scored = score_test()
            result.metrics.update({
                **_scores(scored), "protocol": scored.protocol, "prompt_style": resolved.prompt_style, "n": scored.n,
                "n_per_task": _count_by_task(test), "chance_per_task": scored.chance,
                "chance": sum(1 / len(ex.options) for ex in test) / len(test),  # uniform guessing
                "questions": [question_id(ex) for ex in test],  # which questions ``correct`` refers to
            })
            if resolved.method not in ("none", "lora"):  # a single LoRA has no experts to compare
                captured = capture_for_analysis(model, tokenizer, test, resolved, progress)
                result.experts, result.embedding = analyse_experts(captured, resolved)
                if resolved.collapse_cost:
                    def score_variant():
                        variant = score_test()
                        return variant.accuracy, [int(p.correct) for p in variant.predictions]
                    result.collapse = collapse_cost(model, captured, scored.accuracy, score_variant)
        if resolved.method != "none":
            folder.mkdir(parents=True, exist_ok=True)
            save_adapters(model, folder / "adapters")
    finally:
        if resolved.method != "none":
            detach_adapters(model)
    result.seconds = time.perf_counter() - started
    result.meta = run_meta(resolved)
    folder.mkdir(parents=True, exist_ok=True)
    text = result.to_json() + "\n"
    atomic_write_text(folder / "result.json", text)
    if record_dir is not None:
        _write_record(record_dir, key, text)
    result.folder = str(folder)
    return result


def run_meta(config: RunConfig) -> dict[str, Any]:
    """Where a run's numbers come from: the code (commit, dirty flag, version, numerics
    fingerprint), the SHA-256 of each data file it read, the environment and the command."""
    c = config.resolved()
    # zero-shot reads the train split only for the majority baseline of the loglik protocol
    reads_train = c.method != "none" or c.protocol == "loglik"
    splits = (c.eval_split, "train") if reads_train else (c.eval_split,)
    return {"code": provenance.code_identity(), "data": provenance.data_hashes(c.tasks, c.data_dir, splits),
            "environment": provenance.environment(), "command": list(sys.argv)}


# left out of a run's record: the t-SNE points (hundreds of KB a run; the analysis redraws them
# from the cached run) — the record keeps what the statistics re-test: metrics, answers, diversity
RECORD_OMITS = ("embedding",)


def _write_record(record_dir: str | Path, key: str, text: str) -> None:
    data = {k: v for k, v in json.loads(text).items() if k not in RECORD_OMITS}
    atomic_write_text(Path(record_dir) / f"{key}.json", json.dumps(data, indent=1) + "\n")


def best_baselines(zero: RunResult, chosen_on: RunResult | None = None) -> dict[str, Any]:
    """The zero-shot run's baselines (every prompt style × normalization, PMI, the majority
    answer) and, per task, the best of them, named.

    ``chosen_on``: the same zero-shot configuration scored on the dev split. The best way of
    each task is then chosen by its *dev* accuracy and scored on ``zero``'s test questions, so no
    choice reads the test answers. Without it the best way is picked on the test questions
    themselves (``"chosen_on": "test"``): that flatters the baselines, a fine-tuned run that beats
    it beats each of them, but its accuracy is not an honest estimate.

    ``best_per_task_correct`` is right/wrong per question of ``zero`` under that per-task best.
    """
    ways = zero.metrics.get("baselines")
    if not ways:
        raise ValueError(f"{zero.label} has no baselines: it is not a loglik zero-shot run of schema {SCHEMA_VERSION}")
    choosing = ways
    if chosen_on is not None:
        choosing = chosen_on.metrics.get("baselines") or {}
        if chosen_on.config.get("eval_split") != "dev" or set(choosing) != set(ways):
            raise ValueError(f"chosen_on must be the same zero-shot configuration scored on the dev split (eval_split='dev'), "
                             f"got {chosen_on.label} on {chosen_on.config.get('eval_split', 'test')!r}")
    best_per_task = {}
    for task in zero.metrics["per_task"]:
        name = max(choosing, key=lambda n: choosing[n]["per_task"][task])  # ties: the first way listed
        best_per_task[task] = {"baseline": name, "accuracy": ways[name]["per_task"][task]}
        if chosen_on is not None:
            best_per_task[task]["dev_accuracy"] = choosing[name]["per_task"][task]
    best_overall = max(choosing, key=lambda n: choosing[n]["accuracy"])
    tasks = [task for task, count in zero.metrics["n_per_task"].items() for _ in range(count)]  # test order
    return {
        "chosen_on": "dev" if chosen_on is not None else "test",
        "ways": {name: {"accuracy": w["accuracy"], "per_task": w["per_task"]} for name, w in ways.items()},
        "best_per_task": best_per_task,
        "best_overall": {"baseline": best_overall, "accuracy": ways[best_overall]["accuracy"]},
        "best_per_task_correct": [ways[best_per_task[task]["baseline"]]["correct"][i] for i, task in enumerate(tasks)],
    }


def frozen_prefix_for(model, config: RunConfig) -> FrozenPrefix | None:
    """A frozen-prefix cache below the adapted blocks, when the profile adapts only the top ones."""
    num_blocks = model.config.num_hidden_layers
    top = config.resolved().top_blocks
    if top is None or top >= num_blocks or not supports_prefix_cache(model):
        return None
    return FrozenPrefix(model, num_blocks - top)


def capture_for_analysis(model, tokenizer, test: Sequence, config: RunConfig, progress: bool = True):
    """The experts' outputs on up to ``capture_tokens`` tokens of ``ANALYSIS_PROMPTS`` test prompts
    spread over the test list, tokenized as the scorers do (``analysis.capture_experts``)."""
    from .analysis import capture_experts

    batches = prompt_batches(tokenizer, spread(test, ANALYSIS_PROMPTS), config.prompt_style)
    return capture_experts(model, batches, max_tokens=config.capture_tokens, seed=config.seed, progress=progress)


def analyse_experts(captured, config: RunConfig) -> tuple[list[dict], list[dict]]:
    """Per adapted layer: expert similarity, effective rank, Stiefel error and routing on held-out text.

    Diversity is measured on the raw outputs e_i across tokens (OMOE_SPEC §6); the q_i are only
    checked for orthonormality, which holds by construction. Also returns a 2-D t-SNE of the
    top adapted layer's expert outputs (one row per token × expert).
    """
    from .analysis import direction_stiefel_error, embed, expert_load, routing_entropy, routing_summary

    load_by_task = routing_summary(captured).groupby(["layer", "task"])["load"].apply(list)
    rows = []
    for name, layer in captured.layers.items():
        outputs = layer.expert_outputs
        row = {"layer": name, "block": layer.layer_index, "method": layer.method, "experts": layer.num_experts, "tokens": len(outputs)}
        if layer.num_experts > 1:
            silent = (outputs.abs().amax(dim=(0, 2)) == 0).nonzero().flatten().tolist()
            if silent:
                # an expert that no token selected in training still has its B = 0 start: its outputs have no
                # direction and no variance, so cosine and CKA are undefined (measure_diversity skips such layers
                # too). Likeliest with many small experts under top-k in a short run (SMoRA, 16 ranks, top-4)
                row["zero_experts"] = silent
            else:
                row.update(layer_diversity(outputs))
            row["routing_entropy"] = routing_entropy(layer.gates, normalized=True)
            row["load"] = expert_load(layer.gates).tolist()
            row["load_by_task"] = {task: loads for (lname, task), loads in load_by_task.items() if lname == name}
        if layer.orthogonal_outputs is not None:
            row["stiefel_error"] = direction_stiefel_error(layer.orthogonal_outputs)
        rows.append(row)
    top = max(captured.layers.values(), key=lambda layer: (layer.layer_index or 0, layer.name))
    embedding = []
    if top.num_experts > 1:
        tasks = [captured.task_names[c] if c >= 0 else "" for c in captured.task_codes.tolist()]
        frame = embed(top.expert_outputs, method="tsne", random_state=config.seed, metadata={"task": tasks})
        frame["layer"] = top.name
        embedding = frame.to_dict(orient="records")
    return rows, embedding


def test_examples(config: RunConfig) -> list:
    """The questions a run is scored on, from its ``eval_split`` (test, or dev while choosing): a
    fixed random subset of ``eval_per_task`` per task (the same for every method and seed; not the
    first N, which can be ordered by source or answer), in task order."""
    c = config.resolved()
    examples = load_tasks(list(c.tasks), c.eval_split, c.data_dir, shuffle=False)
    if c.eval_per_task is None:
        return examples
    chosen = []
    for task in c.tasks:
        mine = [ex for ex in examples if ex.task == task]
        keep = sorted(random.Random(f"{TEST_SUBSET_SEED}/{task}").sample(range(len(mine)), min(c.eval_per_task, len(mine))))
        chosen += [mine[i] for i in keep]
    return chosen


def question_id(example) -> str:
    """A short stable id of a test question (task, question, options), so pairings can be checked."""
    return hashlib.sha256(f"{example.task}\x1f{example.question}\x1f{example.options}".encode()).hexdigest()[:12]


# Held-out prompts the experts are measured on, evenly spread over the test questions (so over the
# tasks): the final analysis samples ``capture_tokens`` tokens from them, the diversity-over-training
# probe uses fewer, since it runs every ``diversity_every`` steps. Capturing materializes every
# expert's output for every token read, so reading all test prompts to sample 512 tokens would
# cost minutes per run on a CPU.
ANALYSIS_PROMPTS = 128
PROBE_PROMPTS = 16


def spread(examples: Sequence, count: int) -> list:
    """``count`` examples evenly spaced over the whole list (all of them if there are fewer):
    index ⌊i·n/count⌋ for i < count. Test lists are grouped by task, so an integer step
    (n // count, 1 for 192 → 128) would take the first ``count`` and leave the last tasks out."""
    n = len(examples)
    if n <= count:
        return list(examples)
    return [examples[i * n // count] for i in range(count)]


def prompt_batches(tokenizer, examples, style: str, batch_size: int = 16) -> list[dict]:
    """Prompts tokenized as the scorers do, right-padded (positions count from 0), with task names."""
    pad_id = pad_token_id(tokenizer)
    prompts = [encode_prompt(tokenizer, ex, style) for ex in examples]
    batches = []
    for i in range(0, len(examples), batch_size):
        ids, mask = pad_rows(prompts[i : i + batch_size], pad_id)
        batches.append({"input_ids": ids, "attention_mask": mask, "task": [ex.task for ex in examples[i : i + batch_size]]})
    return batches


def _scores(scored) -> dict[str, Any]:
    """Accuracy, per task, which questions were right and the option each answered (in test order,
    for paired tests and for re-scoring a question without the model)."""
    return {"accuracy": scored.accuracy, "per_task": scored.per_task, "correct": [int(p.correct) for p in scored.predictions],
            "answers": [int(p.prediction) for p in scored.predictions]}


def _count_by_task(examples) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ex in examples:
        counts[ex.task] = counts.get(ex.task, 0) + 1
    return counts


def _read_result(folder: Path) -> RunResult:
    data = json.loads((folder / "result.json").read_text())
    data["folder"] = str(folder)
    return RunResult(**data, from_cache=True)


# --- comparisons ----------------------------------------------------------------------------
def compare(
    methods: Sequence[str] = ("lora", "moe", "omoe"),
    num_experts: Iterable[int] = (4,),
    seeds: Iterable[int] = (0,),
    *,
    zero_shot: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    **common,
) -> tuple[pd.DataFrame, list[RunResult]]:
    """Run every (method, expert count, seed) once — cached — and return a tidy table + the runs.

    The table has one row per run and task (task ``"all"`` is the overall accuracy) with the
    protocol, prompt style and number of test examples next to every accuracy.
    """
    configs = [RunConfig(method="none", **common)] if zero_shot else []
    configs += [RunConfig(method=m, num_experts=e, seed=s, **common) for m in methods for e in num_experts for s in seeds]
    results = run_all(configs, cache_dir=cache_dir, progress=progress)
    return results_table(results), results


def run_all(configs: Sequence[RunConfig], *, cache_dir: str | Path | None = None, progress: bool = True,
            record_dir: str | Path | None = None) -> list[RunResult]:
    """Run each configuration (or replay it from the cache) on one loaded model, with one
    progress bar over the whole list; every configuration is checked before the first runs.
    ``record_dir``: each run's result is also written there as ``<key>.json`` when it finishes
    (see :func:`run`), so a grid interrupted by a lost machine keeps every finished run.

    All runs share one frozen-prefix cache (they adapt the same top blocks of the same model);
    its states depend on each sequence alone, so a run's numbers do not depend on the order.
    """
    from tqdm.auto import tqdm

    from .models import load_model

    for config in configs:
        config.resolved()  # bad input fails here, before any work
    if record_dir is not None:
        writable_folder(record_dir, fix="choose another record folder")
    loaded, prefix, results = None, None, []
    bar = tqdm(configs, desc="runs", unit="run", disable=not progress, dynamic_ncols=True)
    for config in bar:
        bar.set_postfix_str(config.label(), refresh=True)
        cached = Path(cache_dir or default_cache_dir()) / config.key() / "result.json"
        if loaded is None and not cached.is_file():
            loaded = load_model(config.resolved().model, progress=progress)
            prefix = frozen_prefix_for(loaded[0], config)
        model, tokenizer = loaded if loaded else (None, None)
        results.append(run(config, cache_dir=cache_dir, progress=progress, model=model, tokenizer=tokenizer, prefix=prefix,
                           record_dir=record_dir))
    bar.close()
    return results


def results_table(results: Sequence[RunResult]) -> pd.DataFrame:
    rows = []
    for r in results:
        c, m = r.config, r.metrics
        base = {"label": r.label, "method": c["method"], "num_experts": c["num_experts"], "seed": c["seed"],
                "protocol": m["protocol"], "prompt_style": m.get("prompt_style", "listed"), "profile": c["profile"]}
        rows.append({**base, "task": "all", "accuracy": m["accuracy"], "n": m["n"]})
        rows += [{**base, "task": t, "accuracy": a, "n": m["n_per_task"][t]} for t, a in m["per_task"].items()]
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy over seeds with a 95 % interval: Student-t over seeds when there are several,
    else the Wilson score interval over the test examples of the single run."""
    keys = [k for k in ("label", "method", "num_experts", "protocol", "prompt_style", "task") if k in table]
    out = []
    for group, part in table.groupby(keys, sort=False):
        seeds, n = len(part), int(part["n"].iloc[0])
        if seeds > 1:
            mean, low, high = t_interval(part["accuracy"].tolist())
            kind = "t over seeds"
        else:
            mean = float(part["accuracy"].iloc[0])
            low, high = wilson_interval(mean, n)
            kind = "Wilson over examples"
        out.append({**dict(zip(keys, group)), "accuracy": mean, "low": low, "high": high, "seeds": seeds, "n": n, "interval": kind})
    return pd.DataFrame(out)
