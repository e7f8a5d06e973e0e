"""Two-dimensional maps of expert outputs (t-SNE or PCA), as a tidy DataFrame for plotting.

The paper's picture of expert collapse: embed every expert's output for every token in 2-D and
colour the points by expert. Collapsed experts overlap; diverse experts form separate clouds.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from ._tensors import as_bool, as_float64, require_ndim

METHODS = ("tsne", "pca")


def _metadata_columns(metadata, num_tokens: int) -> dict[str, object]:
    """Metadata as columns of length T (per token) or scalars (same for every row)."""
    if metadata is None:
        return {}
    if isinstance(metadata, pd.DataFrame):
        metadata = {column: metadata[column].to_numpy() for column in metadata.columns}
    if not isinstance(metadata, Mapping):
        raise ValueError("metadata must be a mapping (column → scalar or per-token values) or a DataFrame")
    columns = {}
    for column, values in metadata.items():
        if column in ("x", "y", "expert", "projection"):
            raise ValueError(f"metadata column {column!r} clashes with a column embed() writes")
        if np.ndim(values) == 0:
            columns[column] = values
            continue
        values = np.asarray(values.cpu() if hasattr(values, "cpu") else values)
        if values.shape != (num_tokens,):
            raise ValueError(f"metadata column {column!r} has shape {values.shape}; expected ({num_tokens},), one per token")
        columns[column] = values
    return columns


def tsne_perplexity(num_points: int, perplexity: float = 30.0) -> float:
    """The requested perplexity, clamped to ``(n − 1) / 3`` for small n.

    Perplexity is t-SNE's effective number of neighbours; each point's Gaussian is calibrated on
    roughly 3·perplexity neighbours, so it must stay well below the number of points.
    """
    return float(min(perplexity, (num_points - 1) / 3.0))


def embed(
    expert_outputs,
    method: str = "tsne",
    random_state: int = 0,
    perplexity: float = 30.0,
    experts=None,
    active=None,
    metadata=None,
    pca_dims: int = 50,
    max_iter: int = 1000,
) -> pd.DataFrame:
    """Embed expert outputs [T, E, d] in 2-D: one row per (token, expert) pair.

    - ``method="pca"``: the top two principal components of all selected outputs
      (linear: distances along them are real output-space distances, in output units).
    - ``method="tsne"``: t-SNE (van der Maaten & Hinton 2008) with PCA initialization, the
      outputs first reduced to ``pca_dims`` principal components when d is larger (the usual
      speed and denoising step), ``perplexity`` clamped by ``tsne_perplexity``. Only
      neighbourhoods are meaningful; axis scales and distances between clusters are not.
      Fixed ``random_state`` → the same map each run.

    ``experts`` (indices) keeps only those experts; ``active`` [T, E] bool keeps only the
    (token, expert) pairs that were routed (the paper plots the two activated experts).
    ``metadata`` (mapping or DataFrame) adds columns: a scalar is repeated (e.g. ``layer``,
    ``method``), an array of length T is given to each of that token's rows (e.g. ``task``,
    ``token``). Output columns: ``x``, ``y``, ``expert``, ``token_row`` (index into T),
    ``projection`` (``"tsne"`` or ``"pca"``), then the metadata. The perplexity used is in
    ``df.attrs["perplexity"]``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    outputs = as_float64(expert_outputs, "expert_outputs")
    require_ndim(outputs, 3, "expert_outputs", "[T, E, d]")
    num_tokens, num_experts = outputs.shape[0], outputs.shape[1]
    if outputs.shape[2] < 2:
        raise ValueError(f"expert outputs have {outputs.shape[2]} feature(s); a 2-D map needs at least 2")
    columns = _metadata_columns(metadata, num_tokens)

    expert_ids = np.arange(num_experts) if experts is None else np.asarray(experts, dtype=int)
    if expert_ids.size == 0 or expert_ids.min() < 0 or expert_ids.max() >= num_experts:
        raise ValueError(f"experts must be indices in [0, {num_experts}), got {expert_ids.tolist()}")
    keep = np.zeros((num_tokens, num_experts), dtype=bool)
    keep[:, expert_ids] = True
    if active is not None:
        active_mask = as_bool(active, "active").numpy()
        if active_mask.shape != keep.shape:
            raise ValueError(f"active must have shape {keep.shape}, got {active_mask.shape}")
        keep &= active_mask
    token_rows, expert_of_row = np.nonzero(keep)  # token-major order
    points = outputs.numpy()[token_rows, expert_of_row]

    if points.shape[0] < 4:
        raise ValueError(f"only {points.shape[0]} (token, expert) points selected; a 2-D map needs at least 4")
    if np.ptp(points, axis=0).max() == 0:
        raise ValueError("all selected expert outputs are identical; there is nothing to embed")

    perplexity_used = None
    if method == "pca":
        coordinates = PCA(n_components=2, random_state=random_state).fit_transform(points)
    else:
        if points.shape[1] > pca_dims:
            dims = min(pca_dims, points.shape[0])
            points = PCA(n_components=dims, random_state=random_state).fit_transform(points)
        perplexity_used = tsne_perplexity(points.shape[0], perplexity)
        coordinates = TSNE(
            n_components=2,
            perplexity=perplexity_used,
            init="pca",
            learning_rate="auto",
            max_iter=max_iter,
            random_state=random_state,
        ).fit_transform(points)

    frame = pd.DataFrame({
        "x": coordinates[:, 0],
        "y": coordinates[:, 1],
        "expert": expert_of_row,
        "token_row": token_rows,
        "projection": method,
    })
    for column, values in columns.items():
        frame[column] = values if np.ndim(values) == 0 else values[token_rows]
    frame.attrs["perplexity"] = perplexity_used
    return frame
