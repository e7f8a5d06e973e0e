"""What the site needs beyond Sphinx and myst-nb: plotly figures drawn offline, widgets as snapshots,
and an API reference made from each module's public names.

- ``SiteRenderer`` (myst-nb's ``nb_render_plugin``, found through the entry point that
  ``omoe_lab_site-0.dist-info`` beside this file declares): a figure leaves the kernel as plotly
  JSON (``application/vnd.plotly.v1+json``), which myst-nb does not render; here it becomes a div
  that the site's own ``_static/plotly.min.js`` draws, interactive and with no CDN. An ipywidget
  with controls or figures cannot run without a kernel, so its view becomes a note that says so and
  a static plotly snapshot of the figures it held when the notebook finished (read from the widget
  state nbclient saves); one that only shows text (a tqdm progress bar) becomes the text it ended
  with. The widget state itself, and myst-nb's widget manager from a CDN, stay off the page.
- ``|x|`` in a docstring is an absolute value here (mean |cos|), never a reStructuredText
  substitution (the project defines none): ``escape_absolute_values`` escapes the bars.
- ``public-api`` directive: ``automodule`` restricted to a module's public names: its ``__all__``,
  else the classes and functions it defines, in itself or (for a package) in its submodules, so a
  module split into a package with the same names keeps the same reference.
"""
from __future__ import annotations

import base64
import copy
import functools
import html
import importlib
import inspect
import re

import numpy as np
import plotly.io as pio
from docutils import nodes
from myst_nb.core.render import NbElementRenderer
from sphinx.util.docutils import SphinxDirective

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
# widgets that only show something: without any other (a control, a FigureWidget) a widget needs no kernel
DISPLAY_ONLY = {"HBoxModel", "VBoxModel", "BoxModel", "GridBoxModel", "HTMLModel", "HTMLMathModel", "LabelModel",
                "FloatProgressModel", "IntProgressModel", "OutputModel"}
SNAPSHOT_NOTE = ("Interactive widget: it needs a running Jupyter kernel, so here it is a static snapshot of its "
                 "figures as the notebook left them. Open the notebook in JupyterLab to use its controls.")


def figure_html(figure: dict) -> str:
    """A plotly figure (its JSON) as a div that the page's plotly.js draws."""
    layout = {key: value for key, value in figure.get("layout", {}).items() if key != "width"}  # the page's column decides
    return pio.to_html({"data": figure.get("data", []), "layout": layout, "frames": figure.get("frames", [])},
                       config=figure.get("config"), include_plotlyjs=False, include_mathjax=False, full_html=False,
                       auto_play=False, default_width="100%", validate=False)


def with_buffers(model: dict) -> dict:
    """A widget model's state with its binary buffers put back: plotly sends arrays as typed
    buffers (``{"dtype", "shape", "buffer"}``), which nbclient saves beside the state, base64-encoded,
    one per path ever sent. A path the final state no longer has (a message trait reset, a trace
    removed) or holds something else at is stale, and skipped."""
    state = copy.deepcopy(model["state"])
    for buffer in model.get("buffers", []):
        *where, key, _ = buffer["path"]  # the path ends at the array spec's "buffer" key
        try:
            parent = functools.reduce(lambda node, step: node[step], where, state)
            spec = parent[key]
        except (KeyError, IndexError, TypeError):
            continue
        if isinstance(spec, dict) and "dtype" in spec:
            array = np.frombuffer(base64.b64decode(buffer["data"]), dtype=spec["dtype"])
            parent[key] = array.reshape(spec.get("shape") or -1).tolist()
    return state


def widget_models(model_id: str, state: dict) -> list[dict]:
    """A widget's model and those of every widget inside it, depth first (layouts and styles left out)."""
    model = state.get(model_id)
    if model is None or model["model_name"].endswith(("LayoutModel", "StyleModel")):
        return []
    found = [model]
    for value in model["state"].values():
        for ref in value if isinstance(value, list) else [value]:
            if isinstance(ref, str) and ref.startswith("IPY_MODEL_"):
                found += widget_models(ref.removeprefix("IPY_MODEL_"), state)
    return found


def model_figures(model: dict) -> list[dict]:
    """The plotly figure of a FigureWidget (its synced state), or those an Output widget displays."""
    values = with_buffers(model)
    if "_widget_data" in values:  # plotly's FigureWidget (anywidget, plotly >= 6)
        return [{"data": values["_widget_data"], "layout": values.get("_widget_layout") or {}}]
    return [output["data"][PLOTLY_MIME] for output in values.get("outputs", []) if PLOTLY_MIME in output.get("data", {})]


def model_text(model: dict) -> str:
    """What a text widget (HTML, Label) or an Output widget's stream shows, as plain text."""
    values = model["state"]
    if model["model_name"] in ("HTMLModel", "HTMLMathModel", "LabelModel"):
        return html.unescape(re.sub(r"<[^>]+>", "", values.get("value") or ""))
    return "".join(output.get("text", "") for output in values.get("outputs", []) if output.get("output_type") == "stream")


class SiteRenderer(NbElementRenderer):
    """myst-nb's renderer, with plotly figures and widget snapshots (see the module's docstring)."""

    def render_mime_type(self, data):
        if data.mime_type == PLOTLY_MIME:
            return [nodes.raw(text=figure_html(data.content), format="html", classes=["output", "plotly"])]
        return super().render_mime_type(data)

    def render_widget_view(self, data):
        widgets = self.renderer.nb_client.nb_metadata.get("widgets", {})
        models = widget_models(data.content["model_id"], widgets.get(WIDGET_STATE_MIME, {}).get("state", {}))
        figures = [figure for model in models for figure in model_figures(model)]
        if figures or any(model["model_name"] not in DISPLAY_ONLY for model in models):
            note = nodes.admonition("", nodes.title(text="Needs a kernel"), nodes.paragraph(text=SNAPSHOT_NOTE),
                                    classes=["note", "widget-snapshot"])
            return [note] + [nodes.raw(text=figure_html(f), format="html", classes=["output", "plotly"]) for f in figures]
        # nothing to interact with (a tqdm progress bar): the text it ended with
        text = " ".join(filter(None, (model_text(model).strip() for model in models)))
        return [nodes.literal_block(text, text, classes=["output", "text_plain"])] if text else []

    def render_nb_finalise(self, metadata):
        """Nothing: the base class would embed the widget state and load a widget manager from a CDN."""


class PublicAPI(SphinxDirective):
    """``.. public-api:: omoe_lab.widgets``: the module's public names, through autodoc."""

    required_arguments = 1

    def run(self):
        name = self.arguments[0]
        module = importlib.import_module(name)
        names = getattr(module, "__all__", None) or [
            key for key, value in vars(module).items()
            if not key.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
            and (value.__module__ == name or value.__module__.startswith(name + "."))
        ]
        return self.parse_text_to_nodes(f".. automodule:: {name}\n   :members: {', '.join(names)}\n   :undoc-members:\n")


# what reStructuredText reads as a substitution reference: |, no space, text, no space, |, not a link (|x|_)
SUBSTITUTION = re.compile(r"(?<![\\\w|])\|(?=\S)([^|`]*?\S)\|(?![\w|])")


def escape_absolute_values(app, what, name, obj, options, lines):
    """Escape the bars of every |x| in a docstring, outside double-backquoted literals (shown as they are)."""
    for i, line in enumerate(lines):
        parts = re.split(r"(``.*?``)", line)
        lines[i] = "".join(part if k % 2 else SUBSTITUTION.sub(r"\\|\1\\|", part) for k, part in enumerate(parts))


def add_plotly_js(app, pagename, templatename, context, doctree):
    """plotly.js (4.6 MB) only on the pages that draw a figure, before the figures' inline scripts."""
    if "plotly-graph-div" in context.get("body", ""):
        app.add_js_file("plotly.min.js")


def setup(app):
    app.add_directive("public-api", PublicAPI)
    app.connect("autodoc-process-docstring", escape_absolute_values)
    app.connect("html-page-context", add_plotly_js)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
