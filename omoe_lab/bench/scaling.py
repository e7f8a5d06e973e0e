"""How cost grows: one adapted linear's time and saved memory against E and against tokens.

Two sweeps, forward + backward, methods ``lora`` (rank E·r: the same A/B budget), ``moe`` and
``omoe`` (as in the layer part; soft routing):

- experts E ∈ {1, 2, 4, 8, 16} at 2048 tokens, d = 576, r = 8;
- tokens ∈ {512, …, 8192} at d = 576, E = 4, r = 8.

What to expect: LoRA and MoE-LoRA are two matmuls of rank E·r, linear in E·r and in tokens.
OMoE adds the rank-space Gram, O(T·E²·r²) FLOPs (its ``[T, E, E, r]`` intermediate is saved),
and the E × E factorizations, O(T·E³): quadratic to cubic in E, still linear in tokens.
The figure (``omoe_lab.viz.cost_scaling``) goes to ``docs/figures/cost_scaling.html``.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from .layer import build
from .measure import MiB, backward_step, cuda_peak_mib, module_tensors, saved_activation_bytes, time_calls, timing_fields
from .options import Options
from .record import ratio, row_metric

METHODS = ["lora", "moe", "omoe"]
SWEEPS = {
    "experts": dict(tokens=[2048], d=576, experts=[1, 2, 4, 8, 16], rank=8),
    "tokens": dict(tokens=[512, 1024, 2048, 4096, 8192], d=576, experts=[4], rank=8),
}
SMOKE_SWEEPS = {
    "experts": dict(tokens=[64], d=32, experts=[1, 2, 4], rank=4),
    "tokens": dict(tokens=[32, 64], d=32, experts=[2], rank=4),
}
FIGURE = Path("docs/figures/cost_scaling.html")


def points(sweeps: dict) -> list[tuple[str, int, int, int, int]]:
    """(sweep, tokens, d, E, r) of every measured point."""
    return [(name, t, s["d"], e, s["rank"]) for name, s in sweeps.items() for t in s["tokens"] for e in s["experts"]]


def run(options: Options, figure: Path | None = None) -> dict:
    device, rows, ratios = options.device, [], []
    sweeps = SMOKE_SWEEPS if options.smoke else SWEEPS
    for sweep, tokens, d, num_experts, rank in points(sweeps):
        torch.manual_seed(1)
        x = torch.randn(tokens, d, device=device, requires_grad=True)
        grad = torch.randn(tokens, d, device=device)
        for method in METHODS:
            layer = build(method, d, num_experts, rank, device)
            step = backward_step(layer, x, grad, layer.parameters())
            row = {"id": f"{sweep}: T{tokens} d{d} E{num_experts} r{rank} {method}", "sweep": sweep, "tokens": tokens, "d": d,
                   "experts": num_experts, "rank": rank, "method": method,
                   **timing_fields(time_calls(step, options.repeats, device))}
            row["saved_mib"] = saved_activation_bytes(partial(layer, x), module_tensors(layer)) / MiB
            if device.type == "cuda":
                row["cuda_peak_mib"] = cuda_peak_mib(step, device)
            rows.append(row)
            options.say(f"scaling {row['id']:36s} {row['ms']:9.2f} ms  {row['saved_mib']:9.2f} MiB saved")
        point = f"{sweep}: T{tokens} d{d} E{num_experts} r{rank}"
        for bottom in ("moe", "lora"):
            ratio(f"{point}: omoe / {bottom} time", row_metric(f"{point} omoe", "ms"), row_metric(f"{point} {bottom}", "ms"),
                  rows, ratios)
    result = {
        "description": "Time and saved-for-backward memory of one adapted d × d linear (forward + backward) against the "
                       "number of experts and against tokens; lora has rank E·r.",
        "settings": {"sweeps": sweeps, "methods": METHODS},
        "rows": rows, "ratios": ratios, "targets": [],
    }
    if figure is not None:
        from ..io import atomic_write
        from ..viz import cost_scaling

        figure.parent.mkdir(parents=True, exist_ok=True)
        fig = cost_scaling(result)
        atomic_write(figure, lambda tmp: fig.write_html(tmp, include_plotlyjs="cdn", full_html=True))
        result["figure"] = str(figure)
        options.say(f"scaling figure: {figure}")
    return result
