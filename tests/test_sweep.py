"""The sweep on the tiny model: one grid, resumable, summarized with intervals and paired tests."""
from __future__ import annotations

import json

import pytest

from omoe_lab.sweep import ARMS, SETTINGS, sweep

SMALL = dict(
    model="tiny", profile="ci", tasks=("boolq", "piqa"), steps=4, batch_size=4, train_per_task=8, eval_per_task=6,
    capture_tokens=64, max_length=96, diversity_every=2,
)


def test_sweep_summarizes_every_arm_and_resumes_from_the_cache(tmp_path):
    out = tmp_path / "results" / "sweep.json"
    cache = tmp_path / "cache"
    # an "interrupted" sweep: only one arm finished
    sweep("builtin", (0, 1), arms=["moe4"], cache_dir=cache, progress=False, **SMALL)
    finished = {p.name for p in cache.iterdir()}
    summary = sweep("builtin", (0, 1), arms=["moe4", "omoe4"], cache_dir=cache, out=out, command="test", progress=False, **SMALL)
    assert finished < {p.name for p in cache.iterdir()} and len(list(cache.iterdir())) == 6  # zero-shot on test and dev + 2 arms × 2 seeds
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(summary))
    meta = saved["meta"]
    assert meta["command"] == "test" and meta["seeds"] == [0, 1] and meta["n"] == 12 and meta["prompt_style"] == "cloze"
    assert {"date", "versions", "machine"} <= set(meta) and meta["versions"]["torch"]
    assert meta["code"]["fingerprint"] and meta["run_code"][0]["runs"] == 6 and meta["warnings"] == []
    assert set(meta["data"]) == {f"{task}/{split}.json" for task in ("boolq", "piqa") for split in ("train", "test")}  # dev is read from train.json

    moe, omoe = saved["arms"]
    assert [moe["arm"], omoe["arm"]] == ["moe4", "omoe4"] and moe["label"] == ARMS["moe4"].name
    values = omoe["accuracy"]["all"]["values"]
    assert len(values) == 2 and omoe["accuracy"]["all"]["mean"] == pytest.approx(sum(values) / 2)
    assert omoe["accuracy"]["all"]["low"] <= omoe["accuracy"]["all"]["mean"] <= omoe["accuracy"]["all"]["high"]
    assert set(omoe["accuracy"]) == {"all", "boolq", "piqa"}
    assert set(omoe["diversity"]) == {"mean_abs_cosine", "mean_cka", "mean_cka_debiased", "effective_rank"}
    assert [row["step"] for row in omoe["diversity_over_training"]] == [0, 2, 4]  # OMoE's random B: defined from step 0
    assert [row["step"] for row in moe["diversity_over_training"]] == [2, 4]  # B = 0: undefined until the first step
    loads = next(iter(omoe["routing_by_task"].values()))
    assert set(loads) == {"boolq", "piqa"} and all(sum(v) == pytest.approx(1.0) for v in loads.values())
    assert omoe["routing_by_task"] == omoe["routing_by_task_per_seed"][0] and len(omoe["routing_by_task_per_seed"]) == 2
    assert omoe["vs_best_baseline"]["combined"]["seeds"] == 2 and len(omoe["vs_best_baseline"]["per_seed"]) == 2
    # the results-file contract: answers per seed aligned with meta.questions, the question-level test, Holm
    assert len(meta["questions"]) == meta["n"] and len(saved["baselines"]["best_per_task_correct"]) == meta["n"]
    assert saved["baselines"]["chosen_on"] == "dev"
    assert [len(c) for c in omoe["correct"]] == [meta["n"]] * 2
    assert omoe["accuracy"]["all"]["values"] == pytest.approx([sum(c) / meta["n"] for c in omoe["correct"]])
    questions = omoe["vs_best_baseline"]["questions"]
    assert questions["questions"] == meta["n"] and questions["holm_p"] >= questions["p"]
    assert meta["holm_family"] == ["moe4 vs best baseline", "omoe4 vs best baseline", "omoe4 vs moe4"]

    (comparison,) = saved["comparisons"]
    assert (comparison["a"], comparison["b"]) == ("moe4", "omoe4")
    diffs = [b - a for a, b in zip(moe["accuracy"]["all"]["values"], omoe["accuracy"]["all"]["values"])]
    assert comparison["difference"]["values"] == pytest.approx(diffs)
    combined = comparison["combined"]
    assert combined["gained"] == sum(s["gained"] for s in comparison["per_seed"])
    assert "Cochran" in combined["test"] and 0 <= combined["p"] <= 1

    baselines = saved["baselines"]
    assert {"listed/mean", "listed/sum", "listed/char", "listed/pmi", "cloze/mean", "cloze/pmi", "majority"} <= set(baselines["ways"])
    assert baselines["chosen_on"] == "dev"  # each task's best way: the best on dev, scored on test
    for task, best in baselines["best_per_task"].items():
        assert best["accuracy"] == baselines["ways"][best["baseline"]]["per_task"][task] and "dev_accuracy" in best


def test_sweep_refuses_bad_input_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown sweep setting"):
        sweep("mars", (0, 1), cache_dir=tmp_path, progress=False, **SMALL)
    with pytest.raises(ValueError, match="unknown arms"):
        sweep("builtin", (0, 1), arms=["moe99"], cache_dir=tmp_path, progress=False, **SMALL)
    with pytest.raises(ValueError, match="at least 2 distinct seeds"):
        sweep("builtin", (0,), cache_dir=tmp_path, progress=False, **SMALL)
    with pytest.raises(ValueError, match="unknown prompt style"):
        sweep("builtin", (0, 1), cache_dir=tmp_path, progress=False, **{**SMALL, "prompt_style": "chat"})
    assert not any(tmp_path.iterdir())


def test_every_setting_names_known_arms():
    for setting in SETTINGS.values():
        assert set(setting.arms) <= set(ARMS)


def test_variants_run_through_the_same_configs_and_keep_older_cache_keys():
    from omoe_lab.experiments import RunConfig

    plain = RunConfig(method="moe", num_experts=4, **{k: v for k, v in SMALL.items() if k != "diversity_every"})
    assert plain.key() == RunConfig(**{**plain.__dict__, "shared_expert": False, "null_experts": 0}).key()
    variant = RunConfig(**{**plain.__dict__, "shared_expert": True})
    assert variant.key() != plain.key() and variant.label() == "MoE-LoRA E=4 soft, shared expert"
    assert variant.adapter_config(4).shared_expert
    assert RunConfig(**{**plain.__dict__, "method": "mixlora", "num_experts": 8, "top_k": 2}).label() == "MixLoRA E=8 top-2"
    penalty = RunConfig(**{**plain.__dict__, "orthogonality_penalty": 0.1})
    assert penalty.adapter_config(4).orthogonality_penalty == 0.1 and "orthogonality penalty 0.1" in penalty.label()
    with pytest.raises(ValueError, match="null_experts=1"):
        RunConfig(**{**plain.__dict__, "top_k": 6, "null_experts": 1}).resolved()


def test_a_variant_trains_and_is_analysed_like_the_mixtures(tmp_path):
    summary = sweep("variants", (0, 1), arms=["moe4", "moe4shared"], cache_dir=tmp_path, progress=False,
                    **{**SMALL, "data_dir": None, "tasks": ("boolq", "piqa")})
    shared = summary["arms"][1]
    assert shared["arm"] == "moe4shared" and shared["parameters"]["trainable"] > summary["arms"][0]["parameters"]["trainable"]
    # each arm records its own settings, not those of the arm it varies
    assert shared["config"]["shared_expert"] is True and summary["arms"][0]["config"]["shared_expert"] is False
    assert shared["settings"] == ARMS["moe4shared"].settings
    assert "diversity" in shared and summary["comparisons"][0]["label"].startswith("MoE-LoRA E=4 soft + shared expert")


def test_seed_major_runs_whole_seeds_first_and_summarizes_in_the_usual_order(monkeypatch):
    import omoe_lab.sweep as sweep_module

    ran, summarized = [], []
    monkeypatch.setattr(sweep_module, "run_all", lambda configs, **kw: ran.extend(configs) or [f"{c.method}/{c.seed}" for c in configs])
    monkeypatch.setattr(sweep_module, "summarize_sweep", lambda setting, configs, results, *a, **kw: summarized.extend(results) or {})
    sweep_module.sweep("builtin", [0, 1], arms=["lora", "omoe4"], model="tiny", seed_major=True, progress=False)
    assert [(c.method, c.seed) for c in ran[2:]] == [("lora", 0), ("omoe", 0), ("lora", 1), ("omoe", 1)]
    assert summarized[2:] == ["lora/0", "lora/1", "omoe/0", "omoe/1"]  # the order sweep_configs made


def test_routing_by_task_is_never_averaged_over_seeds():
    from omoe_lab.experiments import RunResult
    from omoe_lab.sweep import _routing_by_task

    def run(boolq):  # two seeds whose experts swapped roles: expert 0 of seed 0 is expert 1 of seed 1
        return RunResult(config={}, key="k", label="x", metrics={}, experts=[{"layer": "L", "load_by_task": {"boolq": boolq}}])

    first, per_seed = _routing_by_task([run([0.8, 0.2]), run([0.2, 0.8])])
    assert first == {"L": {"boolq": [0.8, 0.2]}}  # an average would say [0.5, 0.5]: no specialization
    assert per_seed == [{"L": {"boolq": [0.8, 0.2]}}, {"L": {"boolq": [0.2, 0.8]}}]


def test_what_merging_costs_is_summarized_over_seeds_against_the_full_mixture():
    from omoe_lab.experiments import RunResult
    from omoe_lab.sweep import _collapse_summary

    def run(correct, merged):
        accuracy, merged_accuracy = sum(correct) / 4, sum(merged) / 4
        return RunResult(config={}, key="k", label="x", metrics={"correct": correct, "accuracy": accuracy}, collapse={
            "accuracy": accuracy, "variants": [{"variant": "merged", "accuracy": merged_accuracy, "correct": merged,
                                                "accuracy_lost": accuracy - merged_accuracy, "output_change": 0.1}]})

    (merged,) = _collapse_summary([run([1, 1, 0, 1], [1, 0, 0, 1]), run([1, 1, 1, 1], [0, 0, 1, 1])])
    assert merged["variant"] == "merged" and merged["accuracy_lost"]["values"] == [0.25, 0.5]
    assert merged["output_change"]["mean"] == pytest.approx(0.1)
    assert merged["vs_full"]["difference"] == pytest.approx(-0.375) and merged["vs_full"]["seeds"] == [2, 2]
