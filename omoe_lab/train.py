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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .data.collate import encode_example, pad_encoded, pad_token_id
from .data.example import Example
from .inject import adapter_layers, load_adapters, router_aux_loss, save_adapters
from .io import atomic_write_text, writable_folder
from .models import set_seed
from .prefix import FrozenPrefix, first_adapted_block, supports_prefix_cache

@dataclass
class TrainConfig:
    """How to train. ``batch_size`` is global: examples per optimizer step over all processes."""

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
    seed: int = 0
    routing_every: int = 10
    checkpoint_every: int | None = None
    prefix_cache: bool = True
    prefix_cache_dtype: str = "float16"
    mixed_precision: str = "auto"

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "max_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.target not in ("label", "option"):
            raise ValueError(f"target must be 'label' (train on the answer's label word) or 'option' (its text), got {self.target!r}")
        if self.prefix_cache_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"prefix_cache_dtype must be float16, bfloat16 or float32, got {self.prefix_cache_dtype!r}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    routing: list[dict[str, Any]] = field(default_factory=list)
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
) -> TrainResult:
    """Train ``model``'s adapters on ``examples`` (loss on answer tokens only) and return the history.

    ``stop_after`` ends the run early after that many steps of this call (as if interrupted),
    writing a checkpoint when ``out_dir`` is set; ``resume_from`` (a run folder or checkpoint)
    continues it. Pass a ``FrozenPrefix`` to share one frozen-prefix cache between runs that
    train different adapters on the same model; by default the run makes its own when it can.
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
    if accelerator is None:
        accelerator = Accelerator(mixed_precision=_mixed_precision(config.mixed_precision))
    world = accelerator.num_processes
    per_micro, remainder = divmod(config.batch_size, world * config.grad_accum)
    if per_micro == 0 or remainder:
        raise ValueError(
            f"batch_size={config.batch_size} must be a multiple of processes × grad_accum = "
            f"{world} × {config.grad_accum}"
        )
    features = [encode_example(tokenizer, ex, config.max_length, target=config.target) for ex in examples]
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

    stop_at = config.steps if stop_after is None else min(config.steps, step + stop_after)
    bar = tqdm(total=config.steps, initial=step, desc="train", disable=not (progress and accelerator.is_main_process), dynamic_ncols=True)
    train_model.train()
    started = time.perf_counter()
    with prefix.active() if prefix else _nothing(), _deferred_interrupt() as interrupted:
        while step < stop_at and not interrupted():
            tick = time.perf_counter()
            batch_ids = _global_batch(len(features), config.batch_size, step, config.seed)
            mine = batch_ids[accelerator.process_index * per_micro * config.grad_accum :][: per_micro * config.grad_accum]
            answer_tokens = sum(_count_answer_tokens(features[i]) for i in batch_ids)
            loss_sum, aux_sum, tokens_seen = 0.0, 0.0, 0
            record_routing = config.routing_every and step % config.routing_every == 0
            for micro in range(config.grad_accum):
                ids = mine[micro * per_micro : (micro + 1) * per_micro]
                batch = {k: v.to(device) for k, v in pad_encoded([features[i] for i in ids], pad_id).items()}
                last = micro == config.grad_accum - 1
                probing = _routing_probe(model, batch["attention_mask"]) if record_routing and micro == 0 else _nothing()
                syncing = _nothing() if last else accelerator.no_sync(train_model)  # all-reduce once per step
                with syncing, accelerator.autocast(), probing as probe:
                    token_loss = _answer_token_loss(train_model, batch)
                    aux = router_aux_loss(model, batch["attention_mask"]).to(device)
                    # sum over my answer tokens / all answer tokens of the global batch; DDP averages
                    # gradients over processes, so scale by the world size to get the global mean
                    loss = (token_loss / answer_tokens + aux / (config.grad_accum * world)) * world
                    accelerator.backward(loss)
                loss_sum += token_loss.item()
                aux_sum += aux.item()
                tokens_seen += int(batch["attention_mask"].sum())
                if probe is not None:
                    result.routing.extend({"step": step, **row} for row in probe())
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
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            bar.update(1)
            if out_dir is not None and config.checkpoint_every and step % config.checkpoint_every == 0:
                _write_checkpoint(accelerator, model, optimizer, scheduler, step, result, fingerprint, out_dir)
        result.interrupted = step < config.steps
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


# --- checkpoints -------------------------------------------------------------------------------------
def run_fingerprint(model: nn.Module, config: TrainConfig, features: Sequence[dict]) -> str:
    """Hash of what must not change between a run and its resumption: the training settings, the
    adapters, the base model (its config and a sample of its frozen weights) and the token ids the
    tokenizer made of the data (so another tokenizer, prompt or data set is refused too)."""
    keep = {k: v for k, v in config.to_dict().items() if k not in ("checkpoint_every",)}
    data = hashlib.sha256()
    for feature in features:
        data.update(np.asarray(feature["input_ids"] + [-1] + feature["labels"], dtype=np.int64).tobytes())
    base = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    embeddings = model.get_input_embeddings().weight
    base.update(embeddings.detach()[:4].to("cpu", torch.float64).numpy().tobytes())  # same architecture, other weights
    payload = json.dumps(
        {"train": keep, "adapters": model.omoe_config.to_dict(), "data": data.hexdigest(), "base_model": base.hexdigest()},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _write_checkpoint(accelerator, model, optimizer, scheduler, step, result, fingerprint, out_dir: Path) -> None:
    """Write ``checkpoint-<step>/`` under a temporary name, rename it, then point ``latest`` at it."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"checkpoint-{step}"
    staging = out_dir / f".checkpoint-{step}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    save_adapters(model, staging)
    state = {
        "step": step, "fingerprint": fingerprint, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": _get_rng_state(), "history": result.history, "routing": result.routing,
    }
    torch.save(state, staging / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    atomic_write_text(out_dir / "latest", final.name + "\n")
    for old in out_dir.glob("checkpoint-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def _read_checkpoint(path: str | Path, fingerprint: str) -> dict:
    path = Path(path)
    if (path / "latest").is_file():
        path = path / (path / "latest").read_text().strip()
    state_file = path / "trainer_state.pt"
    if not state_file.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: expected a run folder with 'latest' or a checkpoint-<step> folder")
    state = torch.load(state_file, weights_only=False)
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
