"""The command line: help texts, early errors, and a real (tiny) train → eval round trip."""
from __future__ import annotations

import json

import pytest

from omoe_lab.cli import build_parser, main

COMMANDS = ["demo", "train", "eval", "compare", "sweep", "export", "fetch-model"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: omoe-lab {command}") and len(text) > 300


def test_top_level_help_lists_commands_and_profiles(capsys):
    assert main([]) == 2
    text = capsys.readouterr().out
    assert all(c in text for c in COMMANDS + ["bench", "ci:", "quick:", "full:"])


def test_unknown_task_fails_before_any_work(capsys, tmp_path):
    assert main(["train", "--model", "tiny", "--tasks", "sudoku", "--out", str(tmp_path)]) == 2
    assert "unknown task 'sudoku'" in capsys.readouterr().err.lower()


def test_unwritable_output_folder_is_a_clear_error(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["train", "--model", "tiny", "--out", str(blocker / "run")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_train_then_eval_with_saved_adapters(capsys, tmp_path):
    args = ["--model", "tiny", "--profile", "ci", "--tasks", "boolq", "--steps", "2", "--no-progress"]
    assert main(["train", *args, "--method", "moe", "--num-experts", "2", "--out", str(tmp_path)]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["metrics"]["protocol"] == "loglik"
    assert main(["eval", "--model", "tiny", "--adapters", trained["adapters"], "--tasks", "boolq", "--limit", "4", "--json"]) == 0
    out = capsys.readouterr().out
    scored = json.loads(out[out.index("{"):])
    assert scored["protocol"] == "loglik" and scored["n"] == 4 and set(scored["per_task"]) == {"boolq"}


def test_bench_passes_its_options_through(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    printed = capsys.readouterr().out
    assert exit_info.value.code == 0 and all(option in printed for option in ("--part", "--smoke", "end_to_end", "scoring"))


def test_parser_defaults_are_sensible():
    args = build_parser().parse_args(["demo"])
    assert args.methods == ["lora", "moe", "omoe"] and args.num_experts == 4 and args.seeds == [0]


def test_demo_writes_the_report_and_prints_each_run_against_the_best_baseline(capsys, tmp_path):
    from omoe_lab.analysis.stats import paired_test
    from omoe_lab.experiments import best_baselines, run_all, RunConfig

    out = tmp_path / "demo"
    argv = ["demo", "--model", "tiny", "--profile", "ci", "--tasks", "boolq", "piqa", "--steps", "2", "--methods", "moe", "omoe",
            "--num-experts", "2", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"report.html", "metrics.json"}
    lines = {line.split("  accuracy")[0].strip(): line for line in printed.splitlines() if "  accuracy" in line}
    control = "MoE-LoRA E=2 soft, B ~ N(0, 0.02²)"
    assert set(lines) == {"zero-shot", "MoE-LoRA E=2 soft", "OMoE (stiefel) E=2 soft", control}  # the control is in the demo
    assert all("cloze prompt" in line for line in lines.values())
    common = dict(model="tiny", profile="ci", tasks=("boolq", "piqa"), steps=2)
    zero, omoe = run_all([RunConfig(method="none", **common), RunConfig(method="omoe", num_experts=2, **common)],
                         cache_dir=tmp_path / "cache", progress=False)
    test = paired_test(best_baselines(zero)["best_per_task_correct"], omoe.metrics["correct"])
    assert f"vs best baseline per task: +{test['gained']} -{test['lost']} questions" in lines["OMoE (stiefel) E=2 soft"]
    assert "best baseline per task" in printed
    assert main(argv) == 0 and capsys.readouterr().out.count("[cached]") == 4  # the second time replays every run


def test_eval_scores_a_benchmark_the_registry_does_not_know(capsys, tmp_path):
    records = [{"instruction": f"Please choose the correct answer to the question: {q}?\n\nAnswer1: {a}\n\nAnswer2: {b}"
                               "\n\nAnswer3: none\n\nAnswer format: answer1/answer2/answer3",
                "input": "", "output": "the correct answer is answer1", "answer": "answer1"}
               for q, a, b in [("Which is hot", "fire", "ice"), ("Which is wet", "rain", "sand")]]
    (tmp_path / "my_bench").mkdir()
    (tmp_path / "my_bench" / "test.json").write_text(json.dumps(records), encoding="utf-8")
    assert main(["eval", "--model", "tiny", "--tasks", "my_bench", "--data-dir", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    scored = json.loads(out[out.index("{"):])
    assert scored["n"] == 2 and set(scored["per_task"]) == {"my_bench"}
    assert scored["chance"]["my_bench"] == pytest.approx(1 / 3)
