"""Figures that redraw in place inside a widget: the plumbing every explorer shares.

A ``LiveFigure`` is shown once and redrawn by ``show``/``update`` (a plotly ``FigureWidget`` when
anywidget is available, else a static figure in an ``Output``), sized and fitted by
``viz.fit_layout`` each time; ``redraw`` sends a new figure in the order plotly.js takes without
an error; ``placeholder`` says why a panel is empty; ``side_by_side`` lays panels out in a row
that wraps when JupyterLab's output area is narrower than they are.
"""
from __future__ import annotations

import copy
import re

import ipywidgets as widgets
import plotly.graph_objects as go
import plotly.io as pio

from .. import viz

# two panels side by side fill JupyterLab's output area, and no more
PANEL_WIDTH = viz.OUTPUT_AREA_WIDTH // 2 - 10


class LiveFigure:
    """A plotly figure panel, shown once and redrawn in place by ``show`` (or ``update``).

    ``figure`` is a ``go.FigureWidget`` (and ``widget`` the same object) when one can be made;
    otherwise ``figure`` is a ``go.Figure`` and ``widget`` an ``Output`` whose single display is
    replaced on every redraw. ``size`` (plotly ``width``/``height``) is applied to every figure
    shown, since a new figure brings its own layout, and the figure is fitted to it
    (``viz.fit_layout``: title margin, axis titles, legend).

    The browser keeps its own copy of a FigureWidget's figure, and two things about that copy
    decide how a redraw is sent:

    - edits reach it as plotly.js relayout/restyle messages, which *merge* into it: a layout key
      the new figure does not set is not removed, so a placeholder's annotation (and its hidden
      axes) would stay printed over the real plot. ``show`` therefore first sends ``null`` for
      every layout property the new figure leaves out, which plotly.js resets to its default;
    - a page that is reloaded, or a notebook reopened while its kernel runs, draws the figure
      from the widget model's synced state (``_widget_data``/``_widget_layout``), which plotly
      writes only when a FigureWidget is made. Both methods write it after every redraw.

    The FigureWidget itself is kept, not replaced by a new one: each new FigureWidget sends the
    browser plotly.js again (anywidget's ~5 MB ``_esm``), which it evaluates once more.
    ``update`` is for figures that keep their traces (a slider moving an arrow): it edits their
    properties in place (no flicker, and a 3-D scene keeps the camera the user chose).
    """

    def __init__(self, figure: go.Figure, **size):
        self.size = size
        fit(figure, **size)
        try:
            self.figure = go.FigureWidget(figure)
            self.widget, self.live = self.figure, True
        except Exception:  # FigureWidget needs anywidget and its frontend stack; a static figure still teaches
            self.figure, self.widget, self.live = figure, widgets.Output(), False
            self._render()

    def show(self, figure: go.Figure) -> None:
        """Replace what is drawn by ``figure`` (which is resized, not copied: templates are slow to copy)."""
        fit(figure, **self.size)
        if not self.live:
            self.figure = figure
            self._render()
            return
        # what the new layout leaves out is cleared first: an array (annotations, shapes) set to [],
        # anything else to null, which plotly.js resets to its default
        stale = {path: [] if isinstance(value, (list, tuple)) else None
                 for path, value in stale_layout_paths(self.figure.layout.to_plotly_json(), figure.layout.to_plotly_json())}
        with self.figure.batch_update():  # one message to the frontend, not one per trace
            self.figure.data = []
            self.figure.add_traces(list(figure.data))
        if stale:
            self.figure.plotly_relayout(stale)
        self.figure.layout = figure.layout
        self._sync_state()

    def update(self, figure: go.Figure) -> None:
        """Like ``show``, but edits the drawn traces in place when ``figure`` has the same kinds of
        traces in the same order (every property it sets is sent; the template is not)."""
        fit(figure, **self.size)
        if not self.live or [t.type for t in self.figure.data] != [t.type for t in figure.data]:
            self.show(figure)
            return
        with self.figure.batch_update():  # one message to the frontend
            for drawn, new in zip(self.figure.data, figure.data):
                props = new.to_plotly_json()
                props.pop("type"), props.pop("uid", None)
                drawn.update(props)
            layout = figure.layout.to_plotly_json()
            layout.pop("template", None)
            self.figure.layout.update(layout)
        self._sync_state()

    def _sync_state(self) -> None:
        """Write the figure as it is now into the state a reloaded page draws from."""
        if hasattr(self.figure, "_widget_data"):  # plotly >= 6 (anywidget); older FigureWidgets kept no such state
            self.figure._widget_data = copy.deepcopy(self.figure._data)
            self.figure._widget_layout = copy.deepcopy(self.figure._layout_obj._props)

    def _render(self) -> None:
        # Written as an output record rather than with display(): display() outside a kernel
        # prints the figure's repr, and JupyterLab renders this MIME type natively.
        bundle = pio.renderers["plotly_mimetype"].to_mimebundle(self.figure.to_dict())
        bundle["text/plain"] = f"<plotly figure: {self.figure.layout.title.text or 'untitled'}>"
        self.widget.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)


# opens each subtitle line written into a title: the template's subtitle font
SUBTITLE_LINE = f'<span style="font-size:{viz.SUBTITLE_SIZE}px;color:{viz.TEMPLATE.layout.title.subtitle.font.color}">'


def fit(figure: go.Figure, **size) -> go.Figure:
    """``viz.fit_layout``, then the subtitle written as the title's smaller last lines.

    plotly.js places a subtitle under its title's measured box, and a widget's figure is first drawn
    before it is on the page, where every box measures 0: the subtitle landed above the title, over
    it when it wrapped. Lines of the title itself are placed in em, without measuring. ``fit_layout``
    has sized the top margin for the subtitle, which holds these lines too. A figure fitted once is
    left as it is (``fit_layout`` would re-wrap those lines into the title's)."""
    if SUBTITLE_LINE in (figure.layout.title.text or ""):
        return figure
    viz.fit_layout(figure, **size)
    subtitle = figure.layout.title.subtitle.text
    if subtitle:
        small = "<br>".join(f"{SUBTITLE_LINE}{line}</span>" for line in re.split(r"<br\s*/?>", subtitle))
        figure.update_layout(title=dict(text=f"{figure.layout.title.text or ''}<br>{small}", subtitle=dict(text=None)))
    return figure


def stale_layout_paths(old: dict, new: dict, prefix: str = ""):
    """``(dotted path, old value)`` of what layout ``old`` sets and ``new`` does not
    (``"annotations"``, ``"xaxis.visible"``), the template aside (every figure here uses
    ``viz.TEMPLATE``). Arrays such as ``annotations`` count as one value: a new array replaces
    the old one whole."""
    for key, value in old.items():
        if not prefix and key == "template":
            continue
        if key not in new:
            yield prefix + key, value
        elif isinstance(value, dict) and isinstance(new[key], dict):
            yield from stale_layout_paths(value, new[key], f"{prefix}{key}.")


def placeholder(title: str, message: str) -> go.Figure:
    """An empty figure that says why it is empty."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14, color="#666666"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return viz.set_title(fig.update_layout(template=viz.TEMPLATE), title)


def redraw(plot: LiveFigure, figure: go.Figure) -> None:
    """Draw ``figure`` in ``plot`` in the order plotly.js takes without an error.

    Category axes that list tick values (``viz.cka_heatmap``'s) fail in plotly.js ("ax.dtick
    error: Infinity") whenever they are drawn without the data they list: a heatmap replaced by
    one of another size, or removed, or a placeholder's axes receiving a heatmap's layout before
    its trace. So: a heatmap replacing a heatmap is edited in place, with its layout, in one
    message (``LiveFigure.update``); a figure without traces (a placeholder) takes its layout first
    and then loses the old traces; anything else gets its traces first (``LiveFigure.show``).
    """
    heatmaps = [t.type for t in plot.figure.data] == [t.type for t in figure.data] == ["heatmap"]
    if not plot.live or not plot.figure.data or figure.data:
        (plot.update if heatmaps else plot.show)(figure)
        return
    fit(figure, **plot.size)
    stale = {path: [] if isinstance(value, (list, tuple)) else None
             for path, value in stale_layout_paths(plot.figure.layout.to_plotly_json(), figure.layout.to_plotly_json())}
    if stale:
        plot.figure.plotly_relayout(stale)
    plot.figure.layout = figure.layout
    plot.figure.data = []
    plot._sync_state()


# viz.set_title (a title and a smaller line under it) under the name this package has always exported
with_subtitle = viz.set_title


def side_by_side(*children: widgets.Widget) -> widgets.HBox:
    """Panels in a row that wraps onto the next line when the output area is narrower than they are."""
    return widgets.HBox(list(children), layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start"))
