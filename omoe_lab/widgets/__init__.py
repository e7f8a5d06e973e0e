"""JupyterLab explorers: move a control, watch expert collapse (MoE-LoRA) or diversity (OMoE).

- ``ExpertCountExplorer`` (``expert_count``) trains (or replays from the cache) one configuration
  per click through ``omoe_lab.experiments.run`` and redraws accuracy against the number of
  experts (every run of the session, the latest ringed) over a committed sweep's curve as a
  reference (``reference``), the CKA heatmap of a chosen adapted layer and the t-SNE of the
  experts' outputs.
- ``LayerExplorer`` (``layer_explorer``) looks inside an already-trained model, one adapted layer
  at a time: expert similarity (CKA, mean |cosine|), routing (load per task, entropy) and the
  Stiefel check, on the scored prompts, captured exactly as the runs' own analysis captures them.
- ``GramSchmidtGeometry`` (``geometry``) draws three expert outputs in 3-D and what Gram–Schmidt
  makes of them (modes, expert order, redundancy), straight from ``adapters.gram_schmidt``.

They share ``live_figure`` (figures redrawn in place) and ``readouts`` (HTML lines). None
computes anything of its own: runs come from ``experiments``, measures from ``analysis``,
Gram–Schmidt from ``adapters``, figures from ``viz``, so a number seen here is the number in the
report. Building and displaying them runs nothing heavy and needs no frontend, so notebooks
executed headless (nbval, nbclient) do not block; the figures are plotly ``FigureWidget``s when
anywidget is available, else plain figures redrawn inside an ``Output``.
"""
from __future__ import annotations

# ``widgets.widgets`` (ipywidgets) and ``widgets.go`` were reachable from the single module this
# package replaces; code that patches ``go.FigureWidget`` through them keeps working
import ipywidgets as widgets  # noqa: F401
import plotly.graph_objects as go  # noqa: F401

from .expert_count import (
    CONTROLLED_FIELDS, LATEST_RUN, METHOD_CHOICES, ROUTING_CHOICES, ExpertCountExplorer, accuracy_frame, ring_latest_run,
    series_name,
)
from .geometry import (
    GEOMETRY_EYE, GEOMETRY_START, ORDERS, GramSchmidtGeometry, gram_schmidt_figure, order_label, relative_residuals,
    spherical_vector,
)
from .layer_explorer import LayerExplorer, adapter_label
from .live_figure import PANEL_WIDTH, LiveFigure, placeholder, redraw, side_by_side, stale_layout_paths, with_subtitle
from .readouts import LABEL_STYLE, error_text, layer_metrics_html
from .reference import (
    OWN_GROUP, REFERENCE_GROUP, REFERENCE_PREFIX, load_reference, reference_caption, reference_frame, reference_series_name,
    reference_traces, repository_root,
)

__all__ = [
    "CONTROLLED_FIELDS", "GEOMETRY_EYE", "GEOMETRY_START", "LABEL_STYLE", "LATEST_RUN", "METHOD_CHOICES", "ORDERS", "OWN_GROUP",
    "PANEL_WIDTH", "REFERENCE_GROUP", "REFERENCE_PREFIX", "ROUTING_CHOICES", "ExpertCountExplorer", "GramSchmidtGeometry", "LayerExplorer",
    "LiveFigure", "accuracy_frame", "adapter_label", "error_text", "gram_schmidt_figure", "layer_metrics_html",
    "load_reference", "order_label", "placeholder", "redraw", "reference_caption", "reference_frame",
    "reference_series_name", "reference_traces", "relative_residuals", "repository_root", "ring_latest_run", "series_name",
    "side_by_side", "spherical_vector", "stale_layout_paths", "with_subtitle",
]
