"""LoRA adapters in Hugging Face PEFT's format: ``export_peft`` writes them, ``load_peft_lora`` reads them.

A PEFT LoRA folder is ``adapter_config.json`` (a ``LoraConfig``) plus ``adapter_model.safetensors``
holding, for every adapted linear at ``<path>`` of the base model,

    base_model.model.<path>.lora_A.weight   [r, d_in]
    base_model.model.<path>.lora_B.weight   [d_out, r]

and PEFT's layer computes ``y = W0 x + (lora_alpha / r) · B A dropout(x)``. omoe_lab's LoRA is the
same function with an expert axis of length one (``lora_A`` [1, r, d_in], ``lora_B`` [1, d_out, r],
scaling ``alpha / rank``), so the conversion is ``lora_A[0]``, ``lora_B[0]`` and a renamed config.
GPT-2's ``Conv1D`` stores ``W0`` transposed; PEFT's forward on it is the same ``B A x`` and only its
merge needs ``fan_in_fan_out = True``, which the exported config sets for such layers.

MoE-LoRA, OMoE and SMoRA have no peer format: see ``NO_PEER_FORMAT``. Neither function imports ``peft``.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .adapters import AdapterConfig
from .inject import _base_model_info, adapter_layers, attach_adapters, detach_adapters
from .io import atomic_write, atomic_write_text, writable_folder

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_KEY_PREFIX = "base_model.model."  # PeftModel → LoraModel → the base model
_PEFT_KEY = re.compile(r"^base_model\.model\.(?P<path>.+)\.(?P<kind>lora_A|lora_B)\.weight$")

NO_PEER_FORMAT = {
    "moe": (
        "MoE-LoRA (method='moe') has no peer format in PEFT, so export_peft cannot write it: its router gives every "
        "token its own mixing weights w(x), so the update Σ_i w_i(x) B_i A_i x is a different matrix for each token; "
        "it can neither be merged into W0 nor written as one LoRA B A"
    ),
    "omoe": (
        "OMoE (method='omoe') has no peer format in PEFT, so export_peft cannot write it: its router weights the experts "
        "per token and Gram–Schmidt then orthogonalizes the experts' outputs per token, so the update depends on each "
        "input in a non-linear way; it can neither be merged into W0 nor written as one LoRA B A"
    ),
    "smora": (
        "SMoRA (method='smora') has no peer format in PEFT, so export_peft cannot write it: its router picks and weights "
        "the rank-1 components of its LoRA per token, so the update B diag(g(x)) A x uses a different diagonal g(x) for "
        "each token; it can neither be merged into W0 nor written as one LoRA B A"
    ),
}
# any other routed method (e.g. MixLoRA's experts over whole MLP blocks): the same reason in general terms
ROUTED_METHOD_REASON = (
    "method={method!r} has no peer format in PEFT, so export_peft cannot write it: its router picks or weights the experts "
    "per token, so the update is a different function of each token; it can neither be merged into W0 nor written as "
    "one LoRA B A per linear, which is all PEFT's LoRA format holds"
)
KEEP_OWN_FORMAT = "keep these adapters in omoe_lab's format (omoe_lab.save_adapters / load_adapters), or train method='lora' to export"


def check_exportable(config: AdapterConfig) -> None:
    """Refuse, before any model is loaded, adapters that PEFT's LoRA format cannot hold."""
    if config.method != "lora":
        reason = NO_PEER_FORMAT.get(config.method) or ROUTED_METHOD_REASON.format(method=config.method)
        raise ValueError(f"{reason}; {KEEP_OWN_FORMAT}")


def export_peft(model: nn.Module, folder: str | os.PathLike, base_model_name_or_path: str | None = None) -> Path:
    """Write ``model``'s LoRA adapters as a PEFT LoRA folder that ``peft.PeftModel.from_pretrained(base, folder)`` loads.

    ``base`` is the unmodified model the adapters were attached to; the PEFT model then gives the
    same logits as ``model`` (to float32 round-off). ``base_model_name_or_path`` goes into the
    config for ``AutoPeftModelForCausalLM`` (default: the model's own ``name_or_path``). Only
    ``method="lora"`` adapters can be exported (a ``ValueError`` says why for the others).
    """
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("this model has no adapters to export; attach them (attach_adapters) or load them (load_adapters) first")
    config: AdapterConfig = model.omoe_config
    check_exportable(config)
    state: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        own = {param_name for param_name, _ in layer.named_parameters() if not param_name.startswith("base_layer.")}
        if own != {"lora_A", "lora_B"} or layer.num_experts != 1:  # a future LoRA variant must not lose weights silently
            raise ValueError(f"{name}: expected one LoRA expert with lora_A and lora_B only, found {sorted(own)} and "
                             f"{layer.num_experts} experts; {KEEP_OWN_FORMAT}")
        state[f"{PEFT_KEY_PREFIX}{name}.lora_A.weight"] = layer.lora_A[0].detach().cpu().contiguous()
        state[f"{PEFT_KEY_PREFIX}{name}.lora_B.weight"] = layer.lora_B[0].detach().cpu().contiguous()
    transposed = [type(layer.base_layer).__name__ == "Conv1D" for layer in layers.values()]
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path or _base_model_info(model)["name_or_path"] or None,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        # the exact module paths: omoe_lab's name suffixes, regexes and `layers` all resolve to these
        "target_modules": list(layers),
        "bias": "none",
        "fan_in_fan_out": any(transposed),  # PEFT corrects it per layer, with a warning, where layer types are mixed
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
    }
    folder = writable_folder(folder, fix="choose another folder (CLI: --out)")
    atomic_write(folder / PEFT_WEIGHTS_NAME, lambda path: save_file(state, str(path), metadata={"format": "pt"}))
    atomic_write_text(folder / PEFT_CONFIG_NAME, json.dumps(peft_config, indent=2) + "\n")
    return folder


def load_peft_lora(model: nn.Module, folder: str | os.PathLike) -> nn.Module:
    """Attach the LoRA of a PEFT folder (``save_pretrained`` of a ``PeftModel``) as omoe_lab ``method="lora"`` adapters.

    The adapted model gives the PEFT model's logits; ``omoe_lab.save_adapters`` and the analysis
    tools then work on it. Plain LoRA and rsLoRA on linear layers load; what omoe_lab's LoRA cannot
    express (DoRA, per-module ranks or alphas, trained biases, extra saved modules) is refused by
    name, and the model is left as it was.
    """
    folder = Path(folder)
    config_path, weights_path = folder / PEFT_CONFIG_NAME, folder / PEFT_WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: expected a PEFT LoRA folder (adapter_config.json + "
                                    "adapter_model.safetensors, as PeftModel.save_pretrained writes it)")
    try:
        peft_config = json.loads(config_path.read_text(encoding="utf-8"))
        saved = load_file(str(weights_path))
    except (UnicodeDecodeError, ValueError, SafetensorError, OSError) as error:
        raise ValueError(f"{folder} cannot be read as a PEFT folder ({type(error).__name__}: {error}); save it again") from error
    _check_plain_lora(peft_config, config_path)

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in saved.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            raise ValueError(f"{weights_path} holds {key!r}, which is not a LoRA weight of a linear layer "
                             "(base_model.model.<module>.lora_A/lora_B.weight); omoe_lab loads plain LoRA only")
        pairs.setdefault(match["path"], {})[match["kind"]] = tensor
    incomplete = sorted(path for path, pair in pairs.items() if len(pair) != 2)
    if not pairs or incomplete:
        raise ValueError(f"{weights_path} has no complete lora_A/lora_B pair for {incomplete or 'any module'}; save it again")
    ranks = {pair["lora_A"].shape[0] for pair in pairs.values()}
    if ranks != {peft_config["r"]}:
        raise ValueError(f"{weights_path} holds LoRA ranks {sorted(ranks)} but its config says r={peft_config['r']}; "
                         "omoe_lab gives every module the same rank")

    rank, alpha = int(peft_config["r"]), float(peft_config["lora_alpha"])
    if peft_config.get("use_rslora"):
        alpha = alpha * math.sqrt(rank)  # rsLoRA scales by alpha / √r; omoe_lab by alpha / r
    config = AdapterConfig(method="lora", rank=rank, alpha=alpha, dropout=float(peft_config.get("lora_dropout") or 0.0),
                           target_modules=sorted(pairs), layers=None)
    another_model = "load it into the base model it was trained on"
    attach_adapters(model, config)  # refuses a model that has adapters already
    try:
        layers = adapter_layers(model)
        if set(layers) != set(pairs):
            raise ValueError(f"{folder} adapts modules this model has no adaptable linear for: "
                             f"{sorted(set(pairs) - set(layers))[:5]}; {another_model}")
        for path, pair in pairs.items():
            layer = layers[path]
            for kind, tensor in pair.items():
                expected = tuple(getattr(layer, kind).shape[1:])
                if tuple(tensor.shape) != expected:
                    raise ValueError(f"{path}.{kind} has shape {tuple(tensor.shape)} in {weights_path} but this model's "
                                     f"layer needs {expected}; {another_model}")
    except ValueError:
        detach_adapters(model)
        raise
    with torch.no_grad():
        for path, pair in pairs.items():
            layers[path].lora_A[0].copy_(pair["lora_A"])
            layers[path].lora_B[0].copy_(pair["lora_B"])
    for layer in layers.values():
        # a new module starts in training mode; in an eval-mode model its dropout would still be active
        layer.train(model.training)
    return model


def _check_plain_lora(peft_config: dict, config_path: Path) -> None:
    """Refuse the PEFT options that change LoRA's function beyond what omoe_lab's LoRA computes."""
    if peft_config.get("peft_type") != "LORA":
        raise ValueError(f"{config_path} is a {peft_config.get('peft_type')!r} adapter; omoe_lab loads PEFT LoRA (peft_type 'LORA') only")
    unsupported = {
        "use_dora": "DoRA's magnitude vector",
        "rank_pattern": "per-module ranks",
        "alpha_pattern": "per-module alphas",
        "modules_to_save": "fully trained extra modules",
        "layer_replication": "replicated layers",
        "trainable_token_indices": "trained token embeddings",
        "lora_bias": "a trained bias on lora_B",
    }
    for option, what in unsupported.items():
        if peft_config.get(option):
            raise ValueError(f"{config_path} sets {option}={peft_config[option]!r} ({what}), which omoe_lab's LoRA does not "
                             "have; load this adapter with peft instead")
    if peft_config.get("bias", "none") != "none":
        raise ValueError(f"{config_path} sets bias={peft_config['bias']!r} (trained base-layer biases), which omoe_lab's "
                         "LoRA does not have; load this adapter with peft instead")
    for field in ("r", "lora_alpha"):
        if not isinstance(peft_config.get(field), (int, float)):
            raise ValueError(f"{config_path} has no numeric {field!r}; expected a PEFT LoraConfig")
