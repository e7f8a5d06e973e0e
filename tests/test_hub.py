"""Hub loaders without the network: every task's rows in the real schema of its Hub dataset.

Rows are built with ``datasets`` in the columns and types of the Hub's dataset (a ClassLabel
label for PIQA, a bool answer for BoolQ, ARC's ``choices`` as a dict of lists, ...), then read
two ways: by the task's row converter, and end to end by ``load_task(..., data_dir="hub")``
through the real ``datasets.load_dataset``, which finds a local folder named like the Hub dataset
(``allenai/ai2_arc/`` in the working directory) before it asks the Hub, and reads its README's
``configs`` the way the Hub does. ``datasets`` is an optional dependency: these tests skip without it.
"""
from __future__ import annotations

import pytest

from omoe_lab.data.tasks import TASK_NAMES, TASKS, load_task, parse_llm_adapters_record, to_llm_adapters_record

datasets = pytest.importorskip("datasets", reason="datasets is not installed (pip install -c constraints.txt 'omoe_lab[dev]')")
from datasets import ClassLabel, Features, List, Value  # noqa: E402

TEXT = Value("string")
ARC_FEATURES = Features({"id": TEXT, "question": TEXT, "choices": {"text": List(TEXT), "label": List(TEXT)}, "answerKey": TEXT})

# task -> (features of the Hub dataset, rows, what the converter makes of each row)
HUB_SCHEMA = {
    "boolq": (
        Features({"question": TEXT, "answer": Value("bool"), "passage": TEXT}),
        [{"question": "is the sun a star", "answer": True, "passage": "The Sun is the star at the centre of the Solar System."},
         {"question": "do penguins live at the north pole", "answer": False, "passage": "Penguins live in the Southern Hemisphere."}],
        [("is the sun a star?", ("true", "false"), 0), ("do penguins live at the north pole?", ("true", "false"), 1)],
    ),
    "piqa": (
        Features({"goal": TEXT, "sol1": TEXT, "sol2": TEXT, "label": ClassLabel(names=["0", "1"])}),
        [{"goal": "How do I keep bread fresh?", "sol1": "Leave it open on the counter.", "sol2": "Store it in a sealed bag.", "label": 1}],
        [("How do I keep bread fresh?", ("Leave it open on the counter.", "Store it in a sealed bag."), 1)],
    ),
    "social_i_qa": (
        Features({"context": TEXT, "question": TEXT, "answerA": TEXT, "answerB": TEXT, "answerC": TEXT, "label": TEXT}),
        [{"context": "Tracy helped Kai move house.", "question": "How would Kai feel afterwards?",
          "answerA": "grateful", "answerB": "bored", "answerC": "angry", "label": "1"}],
        [("Tracy helped Kai move house. How would Kai feel afterwards?", ("grateful", "bored", "angry"), 0)],
    ),
    "hellaswag": (
        Features({"ind": Value("int32"), "activity_label": TEXT, "ctx_a": TEXT, "ctx_b": TEXT, "ctx": TEXT, "endings": List(TEXT),
                  "source_id": TEXT, "split": TEXT, "split_type": TEXT, "label": TEXT}),
        [{"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
          "ctx": "A man is sitting on a roof. he", "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                                                             "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
          "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain", "label": "3"}],
        [("Roof shingle removal: A man is sitting on a roof. he", ("is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                                                                  "is holding a rubik's cube.", "starts pulling up roofing on a roof."), 3)],
    ),
    "winogrande": (
        Features({"sentence": TEXT, "option1": TEXT, "option2": TEXT, "answer": TEXT}),
        [{"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
          "option1": "Sarah", "option2": "Maria", "answer": "1"}],
        [("Sarah was a much better surgeon than Maria so _ always got the harder cases.", ("Sarah", "Maria"), 0)],
    ),
    "ARC-Easy": (
        ARC_FEATURES,
        [{"id": "Mercury_7220990", "question": "Which factor will most likely cause a person to develop a fever?",
          "choices": {"text": ["a leg muscle relaxing after exercise", "a bacterial population in the bloodstream",
                               "several viral particles on the skin", "carbohydrates being digested in the stomach"],
                      "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
         {"id": "five_options", "question": "Which of these is a planet?",
          "choices": {"text": ["the Moon", "the Sun", "Mars", "Halley's comet", "Sirius"], "label": ["A", "B", "C", "D", "E"]},
          "answerKey": "C"}],
        [("Which factor will most likely cause a person to develop a fever?",
          ("a leg muscle relaxing after exercise", "a bacterial population in the bloodstream",
           "several viral particles on the skin", "carbohydrates being digested in the stomach"), 1),
         ("Which of these is a planet?", ("the Moon", "the Sun", "Mars", "Halley's comet", "Sirius"), 2)],
    ),
    "ARC-Challenge": (
        ARC_FEATURES,
        # ARC-Challenge labels some questions 1..4 instead of A..D, and some have three options
        [{"id": "Mercury_SC_415702", "question": "George wants to warm his hands quickly by rubbing them. Which skin surface will produce the most heat?",
          "choices": {"text": ["dry palms", "wet palms", "palms covered with oil", "palms covered with lotion"], "label": ["A", "B", "C", "D"]},
          "answerKey": "A"},
         {"id": "NYSEDREGENTS_2006_8_10", "question": "Which form of energy does a battery store?",
          "choices": {"text": ["sound", "chemical", "light", "nuclear"], "label": ["1", "2", "3", "4"]}, "answerKey": "2"},
         {"id": "three_options", "question": "Which state of matter has a definite shape?",
          "choices": {"text": ["solid", "liquid", "gas"], "label": ["A", "B", "C"]}, "answerKey": "A"}],
        [("George wants to warm his hands quickly by rubbing them. Which skin surface will produce the most heat?",
          ("dry palms", "wet palms", "palms covered with oil", "palms covered with lotion"), 0),
         ("Which form of energy does a battery store?", ("sound", "chemical", "light", "nuclear"), 1),
         ("Which state of matter has a definite shape?", ("solid", "liquid", "gas"), 0)],
    ),
    "openbookqa": (
        Features({"id": TEXT, "question_stem": TEXT, "choices": {"text": List(TEXT), "label": List(TEXT)}, "answerKey": TEXT}),
        [{"id": "7-980", "question_stem": "The sun is responsible for",
          "choices": {"text": ["puppies learning new tricks", "children growing up and getting old", "flowers wilting in a vase",
                               "plants sprouting, blooming and wilting"], "label": ["A", "B", "C", "D"]}, "answerKey": "D"}],
        [("The sun is responsible for", ("puppies learning new tricks", "children growing up and getting old",
                                         "flowers wilting in a vase", "plants sprouting, blooming and wilting"), 3)],
    ),
}
HUB_TASKS = sorted(name for name in TASK_NAMES if TASKS[name].hub is not None)


def hub_rows(name: str) -> "datasets.Dataset":
    features, rows, _ = HUB_SCHEMA[name]
    return datasets.Dataset.from_list(rows, features=features)


@pytest.fixture
def offline_datasets(tmp_path, monkeypatch):
    """``datasets`` with the Hub switched off, its cache in ``tmp_path``, run from ``tmp_path``."""
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_local_hub_copy(root, name: str) -> None:
    """``<root>/<owner>/<dataset>/``: a README declaring the config, one parquet file per split (the
    Hub's own layout, e.g. ``allenai/ai2_arc/ARC-Easy/test-00000-of-00001.parquet``)."""
    hub = TASKS[name].hub
    folder, config = root / hub.path, hub.config or "default"
    subfolder = hub.config or "data"
    files = []
    for hub_split in sorted(set(hub.splits.values())):
        path = f"{subfolder}/{hub_split}-00000-of-00001.parquet"
        (folder / subfolder).mkdir(parents=True, exist_ok=True)
        hub_rows(name).to_parquet(str(folder / path))
        files.append(f"  - split: {hub_split}\n    path: {path}\n")
    existing = (folder / "README.md").read_text().split("---\n")[1] if (folder / "README.md").exists() else "configs:\n"
    (folder / "README.md").write_text(f"---\n{existing}- config_name: {config}\n  data_files:\n{''.join(files)}---\n")


def test_every_hub_task_has_a_real_schema_fixture():
    assert sorted(HUB_SCHEMA) == HUB_TASKS
    for name in HUB_TASKS:
        features, rows, expected = HUB_SCHEMA[name]
        assert len(rows) == len(expected) and all(set(row) == set(features) for row in rows), name


@pytest.mark.parametrize("name", HUB_TASKS)
def test_hub_row_converter_reads_the_real_schema(name):
    convert = TASKS[name].hub.convert
    for row, expected in zip(hub_rows(name), HUB_SCHEMA[name][2]):
        question, options, label = convert(row)
        assert (question, tuple(options), label) == expected


@pytest.mark.parametrize("name", HUB_TASKS)
def test_load_hub_task_end_to_end_through_datasets(offline_datasets, name):
    write_local_hub_copy(offline_datasets, name)
    for split in ("train", "test"):
        examples = load_task(name, split, data_dir="hub")
        assert [(e.question, e.options, e.label) for e in examples] == HUB_SCHEMA[name][2]
        assert all(e.task == name for e in examples)
        # the row is kept for provenance, and the example survives the LLM-Adapters layout
        assert examples[0].record == dict(hub_rows(name)[0])
        for example in examples:
            assert parse_llm_adapters_record(to_llm_adapters_record(example), name) == example
    assert len(load_task(name, "test", data_dir="hub", limit=1)) == 1


def test_two_configs_of_one_hub_dataset_stay_apart(offline_datasets):
    write_local_hub_copy(offline_datasets, "ARC-Easy")
    write_local_hub_copy(offline_datasets, "ARC-Challenge")
    assert [e.label for e in load_task("ARC-Challenge", data_dir="hub")] == [0, 1, 0]
    assert [e.label for e in load_task("ARC-Easy", data_dir="hub")] == [1, 2]


def test_offline_error_is_one_line_that_names_the_fix(offline_datasets):
    with pytest.raises(ConnectionError) as caught:
        load_task("boolq", data_dir="hub")  # no local copy, and the Hub is off: datasets' real offline error
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("cannot load google/boolq split 'validation': the Hugging Face Hub is unreachable")
    assert "--data-dir <folder> (Python: data_dir=<folder>) holding boolq/test.json in LLM-Adapters layout" in message
    assert message.endswith("or go online")


def test_a_multi_line_hub_error_is_reported_on_one_line(monkeypatch):
    def fails(*args, **kwargs):
        raise RuntimeError("Something went wrong\n  while reading\n\nthe parquet file")

    monkeypatch.setattr(datasets, "load_dataset", fails)
    with pytest.raises(ConnectionError, match=r"^could not load Rowan/hellaswag split 'validation' from the Hugging Face Hub "
                       r"\(RuntimeError: Something went wrong while reading the parquet file\); pass --data-dir") as caught:
        load_task("hellaswag", data_dir="hub")
    assert "\n" not in str(caught.value)


def test_hub_dataset_that_is_a_loading_script_says_datasets_no_longer_runs_it(offline_datasets):
    # ybisk/piqa's main branch is such a script; datasets >= 4 refuses it, here from a local copy
    folder = offline_datasets / "ybisk" / "piqa"
    folder.mkdir(parents=True)
    (folder / "piqa.py").write_text("# a dataset loading script\n")
    with pytest.raises(ValueError, match=r"^cannot load ybisk/piqa split 'validation': on the Hub it is a loading script, "
                       r"which datasets \S+ no longer runs .*; pass --data-dir .*, or pip install 'datasets<4'$"):
        load_task("piqa", data_dir="hub")
