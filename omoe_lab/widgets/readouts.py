"""HTML readouts the explorers share: control label style, errors, one layer's measures."""
from __future__ import annotations

import html

from .. import viz

# ipywidgets cuts a description at ~80 px ("orthogona…"); "initial" sizes it to its text
LABEL_STYLE = {"description_width": "initial"}


def error_text(error: BaseException) -> str:
    """An exception as one escaped line: its type and message."""
    return html.escape(f"{type(error).__name__}: {error}")


def _number(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def layer_metrics_html(row: dict) -> str:
    """One line of a layer's measures (an ``experiments.analyse_experts`` row, or the same keys).

    Mean |cosine| is per token, CKA across tokens (OMOE_SPEC §6): OMoE's Gram–Schmidt makes the
    q_i orthogonal per token, but these measures are taken on the raw e_i, where diversity is
    learned, not imposed.
    """
    experts = row.get("experts")
    parts = [f"<b>{html.escape(viz.layer_label(row['layer'], row.get('block')))}</b>"]
    if experts is not None:
        parts.append(f"{experts} expert{'s' if experts != 1 else ''}")
    if row.get("tokens") is not None:
        parts.append(f"{row['tokens']} tokens")
    measures = (
        ("mean |cosine| of raw outputs", "mean_abs_cosine", ""),
        ("mean off-diagonal CKA", "mean_cka", ""),
        ("effective rank", "effective_rank", f" of {experts}" if experts else ""),
        ("routing entropy / log E", "routing_entropy", ""),
        ("Stiefel error", "stiefel_error", ""),
    )
    for name, key, suffix in measures:
        if key in row:
            parts.append(f"{name}: {_number(row[key])}{suffix}")
    for name, message in row.get("undefined", {}).items():
        parts.append(f"{html.escape(name)}: undefined ({html.escape(message)})")
    if experts == 1:
        parts.append("a single expert has nothing to be similar to")
    return " · ".join(parts)
