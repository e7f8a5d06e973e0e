"""``GramSchmidtGeometry``: three expert outputs in 3-D and what Gram–Schmidt makes of them
(modes, expert order, redundancy), straight from ``adapters.gram_schmidt``."""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from .. import viz
from ..adapters.config import ORTHOGONALIZE_MODES
from ..adapters.orthogonal import gram_schmidt
from ..analysis import direction_stiefel_error
from .live_figure import PANEL_WIDTH, LiveFigure, side_by_side
from .readouts import LABEL_STYLE

ORDERS = tuple(itertools.permutations(range(3)))
# azimuth (°), elevation (°), length of e1, e2, e3: three clearly different, unequal experts
GEOMETRY_START = ((-20.0, 10.0, 1.5), (35.0, 25.0, 1.0), (60.0, 70.0, 0.7))
# where the 3-D view looks from: at least 50° off each starting expert (and off three experts in the
# x–y plane), so none points at the reader and looks foreshortened
GEOMETRY_EYE = dict(x=0.35, y=-1.65, z=1.1)


def order_label(order: Sequence[int]) -> str:
    return " → ".join(f"e{k + 1}" for k in order)


def spherical_vector(azimuth: float, elevation: float, length: float) -> torch.Tensor:
    """The float64 vector of ``length`` at ``azimuth`` (from x towards y) and ``elevation`` (above
    the x–y plane), in degrees. Equal angles give exactly proportional vectors (the same unit
    vector times two lengths), which is what makes "parallel" exact with the sliders."""
    a, e = math.radians(azimuth), math.radians(elevation)
    unit = torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)], dtype=torch.float64)
    return length * unit


def relative_residuals(ordered: torch.Tensor, tol: float) -> list[float]:
    """``‖u_k‖ / ‖e_k‖`` of each vector of ``ordered`` [E, d] (in that order): what is left of it
    after removing its components along the directions of the earlier *live* vectors — the
    number ``gram_schmidt`` compares with ``tol`` (NaN for a zero vector). Computed by
    ``gram_schmidt`` itself: the earlier unit directions, then the vector, in ``"orthogonal"``
    mode (q = u) with no threshold."""
    directions = gram_schmidt(ordered, mode="stiefel", tol=tol)
    residuals = []
    for k in range(ordered.shape[0]):
        earlier = directions[:k][directions[:k].norm(dim=-1) > 0]
        u = gram_schmidt(torch.cat([earlier, ordered[k : k + 1]]), mode="orthogonal", tol=0.0)[-1]
        size = float(ordered[k].norm())
        residuals.append(float(u.norm()) / size if size > 0 else math.nan)
    return residuals


def _arrow(tip: torch.Tensor, color: str, name: str, group: str, dash: str, width: int, head: float) -> list:
    """A line from the origin to ``tip`` and a cone at its tip (hidden for a zero vector)."""
    x, y, z = tip.tolist()
    length = float(tip.norm())
    u, v, w = (tip / length * head).tolist() if length > 0 else (0.0, 0.0, 0.0)
    return [
        go.Scatter3d(x=[0.0, x], y=[0.0, y], z=[0.0, z], mode="lines", name=name, legendgroup=group, meta=group,
                     line=dict(color=color, width=width, dash=dash),
                     hovertemplate=f"{name}<br>(%{{x:.3f}}, %{{y:.3f}}, %{{z:.3f}})<extra></extra>"),
        go.Cone(x=[x], y=[y], z=[z], u=[u], v=[v], w=[w], anchor="tip", sizemode="raw", sizeref=1.0,
                colorscale=[[0.0, color], [1.0, color]], showscale=False, hoverinfo="skip", name=name,
                legendgroup=group, meta=group, showlegend=False, visible=length > 0),
    ]


def gram_schmidt_figure(vectors: torch.Tensor, q: torch.Tensor, order: Sequence[int], mode: str, extent: float = 2.2) -> go.Figure:
    """Raw experts ``vectors`` [3, 3] (solid) and their Gram–Schmidt outputs ``q`` [3, 3] (dashed),
    both in expert-index order, in a fixed cube so that moving one arrow moves nothing else.
    Always 12 traces in the same order (e_k line, e_k cone, q_k line, q_k cone, per expert)."""
    fig = go.Figure()
    for k in range(vectors.shape[0]):
        color = viz.expert_color(k)
        redundant = not bool(q[k].abs().max() > 0)
        fig.add_traces(_arrow(vectors[k], color, f"e{k + 1} (raw)", f"e{k + 1}", "solid", 8, 0.22))
        fig.add_traces(_arrow(q[k], color, f"q{k + 1}" + (" = 0 (redundant)" if redundant else ""), f"q{k + 1}", "dash", 5, 0.16))
    axis = dict(range=[-extent, extent], autorange=False, zeroline=True)
    fig.update_layout(
        template=viz.TEMPLATE, uirevision="gram-schmidt", legend=dict(title_text="solid e, dashed q"),
        scene=dict(xaxis=dict(title="x", **axis), yaxis=dict(title="y", **axis), zaxis=dict(title="z", **axis),
                   aspectmode="cube", camera=dict(eye=GEOMETRY_EYE)),
        margin=dict(l=0, r=0, b=0),
    )
    return viz.set_title(fig, f"Gram–Schmidt of three experts, order {order_label(order)}",
                         f"mode {mode}; the q's are omoe_lab.adapters.gram_schmidt's output")


class GramSchmidtGeometry:
    """Three expert outputs e1, e2, e3 in R³ and what Gram–Schmidt makes of them.

    Sliders set each e_k by azimuth, elevation (degrees) and length. ``order`` is the order
    Gram–Schmidt visits them in (OMoE uses expert-index order, so renumbering the experts
    changes the q's: the first keeps its direction, later ones lose what they share with earlier
    ones); ``mode`` is the layer's ``orthogonalize`` (``"stiefel"`` unit q's, ``"orthogonal"``
    the residuals u_k, ``"norm_preserving"`` the directions at ‖e_k‖); ``tol`` is the redundancy
    threshold: an expert whose relative residual ‖u_k‖/‖e_k‖ is at most ``tol`` gets q_k = 0.
    Give two experts the same angles (or press the button) and the later one's q vanishes.

    The q's drawn are ``omoe_lab.adapters.gram_schmidt``'s float64 output, not a re-implementation;
    the table prints each expert's relative residual next to ``tol``.
    """

    def __init__(self, vectors: Sequence[Sequence[float]] = GEOMETRY_START, mode: str = "stiefel",
                 order: Sequence[int] = (0, 1, 2), tol: float = 1e-4, max_length: float = 2.0):
        if len(vectors) != 3:
            raise ValueError(f"GramSchmidtGeometry draws three experts; got {len(vectors)} (azimuth, elevation, length) triples")
        if tuple(order) not in ORDERS:
            raise ValueError(f"order must be a permutation of (0, 1, 2), got {order}")
        self.extent = 1.1 * max_length
        slider = dict(continuous_update=True, style=LABEL_STYLE, layout=widgets.Layout(width="290px"))
        self.azimuth = [widgets.FloatSlider(value=a, min=-180, max=180, step=1, description=f"e{k + 1} azimuth °", **slider)
                        for k, (a, _, _) in enumerate(vectors)]
        self.elevation = [widgets.FloatSlider(value=e, min=-90, max=90, step=1, description=f"e{k + 1} elevation °", **slider)
                          for k, (_, e, _) in enumerate(vectors)]
        self.length = [widgets.FloatSlider(value=n, min=0, max=max_length, step=0.05, description=f"e{k + 1} length", **slider)
                       for k, (_, _, n) in enumerate(vectors)]
        self.mode = widgets.Dropdown(options=ORTHOGONALIZE_MODES, value=mode, description="mode", style=LABEL_STYLE)
        self.order = widgets.Dropdown(options=[(order_label(p), p) for p in ORDERS], value=tuple(order),
                                      description="order", style=LABEL_STYLE)
        self.tol = widgets.FloatLogSlider(value=tol, base=10, min=-6, max=math.log10(0.5), step=0.1,
                                          description="redundancy tol", readout_format=".1e", style=LABEL_STYLE)
        self.align_button = widgets.Button(description="make e2 ∥ e1", icon="link",
                                           tooltip="give e2 the direction of e1 (its length stays): one of them becomes redundant")
        self.readout = widgets.HTML()
        self._holding = False
        self.plot = LiveFigure(self._figure(), height=560, width=PANEL_WIDTH + 60)  # the readout takes the rest of the row
        self.readout.value = self._readout()

        for control in (*self.azimuth, *self.elevation, *self.length, self.mode, self.order, self.tol):
            control.observe(self._redraw, "value")
        self.align_button.on_click(lambda _: self.align(1, 0))
        columns = [widgets.VBox([self.azimuth[k], self.elevation[k], self.length[k]]) for k in range(3)]
        self.widget = widgets.VBox([
            widgets.HBox([self.mode, self.order, self.tol, self.align_button]),
            widgets.HBox(columns),
            side_by_side(self.plot.widget, self.readout),
        ])

    @property
    def figure(self) -> go.Figure:
        return self.plot.figure

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def expert_vectors(self) -> torch.Tensor:
        """e1, e2, e3 as the rows of a float64 [3, 3] tensor, in expert-index order."""
        return torch.stack([spherical_vector(self.azimuth[k].value, self.elevation[k].value, self.length[k].value)
                            for k in range(3)])

    def orthogonalized(self) -> torch.Tensor:
        """q1, q2, q3 [3, 3] in expert-index order: ``gram_schmidt`` of the experts taken in ``order``."""
        order = list(self.order.value)
        q = torch.empty(3, 3, dtype=torch.float64)
        q[order] = gram_schmidt(self.expert_vectors()[order], mode=self.mode.value, tol=self.tol.value)
        return q

    def drawn_q(self) -> torch.Tensor:
        """The tips of the q arrows as drawn, [3, 3] in expert-index order (read from the figure)."""
        lines = {t.meta: t for t in self.figure.data if t.type == "scatter3d"}
        return torch.tensor([[lines[f"q{k + 1}"][axis][1] for axis in "xyz"] for k in range(3)], dtype=torch.float64)

    def align(self, expert: int, onto: int) -> None:
        """Give expert ``expert`` (0-based) the direction of expert ``onto``; its length stays."""
        self._holding = True  # one redraw for the two sliders
        try:
            self.azimuth[expert].value = self.azimuth[onto].value
            self.elevation[expert].value = self.elevation[onto].value
        finally:
            self._holding = False
        self._redraw()

    def _figure(self) -> go.Figure:
        return gram_schmidt_figure(self.expert_vectors(), self.orthogonalized(), self.order.value, self.mode.value, self.extent)

    def _redraw(self, _change=None) -> None:
        if self._holding:
            return
        self.plot.update(self._figure())
        self.readout.value = self._readout()

    def _readout(self) -> str:
        """Per step of Gram–Schmidt: the expert, ‖e‖, its relative residual against ``tol``, ‖q‖."""
        order, tol = list(self.order.value), self.tol.value
        vectors, q = self.expert_vectors(), self.orthogonalized()
        residuals = relative_residuals(vectors[order], tol)
        def row(cells, tag="td"):
            return "<tr>" + "".join(f"<{tag} style='padding:2px 8px; text-align:left'>{c}</{tag}>" for c in cells) + "</tr>"

        lines = [row(("step", "expert", "‖e‖", "‖u‖ / ‖e‖", "", "‖q‖"), "th")]
        for step, (k, residual) in enumerate(zip(order, residuals), start=1):
            live = bool(q[k].abs().max() > 0)
            compared = "zero vector" if math.isnan(residual) else f"{residual:.2e} {'>' if live else '≤'} tol"
            lines.append(row((step, f"e{k + 1}", f"{float(vectors[k].norm()):.3f}", compared,
                              "live" if live else "<b>redundant: q = 0</b>", f"{float(q[k].norm()):.3f}")))
        error = direction_stiefel_error(q)
        lengths = "unit q's" if self.mode.value == "stiefel" else "their lengths: ‖q‖ above"
        return (f"<table style='border-collapse:collapse'>{''.join(lines)}</table>"
                f"<p>tol = {tol:.1e} · directions of the live q's: ‖QᵀQ − I‖ = {error:.1e} ({lengths})</p>")
