"""The HTML report and metrics.json, from hand-built runs (no model, no training)."""
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from omoe_lab import experiments, findings
from omoe_lab.analysis.stats import wilson_interval
from omoe_lab.experiments import RunResult, results_table, summarize
from omoe_lab.report import SECTIONS, compare_with_zero_shot, environment_info, write_report
from omoe_lab.report_content import build_report

# What the report showed before its HTML moved to Jinja2 templates, rendered from ``_runs()`` by
# the old renderer: ReportStructure(page).as_dict() with the arguments of the ``written`` fixture.
BEFORE_TEMPLATES = Path(__file__).with_name("report_before_templates.json")

TASKS = ("boolq", "piqa")
ENVIRONMENT = {"python": "3.x", "torch": "test", "date": "2025-01-01T00:00:00+00:00"}
LAYERS = [(block, f"model.layers.{block}.self_attn.{proj}") for block in (2, 3) for proj in ("q_proj", "v_proj")]


def _cka(similarity: float, experts: int) -> list[list[float]]:
    return [[1.0 if i == j else similarity for j in range(experts)] for i in range(experts)]


def _run(method, label, accuracy, *, seed=0, experts=4, similarity=0.9, n=40, params=None, stiefel=3e-7) -> RunResult:
    """A finished run: per-task accuracies straddle the overall one, four adapted layers."""
    trained = method != "none"
    config = {"method": method, "num_experts": experts if trained else 0, "seed": seed, "profile": "ci",
              "orthogonalize": "stiefel" if method == "omoe" else None, "rank": 4,
              "target_modules": ["q_proj", "v_proj"], "steps": 5 if trained else 0, "protocol": "label"}
    metrics = {"protocol": "label", "accuracy": accuracy,
               "per_task": {"boolq": accuracy + 0.05, "piqa": accuracy - 0.05},
               "n": n, "n_per_task": {task: n // 2 for task in TASKS}, "chance": 0.5}
    result = RunResult(config=config, key=f"key-{method}-{seed}", label=label, metrics=metrics, seconds=12.5)
    if not trained:
        return result
    result.parameters = params if params is not None else {"trainable": 12_345, "total": 1_000_000, "percent": 1.2345}
    result.history = [{"step": s, "loss": 2.0 - 0.2 * s, "aux_loss": 0.0, "lr": 1e-3, "tokens_per_s": 100.0} for s in range(1, 6)]
    for block, name in LAYERS:
        row = {"layer": name, "block": block, "method": method, "experts": experts, "tokens": 64}
        if experts > 1:
            row.update(mean_abs_cosine=similarity - 0.05, cka=_cka(similarity, experts), mean_cka=similarity,
                       effective_rank=1.0 + (1 - similarity) * (experts - 1), routing_entropy=0.97,
                       load=[1 / experts] * experts)
        if method == "omoe":
            row["stiefel_error"] = stiefel
        result.experts.append(row)
    if experts > 1:
        result.embedding = [{"x": float(t), "y": float(e), "expert": e, "token_row": t, "task": TASKS[t % 2],
                             "projection": "tsne", "layer": LAYERS[-1][1]} for t in range(5) for e in range(experts)]
    return result


def _runs():
    return [
        _run("lora", "LoRA r=16", 0.45, experts=1),
        _run("none", "zero-shot", 0.5),
        _run("moe", "MoE-LoRA E=4 soft", 0.55, similarity=0.9),
        _run("omoe", "OMoE <stiefel> E=4 soft", 0.625, similarity=0.3),
    ]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    path = write_report(_runs(), folder, title="Demo <1>", notes="Built by hand & tested.", environment=ENVIRONMENT)
    return folder, path.read_text(encoding="utf-8")


def _text_outside_scripts(page: str) -> str:
    return re.sub(r"<script.*?</script>", "", page, flags=re.S)


def test_sections_in_order_and_plotly_inlined_once(written):
    _, page = written
    positions = [page.index(f"{number}. {heading}</h2>") for number, (_, heading) in enumerate(SECTIONS, start=1)]
    assert positions == sorted(positions)
    assert all(f'href="#{anchor}"' in page for anchor, _ in SECTIONS)
    assert len(re.findall(r"\* plotly\.js v\d", page)) == 1
    assert not re.search(r"<script[^>]+src=", page)
    assert page.count('class="plotly-graph-div"') >= 8  # per-task, loss, similarity, 2 heatmaps, t-SNE, load, entropy, Stiefel


def test_numbers_come_from_the_runs(written):
    _, page = written
    text = _text_outside_scripts(page)
    assert "<td class=num>62.5</td>" in text  # OMoE overall accuracy
    assert "<td class=num>67.5</td>" in text  # its boolq accuracy
    assert "<td class=num>12,345</td>" in text and "<td class=num>1.234</td>" in text  # trainable count and % of model
    assert "Wilson over examples" in text  # a single seed
    assert "mean CKA 0.300" in text and "The most diverse experts by CKA: OMoE &lt;stiefel&gt; E=4 soft" in text
    assert "All 4 checked layers are within tolerance: the worst error is 3.00e-07" in text
    assert "LoRA r=16: a single expert per layer" in text
    # the zero-shot row comes first in the headline table whatever the order of the runs
    for section, following in (("headline", "per-task"), ("per-task", "training"), ("config", None)):
        part = text[text.index(f'id="{section}"'):text.index(f'id="{following}"') if following else None]
        assert part.index("<td>zero-shot</td>" if section == "headline" else "<th>zero-shot</th>") < part.index("LoRA r=16")


def test_text_is_escaped(written):
    _, page = written
    assert "OMoE &lt;stiefel&gt; E=4 soft" in page
    assert "Demo &lt;1&gt;" in page and "Built by hand &amp; tested." in page
    assert "<stiefel>" not in page  # plotly's figure JSON escapes it too
    assert "<1>" not in _text_outside_scripts(page)  # plotly.js itself contains "<1>" (a bit shift)


def test_zero_shot_sentence_is_true_to_the_numbers(written):
    _, page = written
    expected = ("Under the label protocol zero-shot scores 50.0 %. Beat it: MoE-LoRA E=4 soft by 5.0 points (55.0 %, "
                "though the 95 % intervals overlap); OMoE <stiefel> E=4 soft by 12.5 points (62.5 %, though the 95 % "
                "intervals overlap). Did not beat it: LoRA r=16, 5.0 points below (45.0 %, though the 95 % intervals overlap).")
    from html import escape

    assert escape(expected) in page


def test_comparison_with_no_winner_and_a_tie():
    import pandas as pd

    overall = pd.DataFrame([
        {"label": "zero-shot", "method": "none", "protocol": "loglik", "accuracy": 0.60, "low": 0.55, "high": 0.65},
        {"label": "LoRA", "method": "lora", "protocol": "loglik", "accuracy": 0.6004, "low": 0.55, "high": 0.65},
        {"label": "OMoE", "method": "omoe", "protocol": "loglik", "accuracy": 0.40, "low": 0.35, "high": 0.45},
    ])
    sentence = compare_with_zero_shot(overall)
    assert "No fine-tuned method beat it." in sentence
    assert "Tied with it (to 0.1 point): LoRA (60.0 %)." in sentence
    assert "Did not beat it: OMoE, 20.0 points below (40.0 %)." in sentence


def test_metrics_json_has_every_run_without_the_embedding(written):
    folder, _ = written
    data = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    labels = [r.label for r in _runs()]
    assert [run["label"] for run in data["runs"]] == [labels[1], labels[0], labels[2], labels[3]]  # zero-shot first
    omoe = data["runs"][3]
    assert omoe["metrics"]["accuracy"] == 0.625 and omoe["parameters"]["trainable"] == 12_345
    assert omoe["experts"][0]["cka"] == _cka(0.3, 4) and omoe["experts"][0]["stiefel_error"] == 3e-7
    assert omoe["final_loss"] == pytest.approx(1.0) and omoe["seconds"] == 12.5
    assert all("embedding" not in run for run in data["runs"])
    overall = {row["label"]: row for row in data["summary"] if row["task"] == "all"}
    assert overall["zero-shot"]["interval"] == "Wilson over examples" and overall["zero-shot"]["n"] == 40
    assert data["environment"] == ENVIRONMENT
    assert data["zero_shot_comparison"].startswith("Under the label protocol zero-shot scores 50.0 %")


def test_only_zero_shot_and_missing_optional_fields(tmp_path):
    zero_shot = _run("none", "zero-shot", 0.5)
    del zero_shot.metrics["chance"]
    page = write_report([zero_shot], tmp_path, environment=ENVIRONMENT).read_text(encoding="utf-8")
    assert "Only zero-shot was run under the label protocol" in page
    assert "No run was trained (zero-shot only)" in page
    assert "No mixture run (two or more experts per layer) was analysed" in page
    assert "No OMoE run was analysed" in page
    assert len(re.findall(r"\* plotly\.js v\d", page)) == 1  # the per-task figure still carries it


def test_several_seeds_use_a_t_interval_and_a_failed_stiefel_check_is_reported(tmp_path):
    runs = [_run("none", "zero-shot", 0.5), _run("omoe", "OMoE", 0.6, seed=0, stiefel=1e-2),
            _run("omoe", "OMoE", 0.7, seed=1), _run("lora", "LoRA", 0.55, experts=1, params={}),
            _run("omoe", "OMoE orthogonal", 0.6, stiefel=0.5)]
    runs[-1].config["orthogonalize"] = "orthogonal"  # unnormalized q_i: not held to the Stiefel tolerance
    page = write_report(runs, tmp_path, environment=ENVIRONMENT).read_text(encoding="utf-8")
    text = _text_outside_scripts(page)
    assert "t over seeds" in text and "<td class=num>65.0</td>" in text  # mean of the two seeds
    assert "4 of 4 checked layers exceed the tolerance" in text  # the first seed is the one checked
    assert "<td>OMoE orthogonal</td><td>orthogonal</td><td class=num>4</td><td class=num>5.00e-01</td>" in text
    assert "not unit-norm by design" in text
    assert "OMoE (seed 1)" in text  # configuration columns tell seeds apart
    lora_row = text[text.index("<td>LoRA</td>"):].split("</tr>")[0]
    assert lora_row.count("<td class=num>—</td>") == 2  # no parameter count, no percentage


def test_write_is_atomic_and_creates_the_folder(tmp_path):
    folder = tmp_path / "new" / "nested"
    runs = _runs()[:2]
    write_report(runs, folder, environment=ENVIRONMENT)
    write_report(runs, folder, title="second", environment=ENVIRONMENT)  # replaces, leaves nothing behind
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "report.html"]
    assert "<title>second</title>" in (folder / "report.html").read_text(encoding="utf-8")


def test_unwritable_folder_gives_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="cannot write the report into .*a-file"):
        write_report(_runs()[:2], blocker / "out", environment=ENVIRONMENT)
    with pytest.raises(ValueError, match="at least one"):
        write_report([], tmp_path)


def test_environment_info_names_versions_and_hardware():
    info = environment_info()
    import torch

    import omoe_lab

    assert info["torch"] == torch.__version__ and info["omoe_lab"] == omoe_lab.__version__
    assert info["cpu_count"] >= 1 and info["torch_threads"] >= 1
    assert info["python"].count(".") == 2 and info["date"][:2] == "20"
    assert set(info) >= {"transformers", "accelerate", "platform", "cuda_device"}


def test_mixture_without_optional_measures_and_no_zero_shot(tmp_path):
    moe = _run("moe", "MoE", 0.6)
    for row in moe.experts:
        for optional in ("effective_rank", "routing_entropy", "load"):
            del row[optional]
    moe.embedding, moe.history = [], []
    page = write_report([moe, _run("lora", "LoRA", 0.5, experts=1)], tmp_path, environment=ENVIRONMENT).read_text(encoding="utf-8")
    text = _text_outside_scripts(page)
    assert "No zero-shot run under the label protocol" in text
    assert "No run was trained" not in text  # LoRA has a history: its curve is drawn
    assert "No mixture run stored an embedding" in text and "No run has a router" in text
    assert "<td class=num>0.900</td><td class=num>—</td>" in text  # mean CKA shown, effective rank missing


def test_single_seed_runs_are_paired_with_zero_shot_on_the_same_questions(tmp_path):
    # 40 questions: zero-shot gets the first 20 right; OMoE keeps 17 of them and gains 8 more
    zero_shot = _run("none", "zero-shot", 0.5)
    zero_shot.metrics["correct"] = [1] * 20 + [0] * 20
    omoe = _run("omoe", "OMoE E=4 soft", 0.625)
    omoe.metrics["correct"] = [1] * 17 + [0] * 3 + [1] * 8 + [0] * 12
    lora = _run("lora", "LoRA r=16", 0.45, experts=1)  # no answers recorded: falls back to intervals
    other = _run("moe", "MoE-LoRA E=4 soft", 0.55)
    other.config["eval_per_task"] = 99  # answered other questions: not paired
    other.metrics["correct"] = [1] * 22 + [0] * 18
    write_report([zero_shot, omoe, lora, other], tmp_path, environment=ENVIRONMENT)
    data = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert set(data["paired_vs_zero_shot"]) == {"OMoE E=4 soft"}
    test = data["paired_vs_zero_shot"]["OMoE E=4 soft"]
    assert (test["gained"], test["lost"]) == (8, 3)
    assert test["p"] == pytest.approx(2 * sum(math.comb(11, k) for k in range(4)) / 2**11)  # 0.2266
    sentence = data["zero_shot_comparison"]
    assert "OMoE E=4 soft by 12.5 points (62.5 %; 8 questions gained, 3 lost, McNemar p = 0.227)" in sentence
    assert "MoE-LoRA E=4 soft by 5.0 points (55.0 %, though the 95 % intervals overlap)" in sentence
    assert "LoRA r=16, 5.0 points below (45.0 %, though the 95 % intervals overlap)" in sentence


# --- the move to templates keeps what the report shows ------------------------------------------
class ReportStructure(HTMLParser):
    """What a report shows, without its styling: section and subsection titles, every table's
    cells, the finding and note paragraphs, and how many figures."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.sections, self.subsections, self.tables, self.findings, self.notes = [], [], [], [], []
        self.figures = 0
        self._text = None  # (where the text goes, the parts so far) while inside a captured element
        self._table = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "plotly-graph-div" in (attrs.get("class") or "").split():
            self.figures += 1
        if tag == "table":
            self._table = {"header": [], "rows": []}
        elif tag == "tr" and self._table is not None:
            self._table["rows"].append([])
        elif tag in ("th", "td") and self._table is not None:
            self._text = (self._table["rows"][-1], [])
        elif tag == "h2":
            self._text = (self.sections, [])
        elif tag == "h3":
            self._text = (self.subsections, [])
        elif tag == "p" and attrs.get("class") in ("finding", "note"):
            self._text = (self.findings if attrs["class"] == "finding" else self.notes, [])

    def handle_data(self, data):
        if self._text is not None:
            self._text[1].append(data)

    def handle_endtag(self, tag):
        if tag in ("th", "td", "h2", "h3", "p") and self._text is not None:
            target, parts = self._text
            target.append("".join(parts).strip())
            self._text = None
        elif tag == "table" and self._table is not None:
            header, *rows = self._table["rows"]
            self.tables.append({"header": header, "rows": rows})
            self._table = None

    def as_dict(self) -> dict:
        return {"sections": self.sections, "subsections": self.subsections, "tables": self.tables,
                "findings": self.findings, "notes": self.notes, "figures": self.figures}


def _in_order(expected: list, actual: list) -> bool:
    """Is ``expected`` a subsequence of ``actual`` (everything kept, in order, new items allowed between)?"""
    remaining = iter(actual)
    return all(any(item == other for other in remaining) for item in expected)


def _columns(table: dict, header: list[str]) -> list[list[str]]:
    """The rows of ``table`` restricted to the columns named in ``header``, in that order."""
    index = [table["header"].index(h) for h in header]
    return [[row[i] for i in index] for row in table["rows"]]


def test_template_move_keeps_every_section_table_and_number(written):
    _, page = written
    before = json.loads(BEFORE_TEMPLATES.read_text(encoding="utf-8"))
    after = ReportStructure(page).as_dict()
    assert after["sections"] == before["sections"]
    assert after["subsections"] == before["subsections"] and after["notes"] == before["notes"]
    assert after["figures"] == before["figures"]
    assert _in_order(before["findings"], after["findings"])  # the sample-size sentence is new
    assert len(after["tables"]) == len(before["tables"])
    for old, new in zip(before["tables"], after["tables"]):
        assert _in_order(old["header"], new["header"])  # a new column (the prompt style) may sit between
        assert _columns(new, old["header"]) == old["rows"]
    headline = after["tables"][0]
    assert [h for h in headline["header"] if h not in before["tables"][0]["header"]] == ["prompt"]


# --- new content: fair zero-shot, the random-start control, sample size, over training, by task --
WAYS = ("listed/mean", "listed/sum", "listed/char", "listed/pmi", "cloze/mean", "cloze/sum", "cloze/char", "cloze/pmi", "majority")
# right answers out of 20 per task for each way: cloze/pmi is best on boolq, listed/mean on piqa
WAY_SCORES = {"listed/mean": (10, 12), "cloze/pmi": (14, 8), "majority": (12, 10)}


def _scored(boolq: list[int], piqa: list[int]) -> dict:
    correct = list(boolq) + list(piqa)
    return {"accuracy": sum(correct) / len(correct), "per_task": {"boolq": sum(boolq) / len(boolq), "piqa": sum(piqa) / len(piqa)},
            "correct": correct}


def _right(k: int, n: int = 20) -> list[int]:
    return [1] * k + [0] * (n - k)


BEST_CORRECT = _right(14) + _right(12)  # cloze/pmi on boolq, listed/mean on piqa: 26 of 40


def _loglik(run: RunResult, correct: list[int] | None = None) -> RunResult:
    run.config["protocol"] = run.metrics["protocol"] = "loglik"
    run.metrics["prompt_style"] = "listed"
    run.metrics["questions"] = [f"q{i}" for i in range(40)]
    if correct is not None:
        run.metrics.update(_scored(correct[:20], correct[20:]))
    return run


def _zero_shot_with_baselines() -> RunResult:
    zero = _loglik(_run("none", "zero-shot", 0.5))
    zero.metrics["baselines"] = {way: _scored(_right(WAY_SCORES.get(way, (9, 9))[0]), _right(WAY_SCORES.get(way, (9, 9))[1]))
                                 for way in WAYS}
    zero.metrics.update(_scored(_right(10), _right(12)))  # its own scorer: listed/mean
    return zero


def _flip(correct: list[int], gained: int, lost: int) -> list[int]:
    """``correct`` with its first ``lost`` right answers made wrong and first ``gained`` wrong ones right."""
    out, rights, wrongs = list(correct), [i for i, c in enumerate(correct) if c], [i for i, c in enumerate(correct) if not c]
    for i in rights[:lost]:
        out[i] = 0
    for i in wrongs[:gained]:
        out[i] = 1
    return out


def _diversity(steps, similarity: float, drift: float = 0.0) -> list[dict]:
    """Measured every 5 steps: similarity + drift·step in every layer."""
    rows = []
    for step in steps:
        value = similarity + drift * step
        per_layer = {name: {"block": block, "mean_abs_cosine": value - 0.05, "mean_cka": value, "mean_cka_debiased": value - 0.1,
                            "effective_rank": 4 - 3 * value} for block, name in LAYERS}
        rows.append({"step": step, "mean_abs_cosine": value - 0.05, "mean_cka": value, "mean_cka_debiased": value - 0.1,
                     "effective_rank": 4 - 3 * value, "per_layer": per_layer})
    return rows


def _evidence_runs() -> list[RunResult]:
    """Zero-shot with baselines; MoE-LoRA (B = 0), the random-start control and OMoE with E = 4; LoRA.
    All loglik, on the same 40 questions, with diversity over training and routing by task."""
    moe = _loglik(_run("moe", "MoE-LoRA E=4 soft", 0, similarity=0.9), _flip(BEST_CORRECT, 1, 3))  # 24 / 40
    moe.config["b_init_std"] = 0.0
    control = _loglik(_run("moe", "MoE-LoRA E=4 soft, B ~ N(0, 0.02²)", 0, similarity=0.45), _flip(BEST_CORRECT, 2, 2))
    control.config["b_init_std"] = 0.02
    for row in control.experts:
        row["mean_abs_cosine"] = 0.55  # closes half the cosine gap, three quarters of the CKA and rank gaps
    omoe = _loglik(_run("omoe", "OMoE (stiefel) E=4 soft", 0, similarity=0.3), _flip(BEST_CORRECT, 5, 2))  # 29 / 40
    omoe.config["b_init_std"] = 0.02
    lora = _loglik(_run("lora", "LoRA r=16", 0, experts=1), _flip(BEST_CORRECT, 0, 6))
    moe.diversity = _diversity((5, 10, 15), 0.7, drift=0.01)  # B = 0: nothing to measure at step 0
    control.diversity = _diversity((0, 5, 10, 15), 0.4)
    omoe.diversity = _diversity((0, 5, 10, 15), 0.35, drift=-0.002)
    for run, loads in ((moe, [0.25, 0.25, 0.25, 0.25]), (control, [0.4, 0.2, 0.2, 0.2]), (omoe, [0.7, 0.1, 0.1, 0.1])):
        for row in run.experts:
            row["load_by_task"] = {"boolq": loads, "piqa": loads[::-1]}
    return [lora, _zero_shot_with_baselines(), moe, control, omoe]


@pytest.fixture(scope="module")
def evidence(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evidence")
    page = write_report(_evidence_runs(), folder, environment=ENVIRONMENT).read_text(encoding="utf-8")
    return page, ReportStructure(page).as_dict(), json.loads((folder / "metrics.json").read_text(encoding="utf-8"))


def _table_starting(structure: dict, first_header: str, second_header: str) -> dict:
    (table,) = [t for t in structure["tables"] if t["header"][:2] == [first_header, second_header]]
    return table


def test_baselines_table_has_every_way_and_marks_the_best_per_task(evidence):
    page, structure, _ = evidence
    assert "Zero-shot baselines" in structure["subsections"]
    table = _table_starting(structure, "way", "all")
    assert table["header"] == ["way", "all", "boolq", "piqa"]
    assert [row[0] for row in table["rows"]] == [*WAYS, "best per task"]
    rows = {row[0]: row[1:] for row in table["rows"]}
    assert rows["cloze/pmi"] == ["55.0", "70.0", "40.0"] and rows["listed/sum"] == ["45.0", "45.0", "45.0"]
    assert rows["best per task"] == ["65.0", "70.0", "60.0"]  # 26 of 40 questions
    text = _text_outside_scripts(page)
    marked = re.findall(r'<strong class="best">([^<]*)</strong>', text)
    assert marked == ["55.0", "60.0", "70.0"]  # listed/mean: overall (a tie, the first listed wins) and piqa; cloze/pmi: boolq
    assert "under the loglik protocol every way" in text and "The zero-shot row of the table above is the listed/mean way" in text


def test_fine_tuned_runs_are_compared_with_the_best_baseline_per_task(evidence):
    _, structure, metrics = evidence
    sentence = metrics["best_baseline_comparison"]
    assert sentence.startswith("Under the loglik protocol (fine-tuned runs with the listed prompt) the best zero-shot baseline for "
                               "each task (boolq cloze/pmi (70.0 %), "
                               "piqa listed/mean (60.0 %); picked on the test questions themselves")
    assert "scores 65.0 % over all 40 questions" in sentence
    p = 2 * sum(math.comb(7, k) for k in range(3)) / 2**7  # 5 gained, 2 lost: 0.453
    assert f"Beat it: OMoE (stiefel) E=4 soft by 7.5 points (72.5 %; 5 questions gained, 2 lost, exact McNemar p = {p:.3f})" in sentence
    assert "Tied with it (to 0.1 point): MoE-LoRA E=4 soft, B ~ N(0, 0.02²) (65.0 %; 2 questions gained, 2 lost" in sentence
    assert "LoRA r=16, 15.0 points below (50.0 %; 0 questions gained, 6 lost, exact McNemar p = 0.031)" in sentence
    assert "MoE-LoRA E=4 soft, 5.0 points below (60.0 %; 1 question gained, 3 lost" in sentence
    assert sentence in structure["findings"]  # the headline shows this sentence, not the zero-shot one
    assert metrics["zero_shot_comparison"] not in structure["findings"]
    test = metrics["paired_vs_best_baseline"]["OMoE (stiefel) E=4 soft"]
    assert (test["gained"], test["lost"], test["test"]) == (5, 2, "exact McNemar") and test["p"] == pytest.approx(p)
    assert test["best_per_task"] == {"boolq": "cloze/pmi", "piqa": "listed/mean"}
    versus = _table_starting(structure, "method", "prompt")
    omoe = next(row for row in versus["rows"] if row[0] == "OMoE (stiefel) E=4 soft")
    assert omoe == ["OMoE (stiefel) E=4 soft", "listed", "loglik", "72.5", "65.0", "+7.5", "5", "2", "exact McNemar", f"{p:.3f}"]
    per_task = _table_starting(structure, "task", "n test")
    assert per_task["header"][-1] == "best zero-shot baseline" and per_task["rows"][0][-1] == "70.0 (cloze/pmi)"
    assert metrics["baselines"]["loglik"]["best_per_task_correct"] == BEST_CORRECT


def test_several_seeds_against_the_best_baseline_are_pooled_by_cmh(tmp_path):
    zero = _zero_shot_with_baselines()
    seeds = [_loglik(_run("omoe", "OMoE", 0, seed=s), _flip(BEST_CORRECT, gained, 1)) for s, gained in ((0, 4), (1, 6))]
    write_report([zero, *seeds], tmp_path, environment=ENVIRONMENT)
    data = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    test = data["paired_vs_best_baseline"]["OMoE"]
    assert (test["gained"], test["lost"], test["seeds"]) == (10, 2, 2) and test["test"].startswith("Cochran–Mantel–Haenszel")
    assert "OMoE by 10.0 points (75.0 %; over 2 seeds 10 gained, 2 lost, CMH p = 0.021)" in data["best_baseline_comparison"]


def test_old_results_without_baselines_fall_back_to_the_zero_shot_pairing(written):
    folder, page = written
    data = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert data["baselines"] == {} and data["best_baseline_comparison"] is None
    assert "Zero-shot baselines" not in page
    assert data["zero_shot_comparison"] in ReportStructure(page).findings


def test_a_run_on_other_questions_is_not_paired_with_the_baselines():
    zero = _zero_shot_with_baselines()
    other = _loglik(_run("omoe", "OMoE", 0), _flip(BEST_CORRECT, 5, 2))
    other.metrics["questions"] = other.metrics["questions"][::-1]
    assert findings.paired_with_best_baseline([zero, other]) == {}
    overall = summarize(results_table([zero, other])).query("task == 'all'")
    assert "OMoE by 7.5 points (72.5 %; not paired: it answered other questions)" in findings.compare_with_best_baseline(overall, [zero, other])
    other.metrics["prompt_style"] = "cloze"  # runs with different prompts: each is named with its own
    lora = _loglik(_run("lora", "LoRA", 0), _flip(BEST_CORRECT, 0, 6))
    overall = summarize(results_table([zero, other, lora])).query("task == 'all'")
    sentence = findings.compare_with_best_baseline(overall, [zero, other, lora])
    assert sentence.startswith("Under the loglik protocol (fine-tuned runs) the best")
    assert "Beat it: OMoE, cloze prompt, by 7.5 points" in sentence and "Did not beat it: LoRA, listed prompt, 15.0 points below" in sentence


def test_random_start_control_is_explained_from_the_numbers(evidence):
    _, structure, metrics = evidence
    (control,) = metrics["random_start_control"]
    assert (control["moe"], control["control"], control["omoe"]) == (
        "MoE-LoRA E=4 soft", "MoE-LoRA E=4 soft, B ~ N(0, 0.02²)", "OMoE (stiefel) E=4 soft")
    # (moe − control) / (moe − omoe): cosine (0.85 − 0.55) / 0.6, CKA (0.9 − 0.45) / 0.6, rank (1.3 − 2.65) / (1.3 − 3.1)
    assert control["shares"] == pytest.approx({"mean_abs_cosine": 0.5, "mean_cka": 0.75, "effective_rank": 0.75})
    sentence = control["sentence"]
    assert sentence.startswith("Starting MoE-LoRA's experts from a random B ~ N(0, 0.02²), as OMoE starts")
    assert "50 % of the gap in mean |cos| (0.850 → 0.550 → 0.250), 75 % of the gap in mean CKA (0.900 → 0.450 → 0.300) " \
           "and 75 % of the gap in effective rank (1.30 → 2.65 → 3.10)" in sentence
    assert "OMoE is more diverse than the control on all 3 measures, so orthogonalization adds diversity beyond the random " \
           "start (one seed each, so point estimates)." in sentence
    assert sentence in structure["findings"] and "Is OMoE's diversity just its random start?" in structure["subsections"]
    table = _table_starting(structure, "method", "role")
    assert table["rows"][-1] == ["share of the gap the random start closes", "", "50 %", "75 %", "75 %"]


def test_random_start_control_that_explains_all_of_omoe_and_one_without_a_gap():
    moe, control, omoe = _run("moe", "MoE", 0.5, similarity=0.9), _run("moe", "control", 0.5, similarity=0.2), _run("omoe", "OMoE", 0.5, similarity=0.3)
    control.config["b_init_std"] = 0.02
    (finding,) = findings.random_start_control([moe, control, omoe])
    assert finding["shares"]["mean_cka"] == pytest.approx(0.7 / 0.6) and finding["omoe_more_diverse_than_control"] == []
    assert "The control is at least as diverse as OMoE on all 3 measures, so the random start accounts for OMoE's diversity " \
           "here and orthogonalization adds none beyond it" in finding["sentence"]
    same = _run("omoe", "OMoE same", 0.5, similarity=0.9)
    (tie,) = findings.random_start_control([moe, control, same])
    assert tie["shares"]["mean_cka"] is None and "none (no gap) of the gap in mean CKA" in tie["sentence"]
    other_size = _run("omoe", "OMoE E=8", 0.5, experts=8)
    assert findings.random_start_control([moe, control, other_size]) == []  # the control needs the same E


def test_sample_size_says_what_n_can_resolve():
    summary = summarize(results_table(_runs()))
    sample = findings.sample_size(summary)
    assert sample["n"] == [40] and sample["n_per_task"] == {"boolq": [20], "piqa": [20]}
    overall = [100 * (h - l) / 2 for l, h in (wilson_interval(a, 40) for a in (0.5, 0.45, 0.55, 0.625))]
    assert sample["half_width_overall"] == pytest.approx([min(overall), max(overall)])
    assert sample["sentence"].startswith("Each task was scored on 20 test questions (boolq, piqa), 40 in all: "
                                         "one question is 5.0 points of a task and 2.5 of the whole.")
    assert f"Wilson interval is ±{min(overall):.1f} to ±{max(overall):.1f} points overall" in sample["sentence"]
    assert f"differ by about {2 * sum(overall) / 4:.0f} points overall" in sample["sentence"]
    uneven = summary.assign(n=[12 if t == "piqa" else n for t, n in zip(summary["task"], summary["n"])])
    assert findings.sample_size(uneven)["sentence"].startswith("Tasks were scored on boolq 20, piqa 12 test questions, 40 in all: "
                                                               "one question is 5.0 points")


def test_diversity_over_training_and_routing_by_task_are_in_the_report(evidence):
    page, structure, metrics = evidence
    assert {"Diversity over training", "Which experts each task uses"} <= set(structure["subsections"])
    assert "MoE-LoRA E=4 soft: nothing at step 0, because experts that start at B = 0 all output zero" in " ".join(structure["notes"])
    assert page.count("Plotly.addFrames(") == 1  # the animation's frames (their content: tests/test_viz.py)
    # per task, loss, similarity, a CKA map per mixture (3), t-SNE, load, entropy, Stiefel; then the two
    # over-training figures and a routing-by-task map per mixture
    assert structure["figures"] == 3 + 3 + 4 + 2 + 3
    assert metrics["runs"][2]["diversity"][0]["step"] == 5  # metrics.json keeps the curves for notebooks


def test_the_configuration_table_gives_lora_the_rank_its_label_names():
    # LoRA gets rank E·r, the A/B budget of the E-expert mixtures it is compared with: its label
    # says r=16, and the table must not say the 4 of its config's per-expert rank alone
    lora = _run("lora", "LoRA r=16", 0.45, experts=4)
    assert lora.config["rank"] == 4 and experiments.adapter_rank(lora.config) == 16
    assert experiments.RunConfig(method="lora", num_experts=4, rank=4).label() == "LoRA r=16"
    assert experiments.adapter_rank(_run("omoe", "OMoE", 0.5).config) == 4  # a mixture's rank is per expert
    report = build_report([lora, _run("omoe", "OMoE (stiefel) E=4 soft", 0.6)], title="t", notes=None, environment=ENVIRONMENT)
    config = report.sections[-1].data["config"]
    rank = next(row for row in config.rows if row[0] == "rank")
    assert rank[1].startswith("16") and "4 × 4" in rank[1] and rank[2] == "4"


def test_the_live_experts_sentence_never_says_more_than_all_of_them():
    # notebook 01 printed "share of live experts 100% or more": a share cannot pass 100 %
    every = findings.live_experts_sentence({"L28 q_proj": 1.0, "L29 q_proj": 1.0})
    assert every == "Every expert was live (none redundant, no q set to 0) on every token, in all 2 layers."
    some = findings.live_experts_sentence({"L28 q_proj": 1.0, "L29 q_proj": 0.875})
    assert some.startswith("The share of live (non-redundant) experts was at least 87.5 % (lowest in L29 q_proj)")
    assert "or more" not in every + some and "100" not in every
    checked = [{"label": "OMoE", "layer": "model.layers.3.q_proj", "block": 3, "error": 1e-7, "tolerance": 4.8e-6, "live": 1.0}]
    assert findings.stiefel_sentence(pd.DataFrame(checked)).endswith(
        "within tolerance: the worst error is 1.00e-07 (tolerance 4.8e-06). Every expert was live (none redundant, "
        "no q set to 0) on every token, in the one layer.")


def test_expert_load_is_drawn_per_task_where_the_analysis_split_it():
    """The load bars had one category ("held-out test") although every run's rows carry ``load_by_task``."""
    runs = _runs()
    for run in runs:
        for row in run.experts:
            if row.get("load"):
                row["load_by_task"] = {"boolq": [0.7, 0.1, 0.1, 0.1], "piqa": [0.1, 0.1, 0.1, 0.7]}
    routing = next(s for s in build_report(runs, title="t", notes=None, environment=ENVIRONMENT).sections if s.anchor == "routing")
    tasks = {x for trace in routing.data["load"].data for x in trace.x}
    assert tasks == {"boolq", "piqa"}
    boolq_expert0 = [y for trace in routing.data["load"].data if trace.name == "expert 0" for x, y in zip(trace.x, trace.y) if x == "boolq"]
    assert boolq_expert0 and all(y == pytest.approx(0.7) for y in boolq_expert0)


def test_expert_load_without_a_task_split_is_one_bar_for_all_prompts():
    routing = next(s for s in build_report(_runs(), title="t", notes=None, environment=ENVIRONMENT).sections if s.anchor == "routing")
    assert {x for trace in routing.data["load"].data for x in trace.x} == {"all test prompts"}
