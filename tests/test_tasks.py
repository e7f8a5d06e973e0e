import collections
import json
import os
import re
from pathlib import Path

import pytest

from omoe_lab.data import Example
from omoe_lab.data.tasks import (
    DEV_PER_TASK,
    TASK_NAMES,
    TASKS,
    builtin_data_dir,
    dev_indices,
    load_task,
    load_tasks,
    parse_answer,
    parse_instruction,
    parse_llm_adapters_record,
    read_llm_adapters_file,
    to_llm_adapters_record,
)

REFERENCE_DATA = Path(
    os.environ.get("OMOE_LAB_REFERENCE_DATA") or Path(__file__).resolve().parents[2] / "shared/data/commonsense"
)
REFERENCE_COUNTS = {
    ("ARC-Easy", "train"): 2251, ("ARC-Easy", "test"): 2376,
    ("ARC-Challenge", "train"): 1119, ("ARC-Challenge", "test"): 1172,
    ("boolq", "train"): 9427, ("boolq", "test"): 3270,
    ("openbookqa", "train"): 4957, ("openbookqa", "test"): 500,
}
SAMPLES = {  # one hand-made example per task, used for round trips and folders
    "boolq": Example("boolq", "is the sky blue on a clear day?", ("true", "false"), 0),
    "piqa": Example("piqa", "To dry wet shoes,", ("stuff them with newspaper", "put them in the freezer"), 0),
    "social_i_qa": Example("social_i_qa", "Kai lent Sam a pen. How would Sam feel?",
                           ("grateful", "angry", "answered a question"), 0),
    "hellaswag": Example("hellaswag", "Baking cookies: A woman mixes flour and sugar. She",
                         ("eats the bowl.", "adds eggs and stirs.", "flies away.", "paints the oven."), 1),
    "winogrande": Example("winogrande", "The cup did not fit in the box because _ was too big.",
                          ("the cup", "the box"), 0),
    "ARC-Easy": Example("ARC-Easy", "Which of these is a liquid at room temperature?",
                        ("iron", "water", "salt", "wood", "glass"), 1),
    "ARC-Challenge": Example("ARC-Challenge", "Which force pulls objects toward Earth?",
                             ("friction", "magnetism", "gravity"), 2),
    "openbookqa": Example("openbookqa", "A stopwatch is useful", ("to answer questions", "to time a race",
                                                                   "to boil water", "to grow plants"), 1),
}


def write_json(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- parsing each layout
def test_answer_layout_with_blank_lines_between_options():
    instruction = ("Please choose the correct answer to the question: Cameron left early. What will Cameron want next?"
                   "\n\nAnswer1: to go home\n\nAnswer2: to answer the phone\n\nAnswer3: to stay"
                   "\n\nAnswer format: answer1/answer2/answer3")
    question, options = parse_instruction(instruction, "answer")
    assert question == "Cameron left early. What will Cameron want next?"
    assert options == ("to go home", "to answer the phone", "to stay")


def test_answer_layout_with_single_spaces_on_one_line():
    instruction = ("Please choose the correct answer to the question: Which answer is right?\n\n"
                   "Answer1: the answers in a book Answer2: not answer3: wrong Answer3: none Answer4: answer4 is a word"
                   "\n\nAnswer format: answer1/answer2/answer3/answer4")
    question, options = parse_instruction(instruction, "answer")
    assert question == "Which answer is right?"
    assert options == ("the answers in a book", "not answer3: wrong", "none", "answer4 is a word")


def test_solution_option_and_ending_layouts():
    piqa = ("Please choose the correct solution to the question: How do you open a jar?\n\n"
            "Solution1: twist the lid\n\nSolution2: find a solution in water\n\nAnswer format: solution1/solution2")
    expected = ("How do you open a jar?", ("twist the lid", "find a solution in water"))
    assert parse_instruction(piqa, "solution") == expected

    wino = ("Please choose the correct answer to fill in the blank to complete the given sentence: "
            "Ann beat Bea because _ was faster.\n\nOption1: Ann\n\nOption2: Bea\n\nAnswer format: option1/option2")
    assert parse_instruction(wino, "option") == ("Ann beat Bea because _ was faster.", ("Ann", "Bea"))

    hella = ("Please choose the correct ending to complete the given sentence: Cooking: A man cracks eggs. He"
             "\n\nEnding1: whisks them.\n\nEnding2: ending the day.\n\nEnding3: sings.\n\nEnding4: runs."
             "\n\nAnswer format: ending1/ending2/ending3/ending4")
    question, options = parse_instruction(hella, "ending")
    assert question == "Cooking: A man cracks eggs. He"  # the activity label stays, only the lead-in goes
    assert options == ("whisks them.", "ending the day.", "sings.", "runs.")


def test_true_false_layout():
    instruction = ("Please answer the following question with true or false, question: is water wet?"
                   "\n\nAnswer format: true/false")
    assert parse_instruction(instruction, "boolean") == ("is water wet?", ("true", "false"))


def test_unknown_lead_in_is_stripped_up_to_its_colon():
    instruction = "Please pick one: Which is red?\n\nAnswer1: apple\n\nAnswer2: sky\n\nAnswer format: answer1/answer2"
    assert parse_instruction(instruction, "answer") == ("Which is red?", ("apple", "sky"))


def test_without_format_line_the_markers_set_the_count():
    question, options = parse_instruction("Which? Answer1: a Answer2: b Answer3: c", "answer")
    assert (question, options) == ("Which?", ("a", "b", "c"))


@pytest.mark.parametrize("instruction, match", [
    ("Q?\n\nAnswer1: a\n\nAnswer3: c\n\nAnswer format: answer1/answer2/answer3", "found 1 of the 3"),
    ("Q?\n\nAnswer1: a\n\nAnswer2: \n\nAnswer format: answer1/answer2", "empty option 2"),
    ("Answer1: a Answer2: b\n\nAnswer format: answer1/answer2", "empty question"),
    ("Q?\n\nAnswer1: a\n\nAnswer2: b\n\nAnswer format: option1/option2", "does not match the answerN layout"),
])
def test_malformed_instructions_are_refused(instruction, match):
    with pytest.raises(ValueError, match=match):
        parse_instruction(instruction, "answer")


def test_answer_words_become_labels():
    assert parse_answer("answer3", "answer", 4) == 2
    assert parse_answer(" Solution1 ", "solution", 2) == 0
    assert [parse_answer(w, "boolean", 2) for w in ("true", "false", "False")] == [0, 1, 1]
    with pytest.raises(ValueError, match="outside the 4 options"):
        parse_answer("answer5", "answer", 4)
    with pytest.raises(ValueError, match="not of the form ending"):
        parse_answer("answer1", "ending", 4)


# ----------------------------------------------------------------------------- writing
@pytest.mark.parametrize("name", TASK_NAMES)
def test_round_trip_every_task(name):
    example = SAMPLES[name]
    record = to_llm_adapters_record(example)
    assert record["output"] == f"the correct answer is {record['answer']}"
    assert record["input"] == ""
    assert parse_llm_adapters_record(json.loads(json.dumps(record)), name) == example


def test_writer_follows_the_llm_adapters_templates():
    piqa = to_llm_adapters_record(SAMPLES["piqa"])["instruction"]
    assert piqa == ("Please choose the correct solution to the question: To dry wet shoes,\n\n"
                    "Solution1: stuff them with newspaper\n\nSolution2: put them in the freezer\n\n"
                    "Answer format: solution1/solution2")
    arc = to_llm_adapters_record(SAMPLES["ARC-Challenge"])
    assert arc["instruction"] == ("Please choose the correct answer to the question: Which force pulls objects toward "
                                  "Earth?\n\nAnswer1: friction Answer2: magnetism Answer3: gravity\n\n"
                                  "Answer format: answer1/answer2/answer3")
    assert arc["answer"] == "answer3"
    assert to_llm_adapters_record(SAMPLES["boolq"])["instruction"] == (
        "Please answer the following question with true or false, question: is the sky blue on a clear day?"
        "\n\nAnswer format: true/false")


def test_writer_refuses_what_cannot_be_read_back():
    with pytest.raises(ValueError, match="round trip"):
        to_llm_adapters_record(Example("piqa", "Goal", (" padded", "b"), 0))
    with pytest.raises(ValueError, match="round trip"):
        to_llm_adapters_record(Example("piqa", "Goal", ("a Solution2: b", "c"), 0))
    with pytest.raises(ValueError, match="6 options"):
        to_llm_adapters_record(Example("ARC-Easy", "Q", tuple("abcdef"), 0))


def test_registry_metadata():
    assert set(TASK_NAMES) == {"boolq", "piqa", "social_i_qa", "hellaswag", "winogrande",
                               "ARC-Easy", "ARC-Challenge", "openbookqa"}
    assert {n: TASKS[n].num_options for n in TASK_NAMES} == {
        "boolq": 2, "piqa": 2, "social_i_qa": 3, "hellaswag": 4, "winogrande": 2,
        "ARC-Easy": 4, "ARC-Challenge": 4, "openbookqa": 4}
    assert TASKS["hellaswag"].chance == pytest.approx(0.25)
    assert TASKS["boolq"].hub.splits["test"] == "validation"
    assert (TASKS["ARC-Easy"].hub.path, TASKS["ARC-Easy"].hub.config) == ("allenai/ai2_arc", "ARC-Easy")


# ----------------------------------------------------------------------------- the real reference data
@pytest.fixture(scope="module")
def reference_data() -> Path:
    if not REFERENCE_DATA.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE_DATA}")
    return REFERENCE_DATA


@pytest.mark.parametrize("name, split", sorted(REFERENCE_COUNTS))
def test_reference_data_loads_completely(reference_data, name, split):
    records = json.loads((reference_data / name / f"{split}.json").read_text())
    assert len(records) == REFERENCE_COUNTS[name, split]
    if split == "train":  # the train file is the train and dev splits, disjoint, together
        dev = set(dev_indices(name, len(records)))
        records = [r for i, r in enumerate(records) if i not in dev]
    examples = load_task(name, split, data_dir=reference_data)
    assert len(examples) == len(records)
    for example, record in zip(examples, records):
        # The format line counts the options independently of the marker parser.
        assert len(example.options) == record["instruction"].rsplit("Answer format: ", 1)[1].count("/") + 1
        assert example.question and all(example.options)
        assert example.label == TASKS[name].label_words(len(example.options)).index(record["answer"])
        # Writing back reproduces the file byte for byte: nothing was lost or altered in parsing.
        assert to_llm_adapters_record(example) == record


def test_reference_arc_easy_test_has_three_four_and_five_option_questions(reference_data):
    examples = load_task("ARC-Easy", "test", data_dir=reference_data)
    assert collections.Counter(len(e.options) for e in examples) == {4: 2365, 3: 7, 5: 4}
    five = [e for e in examples if e.label == 4]
    assert len(five) == 1 and five[0].options[4] == "It is using less energy than when it is active."


def test_reference_boolq_label_balance(reference_data):
    labels = collections.Counter(e.label for e in load_task("boolq", "test", data_dir=reference_data))
    assert labels == {0: 2033, 1: 1237}  # true / false counts of the file's "answer" field


# ----------------------------------------------------------------------------- bad input
GOOD = {"instruction": "Please choose the correct answer to the question: Q?\n\nAnswer1: a Answer2: b Answer3: c "
                       "Answer4: d\n\nAnswer format: answer1/answer2/answer3/answer4",
        "input": "", "output": "the correct answer is answer2", "answer": "answer2"}


def test_missing_field_names_file_index_and_field(tmp_path):
    path = write_json(tmp_path / "openbookqa/test.json", [GOOD, GOOD, {"instruction": GOOD["instruction"]}])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: record 2: missing field 'answer'"):
        load_task("openbookqa", data_dir=tmp_path)


def test_record_that_is_not_an_object(tmp_path):
    path = write_json(tmp_path / "openbookqa/test.json", [GOOD, "just text"])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: record 1: record is a str"):
        load_task("openbookqa", data_dir=tmp_path)


def test_answer_outside_the_options(tmp_path):
    path = write_json(tmp_path / "openbookqa/train.json", [dict(GOOD, answer="answer5")])
    message = rf"{re.escape(str(path))}: record 0: answer 'answer5' is outside the 4 options"
    with pytest.raises(ValueError, match=message):
        load_task("openbookqa", "train", data_dir=tmp_path)


def test_invalid_json_and_wrong_top_level(tmp_path):
    path = write_json(tmp_path / "boolq/test.json", '[{"instruction": ')
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: not valid JSON"):
        load_task("boolq", data_dir=tmp_path)
    write_json(path, {"instruction": "x"})
    with pytest.raises(ValueError, match="top level is a dict, not a list"):
        load_task("boolq", data_dir=tmp_path)


def test_empty_file_is_an_error(tmp_path):
    path = write_json(tmp_path / "piqa/test.json", [])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: no records"):
        load_task("piqa", data_dir=tmp_path)


def test_unknown_task_lists_known_names(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'arc_easy'; known tasks: boolq, piqa, .*openbookqa"):
        load_task("arc_easy", data_dir=tmp_path)


def test_missing_folder_and_file_name_the_path_and_layout(tmp_path):
    folder, file = re.escape(str(tmp_path / "nowhere")), re.escape(str(tmp_path / "piqa" / "test.json"))
    with pytest.raises(FileNotFoundError, match=rf"data folder {folder} does not exist.*<task>/<split>.json"):
        load_task("piqa", data_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=rf"{file} does not exist.*LLM-Adapters layout"):
        load_task("piqa", data_dir=tmp_path)


def test_limit_must_be_positive(tmp_path):
    write_json(tmp_path / "openbookqa/test.json", [GOOD] * 3)
    assert len(load_task("openbookqa", data_dir=tmp_path, limit=2)) == 2
    with pytest.raises(ValueError, match="limit"):
        load_task("openbookqa", data_dir=tmp_path, limit=0)


# ----------------------------------------------------------------------------- sources
def write_suite(folder: Path, per_task: int, split: str = "train") -> None:
    """``per_task`` distinct records per task, numbered in the question so order is visible."""
    for name, sample in SAMPLES.items():
        records = [to_llm_adapters_record(Example(name, f"{sample.question} #{i}", sample.options, sample.label))
                   for i in range(per_task)]
        write_json(folder / name / f"{split}.json", records)


def test_builtin_suite_is_read_from_omoe_lab_data(tmp_path, monkeypatch):
    write_suite(tmp_path, 2, "test")
    monkeypatch.setenv("OMOE_LAB_DATA", str(tmp_path))
    examples = load_task("winogrande")
    assert [e.question for e in examples] == [f"{SAMPLES['winogrande'].question} #{i}" for i in range(2)]
    monkeypatch.setenv("OMOE_LAB_DATA", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="built-in suite is generated by omoe_lab.data.synthetic"):
        load_task("winogrande")


def test_hub_unreachable_gives_a_clear_error(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match=r"allenai/ai2_arc \(ARC-Easy\) split 'test'.*unreachable.*data_dir"):
        load_task("ARC-Easy", data_dir="hub")


HUB_ROWS = {
    "ARC-Easy": {"question": "Which is a liquid?", "answerKey": "B",
                 "choices": {"text": ["iron", "water", "salt"], "label": ["A", "B", "C"]}},
    "openbookqa": {"question_stem": "Plants need", "answerKey": "D",
                   "choices": {"text": ["rocks", "noise", "plastic", "light"], "label": ["A", "B", "C", "D"]}},
    "boolq": {"question": "is water wet", "passage": "Water is a liquid.", "answer": False},
    "piqa": {"goal": "Open a jar", "sol1": "twist", "sol2": "shout", "label": 0},
    "social_i_qa": {"context": "Kai lent Sam a pen.", "question": "How would Sam feel?",
                    "answerA": "angry", "answerB": "grateful", "answerC": "sleepy", "label": "2"},
    "hellaswag": {"activity_label": "Baking", "ctx": "A woman mixes flour. She",
                  "endings": ["eats it.", "adds eggs.", "leaves.", "sings."], "label": "1"},
    "winogrande": {"sentence": "Ann beat Bea because _ was faster.", "option1": "Ann", "option2": "Bea", "answer": "1"},
}
HUB_EXPECTED = {
    "ARC-Easy": ("Which is a liquid?", ("iron", "water", "salt"), 1),
    "openbookqa": ("Plants need", ("rocks", "noise", "plastic", "light"), 3),
    "boolq": ("is water wet?", ("true", "false"), 1),
    "piqa": ("Open a jar", ("twist", "shout"), 0),
    "social_i_qa": ("Kai lent Sam a pen. How would Sam feel?", ("angry", "grateful", "sleepy"), 1),
    "hellaswag": ("Baking: A woman mixes flour. She", ("eats it.", "adds eggs.", "leaves.", "sings."), 1),
    "winogrande": ("Ann beat Bea because _ was faster.", ("Ann", "Bea"), 0),
}


@pytest.mark.parametrize("name", sorted(HUB_ROWS))
def test_hub_rows_are_converted_per_task(monkeypatch, name):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, config, split):
        calls.append((path, config, split))
        return [HUB_ROWS[name]]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (example,) = load_task(name, "test", data_dir="hub")
    assert (example.question, example.options, example.label) == HUB_EXPECTED[name]
    hub = TASKS[name].hub
    assert calls == [(hub.path, hub.config, hub.splits["test"])]
    # A Hub example can be written to the LLM-Adapters layout and read back unchanged.
    assert parse_llm_adapters_record(to_llm_adapters_record(example), name) == example


def test_hub_row_with_a_bad_label_names_the_row(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [HUB_ROWS["piqa"], dict(HUB_ROWS["piqa"], label=7)])
    with pytest.raises(ValueError, match=r"ybisk/piqa split 'validation': row 1: .*label 7 is outside"):
        load_task("piqa", data_dir="hub")


# ----------------------------------------------------------------------------- mixing tasks
def test_mixing_caps_each_task_and_is_deterministic(tmp_path):
    write_suite(tmp_path, 5, "test")  # the test file: train would lose a record to dev
    names = ["boolq", "piqa", "hellaswag"]
    mixed = load_tasks(names, "test", data_dir=tmp_path, limit_per_task=3, seed=7)
    assert collections.Counter(e.task for e in mixed) == {"boolq": 3, "piqa": 3, "hellaswag": 3}
    assert {e.question.rsplit("#", 1)[1] for e in mixed} == {"0", "1", "2"}  # caps keep the first N
    assert mixed == load_tasks(names, "test", data_dir=tmp_path, limit_per_task=3, seed=7)
    assert mixed != load_tasks(names, "test", data_dir=tmp_path, limit_per_task=3, seed=8)
    in_order = load_tasks(names, "test", data_dir=tmp_path, limit_per_task=3, shuffle=False)
    assert [e.task for e in in_order] == ["boolq"] * 3 + ["piqa"] * 3 + ["hellaswag"] * 3
    assert sorted(mixed, key=in_order.index) == in_order  # the same examples, reordered


def test_mixing_with_per_task_caps_and_bad_names(tmp_path):
    write_suite(tmp_path, 4)
    mixed = load_tasks(["piqa", "winogrande"], "train", data_dir=tmp_path, limit_per_task={"piqa": 1})
    assert collections.Counter(e.task for e in mixed) == {"piqa": 1, "winogrande": 4}
    assert len(load_tasks("piqa", "train", data_dir=tmp_path)) == 4
    with pytest.raises(ValueError, match="repeat"):
        load_tasks(["piqa", "piqa"], "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="not loaded"):
        load_tasks(["piqa"], "train", data_dir=tmp_path, limit_per_task={"boolq": 1})
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        load_tasks(["piqa", "nope"], "train", data_dir=tmp_path)


# ----------------------------------------------------------------------------- a benchmark of one's own
def own_task_records(layout_of: str, count: int = 3) -> list[dict]:
    """Records in the layout of a registered task, ``count`` distinct ones (written by the writer)."""
    sample = SAMPLES[layout_of]
    return [to_llm_adapters_record(Example(layout_of, f"{sample.question} #{i}", sample.options, (sample.label + i) % len(sample.options)))
            for i in range(count)]


@pytest.mark.parametrize("layout_of", ["boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy"])
def test_a_folder_task_the_registry_does_not_know_loads_in_every_layout(tmp_path, layout_of):
    records = own_task_records(layout_of)
    write_json(tmp_path / "my_bench" / "train.json", records)
    examples = load_task("my_bench", "train", data_dir=tmp_path)
    sample = SAMPLES[layout_of]
    assert [(e.task, e.question, e.options, e.label) for e in examples] == [
        ("my_bench", f"{sample.question} #{i}", sample.options, (sample.label + i) % len(sample.options)) for i in range(3)]
    assert examples[0].record == records[0]


def test_an_own_task_with_its_own_lead_in_and_option_count_mixes_with_registered_ones(tmp_path):
    record = {"instruction": "Read the riddle and pick one: What has keys but no locks?\n\nAnswer1: a piano\n\nAnswer2: a door"
                             "\n\nAnswer3: a map\n\nAnswer4: a car\n\nAnswer5: a tree\n\nAnswer6: a song\n\n"
                             "Answer format: answer1/answer2/answer3/answer4/answer5/answer6",
              "input": "", "output": "the correct answer is answer1", "answer": "answer1"}
    write_json(tmp_path / "riddles" / "test.json", [record])
    write_suite(tmp_path, 2, "test")
    (riddle,) = load_task("riddles", data_dir=tmp_path)
    # the lead-in has no "Please", so it stays part of the question; six options are fine outside the registry
    assert riddle.question == "Read the riddle and pick one: What has keys but no locks?"
    assert riddle.options == ("a piano", "a door", "a map", "a car", "a tree", "a song") and riddle.label == 0
    mixed = load_tasks(["riddles", "piqa"], "test", data_dir=tmp_path)
    assert collections.Counter(e.task for e in mixed) == {"riddles": 1, "piqa": 2}


@pytest.mark.parametrize("bad_record, reason", [
    ({"instruction": "Which one? (a) yes (b) no", "answer": "answer1"}, r"found 0 'AnswerN:' option markers"),
    ({"instruction": "Which one?\n\nAnswer1: yes\n\nAnswer2: no", "answer": "B"}, r"answer 'B' is none of true, false, answerN"),
    ({"instruction": "Which one?\n\nAnswer1: yes\n\nAnswer2: no", "answer": "answer3"}, r"answer 'answer3' is outside the 2 options"),
    ({"instruction": "Is it?", "answer": "true"}, r"answer 'true' is in the true/false layout, but record 0 is in the answerN"),
])
def test_an_own_task_that_cannot_be_parsed_names_the_record_and_how_to_register_it(tmp_path, bad_record, reason):
    path = write_json(tmp_path / "my_bench" / "test.json", own_task_records("social_i_qa", 2) + [bad_record])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: record 2: {reason}.*'my_bench' is not a registered task"
                                         r".*register_task\(TaskSpec\('my_bench'"):
        load_task("my_bench", data_dir=tmp_path)


def test_an_unknown_task_without_a_folder_says_how_to_bring_one(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'my_bench'.*my_bench/train.json, my_bench/test.json.*data_dir"):
        load_task("my_bench", data_dir=tmp_path)
    write_json(tmp_path / "my_bench" / "test.json", own_task_records("piqa"))
    with pytest.raises(ValueError, match="unknown task 'my_bench'"):  # the Hub knows only registered tasks
        load_task("my_bench", data_dir="hub")


@pytest.fixture
def registry():
    """The task registry, restored after the test."""
    from omoe_lab.data import tasks

    saved = dict(tasks.TASKS)
    yield tasks
    tasks.TASKS.clear()
    tasks.TASKS.update(saved)


def test_a_registered_reader_loads_records_in_a_format_of_ones_own(tmp_path, registry):
    spec = registry.register_task(registry.TaskSpec(
        "quiz", layout="answer", num_options=3, parse_record=lambda r: (r["q"], r["choices"], "abc".index(r["gold"]))))
    write_json(tmp_path / "quiz" / "test.json", [{"q": "2 + 2?", "choices": ["3", "4", "5"], "gold": "b"}, {"q": "?", "choices": ["x"], "gold": "a"}])
    with pytest.raises(ValueError, match=r"record 1: .*reader registered for quiz failed.*at least 2 options"):
        load_task("quiz", data_dir=tmp_path)
    write_json(tmp_path / "quiz" / "test.json", [{"q": "2 + 2?", "choices": ["3", "4", "5"], "gold": "b"}])
    (example,) = load_task("quiz", data_dir=tmp_path)
    assert (example.task, example.question, example.options, example.label) == ("quiz", "2 + 2?", ("3", "4", "5"), 1)
    assert registry.register_task(spec) is spec  # the same spec again is fine
    with pytest.raises(ValueError, match="'piqa' is already registered; choose another name"):
        registry.register_task(registry.TaskSpec("piqa", layout="answer", num_options=2))
    with pytest.raises(ValueError, match="'quiz' has no Hugging Face Hub source; load it from a folder"):
        load_task("quiz", data_dir="hub")


# ----------------------------------------------------------------------------- the dev split
@pytest.mark.parametrize("data_dir", [None, "reference"])
def test_dev_is_a_fixed_part_of_the_train_file_disjoint_from_train(data_dir, request):
    folder = request.getfixturevalue("reference_data") if data_dir else None
    for name in (["ARC-Challenge", "boolq"] if data_dir else ["piqa", "winogrande"]):
        whole = read_llm_adapters_file((folder or builtin_data_dir()) / name / "train.json", name)
        train, dev = load_task(name, "train", folder), load_task(name, "dev", folder)
        assert len(dev) == min(DEV_PER_TASK, len(whole) // 5) and len(train) + len(dev) == len(whole)
        key = lambda ex: (ex.question, ex.options)
        assert not set(map(key, train)) & set(map(key, dev))  # never trained on what choices are made on
        assert dev == load_task(name, "dev", folder)  # fixed: the same questions every call
        assert dev == [whole[i] for i in dev_indices(name, len(whole))]


def test_unknown_split_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="choose one of .*dev"):
        load_task("piqa", "validation")
