"""Frozen-prefix cache: run the frozen bottom blocks of a model once per sequence.

When adapters sit only in blocks ≥ k, the hidden states entering block k depend on the token
sequence alone: training, evaluation and expert capture of every method see the same ones. While
``FrozenPrefix.active()`` is on, every forward of the decoder (without a KV cache) starts at
block k from stored states; a sequence it has not seen is first run through blocks 0..k-1 *on its
own* and its state stored. Nothing else changes: the model's own code builds masks and positions,
so training and the scorers call the model exactly as before.

Every pass, the first included, replays the same stored states, and each state is computed from
its sequence alone (never from the batch it first appeared in). So a run's numbers do not depend
on which runs or batches came before it, and a resumed run (which starts with an empty cache)
ends exactly like an uninterrupted one. The states are stored in ``dtype`` (float16 by default, to
save memory); a state whose values exceed that type's range is kept in float32 instead.

Per-sequence states do not depend on padding (causal attention with a mask, positions counted
from the first real token), so a state can be replayed in any batch, left- or right-padded.
Replayed blocks keep their own attention type (Qwen2/Qwen3 ``config.layer_types``: sliding or
full attention per block). Supported for Llama-family decoders (no absolute position embeddings,
no embedding scaling): :data:`SUPPORTED_MODEL_TYPES`.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .inject import adapter_layers

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")


class _PrefixDone(Exception):
    """Raised at the input of block k to stop a recording pass there."""


class FrozenPrefix:
    """Hidden states entering block ``start_block``, one [length, hidden] tensor per sequence.

    ``max_bytes`` bounds the memory: once it is reached, batches with unseen sequences run the
    whole model instead (exact, but slower and in full precision).
    """

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
        self.recorded_sequences = 0
        self._depth = 0  # active() is re-entrant: nested uses share one set of hooks

    def check_adapters(self) -> None:
        """Refuse to replay if an adapter sits below ``start_block`` (its output would be stale)."""
        low = [name for name, layer in adapter_layers(self.model).items() if layer.layer_index is None or layer.layer_index < self.start_block]
        if low:
            raise ValueError(f"adapters below block {self.start_block} ({low[:3]}) make the cached prefix stale")

    @contextmanager
    def active(self):
        """Replay stored states (recording unseen sequences first) on every forward of the decoder."""
        if self._depth:  # already on (e.g. a run that trains and then scores): nothing to add
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        decoder = self.model.model
        all_layers = decoder.layers
        layer_types = getattr(decoder.config, "layer_types", None)
        replaying = {"on": False, "recording": False}

        def before_decoder(module, args, kwargs):
            ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
            if replaying["recording"] or ids is None or mask is None:
                return None
            if kwargs.get("past_key_values") is not None or kwargs.get("use_cache"):
                return None  # generation with a KV cache must see every block
            self.check_adapters()
            keys = _sequence_keys(ids, mask)
            if not self._record(dict.fromkeys(k for k in keys if k not in self.states), decoder, all_layers, replaying):
                return None  # the cache is full: this batch runs every block
            embeds = self._assemble(keys, mask, all_layers[0])
            # the decoder runs only blocks k…; Qwen2/3 pick each block's mask by position in
            # config.layer_types, so that list is shifted with the blocks
            decoder.layers = all_layers[self.start_block :]
            if layer_types is not None:
                decoder.config.layer_types = layer_types[self.start_block :]
            replaying["on"] = True
            self.replayed_batches += 1
            return args, {**kwargs, "input_ids": None, "inputs_embeds": embeds}

        def after_decoder(module, args, kwargs, output):
            if replaying["on"]:
                _restore()

        def _restore():
            decoder.layers = all_layers
            if layer_types is not None:
                decoder.config.layer_types = layer_types
            replaying["on"] = False

        handles = [
            decoder.register_forward_pre_hook(before_decoder, with_kwargs=True),
            decoder.register_forward_hook(after_decoder, with_kwargs=True),
        ]
        self._depth = 1
        try:
            yield self
        finally:
            self._depth = 0
            for handle in handles:
                handle.remove()
            _restore()  # also after an exception inside a replayed forward

    def _record(self, missing, decoder, all_layers, replaying) -> bool:
        """Run each missing sequence alone through blocks 0..k-1 and store its state.

        Alone, so the stored numbers are a function of the sequence only (batch composition
        changes round-off). Returns False, recording nothing, when the cache has no room left.
        """
        if not missing:
            return True
        if self.bytes >= self.max_bytes:
            return False
        captured: list[torch.Tensor] = []

        def stop_at_block(module, args, kwargs):
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _PrefixDone

        handle = all_layers[self.start_block].register_forward_pre_hook(stop_at_block, with_kwargs=True)
        device = next(all_layers[0].parameters()).device
        replaying["recording"] = True
        try:
            with torch.no_grad():
                for key in missing:
                    ids = torch.tensor([key], device=device)
                    try:
                        decoder(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
                    except _PrefixDone:
                        pass
                    self._store(key, captured.pop()[0])
        finally:
            replaying["recording"] = False
            handle.remove()
        return True

    def _store(self, key: tuple[int, ...], hidden: torch.Tensor) -> None:
        state = hidden.detach().to("cpu")
        # float16 overflows to inf above 65504: such a state keeps float32 rather than a wrong value
        store_dtype = self.dtype if state.float().abs().max() <= torch.finfo(self.dtype).max else torch.float32
        state = state.to(store_dtype)
        self.states[key] = state
        self.bytes += state.numel() * state.element_size()
        self.recorded_sequences += 1

    def _assemble(self, keys, mask: torch.Tensor, first_block: nn.Module) -> torch.Tensor:
        """Stored states laid out like the batch (left or right padding), zeros at padding."""
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
