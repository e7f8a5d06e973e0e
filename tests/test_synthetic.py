"""The built-in synthetic suite: committed files match the generator, and the suite keeps its promises
(held-out entities, balanced labels, distinct options, exact LLM-Adapters templates)."""
from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from omoe_lab.data import synthetic
from omoe_lab.data.synthetic import SPLITS, TASK_NAMES, check_suite, generate_suite, main, render_record, serialize

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data"


@pytest.fixture(scope="module")
def suite():
    return generate_suite(seed=0, with_meta=True)


def _all_examples(suite):
    for task, splits in suite.items():
        for split, examples in splits.items():
            yield task, split, examples


# ----------------------------------------------------------------------------- files
def test_committed_files_equal_a_fresh_generation():
    problems = check_suite(DATA_DIR)
    assert not problems, "data/ is stale; run `python -m omoe_lab.data.synthetic`:\n" + "\n".join(problems)


def test_generation_ignores_the_hash_seed():
    # --check in a child with another PYTHONHASHSEED: any set/dict-order dependence would show up here.
    env = dict(os.environ, PYTHONHASHSEED="12345")
    result = subprocess.run([sys.executable, "-m", "omoe_lab.data.synthetic", "--check", "--out", str(DATA_DIR)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_cli_writes_then_check_catches_an_edit(tmp_path, capsys):
    assert main(["--out", str(tmp_path)]) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json"))
    assert written == sorted(f"{t}/{s}.json" for t in TASK_NAMES for s in SPLITS)
    assert not list(tmp_path.rglob("*.tmp")), "temporary files left behind"
    text = (tmp_path / "piqa" / "test.json").read_text(encoding="utf-8")
    assert text.endswith("]\n") and text.startswith('[\n {\n  "instruction"')  # indent=1, trailing newline
    assert main(["--check", "--out", str(tmp_path)]) == 0

    records = json.loads(text)
    records[3]["answer"] = "solution2" if records[3]["answer"] == "solution1" else "solution1"
    (tmp_path / "piqa" / "test.json").write_text(serialize(records), encoding="utf-8")
    (tmp_path / "boolq" / "train.json").unlink()
    capsys.readouterr()
    assert main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "piqa" in err and "first difference at record 3" in err
    assert "boolq" in err and "missing" in err


def test_generate_suite_without_meta_returns_the_records(suite):
    plain = generate_suite(seed=0, tasks=("winogrande",))
    assert plain["winogrande"]["test"] == [ex.record for ex in suite["winogrande"]["test"]]


def test_another_seed_gives_another_suite(suite):
    other = generate_suite(seed=1, tasks=("hellaswag",))
    assert other["hellaswag"]["train"] != [ex.record for ex in suite["hellaswag"]["train"]]


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown synthetic task"):
        generate_suite(tasks=("squad",))


# ----------------------------------------------------------------------------- counts and splits
def test_counts(suite):
    assert tuple(suite) == TASK_NAMES
    for task, split, examples in _all_examples(suite):
        assert len(examples) >= {"train": 800, "test": 200}[split], (task, split)
        assert len(examples) == synthetic.SPLIT_SIZES[split]


def test_test_entities_never_appear_in_train(suite):
    for task, splits in suite.items():
        names = {}
        for split, examples in splits.items():
            assert all(ex.entities for ex in examples), f"{task}/{split}: a record without entities"
            # Compare bare names: the same word must not be held out as one kind and seen as another.
            names[split] = {e.split(":", 1)[1] for ex in examples for e in ex.entities}
        leaked = names["train"] & names["test"]
        assert not leaked, f"{task}: test entities also in train: {sorted(leaked)[:10]}"
        assert len(names["test"]) >= 10, f"{task}: only {len(names['test'])} held-out entities"


def test_no_question_in_both_splits_and_no_duplicates(suite):
    for task, splits in suite.items():
        questions = {}
        for split, examples in splits.items():
            qs = [ex.question for ex in examples]
            assert len(set(qs)) == len(qs), f"{task}/{split}: repeated question"
            instructions = [ex.record["instruction"] for ex in examples]
            assert len(set(instructions)) == len(instructions), f"{task}/{split}: repeated record"
            questions[split] = set(qs)
        assert not questions["train"] & questions["test"], task


# ----------------------------------------------------------------------------- labels and options
def _balanced(counter, k):
    counts = [counter.get(i, 0) for i in range(k)]
    return max(counts) - min(counts) <= 1


def test_correct_position_is_balanced_in_every_prefix(suite):
    for task, split, examples in _all_examples(suite):
        for prefix in (16, 100, len(examples)):
            groups = collections.defaultdict(collections.Counter)
            for ex in examples[:prefix]:
                groups[len(ex.options)][ex.label] += 1
            for k, counter in groups.items():
                assert _balanced(counter, k), f"{task}/{split}[:{prefix}] {k} options: {dict(counter)}"


def test_boolq_is_half_true(suite):
    for split, examples in suite["boolq"].items():
        answers = collections.Counter(ex.record["answer"] for ex in examples)
        assert abs(answers["true"] - answers["false"]) <= 1, answers


def test_option_counts(suite):
    expected = {"boolq": {2}, "piqa": {2}, "social_i_qa": {3}, "hellaswag": {4}, "winogrande": {2},
                "ARC-Easy": {4}, "ARC-Challenge": {4, 5}, "openbookqa": {4}}
    for task, split, examples in _all_examples(suite):
        counts = collections.Counter(len(ex.options) for ex in examples)
        assert set(counts) == expected[task], (task, split, counts)
    arc = collections.Counter(len(ex.options) for ex in suite["ARC-Challenge"]["train"])
    assert arc[4] > 2 * arc[5], "ARC-Challenge should use 4 options mostly"


def test_options_are_distinct_and_marker_free(suite):
    markers = re.compile(r"(Answer|Solution|Option|Ending)\d+:|Answer format", re.IGNORECASE)
    for task, split, examples in _all_examples(suite):
        for ex in examples:
            assert len(set(ex.options)) == len(ex.options), (task, ex.options)
            for text in (ex.question, *ex.options):
                assert text == text.strip() and "\n" not in text and "{" not in text, (task, text)
                assert not markers.search(text), (task, text)


def test_winogrande_options_are_the_two_candidates(suite):
    for split, examples in suite["winogrande"].items():
        for ex in examples:
            assert ex.question.count("_") == 1, ex.question
            for option in ex.options:
                assert option in ex.question, (option, ex.question)


# ----------------------------------------------------------------------------- templates
def _choice_template(lead_in: str, marker: str, count: int, question: str = r"(?P<question>[^\n]+)") -> re.Pattern:
    listed = "".join(rf"\n\n{marker}{i}: (?P<o{i}>[^\n]+)" for i in range(1, count + 1))
    labels = "/".join(f"{marker.lower()}{i}" for i in range(1, count + 1))
    return re.compile(rf"{re.escape(lead_in)}{question}{listed}\n\nAnswer format: {labels}")


ANSWER = "Please choose the correct answer to the question: "
TEMPLATES = {
    ("boolq", 2): re.compile(r"Please answer the following question with true or false, question: "
                             r"(?P<question>[a-z][^\n?]*)\?\n\nAnswer format: true/false"),
    ("piqa", 2): _choice_template("Please choose the correct solution to the question: ", "Solution", 2),
    ("social_i_qa", 3): _choice_template(ANSWER, "Answer", 3, r"(?P<context>[^\n]+[.!]) (?P<question>[^\n]+\?)"),
    ("hellaswag", 4): _choice_template("Please choose the correct ending to complete the given sentence: ", "Ending", 4,
                                       r"(?P<activity>[A-Z][^\n:]+): (?P<context>[^\n]+\.)"),
    ("winogrande", 2): _choice_template(
        "Please choose the correct answer to fill in the blank to complete the given sentence: ", "Option", 2,
        r"(?P<question>[^\n_]+_[^\n_]+)"),
    ("ARC-Easy", 4): _choice_template(ANSWER, "Answer", 4),
    ("ARC-Challenge", 4): _choice_template(ANSWER, "Answer", 4),
    ("ARC-Challenge", 5): _choice_template(ANSWER, "Answer", 5),
    ("openbookqa", 4): _choice_template(ANSWER, "Answer", 4),
}


def test_every_record_matches_its_task_template(suite):
    for task, split, examples in _all_examples(suite):
        for ex in examples:
            record = ex.record
            assert set(record) == {"instruction", "input", "output", "answer"}
            assert record["input"] == ""
            assert record["output"] == f"the correct answer is {record['answer']}"
            match = TEMPLATES[task, len(ex.options)].fullmatch(record["instruction"])
            assert match, f"{task}/{split}: {record['instruction']!r}"
            if task == "boolq":
                assert record["answer"] == ex.options[ex.label] and ex.options == ("true", "false")
            else:
                word = {"piqa": "solution", "hellaswag": "ending", "winogrande": "option"}.get(task, "answer")
                assert record["answer"] == f"{word}{ex.label + 1}"
                assert tuple(match.group(f"o{i}") for i in range(1, len(ex.options) + 1)) == ex.options


def test_render_record_round_trip_by_hand():
    record = render_record("winogrande", "The cup fell because the _ was slippery.", ("cup", "table"), 0)
    assert record == {
        "instruction": "Please choose the correct answer to fill in the blank to complete the given sentence: "
                       "The cup fell because the _ was slippery.\n\nOption1: cup\n\nOption2: table"
                       "\n\nAnswer format: option1/option2",
        "input": "", "output": "the correct answer is option1", "answer": "option1"}
    boolean = render_record("boolq", "does a cat have four legs", ("true", "false"), 0)
    assert boolean["instruction"].endswith("question: does a cat have four legs?\n\nAnswer format: true/false")


# ----------------------------------------------------------------------------- the task loader
def test_every_record_parses_with_the_task_loader(suite):
    tasks = pytest.importorskip("omoe_lab.data.tasks", reason="omoe_lab.data.tasks (the loader) is not written yet")
    load_task = getattr(tasks, "load_task", None)
    if load_task is None:
        pytest.skip("omoe_lab.data.tasks has no load_task yet")
    for task, split, examples in _all_examples(suite):
        loaded = load_task(task, split, data_dir=DATA_DIR)
        if split == "train":  # the train file holds the train and dev splits
            loaded = load_task(task, "train", data_dir=DATA_DIR) + load_task(task, "dev", data_dir=DATA_DIR)
            dev = set(tasks.dev_indices(task, len(examples)))
            examples = [ex for i, ex in enumerate(examples) if i not in dev] + [ex for i, ex in enumerate(examples) if i in dev]
        assert len(loaded) == len(examples), (task, split)
        for ex, parsed in zip(examples, loaded):
            expected_question = ex.question + "?" if task == "boolq" else ex.question
            assert (parsed.question, tuple(parsed.options), parsed.label) == (expected_question, ex.options, ex.label)
