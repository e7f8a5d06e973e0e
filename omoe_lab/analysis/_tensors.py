"""Input checks shared by the analysis measures: numpy or torch in, float64 torch out."""
from __future__ import annotations

import numpy as np
import torch


def as_float64(x, name: str) -> torch.Tensor:
    """``x`` (torch tensor, numpy array or nested list) as a float64 CPU tensor.

    Measures run in float64 so that their own round-off stays far below the effects they
    report (float32 CKA of near-duplicate experts loses several digits to cancellation).
    Raises ValueError for non-finite values: a NaN silently propagated into a similarity
    would look like a result.
    """
    if isinstance(x, torch.Tensor):
        tensor = x.detach().to(device="cpu", dtype=torch.float64)
    else:
        tensor = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or inf")
    return tensor


def as_bool(x, name: str) -> torch.Tensor:
    """A boolean mask as a CPU bool tensor."""
    tensor = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if tensor.dtype != torch.bool:
        raise ValueError(f"{name} must be a boolean mask, got dtype {tensor.dtype}")
    return tensor


def require_ndim(x: torch.Tensor, ndim: int, name: str, layout: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(x.shape)}")
