"""Attach, detach, save and load adapters on any ``nn.Module`` (an unmodified HF model included).

Adapters replace the target linears in place and keep the original as ``base_layer``, so module
names, return types and the model's code stay as they were (PEFT's approach, without PEFT).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .io import atomic_write, atomic_write_text, writable_folder
from .adapters import LAYER_CLASSES, AdapterConfig, LoRALinear, MixLoRAFFN
from .adapters.ffn import GATED_MLP_PROJECTIONS, is_gated_mlp

# what attach_adapters swaps in: adapted linears, and (FFN methods) whole gated MLP blocks
ADAPTER_TYPES = (LoRALinear, MixLoRAFFN)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_BLOCK_INDEX = re.compile(r"\.(\d+)(?:\.|$)")
RESAVE_HINT = (
    "expected the files omoe_lab.save_adapters writes (omoe-lab train prints where: <run>/adapters); "
    "save the adapters again, or pass that folder"
)


def attach_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Swap the target linears of ``model`` for adapter layers, freeze everything else, return it.

    The adapters are initialized so that the model's outputs are unchanged (OMOE_SPEC §4), with
    ``config.seed`` fixing their random init. Attaching twice is refused: detach first.

    FFN methods (``mixlora``, ``omoe_mixlora``): every gated MLP block with a selected projection
    (gate_proj / up_proj / down_proj) is replaced by a ``MixLoRAFFN`` adapting those projections,
    and the other selected linears get a plain LoRA (``AdapterConfig.plain_lora_config``). A model
    without a gated MLP is refused with a ValueError.
    """
    if adapter_layers(model):
        raise ValueError("this model already has adapters; call detach_adapters(model) before attaching new ones")
    if config.ffn:
        targets, ffn_blocks = _split_ffn_targets(model, config)
        experts = _experts_per_block(config, sorted({index for _, index, _ in ffn_blocks if index is not None}))
    else:
        targets, ffn_blocks = _find_targets(model, config), []
        experts = _experts_per_block(config, sorted({index for _, index in targets if index is not None}))
    model._omoe_requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    layer_class, layer_config = LAYER_CLASSES[config.method], config
    if config.ffn:  # the linears outside the gated MLPs get plain LoRAs
        layer_class, layer_config = LoRALinear, config.plain_lora_config()
    order = {name: position for position, (name, _) in enumerate(model.named_modules())}
    swaps = [(name, index, None) for name, index in targets] + list(ffn_blocks)
    with torch.random.fork_rng(devices=[]):
        if config.seed is not None:
            torch.manual_seed(config.seed)
        for name, index, projections in sorted(swaps, key=lambda swap: order[swap[0]]):  # module order
            parent, child = _parent_of(model, name)
            base = getattr(parent, child)
            if projections is not None:
                layer = MixLoRAFFN(base, config, experts.get(index, config.num_experts), index, projections)
            else:
                num_experts = experts.get(index, config.num_experts) if layer_config.method != "lora" else 1
                layer = layer_class(base, layer_config, num_experts=num_experts, layer_index=index)
            setattr(parent, child, layer)
    model.omoe_config = config
    return model


def adapter_layers(model: nn.Module) -> dict[str, LoRALinear | MixLoRAFFN]:
    """Qualified name → adapter layer (an adapted linear or, FFN methods, an MLP block), in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ADAPTER_TYPES)}


def detach_adapters(model: nn.Module) -> nn.Module:
    """Put the original linears back and restore every parameter's ``requires_grad``."""
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("this model has no adapters to detach")
    for name, layer in layers.items():
        parent, child = _parent_of(model, name)
        setattr(parent, child, layer.base_layer)
    for name, p in model.named_parameters():
        p.requires_grad_(model._omoe_requires_grad.get(name, p.requires_grad))
    del model._omoe_requires_grad, model.omoe_config
    return model


def router_aux_loss(model: nn.Module, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over routed layers of ``λ_lb · load_balance + λ_z · z_loss + λ_orth · penalty`` from the
    last forward: the auxiliary term the trainer adds to the task loss.

    ``penalty`` is MoE-LoRA's orthogonality penalty (``AdapterConfig.orthogonality_penalty`` = λ_orth,
    ``MoELoRALinear``), recorded by the same forward, so a trainer that adds this function's value
    trains with the penalty without knowing about it. Routed FFN blocks (MixLoRA) count as layers.
    Padding-aware: pass the batch's ``attention_mask`` so padding tokens do not count. Returns 0
    (a tensor) when nothing was recorded (soft routing, eval mode, or zero coefficients).
    """
    losses = [
        loss
        for layer in adapter_layers(model).values()
        if hasattr(layer, "aux_loss") and (loss := layer.aux_loss(attention_mask)) is not None
    ]
    if not losses:
        return torch.zeros(())
    return torch.stack(losses).mean()


# --- parameter counts ---------------------------------------------------------------------
@dataclass
class ParameterSummary:
    """Trainable adapter parameters against the whole model."""

    method: str
    trainable: int
    total: int
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        kinds = ", ".join(f"{kind} {count:,}" for kind, count in self.by_kind.items())
        return (
            f"{self.method}: trainable {self.trainable:,} of {self.total:,} parameters "
            f"({self.percent:.3f} %) — {kinds}"
        )


# (kind, what its parameter names contain), first match wins: a shared expert's A and B are "shared"
_KINDS = (("shared", "shared_lora_"), ("lora_A", "lora_A"), ("lora_B", "lora_B"), ("router", "router"), ("magnitude", "magnitude"))


def trainable_parameters(model: nn.Module) -> ParameterSummary:
    """Count trainable parameters, split by kind (``lora_A``, ``lora_B``, ``router``, ``magnitude``,
    and ``shared`` for a shared expert's A and B)."""
    by_kind: dict[str, int] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            kind = next((k for k, part in _KINDS if part in name), "other")
            by_kind[kind] = by_kind.get(kind, 0) + p.numel()
    total = sum(p.numel() for p in model.parameters())
    method = getattr(getattr(model, "omoe_config", None), "method", "none")
    return ParameterSummary(method, sum(by_kind.values()), total, by_kind)


# --- save / load --------------------------------------------------------------------------
def save_adapters(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (each file atomically)."""
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("this model has no adapters to save; call attach_adapters first")
    directory = writable_folder(directory, fix="choose another directory")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in adapter_state_dict(model).items()}
    meta = {
        "omoe_lab_version": __version__,
        "adapter_config": model.omoe_config.to_dict(),
        "base_model": _base_model_info(model),
        "layers": {name: {"num_experts": layer.num_experts, "layer_index": layer.layer_index} for name, layer in layers.items()},
    }
    atomic_write(directory / WEIGHTS_NAME, lambda path: save_file(state, str(path), metadata={"format": "pt"}))
    atomic_write_text(directory / CONFIG_NAME, json.dumps(meta, indent=2) + "\n")
    return directory


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters' own parameters, under their qualified names."""
    return {
        f"{name}.{param_name}": param
        for name, layer in adapter_layers(model).items()
        for param_name, param in layer.named_parameters()
        if not param_name.startswith("base_layer.")
    }


def read_adapter_config(directory: str | os.PathLike) -> tuple[AdapterConfig, dict]:
    """The ``AdapterConfig`` and the whole metadata of a folder written by ``save_adapters``.

    Cheap (no weights are read), so callers can check a folder before loading a model.
    """
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {RESAVE_HINT}")
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
        config = AdapterConfig.from_dict(meta["adapter_config"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        # a truncated or hand-edited file: the JSON error or missing key alone would not say which file
        what = f"missing key {error}" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
        raise ValueError(f"{config_path} is not a valid adapter config ({what}); {RESAVE_HINT}") from error
    return config, meta


def load_adapters(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Attach adapters saved by ``save_adapters`` (or fill existing ones) and load their weights.

    Refuses, naming the first difference, a folder saved for another config or architecture; the
    model is then left as it was (adapters this call attached are detached again).
    """
    directory = Path(directory)
    weights_path = directory / WEIGHTS_NAME
    config, meta = read_adapter_config(directory)
    saved_for = _describe_base_model(meta.get("base_model"))
    another_model = (
        f"the adapters were saved for another architecture or config (base model: {saved_for}); "
        "load them into the model they were trained on"
    )
    try:
        saved = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights_path} cannot be read ({error}); it is truncated or not a safetensors file; {RESAVE_HINT}") from error
    attached_here = not adapter_layers(model)
    if attached_here:
        try:
            attach_adapters(model, config)
        except ValueError as error:  # e.g. the saved target modules do not exist in this model
            raise ValueError(f"{error}; {another_model}") from error
    else:
        current = model.omoe_config.to_dict()
        changed = {k: (current[k], v) for k, v in config.to_dict().items() if current.get(k) != v}
        if changed:
            raise ValueError(
                f"the model's adapters differ from the saved ones in {changed} (model, saved); "
                "detach them first, or load into a model without adapters"
            )
    try:
        own = adapter_state_dict(model)
        missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"{weights_path} does not fit this model: missing tensors {missing[:5]}, unexpected tensors "
                f"{unexpected[:5]}; {another_model}"
            )
        for name, tensor in saved.items():
            if tensor.shape != own[name].shape:
                raise ValueError(
                    f"tensor {name} has shape {tuple(tensor.shape)} in {weights_path} but "
                    f"{tuple(own[name].shape)} in the model; {another_model}"
                )
    except ValueError:
        if attached_here:
            detach_adapters(model)  # leave the model as the caller passed it
        raise
    with torch.no_grad():
        for name, tensor in saved.items():
            own[name].copy_(tensor)
    return model


# --- internals ------------------------------------------------------------------------------
def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _block_index(name: str) -> int | None:
    match = _BLOCK_INDEX.search(name)
    return int(match.group(1)) if match else None


def _find_targets(model: nn.Module, config: AdapterConfig) -> list[tuple[str, int | None]]:
    """(name, block index) of every linear the config selects; a clear error if there are none."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = [(name, m) for name, m in model.named_modules() if _is_linear(m) and m is not head]
    spec = config.target_modules

    def wanted(name: str) -> bool:
        if spec == "all-linear":
            return True
        if isinstance(spec, str):
            return re.fullmatch(spec, name) is not None
        return any(name == s or name.endswith("." + s) for s in spec)

    targets = [(name, _block_index(name)) for name, _ in linears if wanted(name)]
    if config.layers is not None:
        targets = [(name, index) for name, index in targets if index in set(config.layers)]
    if not targets:
        suffixes = sorted({name.rsplit(".", 1)[-1] for name, _ in linears})
        raise ValueError(
            f"target_modules={spec!r} with layers={config.layers} matches no linear module. "
            f"Linear module names in this model end with: {suffixes}"
        )
    return targets


def _split_ffn_targets(
    model: nn.Module, config: AdapterConfig
) -> tuple[list[tuple[str, int | None]], list[tuple[str, int | None, tuple[str, ...]]]]:
    """FFN methods: (plain LoRA targets, [(MLP block name, block index, its selected projections)]).

    A selected linear named ``<mlp>.gate_proj|up_proj|down_proj`` with ``<mlp>`` a gated MLP
    (``ffn.is_gated_mlp``) goes to that block's experts; every other selected linear gets a LoRA.
    """
    gated = {name for name, module in model.named_modules() if is_gated_mlp(module)}
    if not gated:
        mlps = sorted({type(m).__name__ for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in ("mlp", "ffn", "feed_forward")})
        seen = f" (its MLP blocks are {mlps})" if mlps else ""
        raise ValueError(
            f"method={config.method!r} puts experts on Llama-style gated MLP blocks (a module with gate_proj, up_proj "
            f"and down_proj linears and an act_fn); {type(model).__name__} has none{seen}. Use method='moe' or "
            "'omoe', which adapt single linears"
        )
    plain, blocks = [], {}
    for name, index in _find_targets(model, config):  # after the gated-MLP check: its error says more
        parent, _, child = name.rpartition(".")
        if parent in gated and child in GATED_MLP_PROJECTIONS:
            blocks.setdefault(parent, (index, []))[1].append(child)
        else:
            plain.append((name, index))
    if not blocks:
        raise ValueError(
            f"target_modules={config.target_modules!r} selects no projection of a gated MLP; method={config.method!r} "
            f"needs at least one of {list(GATED_MLP_PROJECTIONS)} (its default is all three)"
        )
    return plain, [(name, index, tuple(projections)) for name, (index, projections) in blocks.items()]


def _experts_per_block(config: AdapterConfig, blocks: list[int]) -> dict[int, int]:
    """Expand ``experts_pattern`` over the adapted blocks, low to high (equal contiguous groups)."""
    if not config.experts_pattern:
        return {}
    pattern = [int(n) for n in config.experts_pattern]
    if len(pattern) > len(blocks):
        raise ValueError(
            f"experts_pattern has {len(pattern)} groups but only {len(blocks)} blocks are adapted; "
            "give at most one count per adapted block"
        )
    groups = np.array_split(np.array(blocks), len(pattern))
    return {int(block): count for group, count in zip(groups, pattern) for block in group}


def _parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def _describe_base_model(info) -> str:
    """``LlamaForCausalLM 'HuggingFaceTB/SmolLM2-135M-Instruct'`` from ``_base_model_info``'s record."""
    if not isinstance(info, dict) or not info.get("class"):
        return "a base model"
    return info["class"] + (f" {info['name_or_path']!r}" if info.get("name_or_path") else "")


def _base_model_info(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    return {
        "class": type(model).__name__,
        "name_or_path": getattr(config, "_name_or_path", None),
        "model_type": getattr(config, "model_type", None),
    }
