"""Frozen-prefix cache: run the frozen bottom blocks of a model once per sequence.

When adapters sit only in blocks ≥ k, the hidden states entering block k depend on the token
sequence alone: training, evaluation and expert capture of every method see the same ones. While
``FrozenPrefix.active()`` is on, the decoder records the input of block k for each sequence it
has not seen, and for a batch whose sequences are all known it starts at block k from the cached
states instead. Nothing else changes: the model's own code builds masks and positions, so
training and the scorers call the model exactly as before.

Per-sequence states do not depend on padding (causal attention with a mask, positions counted
from the first real token), so a sequence recorded in one batch can be replayed in another.
Supported for Llama-family decoders (no absolute position embeddings, no embedding scaling).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .inject import adapter_layers

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")


class FrozenPrefix:
    """Hidden states entering block ``start_block``, one [length, hidden] tensor per sequence."""

    def __init__(self, model: nn.Module, start_block: int, dtype: torch.dtype = torch.float16, max_bytes: int = 4 << 30):
        if not supports_prefix_cache(model):
            raise ValueError(
                f"the frozen-prefix cache supports {SUPPORTED_MODEL_TYPES} decoders with blocks at model.model.layers, "
                f"not {getattr(model.config, 'model_type', type(model).__name__)}"
            )
        if not 0 < start_block < len(model.model.layers):
            raise ValueError(f"start_block must be between 1 and {len(model.model.layers) - 1}, got {start_block}")
        self.model, self.start_block, self.dtype, self.max_bytes = model, start_block, dtype, max_bytes
        self.states: dict[tuple[int, ...], torch.Tensor] = {}
        self.bytes = 0
        self.replayed_batches = 0
        self.recorded_batches = 0

    def check_adapters(self) -> None:
        """Refuse to replay if an adapter sits below ``start_block`` (its output would be stale)."""
        low = [name for name, layer in adapter_layers(self.model).items() if layer.layer_index is None or layer.layer_index < self.start_block]
        if low:
            raise ValueError(f"adapters below block {self.start_block} ({low[:3]}) make the cached prefix stale")

    @contextmanager
    def active(self):
        """Record unseen sequences and replay known ones on every forward of the decoder."""
        decoder = self.model.model
        all_layers = decoder.layers
        pending: dict = {}

        def before_decoder(module, args, kwargs):
            ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
            if ids is None or mask is None or kwargs.get("past_key_values") is not None or kwargs.get("use_cache"):
                return None  # generation with a KV cache must see every block
            keys = _sequence_keys(ids, mask)
            if all(key in self.states for key in keys):
                self.check_adapters()
                decoder.layers = all_layers[self.start_block :]
                pending["restore"] = True
                self.replayed_batches += 1
                embeds = self._assemble(keys, mask, all_layers[0])
                return args, {**kwargs, "input_ids": None, "inputs_embeds": embeds}
            if self.bytes < self.max_bytes:
                pending["record"] = (keys, mask)
            return None

        def before_block(module, args, kwargs):
            if "record" not in pending:
                return
            keys, mask = pending.pop("record")
            hidden = args[0] if args else kwargs["hidden_states"]
            for row, key in enumerate(keys):
                if key not in self.states:
                    state = hidden[row][mask[row].bool()].detach().to("cpu", self.dtype)
                    self.states[key] = state
                    self.bytes += state.numel() * state.element_size()
            self.recorded_batches += 1

        def after_decoder(module, args, kwargs, output):
            pending.pop("record", None)
            if pending.pop("restore", False):
                decoder.layers = all_layers

        handles = [
            decoder.register_forward_pre_hook(before_decoder, with_kwargs=True),
            decoder.register_forward_hook(after_decoder, with_kwargs=True),
            all_layers[self.start_block].register_forward_pre_hook(before_block, with_kwargs=True),
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            decoder.layers = all_layers

    def _assemble(self, keys, mask: torch.Tensor, first_block: nn.Module) -> torch.Tensor:
        """Cached states laid out like the batch (left or right padding), zeros at padding."""
        reference = next(first_block.parameters())
        embeds = torch.zeros(*mask.shape, self.states[keys[0]].shape[-1], dtype=reference.dtype, device=mask.device)
        for row, key in enumerate(keys):
            embeds[row][mask[row].bool()] = self.states[key].to(mask.device, reference.dtype)
        return embeds


def supports_prefix_cache(model: nn.Module) -> bool:
    inner = getattr(model, "model", None)
    return (
        getattr(getattr(model, "config", None), "model_type", None) in SUPPORTED_MODEL_TYPES
        and isinstance(getattr(inner, "layers", None), nn.ModuleList)
    )


def first_adapted_block(model: nn.Module) -> int | None:
    """The lowest block index that holds an adapter (None without adapters or block indices)."""
    indices = [layer.layer_index for layer in adapter_layers(model).values()]
    if not indices or any(i is None for i in indices):
        return None
    return min(indices)


def _sequence_keys(ids: torch.Tensor, mask: torch.Tensor) -> list[tuple[int, ...]]:
    """Each row's real tokens: what a sequence's prefix states depend on."""
    return [tuple(row[m.bool()].tolist()) for row, m in zip(ids.cpu(), mask.cpu())]
