"""Experiments on the tiny model: one run end to end, the cache, comparisons and intervals."""
from __future__ import annotations

import math

import pytest

from omoe_lab.experiments import PROFILES, RunConfig, compare, paired_test, profile_from_env, run, summarize

SMALL = dict(
    model="tiny", profile="ci", tasks=("boolq", "piqa"), steps=3, batch_size=4, train_per_task=4, eval_per_task=4,
    capture_tokens=64, max_length=96,
)


def test_one_run_trains_evaluates_analyses_and_replays_from_cache(tmp_path):
    config = RunConfig(method="omoe", num_experts=3, top_k=2, **SMALL)
    result = run(config, cache_dir=tmp_path, progress=False)
    assert not result.from_cache and len(result.history) == 3
    assert result.metrics["protocol"] == "loglik" and result.metrics["n"] == 8
    assert result.metrics["n_per_task"] == {"boolq": 4, "piqa": 4}
    correct = result.metrics["correct"]
    assert len(correct) == 8 and result.metrics["accuracy"] == sum(correct) / 8
    assert result.metrics["per_task"] == {"boolq": sum(correct[:4]) / 4, "piqa": sum(correct[4:]) / 4}  # test questions in task order
    assert len(set(result.metrics["questions"])) == 8 and result.metrics["prompt_style"] == "cloze"
    layers = result.experts
    assert layers and all(row["experts"] == 3 and 0.0 <= row["mean_abs_cosine"] <= 1.0 for row in layers)
    assert all(row["stiefel_error"] < 1e-4 for row in layers)  # q_i are orthonormal by construction
    assert {"x", "y", "expert", "task"} <= set(result.embedding[0])
    assert result.parameters["trainable"] > 0 and (tmp_path / config.key() / "adapters" / "adapter_config.json").is_file()
    again = run(config, cache_dir=tmp_path, progress=False)
    assert again.from_cache and again.metrics == result.metrics and again.experts == result.experts


def test_a_run_can_measure_what_merging_its_experts_costs(tmp_path):
    config = RunConfig(method="moe", num_experts=2, collapse_cost=True, **SMALL)
    result = run(config, cache_dir=tmp_path, progress=False)
    cost = result.collapse
    assert cost["accuracy"] == result.metrics["accuracy"] and cost["probe_tokens"] > 0
    assert [v["variant"] for v in cost["variants"]] == ["merged", "without expert 0", "without expert 1"]
    for variant in cost["variants"]:  # scored on the run's own test questions
        assert len(variant["correct"]) == 8 and variant["accuracy"] == sum(variant["correct"]) / 8
    assert run(config, cache_dir=tmp_path, progress=False).collapse == cost  # replayed from the cache
    assert run(RunConfig(method="moe", num_experts=2, **SMALL), cache_dir=tmp_path, progress=False).collapse == {}


def test_profiles_fill_every_size_and_the_key_follows_the_resolved_config(monkeypatch):
    resolved = RunConfig(method="moe", profile="ci").resolved()
    assert resolved.steps == PROFILES["ci"].steps and resolved.orthogonalize is None
    monkeypatch.setenv("OMOE_LAB_PROFILE", "ci")
    assert RunConfig(method="moe").key() == RunConfig(method="moe", profile="ci").key()
    assert RunConfig(method="moe").key() != RunConfig(method="moe", steps=7).key()
    assert RunConfig(method="lora", num_experts=4).adapter_config(30).rank == 4 * PROFILES["ci"].rank
    assert RunConfig(method="omoe", profile="ci").adapter_config(30).layers == [28, 29]
    with pytest.raises(ValueError, match="unknown profile"):
        profile_from_env("huge")


def test_compare_gives_a_tidy_table_with_protocol_and_counts(tmp_path):
    table, results = compare(["lora", "moe"], [2], [0, 1], cache_dir=tmp_path, progress=False, **SMALL)
    assert [r.label for r in results] == ["zero-shot", "LoRA r=8", "LoRA r=8", "MoE-LoRA E=2 soft", "MoE-LoRA E=2 soft"]
    overall = table[table.task == "all"]
    assert len(overall) == 5 and set(overall.protocol) == {"loglik"} and set(overall.n) == {8}
    summary = summarize(table)
    lora = summary[(summary.method == "lora") & (summary.task == "all")].iloc[0]
    accs = table[(table.method == "lora") & (table.task == "all")].accuracy
    assert lora.seeds == 2 and lora.accuracy == pytest.approx(accs.mean())
    assert lora.interval == "t over seeds" and lora.low <= lora.accuracy <= lora.high
    zero = summary[(summary.method == "none") & (summary.task == "all")].iloc[0]
    assert zero.interval == "Wilson over examples"
    # the Wilson interval of the observed accuracy over n = 8, by hand
    z, p, n = 1.959964, zero.accuracy, 8
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (zero.low, zero.high) == pytest.approx((centre - half, centre + half), abs=1e-12)


def _mcnemar_by_hand(gained: int, lost: int) -> float:
    """Two-sided exact McNemar: twice the smaller binomial(½) tail of the discordant split, capped at 1."""
    n = gained + lost
    tail = sum(math.comb(n, k) for k in range(min(gained, lost) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("gained,lost", [(30, 19), (12, 2), (5, 5), (0, 7), (1, 0)])
def test_paired_test_is_the_exact_mcnemar_test(gained, lost):
    # questions both got right and both got wrong must not change anything
    zero_shot = [0] * gained + [1] * lost + [1] * 40 + [0] * 25
    tuned = [1] * gained + [0] * lost + [1] * 40 + [0] * 25
    result = paired_test(zero_shot, tuned)
    assert (result["gained"], result["lost"]) == (gained, lost)
    assert result["p"] == pytest.approx(_mcnemar_by_hand(gained, lost), rel=1e-9)


def test_paired_test_without_disagreement_and_with_different_questions():
    assert paired_test([1, 0, 1], [1, 0, 1]) == {"gained": 0, "lost": 0, "p": 1.0}
    with pytest.raises(ValueError, match="same questions"):
        paired_test([1, 0], [1, 0, 1])


def test_runs_record_which_questions_they_got_right(tmp_path):
    result = run(RunConfig(method="none", **SMALL), cache_dir=tmp_path, progress=False)
    correct = result.metrics["correct"]
    assert len(correct) == result.metrics["n"] and set(correct) <= {0, 1}
    assert sum(correct) / len(correct) == pytest.approx(result.metrics["accuracy"])


def test_a_cached_zero_shot_pairs_with_a_fresh_run(tmp_path):
    from omoe_lab.report import paired_with_zero_shot

    run(RunConfig(method="none", **SMALL), cache_dir=tmp_path, progress=False)
    _, results = compare(["moe"], [2], [0], cache_dir=tmp_path, progress=False, **SMALL)
    assert [r.from_cache for r in results] == [True, False]
    assert list(paired_with_zero_shot(results)) == ["MoE-LoRA E=2 soft"]


def test_the_random_start_is_part_of_the_key_and_the_label():
    default = RunConfig(method="moe", profile="ci")
    assert default.key() == RunConfig(method="moe", profile="ci", b_init_std=0.0).key()  # the method's default, spelled out
    control = RunConfig(method="moe", profile="ci", b_init_std=0.02)
    assert control.key() != default.key() and control.label() == "MoE-LoRA E=4 soft, B ~ N(0, 0.02²)"
    assert RunConfig(method="omoe", profile="ci", b_init_std=0.02).label() == "OMoE (stiefel) E=4 soft"
    assert RunConfig(method="omoe", profile="ci", b_init_std=0.1).label() == "OMoE (stiefel) E=4 soft, B ~ N(0, 0.1²)"
    assert control.adapter_config(30).b_init_std == 0.02


def test_cached_runs_of_an_older_schema_never_replay(tmp_path, monkeypatch):
    import omoe_lab.experiments as experiments

    config = RunConfig(method="none", **SMALL)
    key = config.key()
    monkeypatch.setattr(experiments, "SCHEMA_VERSION", experiments.SCHEMA_VERSION + 1)
    assert config.key() != key


def test_the_test_subset_is_a_fixed_random_one_in_task_order():
    from omoe_lab.data.tasks import load_task
    from omoe_lab.experiments import test_examples

    chosen = test_examples(RunConfig(method="none", **{**SMALL, "eval_per_task": 20}))
    again = test_examples(RunConfig(method="moe", seed=5, **{**SMALL, "eval_per_task": 20}))
    assert chosen == again and [ex.task for ex in chosen] == ["boolq"] * 20 + ["piqa"] * 20
    assert chosen[:20] != load_task("boolq", "test", None, 20)  # not simply the first 20


@pytest.mark.parametrize("fields,message", [
    (dict(method="mixture9"), "unknown method"), (dict(prompt_style="chat"), "unknown prompt style"),
    (dict(protocol="vote"), "unknown protocol"), (dict(method="moe", num_experts=2, top_k=3), "top_k=3"),
    (dict(method="omoe", num_experts=0), "num_experts must be >= 1"), (dict(tasks=()), "no tasks"),
])
def test_bad_run_configs_fail_before_any_work(fields, message, tmp_path):
    from omoe_lab.experiments import run_all

    good = RunConfig(method="none", **SMALL)
    with pytest.raises(ValueError, match=message):
        run_all([good, RunConfig(**{"method": "moe", **SMALL, **fields})], cache_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # checked before the first (good) run started


@pytest.mark.parametrize("n, count", [(192, 128), (1000, 128), (129, 128), (600, 7), (10, 3)])
def test_spread_covers_the_whole_list_evenly(n, count):
    from omoe_lab.experiments import spread

    picked = spread(list(range(n)), count)
    assert len(picked) == count and picked == sorted(set(picked)) and picked[0] == 0
    gaps = [b - a for a, b in zip(picked, picked[1:])]
    assert max(gaps) - min(gaps) <= 1
    assert picked[-1] >= n - math.ceil(n / count)  # reaches the end of the list


def test_spread_sees_every_task_of_a_grouped_test_list():
    """The ci profile's 192 test examples, 24 per task in 8 groups, 128 analysis prompts: the old
    integer step (192 // 128 = 1) took the first 128, six of the eight tasks."""
    from omoe_lab.experiments import spread

    tasks = [f"task{i // 24}" for i in range(192)]
    assert set(spread(tasks, 128)) == set(tasks)


def test_spread_returns_everything_when_there_are_fewer():
    from omoe_lab.experiments import spread

    assert spread(["a", "b"], 5) == ["a", "b"]
