"""Record what the experts of a model's adapter layers output on real tokens (forward hooks).

``capture_experts`` runs the model over batches and, at every selected adapter layer, takes the
layer's input x for each non-padding token and stores, computed from that same x:

- the raw expert outputs ``e_i = B_i A_i x`` [E, d_out] (the evidence about diversity),
- the gates ``g`` [E] and the active mask (which experts the router selected),
- for OMoE, the orthogonalized outputs ``q_i`` [E, d_out] (the Stiefel check).

Rows are aligned across layers: row n of every layer is the same token, whose id, sequence,
position and task are kept once in ``Captured``. Memory is bounded by reservoir sampling.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters.config import ORTHOGONAL_METHODS
from ..adapters import LoRALinear
from ..inject import adapter_layers

NO_TASK = -1


@dataclass
class LayerCapture:
    """One adapter layer's captured rows (float32 / bool, CPU), aligned with ``Captured``'s rows."""

    name: str
    layer_index: int | None
    method: str
    expert_outputs: torch.Tensor  # [N, E, d_out] raw e_i
    gates: torch.Tensor  # [N, E], rows sum to 1
    active: torch.Tensor  # [N, E] bool, experts the router selected
    orthogonal_outputs: torch.Tensor | None = None  # [N, E, d_out] q_i, OMoE only

    @property
    def num_experts(self) -> int:
        return self.expert_outputs.shape[1]


@dataclass
class Captured:
    """Expert outputs of several adapter layers on the same N sampled tokens, plus who they are.

    ``layers`` maps qualified module names to ``LayerCapture``; ``token_ids``, ``sequence_ids``
    (index of the sequence in the order the batches were read), ``positions`` (index among the
    sequence's non-padding tokens) and ``task_codes`` (into ``task_names``; -1 = no task) are [N].
    ``tokens_seen`` counts every non-padding token read, before sampling.
    """

    layers: dict[str, LayerCapture]
    token_ids: torch.Tensor
    sequence_ids: torch.Tensor
    positions: torch.Tensor
    task_codes: torch.Tensor
    task_names: tuple[str, ...]
    tokens_seen: int

    def __len__(self) -> int:
        return self.token_ids.shape[0]

    def __getitem__(self, name: str) -> LayerCapture:
        """A layer by its full name or by a unique suffix (``"layers.1.self_attn.q_proj"``)."""
        if name in self.layers:
            return self.layers[name]
        matches = [full for full in self.layers if full.endswith("." + name)]
        if len(matches) != 1:
            raise KeyError(f"{name!r} matches {len(matches)} captured layers; captured: {list(self.layers)}")
        return self.layers[matches[0]]

    @property
    def tasks(self) -> np.ndarray | None:
        """Task name per row (``""`` where a batch gave none), or None if no batch gave tasks."""
        if not self.task_names:
            return None
        names = np.array(list(self.task_names) + [""], dtype=object)
        return names[self.task_codes.numpy()]  # code -1 picks the trailing ""

    def metadata_frame(self, tokenizer=None) -> pd.DataFrame:
        """One row per captured token: ``row``, ``sequence``, ``position``, ``token`` (id), ``task``
        and, given a tokenizer, ``token_text`` (for hover text in figures)."""
        frame = pd.DataFrame({
            "row": np.arange(len(self)),
            "sequence": self.sequence_ids.numpy(),
            "position": self.positions.numpy(),
            "token": self.token_ids.numpy(),
        })
        tasks = self.tasks
        if tasks is not None:
            frame["task"] = tasks
        if tokenizer is not None:
            frame["token_text"] = [tokenizer.decode([int(t)]) for t in self.token_ids]
        return frame


def reservoir_slots(num_new: int, seen: int, capacity: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Which of the next ``num_new`` stream items a reservoir of ``capacity`` keeps, and where.

    Algorithm R (Vitter 1985): item n of the stream (0-based) goes to slot n while the reservoir
    fills; afterwards it replaces slot j for j uniform in [0, n] when j < capacity. Every item
    read so far is then in the reservoir with the same probability capacity / (n + 1).
    Returns ``(items, slots)`` — indices into the new items and their slots — with at most one
    item per slot: when two new items land on the same slot the later one wins, as it would
    sequentially.
    """
    stream_index = seen + np.arange(num_new)
    slots = stream_index.copy()
    full = stream_index >= capacity
    slots[full] = rng.integers(0, stream_index[full] + 1)
    items = np.nonzero(slots < capacity)[0]
    slots = slots[items]
    _, last_from_end = np.unique(slots[::-1], return_index=True)
    winners = len(slots) - 1 - last_from_end
    return items[winners], slots[winners]


class _RowStore:
    """Named row buffers of at most ``capacity`` rows, written at given slots (grow by doubling)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.buffers: dict[str, torch.Tensor] = {}

    def write(self, slots: torch.Tensor, rows: dict[str, torch.Tensor]) -> None:
        if slots.numel() == 0:
            return
        needed = int(slots.max()) + 1
        for key, values in rows.items():
            buffer = self.buffers.get(key)
            if buffer is None or buffer.shape[0] < needed:
                size = min(self.capacity, max(needed, 2 * (0 if buffer is None else buffer.shape[0])))
                grown = values.new_zeros((size, *values.shape[1:]))
                if buffer is not None:
                    grown[: buffer.shape[0]] = buffer
                self.buffers[key] = buffer = grown
            buffer[slots] = values

    def rows(self, key: str, count: int) -> torch.Tensor | None:
        buffer = self.buffers.get(key)
        return None if buffer is None else buffer[:count].clone()


def select_layers(model: nn.Module, layers=None) -> dict[str, LoRALinear]:
    """Adapter layers to capture: all (None), or those named (full name or name suffix) or whose
    transformer block index is given (ints), in module order."""
    available = adapter_layers(model)
    if not available:
        raise ValueError("the model has no adapter layers; attach adapters first (omoe_lab.attach_adapters)")
    if layers is None:
        return available
    wanted = [layers] if isinstance(layers, (str, int)) else list(layers)
    selected = {}
    for key in wanted:
        if isinstance(key, int):
            found = {n: m for n, m in available.items() if m.layer_index == key}
        else:
            found = {n: m for n, m in available.items() if n == key or n.endswith("." + key)}
        if not found:
            raise ValueError(f"no adapter layer matches {key!r}; adapter layers: {list(available)}")
        selected.update(found)
    return {n: m for n, m in available.items() if n in selected}


@torch.no_grad()
def layer_record(layer: LoRALinear, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Everything captured for one layer from its inputs x [N, d_in], as float32/bool CPU tensors."""
    route_with_mask = getattr(layer, "route_with_mask", None)
    if route_with_mask is not None:
        gates, active = route_with_mask(x)
    else:  # a single LoRA: its one expert, always on
        gates = layer.route(x)
        active = gates > 0
    record = {"expert_outputs": layer.expert_outputs(x), "gates": gates, "active": active}
    if layer.method in ORTHOGONAL_METHODS:  # OMoE, and MixLoRA with OMoE's orthogonalization
        record["orthogonal_outputs"] = layer.orthogonal_outputs(x)
    return {
        key: value.detach().to("cpu", torch.bool if value.dtype == torch.bool else torch.float32)
        for key, value in record.items()
    }


class _Batch:
    """Where the kept tokens of the batch being run sit: flat indices into [B·S], and slots."""

    shape: torch.Size
    rows: torch.Tensor
    slots: torch.Tensor


def capture_experts(
    model: nn.Module,
    batches: Iterable[dict],
    layers: Sequence[str | int] | str | int | None = None,
    max_tokens: int = 2048,
    seed: int = 0,
    progress: bool = True,
) -> Captured:
    """Run ``model`` on ``batches`` and capture expert outputs, gates and (OMoE) q_i per token.

    ``batches``: dicts with ``input_ids`` [B, S], ``attention_mask`` [B, S] (optional: all ones)
    and optionally ``task`` (B task names). Padding tokens (mask 0) are not captured.
    ``layers``: see ``select_layers`` (default: every adapter layer).
    ``max_tokens``: once more non-padding tokens than this have been read, the kept rows are a
    uniform random sample of all of them (reservoir sampling, deterministic given ``seed``), the
    same tokens for every layer. Memory per layer: max_tokens × E × d_out floats (twice for OMoE).

    Hooks see the exact input each adapter layer receives in the model's forward pass; the
    outputs are recomputed from it under ``torch.no_grad`` with the layer's own ``route``,
    ``expert_outputs`` and ``orthogonal_outputs``. The model runs in eval mode (no dropout, no
    router loss records); hooks are removed and train/eval modes restored even on error.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    selected = select_layers(model, layers)
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    token_store = _RowStore(max_tokens)
    layer_stores = {name: _RowStore(max_tokens) for name in selected}
    calls = dict.fromkeys(selected, 0)
    current = _Batch()
    task_index: dict[str, int] = {}

    def make_hook(name: str, layer: LoRALinear):
        def hook(module, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            calls[name] += 1
            if x.shape[:-1] != current.shape:
                raise RuntimeError(
                    f"{name} received input of shape {tuple(x.shape)}, which does not match the batch "
                    f"{tuple(current.shape)}; capture needs per-token inputs laid out like input_ids"
                )
            if current.rows.numel():
                flat = x.reshape(-1, x.shape[-1])
                layer_stores[name].write(current.slots, layer_record(layer, flat[current.rows.to(flat.device)]))

        return hook

    training_modes = {module: module.training for module in model.modules()}
    handles = []
    seen = sequences = 0
    try:
        model.eval()
        handles = [layer.register_forward_pre_hook(make_hook(name, layer), with_kwargs=True) for name, layer in selected.items()]
        for batch in tqdm(batches, desc="capturing expert outputs", disable=not progress):
            input_ids = torch.as_tensor(batch["input_ids"])
            mask = batch.get("attention_mask")
            mask = torch.ones_like(input_ids) if mask is None else torch.as_tensor(mask)
            if mask.shape != input_ids.shape or input_ids.ndim != 2:
                raise ValueError(f"input_ids and attention_mask must both be [B, S]; got {tuple(input_ids.shape)} and {tuple(mask.shape)}")
            real = mask.cpu().flatten() > 0
            real_rows = torch.nonzero(real).flatten()
            items, slots = reservoir_slots(len(real_rows), seen, max_tokens, rng)
            seen += len(real_rows)
            current.shape, current.rows, current.slots = input_ids.shape, real_rows[items], torch.as_tensor(slots)

            num_sequences, length = input_ids.shape
            tasks = batch.get("task")
            if tasks is not None and len(tasks) != num_sequences:
                raise ValueError(f"batch has {num_sequences} sequences but {len(tasks)} tasks")
            codes = torch.tensor(
                [NO_TASK] * num_sequences if tasks is None else [task_index.setdefault(t, len(task_index)) for t in tasks]
            )
            positions = (mask.cpu() > 0).long().cumsum(dim=1) - 1  # index among the real tokens
            token_store.write(current.slots, {
                "token_ids": input_ids.cpu().flatten()[current.rows],
                "sequence_ids": sequences + current.rows // length,
                "positions": positions.flatten()[current.rows],
                "task_codes": codes[current.rows // length],
            })

            for name in calls:
                calls[name] = 0
            with torch.no_grad():
                model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
            unusual = {name: count for name, count in calls.items() if count != 1}
            if unusual:
                raise RuntimeError(f"adapter layers ran {unusual} times in one forward pass; capture expects exactly once")
            sequences += num_sequences
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in training_modes.items():
            module.train(mode)

    if seen == 0:
        raise ValueError("no non-padding tokens in the batches; nothing was captured")
    count = min(seen, max_tokens)
    captured_layers = {}
    for name, layer in selected.items():
        store = layer_stores[name]
        captured_layers[name] = LayerCapture(
            name=name,
            layer_index=layer.layer_index,
            method=layer.method,
            expert_outputs=store.rows("expert_outputs", count),
            gates=store.rows("gates", count),
            active=store.rows("active", count),
            orthogonal_outputs=store.rows("orthogonal_outputs", count),
        )
    return Captured(
        layers=captured_layers,
        token_ids=token_store.rows("token_ids", count),
        sequence_ids=token_store.rows("sequence_ids", count),
        positions=token_store.rows("positions", count),
        task_codes=token_store.rows("task_codes", count),
        task_names=tuple(task_index),
        tokens_seen=seen,
    )
