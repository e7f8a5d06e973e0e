"""Fine-tune the adapters of a model on a list of examples, on Accelerate.

The same code runs on a CPU, one GPU, or several processes (``accelerate launch`` / ``torchrun``):
``batch_size`` is the *global* batch of one optimizer step, split evenly over processes and
gradient-accumulation micro-steps, and the loss is the mean over every answer token of that
global batch, so one process and N processes take exactly the same steps.

Checkpoints (adapters, optimizer, scheduler, RNG states, step) are written atomically every
``checkpoint_every`` steps and when Ctrl-C is pressed; ``resume_from`` continues a run so that it
ends with the same weights as an uninterrupted one.

Frozen-prefix cache (``omoe_lab.prefix``): when the adapters sit only in blocks ≥ k, the hidden
states entering block k never change, so they are recorded the first time an example is seen and
every later pass over it runs blocks k… only.

Trackers (``TrainConfig(log_with="tensorboard")``, or ``"wandb"``... any Accelerate tracker): the
loss, the router's auxiliary loss, each parameter group's learning rate, the routing entropy and
the experts' diversity are logged under ``out_dir/logs`` through Accelerate's tracker API. Logging
only reads what the run computes anyway, so a run ends with the same weights with or without it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import shutil
import signal
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .data.collate import encode_choices, encode_example, pad_encoded, pad_rows, pad_token_id
from .data.example import Example
from .inject import adapter_layers, load_adapters, router_aux_loss, save_adapters
from .analysis.diversity import measure_diversity
from .io import atomic_write_text, writable_folder
from .models import set_seed
from .prefix import FrozenPrefix, first_adapted_block, supports_prefix_cache

@dataclass
class TrainConfig:
    """How to train. ``batch_size`` is global: examples per optimizer step over all processes.

    ``objective``: ``"lm"`` raises the likelihood of the answer's ``target`` text; ``"rank"`` is
    rank classification (T-Few, Liu et al. 2022): cross-entropy over the options' per-token-mean
    log-likelihoods, the very numbers the ``loglik`` scorer takes the argmax of, plus
    ``unlikelihood`` × the unlikelihood loss of the wrong options' tokens.

    ``log_with``: Accelerate tracker name(s) (``"tensorboard"``, ``"wandb"``, ``["tensorboard",
    "mlflow"]``...) to log the run to, under ``train``'s ``out_dir/logs``; ``None`` logs nothing.
    """

    steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    router_lr: float | None = None
    magnitude_lr: float | None = None
    weight_decay: float = 0.0
    warmup_steps: int = 10
    max_grad_norm: float | None = 1.0
    max_length: int = 256
    target: str = "label"
    objective: str = "lm"
    unlikelihood: float = 0.0
    seed: int = 0
    routing_every: int = 10
    diversity_every: int | None = None
    checkpoint_every: int | None = None
    prefix_cache: bool = True
    prefix_cache_dtype: str = "float16"
    mixed_precision: str = "auto"
    prompt_style: str = "listed"
    log_with: str | list[str] | None = None

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "max_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.diversity_every is not None and self.diversity_every < 1:
            raise ValueError(f"diversity_every must be >= 1 (measure every that many steps) or None, got {self.diversity_every}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES} ('lm': likelihood of the target; 'rank': softmax over the "
                             f"options' per-token-mean log-likelihoods, what the loglik scorer decides by), got {self.objective!r}")
        if self.unlikelihood < 0 or (self.unlikelihood and self.objective != "rank"):
            raise ValueError(f"unlikelihood must be >= 0 and only set with objective='rank', got {self.unlikelihood} with {self.objective!r}")
        if self.target not in ("label", "option"):
            raise ValueError(f"target must be 'label' (train on the answer's label word) or 'option' (its text), got {self.target!r}")
        if self.prefix_cache_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"prefix_cache_dtype must be float16, bfloat16 or float32, got {self.prefix_cache_dtype!r}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        if isinstance(self.log_with, tuple):
            self.log_with = list(self.log_with)
        names = [self.log_with] if isinstance(self.log_with, str) else self.log_with
        if names is not None and (not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names)):
            raise ValueError(f"log_with must be a tracker name such as 'tensorboard', a list of names, or None (no tracker), "
                             f"got {self.log_with!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    routing: list[dict[str, Any]] = field(default_factory=list)
    diversity: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    interrupted: bool = False


# --- the loop ---------------------------------------------------------------------------------
def train(
    model: nn.Module,
    tokenizer,
    examples: Sequence[Example],
    config: TrainConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    accelerator=None,
    progress: bool = True,
    stop_after: int | None = None,
    prefix: FrozenPrefix | None = None,
    diversity_probe: Sequence[dict] | None = None,
) -> TrainResult:
    """Train ``model``'s adapters on ``examples`` (loss on answer tokens only) and return the history.

    ``stop_after`` ends the run early after that many steps of this call (as if interrupted),
    writing a checkpoint when ``out_dir`` is set; ``resume_from`` (a run folder or checkpoint)
    continues it. Pass a ``FrozenPrefix`` to share one frozen-prefix cache between runs that
    train different adapters on the same model; by default the run makes its own when it can.

    ``diversity_probe`` (batches of held-out prompts, as ``capture_experts`` takes them) with
    ``config.diversity_every = K``: the raw experts' diversity is measured on it before the first
    step, every K steps and after the last, and kept in ``TrainResult.diversity``. It runs in eval
    mode without touching the random state, so training takes the same steps with or without it.

    ``config.log_with`` (or an enclosing ``log_training_to``) logs the run to trackers under
    ``out_dir/logs``; an ``accelerator`` passed in must have been made with ``log_with`` and its own
    ``project_dir``, where the logs then go.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    config = config or TrainConfig()
    if not adapter_layers(model):
        raise ValueError("the model has no adapters to train; call omoe_lab.attach_adapters first")
    if len(examples) == 0:
        raise ValueError("no training examples")
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        writable_folder(out_dir)
    log_with, logging_dir = _resolve_tracking(config, out_dir)
    if accelerator is None:
        trackers = {"log_with": log_with, "project_dir": logging_dir} if log_with else {}
        accelerator = Accelerator(mixed_precision=_mixed_precision(config.mixed_precision), **trackers)
    elif log_with and not accelerator.log_with:
        raise ValueError(f"log_with={log_with!r}, but the accelerator passed to train() has no trackers: make it with "
                         "Accelerator(log_with=..., project_dir=<logging folder>), or leave accelerator out")
    world = accelerator.num_processes
    per_micro, remainder = divmod(config.batch_size, world * config.grad_accum)
    if per_micro == 0 or remainder:
        raise ValueError(
            f"batch_size={config.batch_size} must be a multiple of processes × grad_accum = "
            f"{world} × {config.grad_accum}"
        )
    objective = _OBJECTIVES[config.objective](config)
    features = [objective.encode(tokenizer, ex) for ex in examples]
    fingerprint = run_fingerprint(model, config, features)
    resume_state = _read_checkpoint(resume_from, fingerprint) if resume_from else None

    set_seed(config.seed)
    pad_id = pad_token_id(tokenizer)
    device = accelerator.device
    model.to(device)
    start_block = first_adapted_block(model)
    if prefix is None and config.prefix_cache and start_block and supports_prefix_cache(model):
        prefix = FrozenPrefix(model, start_block, getattr(torch, config.prefix_cache_dtype))

    optimizer = torch.optim.AdamW(_param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config.warmup_steps, config.steps))
    # the scheduler stays unprepared: Accelerate would step it once per process
    train_model, optimizer = accelerator.prepare(model, optimizer)
    result = TrainResult()
    step = 0
    if resume_state is not None:
        load_adapters(model, resume_state["adapters"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        _set_rng_state(resume_state["rng"])
        step = resume_state["step"]
        result.history, result.routing = resume_state["history"], resume_state["routing"]
        result.diversity = resume_state.get("diversity", [])

    stop_at = config.steps if stop_after is None else min(config.steps, step + stop_after)
    bar = tqdm(total=config.steps, initial=step, desc="train", disable=not (progress and accelerator.is_main_process), dynamic_ncols=True)
    train_model.train()
    started = time.perf_counter()
    measure_every = config.diversity_every if diversity_probe else None

    def measure_diversity_at(at_step: int) -> None:
        if measure_every and not any(row["step"] == at_step for row in result.diversity):
            measured = measure_diversity(model, diversity_probe, seed=config.seed)
            train_model.train()
            if measured:  # empty while every expert is still zero (MoE-LoRA starts with B = 0)
                result.diversity.append({"step": at_step, **measured})
                if log_with:
                    accelerator.log(diversity_scalars(result.diversity[-1]), step=at_step)

    with prefix.active() if prefix else _nothing(), _deferred_interrupt() as interrupted, _trackers(accelerator, log_with, config, model):
        while step < stop_at and not interrupted():
            if measure_every and step % measure_every == 0:
                measure_diversity_at(step)
            tick = time.perf_counter()
            batch_ids = _global_batch(len(features), config.batch_size, step, config.seed)
            mine = batch_ids[accelerator.process_index * per_micro * config.grad_accum :][: per_micro * config.grad_accum]
            answer_tokens = sum(objective.units(features[i]) for i in batch_ids)  # what the loss is a mean over
            loss_sum, aux_sum, tokens_seen = 0.0, 0.0, 0
            record_routing = config.routing_every and step % config.routing_every == 0
            for micro in range(config.grad_accum):
                ids = mine[micro * per_micro : (micro + 1) * per_micro]
                batch = {k: v.to(device) for k, v in objective.collate([features[i] for i in ids], pad_id).items()}
                last = micro == config.grad_accum - 1
                probing = _routing_probe(model, batch["attention_mask"]) if record_routing and micro == 0 else _nothing()
                syncing = _nothing() if last else accelerator.no_sync(train_model)  # all-reduce once per step
                with syncing, accelerator.autocast(), probing as probe:
                    token_loss = objective.loss(train_model, batch)
                    aux = router_aux_loss(model, batch["attention_mask"]).to(device)
                    # sum over my answer tokens (questions) / all of the global batch; DDP averages
                    # gradients over processes, so scale by the world size to get the global mean
                    loss = (token_loss / answer_tokens + aux / (config.grad_accum * world)) * world
                    accelerator.backward(loss)
                loss_sum += token_loss.item()
                aux_sum += aux.item()
                tokens_seen += int(batch["attention_mask"].sum())
                if probe is not None:
                    result.routing.extend({"step": step, **row} for row in probe())
                    if log_with and (rows := probe()):
                        # at the step the rows carry: the forward that routed saw the weights after `step` updates
                        accelerator.log(routing_scalars(rows), step=step)
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            totals = accelerator.reduce(torch.tensor([loss_sum, aux_sum, tokens_seen], device=device, dtype=torch.float64), "sum")
            record = {
                "step": step,
                "loss": totals[0].item() / answer_tokens,
                "aux_loss": totals[1].item() / (config.grad_accum * world),
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": totals[2].item() / max(time.perf_counter() - tick, 1e-9),
            }
            result.history.append(record)
            if log_with:
                accelerator.log(step_scalars(record, optimizer.param_groups), step=step)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            bar.update(1)
            if out_dir is not None and config.checkpoint_every and step % config.checkpoint_every == 0:
                _write_checkpoint(accelerator, model, optimizer, scheduler, step, result, fingerprint, out_dir)
        result.interrupted = step < config.steps
        if step == config.steps:
            measure_diversity_at(step)
        if out_dir is not None and (result.interrupted or step == config.steps):
            _write_checkpoint(accelerator, model, optimizer, scheduler, step, result, fingerprint, out_dir)
        user_interrupt = interrupted()
    bar.close()
    result.steps, result.seconds = step, time.perf_counter() - started
    train_model.eval()
    model.eval()
    if user_interrupt:
        raise KeyboardInterrupt(f"training stopped at step {step}; resume with resume_from={out_dir}")
    return result


# --- batches ------------------------------------------------------------------------------------
def _global_batch(num_examples: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Example indices of step ``step``: epoch-wise shuffles, a pure function of (seed, step)."""
    start = step * batch_size
    indices = []
    while len(indices) < batch_size:
        epoch, offset = divmod(start + len(indices), num_examples)
        order = np.random.default_rng([seed, epoch]).permutation(num_examples)
        indices.extend(order[offset : offset + batch_size - len(indices)].tolist())
    return indices


def _count_answer_tokens(feature: dict) -> int:
    return sum(1 for t in feature["labels"][1:] if t != -100)


def _answer_token_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Sum of next-token cross-entropies over answer tokens (labels != -100).

    Only the positions that predict an answer token go through the output head
    (``logits_to_keep``): with a 49k vocabulary, full logits would cost more than the blocks.
    """
    targets = batch["labels"][:, 1:]
    keep = torch.nonzero((targets != -100).any(0)).flatten()  # positions predicting an answer token
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, logits_to_keep=keep).logits
    return nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets[:, keep].reshape(-1), ignore_index=-100, reduction="sum"
    )


class _LikelihoodObjective:
    """``"lm"``: the sum of next-token cross-entropies over the target's tokens, a mean per token."""

    def __init__(self, config: TrainConfig):
        self.config = config

    def encode(self, tokenizer, example: Example) -> dict:
        c = self.config
        return encode_example(tokenizer, example, c.max_length, target=c.target, prompt_style=c.prompt_style)

    units = staticmethod(_count_answer_tokens)
    collate = staticmethod(pad_encoded)
    loss = staticmethod(_answer_token_loss)


class _RankObjective:
    """``"rank"``: rank classification over each question's options, a mean per question.

    With ``ℓ_o = (1/L_o) Σ_t log p(c_o,t | x, c_o,<t)`` the per-token-mean log-likelihood of option
    ``o`` (the ``loglik`` scorer's ``mean``), a question's loss is ``−log softmax(ℓ)_gold`` plus
    ``unlikelihood × (−Σ_{o≠gold} Σ_t log(1 − p(c_o,t | …)) / Σ_{o≠gold} L_o)`` (T-Few's L_UL).
    All options of a question go through the model in one batch, left-padded so that every
    option ends at the last column and only the last ``max L`` positions reach the output head.
    """

    def __init__(self, config: TrainConfig):
        self.config = config

    def encode(self, tokenizer, example: Example) -> dict:
        return encode_choices(tokenizer, example, self.config.max_length, self.config.prompt_style)

    @staticmethod
    def units(feature: dict) -> int:
        return 1

    @staticmethod
    def collate(features: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
        rows = [row for f in features for row in f["rows"]]
        input_ids, attention_mask = pad_rows(rows, pad_id, left=True)
        return {
            "input_ids": input_ids, "attention_mask": attention_mask,
            "option_lengths": torch.tensor([n for f in features for n in f["option_lengths"]]),
            "question": torch.tensor([q for q, f in enumerate(features) for _ in f["rows"]]),
            "option": torch.tensor([o for f in features for o in range(len(f["rows"]))]),
            "gold": torch.tensor([f["gold"] for f in features]),
        }

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return rank_classification_loss(model, batch, self.config.unlikelihood)


def option_token_logprobs(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p`` of each option token [rows, K] (K = the longest option) and where it is real.

    Rows are left-padded, so option tokens fill the last ``L`` columns and are predicted by the
    ``K`` positions before the last; only those reach the vocabulary head.
    """
    ids, mask, lengths = batch["input_ids"], batch["attention_mask"], batch["option_lengths"]
    width, longest = ids.shape[1], int(lengths.max())
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # counted from each row's first real token
    keep = torch.arange(width - 1 - longest, width - 1, device=ids.device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=keep).logits
    real = torch.arange(longest, device=ids.device)[None] >= (longest - lengths)[:, None]
    targets = ids[:, width - longest :].masked_fill(~real, -100)
    logprobs = -nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
    ).view(targets.shape)
    return logprobs, real


def rank_classification_loss(model: nn.Module, batch: dict, unlikelihood: float = 0.0) -> torch.Tensor:
    """Sum over the batch's questions of the rank-classification loss (see ``_RankObjective``)."""
    logprobs, real = option_token_logprobs(model, batch)
    lengths, question, option, gold = batch["option_lengths"], batch["question"], batch["option"], batch["gold"]
    mean = logprobs.sum(-1) / lengths
    scores = mean.new_full((len(gold), int(option.max()) + 1), float("-inf"))  # a question's missing options: -inf
    scores = scores.index_put((question, option), mean)
    loss = nn.functional.cross_entropy(scores, gold, reduction="sum")
    if unlikelihood:
        wrong = (option != gold[question])[:, None] & real
        # log(1 − p), kept finite when p rounds to 1
        unlikely = -torch.log1p(-logprobs.exp().clamp(max=1 - 1e-6)) * wrong
        per_question = torch.zeros_like(scores[:, 0]).index_add(0, question, unlikely.sum(-1))
        wrong_tokens = torch.zeros_like(per_question).index_add(0, question, wrong.sum(-1).to(per_question.dtype))
        loss = loss + unlikelihood * (per_question / wrong_tokens.clamp_min(1)).sum()
    return loss


OBJECTIVES = ("lm", "rank")
_OBJECTIVES = {"lm": _LikelihoodObjective, "rank": _RankObjective}


# --- optimizer --------------------------------------------------------------------------------------
def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Adapter weights at ``lr``; router and magnitude parameters at their own rates if set."""
    groups: dict[str, list] = {"adapter": [], "router": [], "magnitude": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            kind = "router" if ".router." in name else "magnitude" if name.endswith("magnitude") else "adapter"
            groups[kind].append(p)
    rates = {"adapter": config.lr, "router": config.router_lr or config.lr, "magnitude": config.magnitude_lr or config.lr}
    return [{"params": params, "lr": rates[kind], "name": kind} for kind, params in groups.items() if params]


def _warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


# --- routing statistics -------------------------------------------------------------------------------
@contextmanager
def _routing_probe(model: nn.Module, attention_mask: torch.Tensor):
    """Record per-layer routing entropy and load on this forward (real tokens only)."""
    rows: list[dict] = []
    handles = []
    for name, layer in adapter_layers(model).items():
        if layer.num_experts < 2:
            continue

        def hook(module, args, name=name):
            with torch.no_grad():
                gates = module.route(args[0]).float()
                if gates.shape[:-1] == attention_mask.shape:
                    gates = gates[attention_mask.bool()]
                gates = gates.reshape(-1, gates.shape[-1])
                entropy = -(gates * gates.clamp_min(1e-12).log()).sum(-1).mean()
                rows.append({
                    "layer": name, "entropy": entropy.item(), "normalized_entropy": entropy.item() / math.log(gates.shape[-1]),
                    "load": gates.mean(0).tolist(),
                })

        handles.append(layer.register_forward_pre_hook(hook))
    try:
        yield lambda: rows
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _nothing():
    yield None


# --- trackers -----------------------------------------------------------------------------------------
LOGS_FOLDER = "logs"  # under out_dir: the logging folder of Accelerate's trackers
TRACKER_PROJECT = "omoe_lab"  # the project name trackers get; TensorBoard's subfolder of LOGS_FOLDER
# (log_with, logging folder) that train() calls without their own use: set by log_training_to
_AMBIENT_TRACKING: ContextVar[tuple[str | list[str], Path] | None] = ContextVar("omoe_lab_tracking", default=None)


@contextmanager
def log_training_to(log_with: str | list[str], logging_dir: str | Path):
    """Inside this block, every ``train`` call logs with ``log_with`` under ``logging_dir`` (unless its
    own ``TrainConfig.log_with`` or ``out_dir`` says otherwise).

    For code that calls ``train`` for you and owns its ``TrainConfig``, such as
    ``omoe_lab.experiments.run`` (what ``omoe-lab train --log-with`` uses): a tracker changes no
    result, so it is no part of a run's configuration or cache key.
    """
    check_trackers(log_with)
    token = _AMBIENT_TRACKING.set((log_with, Path(logging_dir)))
    try:
        yield
    finally:
        _AMBIENT_TRACKING.reset(token)


def check_trackers(log_with: str | list[str]) -> list[str]:
    """The tracker names of ``log_with``, refusing unknown ones and ones whose package is missing.

    Accelerate itself skips a tracker whose package is not installed with only a warning, and the
    run would then log nothing.
    """
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    names = [log_with] if isinstance(log_with, str) else list(log_with)
    installed = {str(t) for t in get_available_trackers()}
    for name in names:
        if name != "all" and name not in LOGGER_TYPE_TO_CLASS:
            raise ValueError(f"unknown tracker {name!r}: choose among {sorted(LOGGER_TYPE_TO_CLASS)} (or 'all', every installed one)")
        if name not in installed and not (name == "all" and installed):
            package = "tensorboard: pip install -c constraints.txt tensorboard" if name in ("tensorboard", "all") else f"pip install {name}"
            raise ValueError(f"tracker {name!r} is not installed ({package}), so the run would log nothing; "
                             "install it, or leave log_with (CLI: --log-with) out")
    return names


def _resolve_tracking(config: TrainConfig, out_dir: Path | None) -> tuple[str | list[str] | None, Path | None]:
    """(trackers, logging folder) of a ``train`` call: its own config and ``out_dir`` first, then
    the enclosing ``log_training_to`` block; ``(None, None)`` when nothing asks for a tracker."""
    ambient = _AMBIENT_TRACKING.get()
    log_with = config.log_with or (ambient[0] if ambient else None)
    if not log_with:
        return None, None
    logging_dir = out_dir / LOGS_FOLDER if out_dir is not None else (ambient[1] if ambient else None)
    if logging_dir is None:
        raise ValueError(f"log_with={log_with!r} writes its logs under out_dir/{LOGS_FOLDER}: pass out_dir=<run folder> "
                         "to train() (CLI: --out), or leave log_with out")
    check_trackers(log_with)
    return log_with, logging_dir


@contextmanager
def _trackers(accelerator, log_with, config: TrainConfig, model: nn.Module):
    """Start this run's trackers, and close them however the run ends (an error or Ctrl-C included).

    Not ``accelerator.end_training()``: that also destroys the process group, which would end a
    multi-process job that trains several runs in a row (a sweep under ``torchrun``).
    """
    if not log_with:
        yield
        return
    before = len(accelerator.trackers)  # an accelerator passed in may have trackers of its caller's
    accelerator.init_trackers(TRACKER_PROJECT, config=_tracker_hparams(config, model))
    try:
        yield
    finally:
        for tracker in accelerator.trackers[before:]:
            tracker.finish()
        del accelerator.trackers[before:]


def _tracker_hparams(config: TrainConfig, model: nn.Module) -> dict[str, Any]:
    """The run's settings as flat scalars (TensorBoard's hparams take numbers, strings and booleans)."""
    settings = {**config.to_dict(), **{f"adapter_{k}": v for k, v in model.omoe_config.to_dict().items()}}
    settings.pop("log_with")
    return {k: v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in settings.items()}


def step_scalars(record: dict[str, float], param_groups: Sequence[dict]) -> dict[str, float]:
    """What a tracker logs after every optimizer step: the losses, the speed and each group's rate."""
    scalars = {"train/loss": record["loss"], "train/aux_loss": record["aux_loss"], "train/tokens_per_s": record["tokens_per_s"]}
    scalars.update({f"lr/{group.get('name', index)}": group["lr"] for index, group in enumerate(param_groups)})
    return scalars


def routing_scalars(rows: Sequence[dict]) -> dict[str, float]:
    """Routing entropy over the routed layers of one probe: the mean in nats, and the mean and the
    lowest normalized entropy (1 = uniform over the experts, 0 = one expert takes every token)."""
    normalized = [row["normalized_entropy"] for row in rows]
    return {
        "routing/entropy": float(np.mean([row["entropy"] for row in rows])),
        "routing/normalized_entropy": float(np.mean(normalized)),
        "routing/normalized_entropy_min": float(np.min(normalized)),
    }


def diversity_scalars(row: dict[str, Any]) -> dict[str, float]:
    """The means over layers of one diversity measurement (``per_layer`` stays in TrainResult)."""
    return {f"diversity/{name}": float(value) for name, value in row.items()
            if name not in ("step", "per_layer") and isinstance(value, (int, float))}


# --- checkpoints -------------------------------------------------------------------------------------
def run_fingerprint(model: nn.Module, config: TrainConfig, features: Sequence[dict]) -> str:
    """Hash of what must not change between a run and its resumption: the training settings, the
    adapters, the base model (its config and a sample of its frozen weights) and the token ids the
    tokenizer made of the data (so another tokenizer, prompt or data set is refused too)."""
    # neither how often checkpoints are written nor where the run is logged changes its steps
    keep = {k: v for k, v in config.to_dict().items() if k not in ("checkpoint_every", "log_with")}
    data = hashlib.sha256()
    for feature in features:
        data.update(json.dumps(feature, sort_keys=True).encode())
    base = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    embeddings = model.get_input_embeddings().weight
    base.update(embeddings.detach()[:4].to("cpu", torch.float64).numpy().tobytes())  # same architecture, other weights
    payload = json.dumps(
        {"train": keep, "adapters": model.omoe_config.to_dict(), "data": data.hexdigest(), "base_model": base.hexdigest()},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _write_checkpoint(accelerator, model, optimizer, scheduler, step, result, fingerprint, out_dir: Path) -> None:
    """Write ``checkpoint-<step>/`` under a temporary name, rename it, then point ``latest`` at it.

    Crash-safe at every point, a SIGKILL included: the folder ``latest`` names is deleted only once
    ``latest`` names another, so it names a complete checkpoint at every instant but one. When a
    step is rewritten, ``latest`` names the staging folder while the old ``checkpoint-<step>`` is
    replaced, and for the instant between that folder's rename and the next write of ``latest`` it
    names nothing; ``_read_checkpoint`` then takes the newest complete ``checkpoint-<step>``, the one
    just renamed. What a killed write left behind is removed by the next write.
    """
    from .io import atomic_write

    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"checkpoint-{step}"
    # A fresh name per write: a killed write's leftover may be what ``latest`` names (see below).
    staging = out_dir / f".checkpoint-{step}.{time.time_ns()}.tmp"
    save_adapters(model, staging)
    state = {
        "step": step, "fingerprint": fingerprint, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": _get_rng_state(), "history": result.history, "routing": result.routing, "diversity": result.diversity,
    }
    # written last and atomically: a folder holding trainer_state.pt holds the whole checkpoint
    atomic_write(staging / "trainer_state.pt", lambda tmp: torch.save(state, tmp))
    if final.exists():
        # Rewriting a step (a run's last step, a resumed finished run): ``latest`` may name ``final``,
        # so it names the complete staging copy while ``final`` is replaced.
        atomic_write_text(out_dir / "latest", staging.name + "\n")
        shutil.rmtree(final)
    staging.rename(final)
    atomic_write_text(out_dir / "latest", final.name + "\n")
    for entry in out_dir.iterdir():  # older checkpoints and what killed writes left behind
        name = entry.name
        older = name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit() and entry != final
        leftover = (name.startswith(".checkpoint-") or name.startswith(".latest.")) and name.endswith(".tmp")
        if (older or leftover) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif leftover:
            entry.unlink(missing_ok=True)


def _read_checkpoint(path: str | Path, fingerprint: str) -> dict:
    """The trainer state of a checkpoint folder, or of the checkpoint a run folder's ``latest`` names.

    When ``latest`` is absent or names a missing or incomplete folder (a crash while checkpoints
    were written), the newest complete ``checkpoint-<step>`` of the run folder is used; temporary
    ``.checkpoint-*.tmp`` folders are never picked up by that search.
    """
    import pickle
    import warnings

    from .inject import CONFIG_NAME, WEIGHTS_NAME

    def complete(folder: Path) -> bool:  # deleting an old checkpoint, killed midway, can leave any subset
        return all((folder / name).is_file() for name in ("trainer_state.pt", CONFIG_NAME, WEIGHTS_NAME))

    path = Path(path)
    if not complete(path):  # a run folder
        latest = path / "latest"
        named = latest.read_text().strip() if latest.is_file() else ""
        if named and complete(path / named):
            path = path / named
        else:
            steps = [int(p.name[len("checkpoint-"):]) for p in path.glob("checkpoint-*") if p.name[len("checkpoint-"):].isdigit()]
            found = [path / f"checkpoint-{s}" for s in sorted(steps, reverse=True) if complete(path / f"checkpoint-{s}")]
            if not found:
                raise FileNotFoundError(
                    f"no complete checkpoint at {path}: expected a run folder with 'latest' or a checkpoint-<step> folder; "
                    "pass the out_dir of the run to resume, or leave resume_from out to start afresh"
                )
            if named:
                warnings.warn(f"{latest} names {named!r}, which is missing or incomplete (a crash while checkpoints were "
                              f"written); resuming from {found[0].name}, the newest complete checkpoint", stacklevel=3)
            path = found[0]
    state_file = path / "trainer_state.pt"
    try:
        state = torch.load(state_file, weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise ValueError(f"{state_file} cannot be read ({error}); delete {path} to resume from an older checkpoint, "
                         "or leave resume_from out to start afresh") from error
    if state["fingerprint"] != fingerprint:
        raise ValueError(
            f"{path} belongs to another run (settings, adapters, base model, tokenizer or data differ: fingerprint {state['fingerprint']} "
            f"vs {fingerprint}); resume only with the settings that produced it"
        )
    state["adapters"] = path
    return state


def _get_rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def _deferred_interrupt():
    """Turn the first Ctrl-C into a flag checked between steps, so a step is never cut in half."""
    flag = {"hit": False}
    previous = None

    def handler(signum, frame):
        flag["hit"] = True
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C interrupts at once

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        previous = None
    try:
        yield lambda: flag["hit"]
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
