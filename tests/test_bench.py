"""The benchmark suite's smoke run: every part writes well-formed JSON and markdown.

Never a timing assertion: only that the files exist, hold the documented keys, that measured
numbers are finite (times and throughputs positive), and that every ratio and target is what its
named rows say. The whole smoke run takes seconds (tiny shapes, the tiny model, one repeat).
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from omoe_lab.bench import PARTS, main
from omoe_lab.bench import peers as peers_part

HEADER = ("part", "command", "date", "device", "threads", "versions", "machine", "smoke", "repeats", "description",
          "settings", "rows", "ratios", "targets", "seconds", "load_average_at_end")
POSITIVE = ("ms", "tokens_per_s", "examples_per_s", "saved_mib")  # measured, so > 0 where present


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} in benchmark JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    results = main(["--smoke", "--out", str(out), "--quiet"])
    return out, results


def _numbers(value):
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v)


def _side(source, rows, ratios):
    if "ratio" in source:
        return ratios[source["ratio"]]["value"]
    return rows[source["row"]].get(source["metric"])


@pytest.mark.parametrize("part", list(PARTS))
def test_every_part_writes_well_formed_json_and_markdown(smoke, part):
    out, results = smoke
    data = _strict_json((out / f"{part}.json").read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(results[part]))  # what main returned is what it wrote
    assert all(key in data for key in HEADER) and data["part"] == part and data["smoke"] is True and data["repeats"] == 1
    assert data["command"].startswith("omoe-lab bench") and "--smoke" in data["command"]
    assert data["versions"]["torch"] and data["versions"]["transformers"] and data["machine"]["cpu_count"] >= 1
    assert data["rows"], f"{part} measured nothing"

    rows = {row["id"]: row for row in data["rows"]}
    assert len(rows) == len(data["rows"]), "row ids repeat"
    for row in data["rows"]:
        measured = row.get("status", "ok") == "ok"
        for key, value in row.items():
            assert all(math.isfinite(v) for v in _numbers(value)), f"{row['id']}: {key} = {value}"
            if key in POSITIVE and measured:
                assert value > 0, f"{row['id']}: {key} = {value}"
        if measured:
            assert "ms" in row and len(row["times_ms"]) == 1

    ratios = {}
    for entry in data["ratios"]:
        top, bottom = _side(entry["numerator"], rows, ratios), _side(entry["denominator"], rows, ratios)
        if top is None or bottom is None or bottom <= 0:
            assert entry["value"] is None, entry
        else:
            assert entry["value"] == pytest.approx(top / bottom, rel=1e-12), entry["name"]
        ratios[entry["name"]] = entry
    for goal in data["targets"]:
        assert goal["measured"] == _side(goal["source"], rows, ratios)
        if goal["measured"] is None:
            assert goal["met"] is None
        else:
            assert goal["met"] == (goal["measured"] <= goal["limit"] if goal["at_most"] else goal["measured"] >= goal["limit"])

    page = (out / f"{part}.md").read_text(encoding="utf-8")
    assert page.startswith(f"# Benchmark: {part}") and data["command"] in page
    assert all(f"| {row_id} |" in page.replace("\\|", "|") for row_id in rows)
    if data["targets"]:
        verdicts = page.count("| met |") + page.count("**not met**") + page.count("not measured")
        assert "## Targets" in page and verdicts >= len(data["targets"])


def test_parts_measure_what_the_issue_asks_for(smoke):
    _, results = smoke
    assert {row["variant"] for row in results["layer"]["rows"]} >= {"omoe", "omoe-f32", "omoe-naive", "moe", "lora"}
    peers = {"peft-lora", "lora", "mixlora-package", "moe", "omoe", "mixlora"}
    assert {row["variant"] for row in results["peers"]["rows"]} == peers
    assert {(row["sweep"], row["method"]) for row in results["scaling"]["rows"]} == {
        (sweep, method) for sweep in ("experts", "tokens") for method in ("lora", "moe", "omoe")}
    steps = {(row["method"], row["cache"]) for row in results["end_to_end"]["rows"] if row["kind"] == "step"}
    assert steps == {(m, c) for m in ("lora", "moe", "omoe") for c in ("none", "warm", "cold")}
    for row in results["end_to_end"]["rows"]:
        if row["kind"] == "step" and row["cache"] != "cold":
            base = next(r for r in results["end_to_end"]["rows"] if r["kind"] == "base_step" and r["cache"] == row["cache"])
            assert row["adapter_share"] == pytest.approx(1 - base["ms"] / row["ms"])
    assert {row["scorer"] for row in results["scoring"]["rows"]} == {"loglik", "full-vocabulary baseline"}


def test_scaling_writes_its_plotly_figure_with_plotly_from_the_cdn(smoke):
    out, results = smoke
    figure = out / "cost_scaling.html"
    assert results["scaling"]["figure"] == str(figure)
    html = figure.read_text(encoding="utf-8")
    assert "cdn.plot.ly" in html and "Cost of one adapted layer" in html


def test_a_missing_peer_is_a_row_that_says_so_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(peers_part, "missing", lambda package: f"not installed ({package})")
    result = main(["--smoke", "--part", "peers", "--out", str(tmp_path), "--quiet"])["peers"]
    absent = [row for row in result["rows"] if row["variant"] in ("peft-lora", "mixlora-package")]
    assert absent and all(row["status"].startswith("not installed") and "ms" not in row for row in absent)
    peer_targets = result["targets"]
    assert peer_targets and all(t["measured"] is None and t["met"] is None for t in peer_targets)
    assert "not measured" in (tmp_path / "peers.md").read_text(encoding="utf-8")


def test_bad_options_are_refused_with_a_message():
    with pytest.raises(SystemExit, match="--repeats must be >= 1"):
        main(["--smoke", "--repeats", "0"])
    with pytest.raises(SystemExit, match="2"):  # argparse's usage error
        main(["--part", "nonsense"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda, but"):
            main(["--smoke", "--device", "cuda"])


def test_saved_bytes_count_what_backward_keeps_checkpoints_included():
    """By hand: ``sin(exp(x))`` keeps exp's result once (exp saves it, sin saves it as its input);
    the output, the input (or a view of it) and parameters are not counted; under no_grad nothing is kept; a
    checkpointed ``sin`` keeps its input (invisible to a saved-tensor pack hook) and nothing else."""
    from torch.utils.checkpoint import checkpoint

    from omoe_lab.bench.measure import saved_activation_bytes

    x = torch.randn(1000, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(1000))
    assert saved_activation_bytes(lambda: torch.sin(torch.exp(x))) == 4000
    assert saved_activation_bytes(lambda: torch.sin(x * weight), exclude=[weight]) == 4000  # the product, not x or weight
    assert saved_activation_bytes(lambda: torch.sin(x.view(10, 100))) == 0  # a view of the input is the caller's memory
    with torch.no_grad():
        assert saved_activation_bytes(lambda: torch.sin(torch.exp(x))) == 0
    kept = saved_activation_bytes(lambda: checkpoint(lambda t: torch.sin(torch.cos(t)), torch.exp(x), use_reentrant=False))
    assert kept == 4000  # exp's result, held by the checkpoint; cos's result is recomputed, not kept


def test_side_by_side_timing_interleaves_the_calls():
    """Each repeat runs every call once, in turn, after the warm-ups: a drifting machine moves all alike."""
    from omoe_lab.bench.measure import time_side_by_side

    order = []
    seconds = time_side_by_side({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3, torch.device("cpu"))
    assert order == ["a", "b"] + ["a", "b"] * 3
    assert {k: len(v) for k, v in seconds.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in seconds.values() for t in v)
