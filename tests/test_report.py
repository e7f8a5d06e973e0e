"""The HTML report and metrics.json, from hand-built runs (no model, no training)."""
import json
import math
import re

import pytest

from omoe_lab.experiments import RunResult
from omoe_lab.report import SECTIONS, compare_with_zero_shot, environment_info, write_report

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
