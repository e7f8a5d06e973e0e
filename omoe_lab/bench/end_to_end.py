"""Training steps and scoring on the default model, under the ``quick`` profile's shapes.

The ``quick`` profile adapts all seven projections of the top 4 of SmolLM2-135M's 30 blocks at
rank 4, E = 4 experts (LoRA: rank E·r = 16, the same A/B budget), batches of 8, sequences cut
at 256 tokens. One training step is the trainer's: the answer-token loss through the model
(``train._answer_token_loss``: logits only where an answer token is predicted) plus the router's
auxiliary loss, backward, AdamW. Measured on one fixed batch (the first 8 examples of the
shuffled training mix), the same for every method:

Each method runs on its own copy of the model, and the methods' steps and the base step are timed
side by side (each repeat runs them all in turn), so their ratios hold on a machine whose speed drifts.

- ``step``: each method without and with the frozen-prefix cache (``omoe_lab.prefix``; warm:
  every sequence already recorded), its tokens/s (real tokens, as the trainer counts them), the
  bytes one step saves for backward, the CUDA peak on a GPU; ``step cold``: the cache's first
  pass over the batch, which records each sequence alone through the frozen blocks first;
- ``base step``: the same step with the adapters detached and the gradient started at the input
  of the first adapted block, so the frozen blocks' backward still runs: the frozen base's part
  of a step. ``adapter_share = 1 − base / step`` is the adapters' share;
- ``prefix forward``: the frozen blocks' forward alone (embedding, blocks 0..k−1): what the
  cache can remove. The cache's ceiling is ``step / (step − prefix forward)``, and its
  efficiency the speed-up it reaches divided by that ceiling;
- ``scoring``: the loglik scorer (``evaluate.score_options``, cloze prompts, as the runs score)
  with OMoE attached, on whole sequences (``full_sequences=True``: the calls the cache can
  replay, what ``experiments.run`` uses with a cache) without and with the warm cache, the cold
  first pass, and the scorer's default KV-cache path (which the cache cannot replay).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import partial

import torch

from ..data.collate import encode_example, pad_encoded, pad_token_id
from ..data.tasks import load_tasks
from ..inject import adapter_layers, attach_adapters, router_aux_loss
from ..prefix import FrozenPrefix
from ..train import _answer_token_loss
from .measure import MiB, cuda_peak_mib, module_tensors, saved_activation_bytes, time_calls, time_side_by_side, timing_fields
from .options import Options
from .record import of_ratio, ratio, row_metric, target

METHODS = ["lora", "moe", "omoe"]
NUM_EXPERTS = 4
FULL = dict(top_blocks=None, batch_size=None, max_length=None, scoring_examples=16)  # None: the quick profile's
SMOKE = dict(top_blocks=2, batch_size=2, max_length=64, scoring_examples=4)
COLD_REPEATS = 3  # a cold-cache row records every sequence again on each call: slow, and no target rests on it
LIMITS = {"omoe / lora, no cache": 1.10, "omoe / lora, cache": 1.25, "cache efficiency": 0.8, "scoring speed-up": 5.0}


class _StopHere(Exception):
    """Raised at the input of the first adapted block to end a prefix-only forward."""


def _hidden_states_argument(args, kwargs, change):
    """The decoder layer's hidden states (positional or keyword) passed through ``change``."""
    if args:
        return (change(args[0]), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": change(kwargs["hidden_states"])}


@contextlib.contextmanager
def gradient_from_block(model, block: int):
    """Start the gradient at block ``block``'s input: without adapters, the backward then runs
    through the adapted blocks' frozen weights exactly as in a training step."""
    handle = model.model.layers[block].register_forward_pre_hook(
        lambda module, args, kwargs: _hidden_states_argument(args, kwargs, lambda h: h.detach().requires_grad_()),
        with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def prefix_forward(model, batch: dict, block: int) -> None:
    """The frozen blocks' forward alone: embedding, masks, blocks 0..block−1 (what the cache replaces)."""
    def stop(module, args, kwargs):
        raise _StopHere

    handle = model.model.layers[block].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        with torch.no_grad():
            model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    except _StopHere:
        pass
    finally:
        handle.remove()


def training_batch(tokenizer, config, device: torch.device) -> dict:
    """The first ``batch_size`` examples of the run's shuffled training mix, encoded as the trainer does."""
    c, train_config = config.resolved(), config.train_config()
    examples = load_tasks(list(c.tasks), "train", c.data_dir, limit_per_task=c.train_per_task, seed=c.seed)[: c.batch_size]
    features = [encode_example(tokenizer, ex, train_config.max_length, target=train_config.target,
                               prompt_style=train_config.prompt_style) for ex in examples]
    return {k: v.to(device) for k, v in pad_encoded(features, pad_token_id(tokenizer)).items()}


def _autocast(device: torch.device):
    """The trainer's precision: bf16 autocast on a CUDA GPU that has it (``mixed_precision="auto"``)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Session:
    """One loaded model and its fixed training batch; ``rows`` collects what is measured."""

    model: torch.nn.Module
    tokenizer: object
    batch: dict
    start: int  # the first adapted block, where the frozen prefix ends
    options: Options
    rows: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.answer_tokens = int((self.batch["labels"][:, 1:] != -100).sum())
        self.tokens = int(self.batch["attention_mask"].sum())
        self.prefix = FrozenPrefix(self.model, self.start)  # shared, so warm after its first pass

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        extra = f"  {row['tokens_per_s']:8.1f} tokens/s" if "tokens_per_s" in row else ""
        extra += f"  {row['examples_per_s']:6.2f} examples/s" if "examples_per_s" in row else ""
        self.options.say(f"end_to_end {row['id']:34s} {row['ms']:9.1f} ms{extra}")
        return row

    def timed(self, call, warmup: int = 1, cold: bool = False) -> dict:
        """Timing fields of ``call``. A cold-cache call (a fresh cache each time) gets no warm-up (the
        rows before it warmed the model up) and at most ``COLD_REPEATS`` repeats: slow, and no target."""
        repeats = min(self.options.repeats, COLD_REPEATS) if cold else self.options.repeats
        return timing_fields(time_calls(call, repeats, self.options.device, warmup=0 if cold else warmup))

    def cache(self, on: bool):
        return self.prefix.active() if on else contextlib.nullcontext()

    def with_cache(self, call, on: bool):
        """``call`` run inside this session's warm cache (``on``) or without it, one call at a time."""
        def run():
            with self.cache(on):
                call()
        return run

    def loss(self) -> torch.Tensor:
        """The trainer's loss: answer-token cross-entropy (mean over the batch's answer tokens) + router aux."""
        model, batch = self.model, self.batch
        with _autocast(batch["input_ids"].device):
            loss = _answer_token_loss(model, batch) / self.answer_tokens
            if adapter_layers(model):
                loss = loss + router_aux_loss(model, batch["attention_mask"]).to(loss.device)
        return loss

    # --- without adapters -------------------------------------------------------------------------------
    def prefix_call(self):
        """The prefix forward: what the cache can remove."""
        return partial(prefix_forward, self.model, self.batch, self.start)

    def base_step(self) -> None:
        """The frozen base's part of a step: adapters absent, the gradient started at the first adapted block."""
        with gradient_from_block(self.model, self.start):
            self.loss().backward()

    # --- with one method's adapters ---------------------------------------------------------------------
    def step_call(self):
        """One training step of the attached adapters (the trainer's loss, backward, AdamW)."""
        self.model.train()
        optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-3)

        def step():
            optimizer.zero_grad(set_to_none=True)
            self.loss().backward()
            optimizer.step()
        return step

    def step_row(self, method: str, cache: bool, seconds: list[float], base: dict) -> dict:
        """The row of ``method``'s step from its timings; ``base`` is the base step's row of the same cache mode."""
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        row = {"id": f"{method} step{', cache' if cache else ''}", "kind": "step", "method": method,
               "cache": "warm" if cache else "none", "trainable": sum(p.numel() for p in trainable), **timing_fields(seconds)}
        with self.cache(cache):
            row["saved_mib"] = saved_activation_bytes(self.loss, module_tensors(self.model)) / MiB
            if self.options.device.type == "cuda":
                row["cuda_peak_mib"] = cuda_peak_mib(self.step_call(), self.options.device)
        row["tokens_per_s"] = self.tokens / (row["ms"] / 1000)
        row["adapter_share"] = 1 - base["ms"] / row["ms"]
        if not cache:
            prefix_ms = next(r["ms"] for r in self.rows if r["kind"] == "prefix_forward")
            row["remaining_ms"] = row["ms"] - prefix_ms  # what the cache cannot remove
        return self.add(row)

    def cold_step_row(self, method: str, step) -> dict:
        """The cache's first pass: a fresh cache records the batch's sequences, then the step."""
        def cold_step():
            with FrozenPrefix(self.model, self.start).active():
                step()
        row = {"id": f"{method} step, cache cold", "kind": "step", "method": method, "cache": "cold",
               **self.timed(cold_step, cold=True)}
        row["tokens_per_s"] = self.tokens / (row["ms"] / 1000)
        return self.add(row)

    def measure_scoring(self, examples: list) -> None:
        """The loglik scorer on whole sequences without, with a cold and with a warm cache; its KV-cache path."""
        from ..evaluate import score_options

        model = self.model
        model.eval()

        def score(full_sequences: bool):
            return partial(score_options, model, self.tokenizer, examples, batch_size=16, progress=False,
                           prompt_style="cloze", full_sequences=full_sequences)

        def score_cold():
            with FrozenPrefix(model, self.start).active():
                score(True)()

        # the three warm or cache-free calls side by side (their ratios are reported); the cold pass alone
        side_by_side = {"scoring, no cache": score(True), "scoring, KV-cache scorer": score(False),
                        "scoring, cache": self.with_cache(score(True), True)}
        seconds = time_side_by_side(side_by_side, self.options.repeats, self.options.device)
        timings = {name: timing_fields(seconds[name]) for name in side_by_side}
        timings["scoring, cache cold"] = self.timed(score_cold, cold=True)
        for name, cache in (("scoring, no cache", "none"), ("scoring, cache cold", "cold"),
                            ("scoring, KV-cache scorer", "none"), ("scoring, cache", "warm")):
            row = {"id": name, "kind": "scoring", "examples": len(examples), "cache": cache, **timings[name]}
            row["examples_per_s"] = len(examples) / (row["ms"] / 1000)
            self.add(row)


def summarize(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """The ratios and targets of the rows."""
    ratios, targets = [], []
    for cache in (False, True):
        suffix = ", cache" if cache else ""
        for method in ("omoe", "moe"):
            ratio(f"{method} / lora step time{suffix or ', no cache'}", row_metric(f"{method} step{suffix}", "ms"),
                  row_metric(f"lora step{suffix}", "ms"), rows, ratios)
        limit = LIMITS["omoe / lora, cache" if cache else "omoe / lora, no cache"]
        targets.append(target(f"OMoE / LoRA training step{' with' if cache else ' without'} the cache",
                              of_ratio(f"omoe / lora step time{suffix or ', no cache'}"), limit, rows, ratios))
    for method in METHODS:
        speedup = ratio(f"{method}: cache speed-up of a step", row_metric(f"{method} step", "ms"),
                        row_metric(f"{method} step, cache", "ms"), rows, ratios)
        ceiling = ratio(f"{method}: cache ceiling (step / (step - prefix forward))", row_metric(f"{method} step", "ms"),
                        row_metric(f"{method} step", "remaining_ms"), rows, ratios)
        efficiency = ratio(f"{method}: cache speed-up / ceiling", of_ratio(speedup["name"]), of_ratio(ceiling["name"]),
                           rows, ratios)
        targets.append(target(f"{method}: the cache's training speed-up within 80 % of its ceiling",
                              of_ratio(efficiency["name"]), LIMITS["cache efficiency"], rows, ratios, at_most=False))
        for suffix in ("", ", cache"):
            ratio(f"{method}: frozen base share of a step{suffix}", row_metric(f"base step{suffix}", "ms"),
                  row_metric(f"{method} step{suffix}", "ms"), rows, ratios)
    scoring = ratio("scoring: cache speed-up (warm)", row_metric("scoring, no cache", "ms"),
                    row_metric("scoring, cache", "ms"), rows, ratios)
    ratio("scoring: KV-cache scorer / cache (warm)", row_metric("scoring, KV-cache scorer", "ms"),
          row_metric("scoring, cache", "ms"), rows, ratios)
    ratio("scoring: cold (recording) / no cache", row_metric("scoring, cache cold", "ms"),
          row_metric("scoring, no cache", "ms"), rows, ratios)
    targets.append(target("scoring forward: the cache's speed-up", of_ratio(scoring["name"]), LIMITS["scoring speed-up"],
                          rows, ratios, at_most=False))
    return ratios, targets


NOTES = [
    "Cache rows replay stored states (warm). A sequence's first pass records it alone through the frozen blocks "
    "('cache cold' rows): one quick-profile run passes over most training examples about once, so it gains from the "
    "cache only when runs share one (experiments.run_all does), and scoring new test sequences gains only from the "
    "second pass on.",
    "The scoring rows run with OMoE's adapters attached (as a run scores after training): their forward on the "
    "adapted blocks is part of what the cache cannot remove.",
    "The loglik scorer's default (evaluate(..., full_sequences=False)) runs each prompt once with a KV cache, which the "
    "frozen-prefix cache cannot replay; experiments.run scores whole sequences (full_sequences=True) when a cache "
    "exists, which it replays.",
]
CPU_MEMORY_NOTE = ("Memory on the CPU: the bytes one step saves for backward (parameters excluded); peak RSS is not "
                   "measured. On CUDA, cuda_peak_mib is the allocator's peak during a step, weights included.")


def measure_steps(base: Session, sessions: dict[str, Session]) -> None:
    """Every method's step, the base step and the prefix forward, side by side
    (``measure.time_side_by_side``): each repeat runs them all in turn, so the ratios compare steps
    seconds apart on a machine whose speed drifts."""
    steps = {method: session.step_call() for method, session in sessions.items()}
    base.model.train()
    for cache in (False, True):
        calls = {"base": base.with_cache(base.base_step, cache)}
        calls |= {method: sessions[method].with_cache(step, cache) for method, step in steps.items()}
        if not cache:  # the cache's ceiling divides a step by the prefix forward: time them together
            calls["prefix"] = base.prefix_call()
        seconds = time_side_by_side(calls, base.options.repeats, base.options.device)
        if not cache:
            base.add({"id": "prefix forward", "kind": "prefix_forward", "blocks": base.start,
                      **timing_fields(seconds["prefix"])})
        base_row = base.add({"id": f"base step{', cache' if cache else ''}", "kind": "base_step",
                             "cache": "warm" if cache else "none", **timing_fields(seconds["base"])})
        for method, session in sessions.items():
            session.step_row(method, cache, seconds[method], base_row)
    for method, session in sessions.items():
        session.cold_step_row(method, steps[method])


def run(options: Options) -> dict:
    from ..experiments import RunConfig, spread, test_examples
    from ..models import load_model

    sizes = SMOKE if options.smoke else FULL
    common = {k: v for k, v in sizes.items() if k != "scoring_examples" and v is not None}
    configs = {m: RunConfig(method=m, num_experts=NUM_EXPERTS, profile="quick", model=options.model_name, **common)
               for m in METHODS}
    resolved = configs["omoe"].resolved()
    rows: list[dict] = []  # every session adds to the same list, in the order measured

    def load(config=None):
        """A fresh copy of the model, with ``config``'s adapters attached."""
        model, tokenizer = load_model(options.model_name, device=options.device, progress=options.progress)
        if config is not None:
            attach_adapters(model, config.adapter_config(model.config.num_hidden_layers))
        return model, tokenizer

    model, tokenizer = load()
    num_blocks = model.config.num_hidden_layers
    start, train_batch = num_blocks - resolved.top_blocks, training_batch(tokenizer, configs["omoe"], options.device)
    base = Session(model, tokenizer, train_batch, start, options, rows)
    batch = {"shape": list(base.batch["input_ids"].shape), "tokens": base.tokens, "answer_tokens": base.answer_tokens}
    options.say(f"end_to_end: {options.model_name}, adapting blocks {base.start}..{num_blocks - 1}, batch "
                f"{batch['shape']} ({base.tokens} real tokens); one copy of the model per method")
    sessions = {method: Session(*load(config), train_batch, start, options, rows) for method, config in configs.items()}
    measure_steps(base, sessions)
    # scoring as a run scores after training: with its adapters attached
    sessions["omoe"].measure_scoring(spread(test_examples(configs["omoe"]), sizes["scoring_examples"]))
    ratios, targets = summarize(rows)
    return {
        "description": f"{options.model_name} model, quick-profile shapes: top {resolved.top_blocks} of {num_blocks} "
                       f"blocks adapted ({', '.join(resolved.target_modules)}), rank {resolved.rank}, E = {NUM_EXPERTS} "
                       f"(LoRA rank {NUM_EXPERTS * resolved.rank}), soft routing, one fixed batch {batch['shape']} with "
                       f"{base.tokens} real tokens; each method on its own copy of the model, steps timed side by side.",
        "settings": {"model": options.model_name, "profile": "quick", "num_blocks": num_blocks,
                     "first_adapted_block": base.start, "top_blocks": resolved.top_blocks, "rank": resolved.rank,
                     "num_experts": NUM_EXPERTS, "target_modules": list(resolved.target_modules),
                     "batch_size": resolved.batch_size, "max_length": resolved.max_length, "batch": batch,
                     "scoring_examples": sizes["scoring_examples"], "dtype": str(next(base.model.parameters()).dtype)},
        "rows": rows, "ratios": ratios, "targets": targets,
        "notes": NOTES + ([CPU_MEMORY_NOTE] if options.device.type != "cuda" else []),
    }
