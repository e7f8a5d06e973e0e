"""A learner's session in a real browser: JupyterLab, headless Chromium, all seven notebooks.

One JupyterLab server per module starts on 127.0.0.1 with a token (the ``ci`` profile and the
notebook tests' shared run cache in its environment, so a run trained here is one nbval replays, and
the other way round) and serves copies of ``notebooks/*.ipynb`` (autosave writes outputs into them,
never into the repository). Each notebook opens in a workspace of its own and runs with Run → Run All
Cells, exercises unsolved: no cell may show an error, every exercise must say "not yet solved" (the
cells after it run on the reference solution), no "no run(s) yet" placeholder may remain, and at least
``EXPECTED_FIGURES`` plotly figures must be on the page, every one drawn. Then a learner's action on
each notebook's widgets: 01's ``LayerExplorer`` gets another layer (its progress bar counts the
capture's batches and both panels redraw for that layer), 02's geometry widget gets "make e2 ∥ e1"
(q2 becomes redundant). Notebook 05 has its own, longer session: it types exercise 5.1 into its cell
wrongly (the checker's hint appears) and then rightly (its pass line appears), presses the explorer's
Run button, moves the expert slider and runs again, moves a slider of the Gram–Schmidt geometry widget,
and reloads the page, which must show the same figures. Everything asserted is read from the page: the
plots' SVG and the figures plotly.js holds on their graph divs, the widgets' text. A JavaScript error in
the console fails the test (``ALLOWED_CONSOLE_ERRORS`` lists the few messages that are not ours, each
with its reason). Screenshots (the page after Run All, each figure, the widgets after each action) go
to ``runs/browser-screenshots/<notebook>-*.png`` (ignored by git).

Needs Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it through
``make browser``) and Playwright from PyPI (the ``dev`` extras); browser downloads such as
``playwright install`` are not used. Skips, with the reason, without them, and skips a notebook that
runs the default model (00, 01, 04, and 05, whose explorer trains it) when that model is neither
installed nor cached — unless ``OMOE_LAB_REQUIRE_BROWSER=1`` (set by ``.ci/run``), which turns a
missing browser into a failure.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import pytest

from omoe_lab.models import FIX_COMMAND, default_model_available
from tests.notebook_support import NOTEBOOKS, ROOT, needs_default_model, notebook_environment, shared_runs

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("OMOE_LAB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    # plotly draws the geometry widget's 3-D scene with WebGL; without a GPU, Chromium gives WebGL
    # only through its software renderer, and only when asked for it
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]
NOTEBOOK = ROOT / "notebooks" / "05_how_many_experts.ipynb"
SCREENSHOTS = ROOT / "runs" / "browser-screenshots"
PLACEHOLDERS = ("no runs yet", "no run yet")
# Console errors that are not the notebook's or the widgets': (pattern, why it is harmless). None is
# needed: JupyterLab's only calls to the internet (announcements, update checks) are switched off in the
# server's config below, so its offline messages never come; anything else in the console fails the test.
ALLOWED_CONSOLE_ERRORS: tuple[tuple[str, str], ...] = ()
RUN_TIMEOUT_S = 900  # one training under ci: about a minute on 2 quiet cores, several on a busy machine
NOTEBOOK_TIMEOUT_S = 600
# guards against a hung kernel, not budgets: 01 trains four runs in one cell (as in tests/test_notebooks.py)
RUN_ALL_TIMEOUT_S = {"01_collapse": 3600, "04_finetune_real": 1800}
# The plotly figures each notebook draws after Run All (ci profile, exercises unsolved, the committed
# results and benchmarks), counted from its cells; every figure on the page must also be drawn.
EXPECTED_FIGURES = {
    "00_tour": 0,
    # accuracy by task, training loss, similarity per layer, 2 CKA heatmaps, t-SNE, routing load,
    # routing entropy, entropy over training, Stiefel error; LayerExplorer 2, ExpertCountExplorer 3
    "01_collapse": 15,
    "02_gram_schmidt": 1,  # the geometry widget
    "03_lora_to_moe": 2,  # routing of a toy mixture, load balancing
    "04_finetune_real": 1,  # accuracy per arm (its per-task bars only for a multi-task summary: the committed one has one task)
    "05_how_many_experts": 0,  # its own test below
    "06_cost_and_scale": 1,  # cost scaling (results/bench)
}
# exercise 5.1, typed by the test: its cell (found by the stub's decorator), a plausible wrong answer (no router
# parameters) and the right one; the checker's wording is tested in tests/test_exercises.py
EXERCISE_STUB = '@exercise("5.1")'
_EXERCISE_HEAD = ('@exercise("5.1")\ndef mixture_parameters_by_hand(layer_shapes, method, num_experts, rank):\n'
                  '    sum_in = sum(d_in for d_in, _ in layer_shapes)\n    sum_out = sum(d_out for _, d_out in layer_shapes)\n')
_EXERCISE_CHECK = "\n\nmixture_parameters_by_hand = check_mixture_parameters(mixture_parameters_by_hand)\n"
EXERCISE_WRONG = _EXERCISE_HEAD + "    return num_experts * rank * (sum_in + sum_out)" + _EXERCISE_CHECK
EXERCISE_RIGHT = (_EXERCISE_HEAD + '    if method == "lora":\n        return rank * (sum_in + sum_out)\n'
                  '    magnitudes = len(layer_shapes) if method == "omoe" else 0\n'
                  "    return num_experts * (rank * (sum_in + sum_out) + sum_in) + magnitudes" + _EXERCISE_CHECK)


def missing() -> str | None:
    """Why this test cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -c constraints.txt -e '.[dev]'; .ci/run does it)"
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium, or `make browser`; .ci/run does it)"
    if importlib.util.find_spec("jupyterlab") is None:
        return "jupyterlab is not installed (pip install -e '.[dev]')"
    return None


def require_browser() -> None:
    """Skip without Chromium or Playwright (with the reason), or fail under OMOE_LAB_REQUIRE_BROWSER=1."""
    reason = missing()
    if reason and os.environ.get("OMOE_LAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"OMOE_LAB_REQUIRE_BROWSER=1 but {reason}")
    if reason:
        pytest.skip(reason)


def require_model(notebook: Path) -> None:
    """Skip a notebook that loads the default model (05: whose explorer trains it) when it is not here."""
    if (notebook.name == NOTEBOOK.name or needs_default_model(notebook)) and not default_model_available():
        pytest.skip(f"{notebook.name} runs the default model, which is neither installed nor cached: {FIX_COMMAND}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


class Lab(NamedTuple):
    base: str  # http://127.0.0.1:<port>
    token: str
    folder: Path  # the copies of the notebooks it serves


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory):
    """A JupyterLab server of its own for this module (config, settings, workspaces and runtime in a
    temporary folder) serving copies of the seven notebooks; yields a ``Lab``."""
    require_browser()
    tmp_path = tmp_path_factory.mktemp("jupyterlab")
    served = tmp_path / "lab"
    (served / "notebooks").mkdir(parents=True)
    for notebook in NOTEBOOKS:
        shutil.copy(notebook, served / "notebooks" / notebook.name)
    config, settings = tmp_path / "jupyter-config", tmp_path / "lab-settings"
    # no announcements or update checks (they would go to the internet), every cell in the DOM
    # (JupyterLab otherwise leaves cells outside the viewport unrendered)
    write_json(config / "jupyter_lab_config.json",
               {"LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate"}})
    write_json(settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings",
               {"fetchNews": "false", "checkForUpdates": False})
    # and the notebook's kernel started without asking (JupyterLab asks when its kernel specs arrive late)
    write_json(settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings",
               {"windowingMode": "none", "autoStartDefaultKernel": True})
    token, port = secrets.token_hex(16), free_port()
    env = notebook_environment(shared_runs(tmp_path_factory)) | {
        "OMOE_LAB_SOLUTIONS": "0",  # the exercises are left to the learner (05's test types one)
        "JUPYTER_CONFIG_DIR": str(config), "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
    }
    log_path = tmp_path / "jupyter.log"
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={token}", "--allow-root", f"--ServerApp.root_dir={served}"]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with {server.returncode}:\n{log_path.read_text()[-4000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as reply:
                    if reply.status == 200:
                        break
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer within 120 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield Lab(base, token, served / "notebooks")
    finally:
        # the server and the kernels it started are one process group of ours
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


# --- reading the page ---------------------------------------------------------------------------
# plotly.js keeps the figure it drew on its graph div (gd.data, gd.layout); a figure is found by its title
FIGURE_JS = """
(root, [pattern]) => {
  const title = new RegExp(pattern);
  const divs = [...root.querySelectorAll('.js-plotly-plot')]
    .filter(d => title.test(d.querySelector('.gtitle')?.textContent || ''));
  if (divs.length !== 1) return {found: divs.length};
  const d = divs[0];
  const plain = v => (v && typeof v === 'object' && 'length' in v) ? Array.from(v, plain) : v;
  return {
    found: 1,
    title: d.querySelector('.gtitle')?.textContent || '',
    traces: (d.data || []).map(t => ({name: t.name ?? null, type: t.type ?? 'scatter', legendgroup: t.legendgroup ?? null,
                                      x: plain(t.x) ?? null, y: plain(t.y) ?? null, z: plain(t.z) ?? null})),
    points: d.querySelectorAll('.scatterlayer .trace .points path').length,
    xticks: [...d.querySelectorAll('.xtick text')].map(t => t.textContent),
    heatmap_images: [...d.querySelectorAll('.heatmaplayer image')].map(i => i.getAttribute('href') || i.getAttribute('xlink:href') || ''),
    annotations: [...d.querySelectorAll('.annotation-text')].map(t => t.textContent),
    legend: [...d.querySelectorAll('.legendtext')].map(t => t.textContent),
    gl: d.querySelectorAll('canvas').length,
    text: d.textContent,
  };
}
"""
# the explorer's three panels (the CKA one before and after its first run) and the geometry widget, by title
ACCURACY, CKA, TSNE, GEOMETRY = ("^Accuracy against the number of experts", "^(Linear )?CKA between experts", "^t-SNE of expert outputs",
                                 "^Gram–Schmidt of three experts")


# every figure in the outputs: its title, and whether plotly.js has drawn it (its SVG, with traces)
FIGURES_JS = """
() => [...document.querySelectorAll('.jp-OutputArea .js-plotly-plot')].map(d => ({
  title: d.querySelector('.gtitle')?.textContent || '(untitled)',
  drawn: !!d.querySelector('.main-svg') && (d.data || []).length > 0,
}))
"""


def figure(where, title: str) -> dict:
    """The one figure titled /title/ on the page, or in a panel (a Playwright locator)."""
    from playwright.sync_api import Locator

    found = (where if isinstance(where, Locator) else where.locator("body")).evaluate(FIGURE_JS, [title])
    assert found["found"] == 1, f"{found['found']} figures titled /{title}/ on the page"
    return found


def own_points(accuracy: dict) -> int:
    """The learner's runs drawn on the accuracy plot (its own legend group, the latest-run ring aside)."""
    return sum(len(t["x"] or []) for t in accuracy["traces"] if t["legendgroup"] == "yours" and t["name"] != "this run")


def outputs_text(page) -> str:
    return page.evaluate("() => [...document.querySelectorAll('.jp-OutputArea')].map(o => o.textContent).join('\\n')")


def shot(target, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def wait_until(check, timeout_s: float, what: str, page=None, interval_s: float = 1.0, detail=None):
    """Poll ``check`` until it returns something true; on timeout, fail with ``detail()`` if given."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            if page is not None:
                shot(page, f"timeout-{re.sub(r'[^a-z0-9]+', '-', what.lower())[:40]}")
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}" + (f": {detail()}" if detail else ""))
        time.sleep(interval_s)


def sessions(lab: Lab, name: str) -> list[dict]:
    """The server's sessions of notebook ``name``."""
    with urllib.request.urlopen(f"{lab.base}/api/sessions?token={lab.token}", timeout=10) as reply:
        return [s for s in json.load(reply) if s.get("path", "").endswith(name)]


def kernel_idle(lab: Lab, name: str) -> bool:
    """Whether the server has a session for the notebook whose kernel is started and idle."""
    return any((s.get("kernel") or {}).get("execution_state") == "idle" for s in sessions(lab, name))


def shut_down(lab: Lab, name: str) -> None:
    """End the notebook's sessions and their kernels (01, 04 and 05 each hold the default model)."""
    for session in sessions(lab, name):
        request = urllib.request.Request(f"{lab.base}/api/sessions/{session['id']}?token={lab.token}", method="DELETE")
        urllib.request.urlopen(request, timeout=60).close()


def open_notebook(page, lab: Lab, name: str) -> None:
    """Open ``notebooks/<name>`` in a workspace of its own (nothing another test opened comes back)."""
    workspace = name.split("_")[0]
    page.goto(f"{lab.base}/lab/workspaces/nb{workspace}/tree/notebooks/{name}?token={lab.token}", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)

    def started() -> bool:
        choose = page.locator(".jp-Dialog", has_text="Select Kernel")
        if choose.count():  # the preferred kernel is the notebook's own, python3: take it
            choose.locator(".jp-mod-accept").click()
        return kernel_idle(lab, name)

    wait_until(started, 180, "the notebook's kernel to start", page)


def run_all(page, code_cells: int, timeout_s: float) -> None:
    """Run → Run All Cells, as a learner does; waits until every code cell has run, and fails on an error output."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

    def finished():
        state = cells_state(page)
        done = len(state["prompts"]) == code_cells and all(re.fullmatch(r"\[\d+\]:", p) for p in state["prompts"])
        return state if state["errors"] or done else None

    state = wait_until(finished, timeout_s, "Run All Cells to finish", page)
    assert not state["errors"], f"a cell failed:\n{state['errors'][0]}"


def cells_state(page) -> dict:
    """Execution prompts of every code cell ("[3]:", "[*]:", "[ ]:") and any error outputs."""
    return page.evaluate("""() => ({
        prompts: [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim()),
        errors: [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')]
                  .map(e => e.textContent.slice(0, 2000)),
    })""")


def slider(page, label: str):
    """An ipywidgets slider by its description."""
    return page.locator(".widget-slider", has=page.locator(".widget-label", has_text=label)).first


def move_slider(page, label: str, key: str, presses: int) -> str:
    """Move a slider as a keyboard user does (focus the handle, press arrows); returns its readout."""
    handle = slider(page, label).locator(".noUi-handle").first
    handle.scroll_into_view_if_needed()
    handle.focus()
    for _ in range(presses):
        page.keyboard.press(key)
    return slider(page, label).locator(".widget-readout").inner_text()


def console_problems(messages: list[tuple[str, str]]) -> list[str]:
    return [f"{kind}: {text}" for kind, text in messages
            if not any(re.search(pattern, text) for pattern, _ in ALLOWED_CONSOLE_ERRORS)]


@contextlib.contextmanager
def learner_page(profile: Path):
    """Headless Chromium on a fresh profile; yields ``(page, messages, phase)``: the console errors and
    page errors so far, each tagged with ``phase[0]``, what the test was doing when it came."""
    from playwright.sync_api import sync_playwright

    messages: list[tuple[str, str]] = []
    phase = ["opening the notebook"]
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1500, "height": 1900}, accept_downloads=False,
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", lambda m: messages.append((f"console ({phase[0]})", m.text)) if m.type == "error" else None)
            page.on("pageerror", lambda error: messages.append((f"page error ({phase[0]})", str(error))))
            page.on("dialog", lambda dialog: dialog.accept())  # "leave the page?" on reload
            yield page, messages, phase
        finally:
            context.close()


# --- the tests ----------------------------------------------------------------------------------
def drawn_figures(page, expected: int) -> list[dict]:
    """Wait until at least ``expected`` figures are in the outputs and every one is drawn; returns them."""
    def ready():
        found = page.evaluate(FIGURES_JS)
        return [found] if len(found) >= expected and all(f["drawn"] for f in found) else None

    return wait_until(ready, 120, f"{expected} drawn figures", page, detail=lambda: page.evaluate(FIGURES_JS))[0]


def change_layer(page, phase) -> None:
    """01's LayerExplorer: choose another layer; its bar counts the capture's batches, both panels redraw."""
    phase[0] = "LayerExplorer: another layer"
    explorer = page.locator(".jp-OutputArea-output", has_text="tokens sampled per layer")  # its heading
    choose = explorer.locator(".widget-dropdown select")
    assert explorer.count() == 1 and choose.count() == 1, "no LayerExplorer (or more than one) on the page"
    before = choose.input_value()
    option = next(o for o in choose.locator("option").all_inner_texts() if o != choose.locator("option:checked").inner_text())
    other = option.replace("\xa0", " ")  # ipywidgets draws an option's spaces as no-break spaces
    cka_before = figure(explorer, "^Linear CKA between experts")
    # every width the progress bar takes (a MutationObserver sees each redraw, however fast the capture)
    explorer.locator(".progress-bar").evaluate("""bar => {
        window.__widths = [bar.style.width];
        new MutationObserver(() => window.__widths.push(bar.style.width)).observe(bar, {attributes: true});
    }""")
    choose.select_option(label=option)
    assert choose.input_value() != before
    measures = explorer.locator(".widget-html", has_text=f"{other} · ")  # the status line once the layer is measured
    wait_until(lambda: measures.count() or "capture failed" in explorer.inner_text(), 300,
               f"the capture of {other}", page, detail=lambda: explorer.inner_text()[:2000])
    assert "capture failed" not in explorer.inner_text(), explorer.inner_text()
    title = f"^Linear CKA between experts, {re.escape(other)}"
    wait_until(lambda: explorer.evaluate(FIGURE_JS, [title])["found"], 60, "the CKA panel to redraw", page)
    cka = figure(explorer, title)
    figure(explorer, f"^Expert load per task, {re.escape(other)}")
    assert cka["heatmap_images"] and cka["heatmap_images"] != cka_before["heatmap_images"], "the CKA heatmap was not redrawn"
    widths = [float(w.rstrip("%")) for w in page.evaluate("window.__widths") if w]
    assert widths[-1] == 100 and any(0 < w < 100 for w in widths), f"the progress bar went {widths}"  # counted, then full
    shot(explorer, "01_collapse-layer-explorer-after-change")


def align_experts(page, phase) -> None:
    """02's geometry widget: the button gives e2 the direction of e1, so q2 becomes redundant."""
    phase[0] = "GramSchmidtGeometry: make e2 ∥ e1"
    assert not [name for name in figure(page, GEOMETRY)["legend"] if "redundant" in name]  # the notebook leaves e2 2° off e1
    button = page.locator("button.jupyter-button", has_text="make e2 ∥ e1")
    button.scroll_into_view_if_needed()
    button.click()
    wait_until(lambda: "q2 = 0 (redundant)" in figure(page, GEOMETRY)["legend"], 60, "q2 to become redundant", page)
    assert figure(page, GEOMETRY)["gl"], "the 3-D scene has no canvas (no WebGL?)"
    panel = page.locator(".jp-OutputArea-output", has=button).first
    assert "redundant: q = 0" in panel.inner_text()
    shot(panel, "02_gram_schmidt-geometry-after-align")


def open_and_run_all(page, lab: Lab, notebook: Path, phase: list[str], timings: dict[str, float], started: float) -> None:
    """Open ``notebook``'s copy and Run All, as every test here begins; ``timings`` gets "open" and "run all"."""
    open_notebook(page, lab, notebook.name)
    timings["open"] = time.monotonic() - started
    phase[0] = "Run All Cells"
    cells = json.loads((lab.folder / notebook.name).read_text(encoding="utf-8"))["cells"]
    run_all(page, sum(cell["cell_type"] == "code" for cell in cells), RUN_ALL_TIMEOUT_S.get(notebook.stem, NOTEBOOK_TIMEOUT_S))
    timings["run all"] = time.monotonic() - started


# what a learner does with each notebook's widgets after Run All
INTERACTIONS = {"01_collapse": change_layer, "02_gram_schmidt": align_experts}


@pytest.mark.parametrize("notebook", [n for n in NOTEBOOKS if n.name != NOTEBOOK.name], ids=lambda n: n.stem)
def test_a_learner_runs_the_notebook_in_jupyterlab(notebook, jupyter_lab, tmp_path):
    """Run All with the exercises unsolved: no error, every exercise "not yet solved", no placeholder,
    every figure drawn, the widgets respond, and no console error."""
    require_model(notebook)
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    exercises = re.findall(r'@exercise\("([\d.]+)"\)', "".join("".join(cell["source"]) for cell in code))
    timings: dict[str, float] = {}
    started = time.monotonic()
    with learner_page(tmp_path / "chromium-profile") as (page, messages, phase):
        try:
            open_and_run_all(page, jupyter_lab, notebook, phase, timings, started)
            shown = outputs_text(page)
            unsolved = [e for e in exercises if f"not yet solved: Exercise {e}" not in shown]
            assert not unsolved, f"Run All did not show exercises {unsolved} as not yet solved"
            assert not [p for p in PLACEHOLDERS if p in shown], "a placeholder is on the page after Run All"
            figures = drawn_figures(page, EXPECTED_FIGURES[notebook.stem])
            shot(page, f"{notebook.stem}-run-all")
            for index, _ in enumerate(figures):
                plot = page.locator(".jp-OutputArea .js-plotly-plot").nth(index)
                plot.scroll_into_view_if_needed()
                shot(plot, f"{notebook.stem}-figure-{index + 1:02d}")
            INTERACTIONS.get(notebook.stem, lambda page, phase: None)(page, phase)
            timings["widgets"] = time.monotonic() - started
        finally:
            shut_down(jupyter_lab, notebook.name)
    problems = console_problems(messages)
    assert not problems, "JavaScript errors in the console:\n" + "\n".join(problems[:20])
    print(f"{notebook.stem}: {len(figures)} figures ({', '.join(f['title'][:50] for f in figures)}); "
          f"timings (s since start): {', '.join(f'{k} {v:.0f}' for k, v in timings.items())}")


def test_a_learner_runs_notebook_05_in_jupyterlab(jupyter_lab, tmp_path):
    require_model(NOTEBOOK)
    timings: dict[str, float] = {}
    started = time.monotonic()
    with learner_page(tmp_path / "chromium-profile") as (page, messages, phase):
        try:
            open_and_run_all(page, jupyter_lab, NOTEBOOK, phase, timings, started)

            # Exercise 5.1 as a learner meets it (the server runs with solutions off): "not yet solved" after Run All;
            # then typed into its cell, first wrongly (the checker's case and hint appear), then rightly (the pass line)
            phase[0] = "exercise 5.1"
            assert "not yet solved: Exercise 5.1" in outputs_text(page), "Run All did not show exercise 5.1 as not yet solved"
            exercise_cell = page.locator(".jp-CodeCell", has_text=EXERCISE_STUB).first
            for answer, expected in ((EXERCISE_WRONG, "hint:"), (EXERCISE_RIGHT, "✓ Exercise 5.1")):
                exercise_cell.locator(".cm-content").click()
                page.keyboard.press("Control+a")
                page.keyboard.insert_text(answer)
                page.keyboard.press("Shift+Enter")
                output = exercise_cell.locator(".jp-OutputArea")
                wait_until(lambda: expected in output.inner_text(), 60, f"exercise 5.1 to print {expected!r}", page)
            assert "fails" not in output.inner_text()  # the right answer's output replaced the wrong one's
            exercise_cell.scroll_into_view_if_needed()
            shot(exercise_cell, f"{NOTEBOOK.stem}-0-exercise-5.1-solved")
            timings["exercise"] = time.monotonic() - started

            run_button = page.locator("button.jupyter-button", has_text=re.compile(r"^\s*Run\s*$"))
            assert run_button.count() == 1
            explorer = page.locator(".jp-OutputArea-output", has=run_button).first
            wait_until(lambda: figure(page, ACCURACY)["traces"], 60, "the reference curve", page)
            before = figure(page, ACCURACY)
            assert own_points(before) == 0 and any(t["name"].startswith("sweep · ") for t in before["traces"]), before["traces"]
            assert not before["annotations"], f"the reference plot shows {before['annotations']}"
            assert "no run yet" in figure(page, CKA)["text"]  # the placeholder check below can see placeholders
            explorer.scroll_into_view_if_needed()
            shot(explorer, f"{NOTEBOOK.stem}-1-explorer-before-run")

            def press_run(count: int) -> str:
                run_button.click()
                status = explorer.locator(".widget-html", has_text="of this session")
                wait_until(lambda: status.count() and f"run {count} of this session" in status.first.inner_text()
                           or "failed" in explorer.inner_text(), RUN_TIMEOUT_S, f"run {count} to finish", page, 2.0)
                text = status.first.inner_text() if status.count() else explorer.inner_text()
                assert "failed" not in text, text
                return text

            phase[0] = "run 1"
            status = press_run(1)  # the default configuration: OMoE, E = 4
            timings["run 1"] = time.monotonic() - started
            first = figure(page, ACCURACY)
            cka_first = figure(page, CKA)
            assert own_points(first) == 1 and first["points"] == before["points"] + 2, (status, first["traces"])  # the run and its ring
            assert cka_first["xticks"] == [f"expert {i}" for i in range(4)] and cka_first["heatmap_images"], cka_first
            shot(explorer, f"{NOTEBOOK.stem}-2-explorer-after-run-1")

            phase[0] = "run 2"
            readout = move_slider(page, "experts E", "ArrowLeft", 2)
            assert readout.strip() == "2", f"the expert slider reads {readout!r}"
            status = press_run(2)
            timings["run 2"] = time.monotonic() - started
            second = figure(page, ACCURACY)
            cka_second = figure(page, CKA)
            assert own_points(second) == 2 and second["points"] == first["points"] + 1, (status, second["traces"])
            assert cka_second["xticks"] == ["expert 0", "expert 1"], cka_second  # redrawn for E = 2 ...
            assert cka_second["heatmap_images"] and cka_second["heatmap_images"] != cka_first["heatmap_images"]  # ... as a new image
            shown = outputs_text(page)
            assert not [p for p in PLACEHOLDERS if p in shown], "a placeholder is still on the page after the runs"
            shot(explorer, f"{NOTEBOOK.stem}-3-explorer-after-run-2")

            # the Gram–Schmidt geometry: e3 starts in the plane of e1 and e2, so q3 = 0
            geometry_before = figure(page, GEOMETRY)
            assert "q3 = 0 (redundant)" in geometry_before["legend"], geometry_before["legend"]
            assert geometry_before["gl"], "the 3-D scene has no canvas (no WebGL?)"
            phase[0] = "the geometry slider"
            readout = move_slider(page, "e3 elevation °", "ArrowRight", 10)
            assert readout.strip() in ("10", "10.0", "10.00"), f"the e3 elevation slider reads {readout!r}"
            def redrawn():
                now = figure(page, GEOMETRY)
                return now if "q3 = 0 (redundant)" not in now["legend"] else None

            geometry_after = wait_until(redrawn, 60, "the geometry figure to redraw", page)
            moved = {t["name"]: t for t in geometry_after["traces"] if t["type"] == "scatter3d"}
            assert "q3" in moved and any(abs(v) > 0.1 for v in (moved["q3"]["x"][1], moved["q3"]["y"][1], moved["q3"]["z"][1]))
            geometry_panel = page.locator(".jp-OutputArea-output", has=slider(page, "e3 elevation °")).first
            shot(geometry_panel, f"{NOTEBOOK.stem}-4-geometry-after-slider")

            # a reload shows the same figures (drawn from the widgets' synced state)
            phase[0] = "save and reload"
            page.keyboard.press("Control+s")
            page.wait_for_timeout(2000)
            drawn = {title: figure(page, title) for title in (ACCURACY, CKA, TSNE, GEOMETRY)}
            page.reload(wait_until="domcontentloaded")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
            wait_until(lambda: page.locator(".js-plotly-plot").count() >= 4 and own_points(figure(page, ACCURACY)) == 2, 180,
                       "the figures after the reload", page)
            page.wait_for_timeout(2000)
            for title, was in drawn.items():
                now = figure(page, title)
                assert now["traces"] == was["traces"], f"{title!r} differs after the reload"
                assert now["legend"] == was["legend"] and now["xticks"] == was["xticks"], f"{title!r} differs after the reload"
            assert not [p for p in PLACEHOLDERS if p in outputs_text(page)], "a placeholder came back after the reload"
            explorer = page.locator(".jp-OutputArea-output", has=page.locator("button.jupyter-button", has_text=re.compile(r"^\s*Run\s*$"))).first
            explorer.scroll_into_view_if_needed()
            shot(explorer, f"{NOTEBOOK.stem}-5-explorer-after-reload")
            timings["reload"] = time.monotonic() - started
        finally:
            shut_down(jupyter_lab, NOTEBOOK.name)
    problems = console_problems(messages)
    assert not problems, "JavaScript errors in the console:\n" + "\n".join(problems[:20])
    print(f"browser test timings (s since start): {', '.join(f'{k} {v:.0f}' for k, v in timings.items())}; screenshots in {SCREENSHOTS}")
