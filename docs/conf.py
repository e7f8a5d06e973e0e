"""Sphinx configuration of the site: ``make docs`` (= sphinx-build -M html . site -c docs -W --keep-going).

The source folder is the repository root, so every relative link in the README, docs/*.md and the
notebooks resolves on the site exactly as it does in the repository; ``include_patterns`` picks the
pages. The lectures are executed during the build, exercises unsolved, under the ``ci`` profile
unless OMOE_LAB_PROFILE says otherwise; finished runs come from the run cache ($OMOE_LAB_RUNS, else
runs/ at the root), so a run the notebook tests or the CLI already trained is replayed, not trained
again. Everything the pages load is served from the site itself: it opens from file:// offline.
"""
import os
import sys
from pathlib import Path

import mathjax  # PyPI's django-static-mathjax: MathJax 3.2.2's files and nothing else (docs/decisions.md)
import plotly

ROOT = Path(__file__).resolve().parents[1]
# this checkout's package, for autodoc here and for the notebooks' kernels (they inherit os.environ)
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

# --- how the lectures run -----------------------------------------------------------------------
os.environ.setdefault("OMOE_LAB_PROFILE", "ci")
os.environ["OMOE_LAB_SOLUTIONS"] = "0"  # the site shows the exercises as a learner gets them: "not yet solved"
for name in ("OMOE_LAB_SWEEP", "OMOE_LAB_BENCH"):  # the committed sweep and benchmark results, not a developer's
    os.environ.pop(name, None)
# figures leave the kernel as plotly JSON, which site_ext draws with the site's own plotly.js
os.environ["PLOTLY_RENDERER"] = "plotly_mimetype"

project = "omoe_lab"
author = "the omoe_lab authors"
root_doc = "docs/index"
include_patterns = ["docs/*.md", "docs/api/*.rst", "notebooks/*.ipynb", "notebooks/README.md", "data/README.md"]
exclude_patterns = [".git", ".venv", "site", "build", "runs", "data/*/**"]  # never walked

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.mathjax", "site_ext"]

nb_execution_mode = "force"  # outputs always come from this checkout's code; the run cache makes it cheap
nb_execution_timeout = 3600  # per cell, as tests/test_notebooks.py: 01's compare() trains for minutes
nb_execution_show_tb = True  # a failing cell's traceback in the build log (and -W fails the build)
nb_merge_streams = True
nb_render_plugin = "omoe_lab_site"  # site_ext.SiteRenderer: plotly figures and widget snapshots
nb_mime_priority_overrides = [("html", "application/vnd.plotly.v1+json", 15)]  # which site_ext draws

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3  # GitHub's anchors (docs/training.md#export-and-trackers) exist on the site too

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "sphinx_book_theme"
html_title = "omoe_lab"
html_theme_options = {"show_toc_level": 2}
# the outputs (plotly, pandas tables) are drawn for a light page; unset, the theme logs a console error
html_context = {"default_mode": "light"}
html_static_path = [
    str(Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-svg-full.js"),  # one file, no fonts to fetch
    str(Path(plotly.__file__).parent / "package_data" / "plotly.min.js"),  # the plotly.js of the installed plotly
]
mathjax_path = "tex-svg-full.js"
# the summaries under search results are fetched from the pages, which a browser refuses on file://
html_show_search_summary = False
html_additional_pages = {"index": "redirect.html"}  # site/html/index.html → the landing page
templates_path = ["_templates"]
