"""Every choice is made on the dev split: choosing never reads a test question, scoring on test does."""
from __future__ import annotations

import pytest

from omoe_lab.data import tasks as task_module
from omoe_lab.experiments import RunConfig, best_baselines, run
from tests.test_experiments import SMALL


@pytest.fixture
def splits_read(monkeypatch):
    """The splits ``load_task`` is asked for, in order."""
    seen: list[str] = []
    load = task_module.load_task

    def spying(name, split="test", *args, **kwargs):
        seen.append(split)
        return load(name, split, *args, **kwargs)

    monkeypatch.setattr(task_module, "load_task", spying)
    return seen


def test_choosing_on_dev_never_reads_the_test_split(tmp_path, splits_read):
    for method in ("none", "lora"):
        result = run(RunConfig(method=method, eval_split="dev", **SMALL), cache_dir=tmp_path, progress=False)
        assert result.config["eval_split"] == "dev" and result.metrics["n"] == 8
    assert "test" not in splits_read and {"dev", "train"} <= set(splits_read)


def test_the_best_zero_shot_way_is_chosen_on_dev_and_scored_on_test(tmp_path):
    zero_dev = run(RunConfig(method="none", eval_split="dev", **SMALL), cache_dir=tmp_path, progress=False)
    zero_test = run(RunConfig(method="none", **SMALL), cache_dir=tmp_path, progress=False)
    best = best_baselines(zero_test, chosen_on=zero_dev)
    dev_ways, test_ways = zero_dev.metrics["baselines"], zero_test.metrics["baselines"]
    assert best["chosen_on"] == "dev"
    for task, chosen in best["best_per_task"].items():
        assert dev_ways[chosen["baseline"]]["per_task"][task] == max(w["per_task"][task] for w in dev_ways.values())
        assert chosen["accuracy"] == test_ways[chosen["baseline"]]["per_task"][task]  # scored on test
    assert best_baselines(zero_test)["chosen_on"] == "test"
    with pytest.raises(ValueError, match="scored on the dev split"):
        best_baselines(zero_test, chosen_on=zero_test)


def test_dev_and_test_runs_have_different_keys():
    assert RunConfig(method="lora", **SMALL).key() != RunConfig(method="lora", eval_split="dev", **SMALL).key()
    with pytest.raises(ValueError, match="eval_split must be"):
        RunConfig(method="lora", eval_split="validation", **SMALL).resolved()
