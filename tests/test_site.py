"""The site (``make docs``): built here with the same command, then read as a reader would, offline.

The build runs the lectures under the ``ci`` profile with the run cache of the notebook tests of
this session (``tests/notebook_support.py``): pytest runs this file after ``test_notebooks.py``, so
notebook 01's and 04's runs, trained there, are replayed here and nothing trains twice (run alone,
this test trains them itself). ``-W --keep-going`` makes a missing reference, a bad link or a cell
that raises fail the build. Then, on the built pages:

- nothing is loaded from the network (no http(s) script, stylesheet, image or frame) and no page
  holds an absolute path of this machine (the checkout, the Python environment, the run cache,
  the home folder);
- every relative link and every #anchor it names exists;
- the lectures carry their outputs, with each exercise unsolved ("not yet solved", never "✓"),
  and widgets as a note and a snapshot (progress bars as their text), with no widget state or
  widget manager on the page;
- headless Chromium (Debian's, as in ``test_browser.py``), with every non-file request refused,
  opens the entry page, a lecture (a plotly figure drawn, the maths typeset), the ``OMoELinear``
  API entry and the search page (results for "OMoELinear"), with no error in the console.

Skips without Sphinx and myst-nb (the ``dev`` extras), or without the default model (three lectures
load it); the browser part also without Playwright or Chromium, unless ``OMOE_LAB_REQUIRE_BROWSER=1``
(``.ci/run``), which turns a missing browser into a failure.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from omoe_lab.models import FIX_COMMAND, default_model_available
from tests.notebook_support import ROOT, notebook_environment, shared_runs
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, require_browser

pytestmark = pytest.mark.slow

# the command of `make docs`, with the site written to a folder of the test session
BUILD = [sys.executable, "-m", "sphinx", "-M", "html", ".", "{out}", "-c", "docs", "-W", "--keep-going"]
BUILD_TIMEOUT_S = 5400  # a guard against a hung kernel, as NOTEBOOK_TIMEOUT_S in test_notebooks.py
LECTURES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
WIDGET_LECTURES = ("01_collapse", "02_gram_schmidt", "05_how_many_experts")
# the lecture the browser reads: figures (plain and widget snapshots), maths and exercises
LECTURE = "notebooks/01_collapse.html"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``(html folder, seconds, build log)`` of one build of the site for the whole module."""
    if importlib.util.find_spec("myst_nb") is None or importlib.util.find_spec("sphinx_book_theme") is None:
        pytest.skip("Sphinx, myst-nb or sphinx-book-theme is not installed (pip install -c constraints.txt -e '.[dev]')")
    if not default_model_available():
        pytest.skip(f"lectures 00, 01 and 04 load the default model, which is neither installed nor cached: {FIX_COMMAND}")
    out = tmp_path_factory.mktemp("site")
    runs = shared_runs(tmp_path_factory)
    command = [part.format(out=out) for part in BUILD]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=notebook_environment(runs), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    seconds = time.monotonic() - started
    log = f"{' '.join(command)}\n--- stdout ---\n{done.stdout[-6000:]}\n--- stderr ---\n{done.stderr[-8000:]}"
    assert done.returncode == 0, f"the site build failed after {seconds:.0f} s:\n{log}"
    print(f"site built in {seconds:.0f} s (run cache {runs})")
    return out / "html", seconds, log


# --- reading the built pages --------------------------------------------------------------------
class PageLinks(HTMLParser):
    """The URLs a page loads (scripts, stylesheets, images, frames), the links it has, and its ids."""

    LOADS = {"script": "src", "img": "src", "iframe": "src", "source": "src", "embed": "src", "link": "href"}

    def __init__(self):
        super().__init__()
        self.loads, self.links, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag in self.LOADS and attrs.get(self.LOADS[tag]):
            # a <link> that is not loaded (rel="next", "prev", "index", "search"...) is a link
            loaded = tag != "link" or bool({"stylesheet", "icon", "preload", "modulepreload"} & set((attrs.get("rel") or "").split()))
            (self.loads if loaded else self.links).append(attrs[self.LOADS[tag]])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


def pages(html: Path) -> list[Path]:
    """Every page the site built: not ``_downloads`` (repository files as they are, linked to) nor
    ``_static`` (the theme's template fragments)."""
    return [p for p in html.rglob("*.html") if not {"_downloads", "_static"} & set(p.relative_to(html).parts)]


def parse(page: Path) -> PageLinks:
    parser = PageLinks()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def is_remote(url: str) -> bool:
    return url.startswith("//") or urlsplit(url).scheme not in ("", "file")


def machine_paths(session_tmp: Path) -> set[str]:
    """Absolute paths that exist only on the machine that built the site: the checkout, the Python
    environment, the test session's temporary folder (run cache, build folder) and the home folder."""
    places = {ROOT, Path(sys.prefix), session_tmp}
    return {str(p) for p in places} | {str(p.resolve()) for p in places} | {f"{Path.home()}/"}


# --- the tests ----------------------------------------------------------------------------------
def test_the_site_builds_without_a_warning(built):
    html, seconds, _ = built
    assert (html / "index.html").is_file() and (html / "docs" / "index.html").is_file()
    assert len(pages(html)) > 20, sorted(p.name for p in pages(html))
    api = {name: (html / "docs" / "api" / f"{name}.html").read_text(encoding="utf-8") for name in ("adapters", "widgets")}
    for module, name in (("adapters", "OMoELinear"), ("widgets", "ExpertCountExplorer"), ("widgets", "LayerExplorer"),
                         ("widgets", "GramSchmidtGeometry")):
        assert f'id="omoe_lab.{module}.{name}"' in api[module], f"the API reference lacks omoe_lab.{module}.{name}"


def test_pages_load_nothing_from_the_network_and_name_no_path_of_this_machine(built, tmp_path_factory):
    html, _, _ = built
    remote, local = {}, {}
    paths = machine_paths(tmp_path_factory.getbasetemp())
    for page in pages(html):
        name = str(page.relative_to(html))
        if loads := [url for url in parse(page).loads if is_remote(url)]:
            remote[name] = loads
        text = page.read_text(encoding="utf-8")
        if found := sorted(p for p in paths if p in text):
            local[name] = found
    assert not remote, f"pages load from the network: {remote}"
    assert not local, f"pages name absolute paths of this machine: {local}"
    static = {p.name for p in (html / "_static").iterdir()}
    assert {"plotly.min.js", "tex-svg-full.js"} <= static, static


def test_every_relative_link_and_anchor_resolves(built):
    html, _, _ = built
    ids: dict[Path, set[str]] = {}
    broken = []
    for page in pages(html):
        parsed = parse(page)
        ids.setdefault(page, parsed.ids)
        for url in parsed.links + parsed.loads:
            parts = urlsplit(url)
            if is_remote(url) or parts.scheme or url.startswith(("mailto:", "data:", "javascript:")):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if not target.exists():
                broken.append(f"{page.relative_to(html)}: {url} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                if target not in ids:
                    ids[target] = parse(target).ids
                if unquote(parts.fragment) not in ids[target]:
                    broken.append(f"{page.relative_to(html)}: {url} (no such anchor)")
    assert not broken, "\n".join(broken[:40])


def test_lectures_show_their_outputs_with_exercises_unsolved_and_widgets_as_snapshots(built):
    html, _, _ = built
    for notebook in LECTURES:
        page = (html / "notebooks" / f"{notebook.stem}.html").read_text(encoding="utf-8")
        assert "cell_output" in page, f"{notebook.stem} has no outputs: was it executed?"
        for number in re.findall(r'@exercise\(\\"(\d+\.\d+)\\"\)', notebook.read_text(encoding="utf-8")):
            assert f"not yet solved: Exercise {number}" in page, f"{notebook.stem}: exercise {number} is not shown unsolved"
        assert "✓ Exercise" not in page, f"{notebook.stem} shows a solved exercise"
        assert "widget-state+json" not in page and "widget-view+json" not in page and "html-manager" not in page
        # an explorer is a note and a snapshot; a progress bar (01, 04: tqdm widgets) is just its text
        assert ("widget-snapshot" in page) == (notebook.stem in WIDGET_LECTURES), f"{notebook.stem}: widget snapshots wrong"
    assert "plotly-graph-div" in (html / LECTURE).read_text(encoding="utf-8")


@pytest.fixture
def chromium():
    require_browser()


def test_a_reader_opens_the_site_offline_in_chromium(built, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    html, _, _ = built
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            # offline: anything but a file of the site is refused, and fails the test
            context.route(re.compile(r"^(?!file:|data:|blob:|about:)"),
                          lambda route: (requests.append(route.request.url), route.abort()))
            page = context.new_page()
            page.on("console", lambda m: problems.append(f"{page.url}: console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(f"{page.url}: page error: {error}"))

            # the entry point forwards to the landing page, whose navigation lists every lecture
            page.goto((html / "index.html").as_uri())
            page.wait_for_url("**/docs/index.html", timeout=30_000)
            assert page.title().startswith("omoe_lab")
            nav = page.locator("nav.bd-docs-nav").inner_text()
            assert all(f"{n:02d} ·" in nav for n in range(7)) and "omoe_lab.adapters" in nav, nav

            # a lecture: a plotly figure drawn, every formula typeset
            page.goto((html / LECTURE).as_uri())
            page.wait_for_function("() => window.MathJax?.startup?.promise", timeout=60_000)
            page.evaluate("() => MathJax.startup.promise")
            drawn = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')]
                .map(d => ({traces: (d.data || []).length, svg: d.querySelectorAll('.main-svg').length}))""")
            # every figure drawn; some (a widget's "no run yet" placeholder) have no traces, others do
            assert drawn and all(d["svg"] for d in drawn) and any(d["traces"] for d in drawn), drawn
            maths = page.evaluate("""() => [...document.querySelectorAll('.math')]
                .map(m => m.querySelector('mjx-container') !== null)""")
            assert maths and all(maths), f"{maths.count(False)} of {len(maths)} formulas left untypeset"
            page.screenshot(path=str(tmp_path / "lecture.png"))

            # the API reference of OMoELinear
            page.goto((html / "docs" / "api" / "adapters.html").as_uri() + "#omoe_lab.adapters.OMoELinear")
            entry = page.locator('dt[id="omoe_lab.adapters.OMoELinear"]')
            assert entry.is_visible() and "OMoELinear" in entry.inner_text()
            assert "Gram–Schmidt" in page.locator('dt[id="omoe_lab.adapters.OMoELinear"] + dd').inner_text()

            # search, from file:// (the index is a script the page loads)
            page.goto((html / "search.html").as_uri() + "?q=OMoELinear")
            results = page.locator("#search-results ul.search li")
            results.first.wait_for(timeout=60_000)
            links = results.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
            assert any("api/adapters.html#omoe_lab.adapters.OMoELinear" in link for link in links), links
        finally:
            browser.close()
    assert not requests, f"the site asked the network for: {requests}"
    assert not problems, "errors in the console:\n" + "\n".join(problems[:20])
