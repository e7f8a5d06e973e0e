"""omoe_lab against what a user would use instead, side by side in one run (forward + backward).

(a) **LoRA**: PEFT's ``LoraConfig`` LoRA (``peft.inject_adapter_in_model``) and omoe_lab's
    ``LoRALinear`` on the same frozen ``nn.Linear``, rank E·r at each layer shape.
(b) **A Llama MLP with 8 experts, top-2** (SmolLM2-135M's MLP: d 576 → f 1536, SiLU gate):
    - ``mixlora-package``: mixlora's ``MixLoraSparseMoe`` (the MixLoRA paper's code, a Python
      loop over experts with ``torch.where``), its LoRA dropout replaced by an identity since its
      ``LoraLinear`` insists on dropout > 0;
    - ``moe`` / ``omoe``: omoe_lab's MoE-LoRA and OMoE top-2 of 8 on each of gate/up/down
      (``attach_adapters``, experts per linear);
    - ``mixlora``: omoe_lab's ``method="mixlora"`` (``MixLoRAFFN``: MixLoRA's maths, experts over
      the whole MLP, batched).
    Every expert is a rank-r LoRA on each of the three projections (r = 8, alpha = 16).

A peer that is not installed gives a row whose ``status`` says so (and ratios of None), never a
crash: ``pip install -c constraints.txt peft`` and ``pip install --no-deps mixlora==0.2.3``
(the ``bench`` extra).
"""
from __future__ import annotations

import importlib.util
import itertools
from functools import partial

import torch
from torch import nn

from ..adapters import AdapterConfig, LoRALinear
from ..inject import attach_adapters
from .layer import SHAPES as LAYER_SHAPES
from .measure import MiB, backward_step, cuda_peak_mib, module_tensors, saved_activation_bytes, time_side_by_side, timing_fields
from .options import Options
from .record import of_ratio, ratio, row_metric, target

LINEAR_SHAPES = LAYER_SHAPES  # tokens, d, E, r: LoRA of rank E·r
SMOKE_LINEAR_SHAPES = [(64, 32, 2, 4)]
MLP = dict(batch=4, sequence=512, hidden=576, intermediate=1536, experts=8, top_k=2, rank=8)
SMOKE_MLP = dict(batch=2, sequence=16, hidden=32, intermediate=64, experts=8, top_k=2, rank=4)
MLP_VARIANTS = ["mixlora-package", "moe", "omoe", "mixlora"]
INSTALL = {"peft": "pip install -c constraints.txt peft", "mixlora": "pip install --no-deps mixlora==0.2.3"}


def missing(package: str) -> str | None:
    """None when ``package`` imports, else the row status that says how to install it."""
    if importlib.util.find_spec(package) is None:
        return f"not installed ({INSTALL[package]}, or the bench extra)"
    return None


class _Holder(nn.Module):
    """A module with one child, so the injectors have a name to find (``proj`` or ``mlp``)."""

    def __init__(self, **children: nn.Module):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


# --- (a) LoRA ------------------------------------------------------------------------------------------
def linear_layer(variant: str, d: int, rank: int, device: torch.device) -> tuple[nn.Module, list[torch.Tensor]]:
    """(the adapted layer, its trainable tensors) on the same random frozen base."""
    torch.manual_seed(0)
    base = nn.Linear(d, d, bias=False, device=device).requires_grad_(False)
    if variant == "lora":
        layer = LoRALinear(base, AdapterConfig(method="lora", rank=rank, alpha=2 * rank))
        with torch.no_grad():
            layer.lora_B.normal_(std=0.02)
        return layer, [layer.lora_A, layer.lora_B]
    from peft import LoraConfig, inject_adapter_in_model

    holder = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=["proj"]),
                                     _Holder(proj=base))
    with torch.no_grad():
        for name, p in holder.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    return holder.proj, [p for p in holder.parameters() if p.requires_grad]


# --- (b) the MLP ---------------------------------------------------------------------------------------
def llama_mlp(sizes: dict, device: torch.device) -> nn.Module:
    """A frozen random ``LlamaMLP`` (transformers' own class) of the given width."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=sizes["hidden"], intermediate_size=sizes["intermediate"], hidden_act="silu")
    return LlamaMLP(config).to(device).requires_grad_(False)


def mixlora_package_block(mlp: nn.Module, sizes: dict) -> tuple[nn.Module, list[torch.Tensor]]:
    """mixlora 0.2.3's ``MixLoraSparseMoe`` on ``mlp``, its LoRA dropout an identity, B random."""
    from mixlora.config import MixLoraConfig
    from mixlora.lora_linear import LoraLinear
    from mixlora.model import MixLoraSparseMoe

    config = MixLoraConfig(
        base_model_="bench", task_type_="CAUSAL_LM", peft_type_="MIXLORA", model_type_="llama", dtype_=torch.float32,
        lora_r_=sizes["rank"], lora_alpha_=2 * sizes["rank"], lora_dropout_=0.05, target_modules_={},
        routing_strategy_="mixlora", num_experts_=sizes["experts"], top_k_=sizes["top_k"], act_fn_="silu",
        jitter_noise_=0.0, router_init_range_=0.02, router_aux_loss_coef_=0.0,
    )
    block = MixLoraSparseMoe(mlp, config)
    device = mlp.gate_proj.weight.device
    block.gate_ = nn.Parameter(0.02 * torch.randn(sizes["experts"], sizes["hidden"], device=device))
    trainable = [block.gate_]
    for i, name in itertools.product(range(sizes["experts"]), ("gate_proj", "up_proj", "down_proj")):
        expert = LoraLinear(getattr(mlp, name), config)
        expert.dropout_ = nn.Identity()  # its LoraLinear asserts dropout > 0; time it without, like ours
        with torch.no_grad():
            expert.lora_B.weight.normal_(std=0.02)
        block.experts_[f"experts.{i}.{name}"] = expert  # a plain dict in mixlora: not registered submodules
        trainable += [expert.lora_A.weight, expert.lora_B.weight]
    return block, trainable


def omoe_lab_block(variant: str, mlp: nn.Module, sizes: dict) -> tuple[nn.Module, list[torch.Tensor]]:
    """omoe_lab's adapters on ``mlp`` through ``attach_adapters`` (per linear, or ``MixLoRAFFN``)."""
    config = AdapterConfig(method=variant, num_experts=sizes["experts"], top_k=sizes["top_k"], rank=sizes["rank"],
                           alpha=2 * sizes["rank"], target_modules=["gate_proj", "up_proj", "down_proj"], b_init_std=0.02)
    holder = attach_adapters(_Holder(mlp=mlp), config)
    if variant == "omoe":
        with torch.no_grad():
            for name, p in holder.named_parameters():
                if name.endswith("magnitude"):
                    p.fill_(1.0)
    return holder.mlp, [p for p in holder.parameters() if p.requires_grad]


def mlp_block(variant: str, sizes: dict, device: torch.device) -> tuple[nn.Module, list[torch.Tensor]]:
    mlp = llama_mlp(sizes, device)
    if variant == "mixlora-package":
        return mixlora_package_block(mlp, sizes)
    return omoe_lab_block(variant, mlp, sizes)


# --- timing ---------------------------------------------------------------------------------------------
def measure(built: dict[str, tuple[nn.Module, list[torch.Tensor]]], x: torch.Tensor, grad: torch.Tensor,
            options: Options) -> dict[str, dict]:
    """Forward + backward timing of each built ``variant: (layer, trainable)``, side by side (one call of
    each per repeat), then its saved memory (parameters excluded) and trainable count."""
    steps = {variant: backward_step(layer, x, grad, trainable) for variant, (layer, trainable) in built.items()}
    seconds = time_side_by_side(steps, options.repeats, options.device)
    fields = {}
    for variant, (layer, trainable) in built.items():
        row = timing_fields(seconds[variant])
        row["saved_mib"] = saved_activation_bytes(partial(layer, x), [*trainable, *module_tensors(layer)]) / MiB
        row["trainable"] = sum(p.numel() for p in trainable)
        if options.device.type == "cuda":
            row["cuda_peak_mib"] = cuda_peak_mib(steps[variant], options.device)
        fields[variant] = row
    return fields


def _say(options: Options, row: dict) -> None:
    if row["status"] == "ok":
        options.say(f"peers {row['id']:34s} {row['ms']:9.2f} ms  {row['saved_mib']:9.2f} MiB saved")
    else:
        options.say(f"peers {row['id']:34s} {row['status']}")


def run(options: Options) -> dict:
    device, rows, ratios, targets = options.device, [], [], []
    linear_shapes = SMOKE_LINEAR_SHAPES if options.smoke else LINEAR_SHAPES
    peft_missing = missing("peft")
    for tokens, d, num_experts, rank in linear_shapes:
        torch.manual_seed(1)
        x = torch.randn(tokens, d, device=device, requires_grad=True)
        grad = torch.randn(tokens, d, device=device)
        shape = f"{tokens}x{d} rank {num_experts * rank}"
        variants = [v for v in ("peft-lora", "lora") if not (v == "peft-lora" and peft_missing)]
        measured = measure({v: linear_layer("peft" if v == "peft-lora" else "lora", d, num_experts * rank, device)
                            for v in variants}, x, grad, options)
        for variant in ("peft-lora", "lora"):
            row = {"id": f"{shape} {variant}", "group": "linear", "tokens": tokens, "d": d, "rank": num_experts * rank,
                   "variant": variant, "status": "ok", **measured.get(variant, {})}
            if variant not in measured:
                row["status"] = peft_missing
            rows.append(row)
            _say(options, row)
        entry = ratio(f"{shape}: omoe_lab LoRA / PEFT LoRA time", row_metric(f"{shape} lora", "ms"),
                      row_metric(f"{shape} peft-lora", "ms"), rows, ratios)
        targets.append(target(f"omoe_lab LoRA / PEFT LoRA time at {shape}", of_ratio(entry["name"]), 1.0, rows, ratios))

    sizes = SMOKE_MLP if options.smoke else MLP
    torch.manual_seed(1)
    x = torch.randn(sizes["batch"], sizes["sequence"], sizes["hidden"], device=device, requires_grad=True)
    grad = torch.randn_like(x)
    mixlora_missing = missing("mixlora")
    name = f"MLP {sizes['hidden']}->{sizes['intermediate']} E{sizes['experts']} top-{sizes['top_k']} r{sizes['rank']}"
    variants = [v for v in MLP_VARIANTS if not (v == "mixlora-package" and mixlora_missing)]
    measured = measure({v: mlp_block(v, sizes, device) for v in variants}, x, grad, options)
    for variant in MLP_VARIANTS:
        row = {"id": f"{name} {variant}", "group": "mlp", "tokens": sizes["batch"] * sizes["sequence"], "d": sizes["hidden"],
               "rank": sizes["rank"], "variant": variant, "status": "ok", **measured.get(variant, {})}
        if variant not in measured:
            row["status"] = mixlora_missing
        rows.append(row)
        _say(options, row)
    for ours in ("moe", "omoe", "mixlora"):
        entry = ratio(f"MLP: omoe_lab {ours} / mixlora package time", row_metric(f"{name} {ours}", "ms"),
                      row_metric(f"{name} mixlora-package", "ms"), rows, ratios)
        ratio(f"MLP: omoe_lab {ours} / mixlora package saved memory", row_metric(f"{name} {ours}", "saved_mib"),
              row_metric(f"{name} mixlora-package", "saved_mib"), rows, ratios)
        if ours != "mixlora":
            targets.append(target(f"omoe_lab {ours} top-2 of 8 / MixLoRA (package) time on the Llama MLP",
                                  of_ratio(entry["name"]), 1.0, rows, ratios))
    return {
        "description": "Forward + backward, same frozen base, same run. (a) PEFT LoRA vs omoe_lab LoRALinear at rank E·r; "
                       "(b) a Llama MLP with 8 experts top-2: mixlora 0.2.3's MixLoraSparseMoe (dropout -> identity) vs "
                       "omoe_lab's MoE-LoRA and OMoE on gate/up/down and omoe_lab's MixLoRA block.",
        "settings": {"linear_shapes": [list(s) for s in linear_shapes], "mlp": sizes},
        "rows": rows, "ratios": ratios, "targets": targets,
    }
