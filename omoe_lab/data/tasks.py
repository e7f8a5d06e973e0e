"""The eight commonsense tasks: registry, LLM-Adapters JSON reader/writer, and loaders.

Every loader returns ``list[Example]``. Three sources share one call, ``load_task``:
the built-in offline suite (``data_dir=None``), any folder in LLM-Adapters layout
(``<folder>/<name>/<split>.json``), and the original benchmarks on the Hugging Face Hub
(``data_dir="hub"``).

An LLM-Adapters record is ``{"instruction", "input": "", "output": "the correct answer is X",
"answer": X}``; the instruction holds a lead-in, the question, the options behind capitalised
markers (``Answer1:``, ``Solution1:``, ``Option1:``, ``Ending1:``) and a closing
``Answer format: answer1/answer2/...`` line. BoolQ records carry only the question.

A folder task the registry does not know (``<data_dir>/<name>/<split>.json``) loads too: its
layout is read off each record's answer word (``answer2``, ``solution1``, ``true``...), so a user's
own benchmark in that format needs no code. A benchmark in another format registers a reader:
``register_task(TaskSpec(name, layout, num_options, parse_record=...))``.
"""
from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .example import Example
from .prompts import BOOLEAN_OPTIONS

BOOLEAN = "boolean"
MARKER_WORDS = {"answer": "Answer", "solution": "Solution", "option": "Option", "ending": "Ending"}
LAYOUTS = (BOOLEAN, *MARKER_WORDS)
REQUIRED_FIELDS = ("instruction", "answer")
EXPECTED_LAYOUT = (
    "expected LLM-Adapters layout: <data_dir>/<task>/<split>.json, a JSON list of records "
    '{"instruction": ..., "input": "", "output": "the correct answer is X", "answer": X}'
)
_FORMAT_LINE = re.compile(r"\s*Answer format:\s*(?P<labels>[^\n]*?)\s*$")
# A lead-in is the sentence before the question, e.g. "Please choose the correct answer to the question: ".
_GENERIC_LEAD_IN = re.compile(r"^Please [^:\n]*:\s*")


@dataclass(frozen=True)
class HubSource:
    """Where a task lives on the Hub and how one of its rows becomes (question, options, label)."""

    path: str
    config: str | None
    splits: Mapping[str, str]  # our split name -> the Hub's split name
    convert: Callable[[Mapping[str, Any]], tuple[str, tuple[str, ...], int]]


@dataclass(frozen=True)
class TaskSpec:
    """One task: its label layout, option count(s), instruction template and Hub source."""

    name: str
    layout: str  # "boolean" or the marker word: "answer", "solution", "option", "ending"
    num_options: int  # the usual count, which sets chance accuracy
    lead_in: str = ""
    option_separator: str = "\n\n"  # between options in the instruction: "\n\n" or, in ARC/OBQA files, " "
    hub: HubSource | None = None  # None: the task loads from a data folder only
    option_counts: tuple[int, ...] = field(default=())  # every count allowed; ARC has 3..5
    # A reader for records in a format of the user's own: record -> (question, options, label).
    # None: the LLM-Adapters instruction/answer layout above.
    parse_record: Callable[[Mapping[str, Any]], tuple[str, Sequence[str], int]] | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"{self.name}: unknown layout {self.layout!r}, expected one of {LAYOUTS}")
        if not self.option_counts:
            object.__setattr__(self, "option_counts", (self.num_options,))

    @property
    def chance(self) -> float:
        """Accuracy of a uniform random guess over the usual number of options."""
        return 1.0 / self.num_options

    def label_words(self, count: int) -> list[str]:
        """The answer words of the layout: ``["true", "false"]`` or ``["answer1", ...]``."""
        if self.layout == BOOLEAN:
            return list(BOOLEAN_OPTIONS)
        return [f"{self.layout}{i}" for i in range(1, count + 1)]


# Hub rows -> (question, options, label). Questions follow the LLM-Adapters templates.
def _from_choices(question_field: str):
    def convert(row):
        choices = row["choices"]
        return row[question_field].strip(), tuple(choices["text"]), list(choices["label"]).index(row["answerKey"])

    return convert


def _from_boolq(row):
    question = row["question"].strip()
    # LLM-Adapters' BoolQ questions end with "?"; the Hub's do not.
    return (question if question.endswith("?") else question + "?"), BOOLEAN_OPTIONS, 0 if row["answer"] else 1


def _from_piqa(row):
    return row["goal"].strip(), (row["sol1"], row["sol2"]), int(row["label"])


def _from_siqa(row):
    # The original rows label answers "1".."3"; parquet re-exports store a 0-based class id.
    label = int(row["label"]) - 1 if isinstance(row["label"], str) else int(row["label"])
    return f"{row['context']} {row['question']}".strip(), (row["answerA"], row["answerB"], row["answerC"]), label


def _from_hellaswag(row):
    return f"{row['activity_label']}: {row['ctx']}".strip(), tuple(row["endings"]), int(row["label"])


def _from_winogrande(row):
    return row["sentence"].strip(), (row["option1"], row["option2"]), int(row["answer"]) - 1


_TEST_IS_VALIDATION = {"train": "train", "test": "validation"}  # the benchmark hides its test labels
_TEST_IS_TEST = {"train": "train", "test": "test"}
_ANSWER_LEAD_IN = "Please choose the correct answer to the question: "

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("boolq", BOOLEAN, 2, "Please answer the following question with true or false, question: ", "\n\n",
                 HubSource("google/boolq", None, _TEST_IS_VALIDATION, _from_boolq)),
        TaskSpec("piqa", "solution", 2, "Please choose the correct solution to the question: ", "\n\n",
                 HubSource("ybisk/piqa", None, _TEST_IS_VALIDATION, _from_piqa)),
        TaskSpec("social_i_qa", "answer", 3, _ANSWER_LEAD_IN, "\n\n",
                 HubSource("allenai/social_i_qa", None, _TEST_IS_VALIDATION, _from_siqa)),
        TaskSpec("hellaswag", "ending", 4, "Please choose the correct ending to complete the given sentence: ", "\n\n",
                 HubSource("Rowan/hellaswag", None, _TEST_IS_VALIDATION, _from_hellaswag)),
        TaskSpec("winogrande", "option", 2,
                 "Please choose the correct answer to fill in the blank to complete the given sentence: ", "\n\n",
                 HubSource("allenai/winogrande", "winogrande_xl", _TEST_IS_VALIDATION, _from_winogrande)),
        TaskSpec("ARC-Easy", "answer", 4, _ANSWER_LEAD_IN, " ",
                 HubSource("allenai/ai2_arc", "ARC-Easy", _TEST_IS_TEST, _from_choices("question")), (3, 4, 5)),
        TaskSpec("ARC-Challenge", "answer", 4, _ANSWER_LEAD_IN, " ",
                 HubSource("allenai/ai2_arc", "ARC-Challenge", _TEST_IS_TEST, _from_choices("question")), (3, 4, 5)),
        TaskSpec("openbookqa", "answer", 4, _ANSWER_LEAD_IN, " ",
                 HubSource("allenai/openbookqa", "main", _TEST_IS_TEST, _from_choices("question_stem"))),
    )
}
TASK_NAMES = tuple(TASKS)
_LEAD_INS = sorted({spec.lead_in for spec in TASKS.values()}, key=len, reverse=True)


REGISTER_HINT = (
    "or register the task with a reader for its records: omoe_lab.data.tasks.register_task(TaskSpec({name!r}, "
    "layout='answer', num_options=4, parse_record=lambda record: (question, options, label)))"
)


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(TASKS)}. A benchmark of your own loads from a folder in "
            f"LLM-Adapters layout ({name}/train.json, {name}/test.json; pass the folder as data_dir, CLI --data-dir), "
            + REGISTER_HINT.format(name=name)
        ) from None


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task to the registry, so ``load_task(spec.name)`` reads it with ``spec``'s layout or reader.

    Needed only for records that are not in the LLM-Adapters layout (a folder task in that layout
    loads without registering); a name already taken by another spec is refused.
    """
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"register_task takes a TaskSpec, got {type(spec).__name__}")
    if spec.name in TASKS and TASKS[spec.name] != spec:
        raise ValueError(f"a task named {spec.name!r} is already registered; choose another name")
    TASKS[spec.name] = spec
    return spec


def check_task(name: str, data_dir: str | os.PathLike | None = None) -> None:
    """Fail early, before any model is loaded, for a task that is neither registered nor a folder
    of ``data_dir`` (``None``: the built-in suite)."""
    if name in TASKS:
        return
    if isinstance(data_dir, str) and data_dir == "hub":
        get_task(name)  # the Hub loader knows only registered tasks
    folder = Path(data_dir) if data_dir is not None else builtin_data_dir()
    if not (folder / name).is_dir():
        get_task(name)


# ----------------------------------------------------------------------------- reading records
def parse_instruction(instruction: str, layout: str, lead_in: str = "") -> tuple[str, tuple[str, ...]]:
    """Split an LLM-Adapters instruction into (question without lead-in, options).

    Markers ``Layout1:``, ``Layout2:``, ... are matched capitalised and in order, so option text
    may mention "answer" freely; the ``Answer format`` line, when present, fixes their count.
    ``lead_in`` is stripped first when the instruction starts with it, else any known lead-in.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}, expected one of {LAYOUTS}")
    body, format_labels = _split_format_line(instruction)
    body = body[len(lead_in):] if lead_in and body.startswith(lead_in) else _strip_lead_in(body)
    if layout == BOOLEAN:
        if format_labels is not None and [w.lower() for w in format_labels] != list(BOOLEAN_OPTIONS):
            raise ValueError(f"answer format {'/'.join(format_labels)!r} is not true/false")
        return _non_empty(body, "question"), BOOLEAN_OPTIONS

    marker = MARKER_WORDS[layout]
    if format_labels is not None:
        expected = [f"{layout}{i}" for i in range(1, len(format_labels) + 1)]
        if [w.lower() for w in format_labels] != expected:
            raise ValueError(f"answer format {'/'.join(format_labels)!r} does not match the {layout}N layout")
    matches, position = [], 0
    while format_labels is None or len(matches) < len(format_labels):
        found = re.compile(rf"(?:^|\s){marker}{len(matches) + 1}:").search(body, position)
        if found is None:
            break
        matches.append(found)
        position = found.end()
    if format_labels is not None and len(matches) != len(format_labels):
        raise ValueError(f"found {len(matches)} of the {len(format_labels)} '{marker}N:' markers in the answer format")
    if len(matches) < 2:
        raise ValueError(f"found {len(matches)} '{marker}N:' option markers, need at least 2")
    ends = [m.start() for m in matches[1:]] + [len(body)]
    options = tuple(_non_empty(body[m.end():end], f"option {i}") for i, (m, end) in enumerate(zip(matches, ends), 1))
    return _non_empty(body[: matches[0].start()], "question"), options


def parse_answer(answer: str, layout: str, num_options: int) -> int:
    """``"answer3"`` -> 2, ``"true"`` -> 0, ``"false"`` -> 1; raises when outside the options."""
    word = answer.strip().lower()
    if layout == BOOLEAN:
        if word not in BOOLEAN_OPTIONS:
            raise ValueError(f"answer {answer!r} is not true/false")
        return BOOLEAN_OPTIONS.index(word)
    match = re.fullmatch(rf"{layout}(\d+)", word)
    if match is None:
        raise ValueError(f"answer {answer!r} is not of the form {layout}N")
    label = int(match.group(1)) - 1
    if not 0 <= label < num_options:
        raise ValueError(f"answer {answer!r} is outside the {num_options} options")
    return label


def parse_llm_adapters_record(record: Mapping[str, Any], task: str) -> Example:
    """One record of the registered ``task`` as an Example (the record is kept for provenance)."""
    spec = get_task(task)
    if spec.parse_record is not None:
        if not isinstance(record, Mapping):
            raise ValueError(f"record is a {type(record).__name__}, not a JSON object")
        return _example_from_reader(spec, record)
    return _parse_layout_record(record, spec)


def _parse_layout_record(record: Mapping[str, Any], spec: TaskSpec) -> Example:
    _check_fields(record)
    question, options = parse_instruction(record["instruction"], spec.layout, spec.lead_in)
    if len(options) not in spec.option_counts:
        raise ValueError(f"{len(options)} options, but {spec.name} has {' or '.join(map(str, spec.option_counts))}")
    label = parse_answer(record["answer"], spec.layout, len(options))
    return Example(spec.name, question, options, label, dict(record))


def _example_from_reader(spec: TaskSpec, record: Mapping[str, Any]) -> Example:
    try:
        question, options, label = spec.parse_record(record)
        return Example(spec.name, str(question).strip(), tuple(str(o).strip() for o in options), int(label), dict(record))
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise ValueError(f"the reader registered for {spec.name} failed: {type(err).__name__}: {err}") from err


def infer_layout(record: Mapping[str, Any]) -> str:
    """The layout of a record of a task the registry does not know, from its answer word:
    ``"true"``/``"false"`` is boolean, ``"solution2"`` the solution layout, and so on."""
    _check_fields(record)
    word = record["answer"].strip().lower()
    if word in BOOLEAN_OPTIONS:
        return BOOLEAN
    match = re.fullmatch(rf"({'|'.join(MARKER_WORDS)})\d+", word)
    if match is None:
        raise ValueError(
            f"answer {record['answer']!r} is none of true, false, answerN, solutionN, optionN, endingN, so the "
            "layout of the record cannot be told"
        )
    return match.group(1)


def parse_unregistered_record(record: Mapping[str, Any], task: str, layout: str | None = None) -> Example:
    """One LLM-Adapters record of a task outside the registry, in ``layout`` (default: inferred)."""
    _check_fields(record)
    layout = layout or infer_layout(record)
    question, options = parse_instruction(record["instruction"], layout)
    label = parse_answer(record["answer"], layout, len(options))
    return Example(task, question, options, label, dict(record))


def _check_fields(record: Any) -> None:
    if not isinstance(record, Mapping):
        raise ValueError(f"record is a {type(record).__name__}, not a JSON object")
    for name in REQUIRED_FIELDS:
        if name not in record:
            raise ValueError(f"missing field {name!r} (has {sorted(record)})")
        if not isinstance(record[name], str):
            raise ValueError(f"field {name!r} is a {type(record[name]).__name__}, not a string")


def _split_format_line(instruction: str) -> tuple[str, list[str] | None]:
    head, sep, tail = instruction.rpartition("Answer format:")
    if not sep or "\n" in tail.strip():
        return instruction, None
    labels = _FORMAT_LINE.match(sep + tail).group("labels")
    return head, [w.strip() for w in labels.split("/")]


def _strip_lead_in(body: str) -> str:
    for lead_in in _LEAD_INS:
        if body.startswith(lead_in):
            return body[len(lead_in):]
    return _GENERIC_LEAD_IN.sub("", body, count=1)


def _non_empty(text: str, what: str) -> str:
    text = text.strip()
    if not text:
        raise ValueError(f"empty {what}")
    return text


# ----------------------------------------------------------------------------- writing records
def to_llm_adapters_record(example: Example, spec: TaskSpec | None = None) -> dict[str, str]:
    """The example as an LLM-Adapters record of its task; reading it back gives the same Example."""
    spec = spec or get_task(example.task)
    words = spec.label_words(len(example.options))
    if spec.layout == BOOLEAN:
        if example.options != BOOLEAN_OPTIONS:
            raise ValueError(f"{example.task}: options must be true/false, got {list(example.options)}")
        options_text = ""
    else:
        marker = MARKER_WORDS[spec.layout]
        options_text = spec.option_separator.join(f"{marker}{i}: {o}" for i, o in enumerate(example.options, 1))
        options_text = "\n\n" + options_text
    answer = words[example.label]
    record = {
        "instruction": f"{spec.lead_in}{example.question}{options_text}\n\nAnswer format: {'/'.join(words)}",
        "input": "",
        "output": f"the correct answer is {answer}",
        "answer": answer,
    }
    # Refuse to write what cannot be read back (stray whitespace, an option holding a marker, ...).
    parsed = _parse_layout_record(record, spec)
    if (parsed.question, parsed.options, parsed.label) != (example.question, example.options, example.label):
        raise ValueError(f"{example.task}: example does not survive a write/read round trip: {example}")
    return record


# ----------------------------------------------------------------------------- loading
def builtin_data_dir() -> Path:
    """The built-in suite: ``$OMOE_LAB_DATA`` if set, else the repository's ``data/`` folder."""
    return Path(os.environ.get("OMOE_LAB_DATA") or Path(__file__).parents[2] / "data")


def read_llm_adapters_file(path: str | os.PathLike, task: str) -> list[Example]:
    """Every record of one ``<task>/<split>.json`` file; errors name the file and record index.

    A ``task`` outside the registry is read in the layout its records' answer words name, the
    same for every record of the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {EXPECTED_LAYOUT}")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); {EXPECTED_LAYOUT}") from err
    if not isinstance(records, list):
        raise ValueError(f"{path}: top level is a {type(records).__name__}, not a list; {EXPECTED_LAYOUT}")
    if not records:
        raise ValueError(f"{path}: no records; put at least one record in it, or leave {task!r} out of the tasks")
    registered = task in TASKS
    examples, first_layout = [], None
    for index, record in enumerate(records):
        try:
            if registered:
                examples.append(parse_llm_adapters_record(record, task))
                continue
            layout = infer_layout(record)
            if first_layout is not None and layout != first_layout[1]:
                raise ValueError(
                    f"answer {record['answer']!r} is in the {_layout_name(layout)} layout, but record "
                    f"{first_layout[0]} is in the {_layout_name(first_layout[1])} layout; one task has one layout"
                )
            first_layout = first_layout or (index, layout)
            examples.append(parse_unregistered_record(record, task, layout))
        except ValueError as err:
            if registered:
                raise ValueError(f"{path}: record {index}: {err}; fix or remove that record") from err
            raise ValueError(
                f"{path}: record {index}: {err}. {task!r} is not a registered task, so its records must be in "
                "LLM-Adapters layout: options behind Answer1:/Solution1:/Option1:/Ending1: markers (or a true/false "
                "question) and an answer word such as answer2, solution1 or true. Fix that record, "
                + REGISTER_HINT.format(name=task)
            ) from err
    return examples


def _layout_name(layout: str) -> str:
    return "true/false" if layout == BOOLEAN else f"{layout}N"


def load_hub_task(name: str, split: str = "test") -> list[Example]:
    """The original benchmark from the Hugging Face Hub (needs ``datasets`` and network access)."""
    spec = get_task(name)
    if spec.hub is None:
        raise ValueError(f"task {name!r} has no Hugging Face Hub source; load it from a folder: data_dir=<folder with {name}/{split}.json>")
    hub, hub_split = spec.hub, spec.hub.splits.get(split, split)
    where = f"{hub.path}" + (f" ({hub.config})" if hub.config else "") + f" split {hub_split!r}"
    try:
        import datasets  # optional: only Hub loading needs it
    except ImportError as err:
        raise ImportError(f"loading {where} needs the `datasets` package: pip install 'omoe_lab[hub]'") from err
    try:
        rows = datasets.load_dataset(hub.path, hub.config, split=hub_split)
    except Exception as err:
        raise _hub_load_error(err, where, name, split, datasets.__version__) from err
    examples = []
    for index, row in enumerate(rows):
        try:
            question, options, label = hub.convert(row)
            examples.append(Example(name, question, tuple(o.strip() for o in options), label, dict(row)))
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: row {index}: {type(err).__name__}: {err}") from err
    if not examples:
        raise ValueError(f"{where}: no rows")
    return examples


# What datasets / huggingface_hub raise (or wrap in ConnectionError) when the Hub cannot be reached.
_OFFLINE_ERRORS = {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout", "ReadTimeout",
                   "TimeoutException", "NameResolutionError", "MaxRetryError"}


def _hub_load_error(err: Exception, where: str, name: str, split: str, datasets_version: str) -> Exception:
    """One line that says why ``datasets.load_dataset`` failed and what to do instead.

    datasets' messages can run to several lines (and its offline error names only a class), so
    they are flattened; the fix names both spellings, the CLI's ``--data-dir`` and Python's ``data_dir``.
    """
    said = " ".join(str(err).split()) or type(err).__name__
    local = (f"pass --data-dir <folder> (Python: data_dir=<folder>) holding {name}/{split}.json in LLM-Adapters layout "
             "(e.g. ../shared/data/commonsense), or leave it out for the built-in suite")
    chain, cause = [], err
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in _OFFLINE_ERRORS for e in chain):
        return ConnectionError(f"cannot load {where}: the Hugging Face Hub is unreachable ({type(err).__name__}: {said}); "
                               f"offline, {local}; or go online")
    if "scripts are no longer supported" in said:  # datasets >= 4 refuses Hub datasets that are a loading script
        return ValueError(f"cannot load {where}: on the Hub it is a loading script, which datasets {datasets_version} no "
                          f"longer runs ({said}); {local}, or pip install 'datasets<4'")
    return ConnectionError(f"could not load {where} from the Hugging Face Hub ({type(err).__name__}: {said}); {local}")


# The dev split: a fixed random subset of each task's train split, never trained on, on which every
# choice (prompt style, normalization, the best zero-shot way, learning rate, steps) is made, so
# that the test questions are only ever scored. "train" is the train file without these questions.
SPLITS = ("train", "dev", "test")
DEV_PER_TASK = 200
DEV_FRACTION_CAP = 0.2  # a small train file gives at most a fifth of itself to dev
DEV_SEED = "dev"


def dev_indices(task: str, num_train: int) -> list[int]:
    """Which records of ``task``'s train file form its dev split: ``min(DEV_PER_TASK, 20 %)`` of
    them, drawn with ``random.Random(f"{DEV_SEED}/{task}")`` (the same on every machine), sorted."""
    size = min(DEV_PER_TASK, int(num_train * DEV_FRACTION_CAP))
    return sorted(random.Random(f"{DEV_SEED}/{task}").sample(range(num_train), size))


def carve_dev(examples: list[Example], task: str, split: str) -> list[Example]:
    """The ``split`` part (``"train"`` or ``"dev"``) of a task's whole train file, in file order."""
    chosen = set(dev_indices(task, len(examples)))
    return [ex for i, ex in enumerate(examples) if (i in chosen) == (split == "dev")]


def load_task(name: str, split: str = "test", data_dir: str | os.PathLike | None = None,
              limit: int | None = None) -> list[Example]:
    """Examples of one task: built-in suite (``None``), a folder, or ``"hub"``; ``limit`` keeps the first N.

    ``split``: ``"test"``, or ``"train"`` / ``"dev"``, the two disjoint parts of the train file
    (:func:`dev_indices`). ``name`` is a registered task, or any folder of ``data_dir`` in
    LLM-Adapters layout.
    """
    check_task(name, data_dir)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {SPLITS} (dev is carved from the train file)")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of examples or None, got {limit}")
    file_split = "test" if split == "test" else "train"
    if isinstance(data_dir, str) and data_dir == "hub":
        examples = load_hub_task(name, file_split)
    else:
        folder = Path(data_dir) if data_dir is not None else builtin_data_dir()
        if not folder.is_dir():
            hint = " (the built-in suite is generated by omoe_lab.data.synthetic)" if data_dir is None else ""
            raise FileNotFoundError(f"data folder {folder} does not exist{hint}; {EXPECTED_LAYOUT}")
        examples = read_llm_adapters_file(folder / name / f"{file_split}.json", name)
    if split != "test":
        examples = carve_dev(examples, name, split)
    return examples[:limit]


def load_tasks(names: str | Iterable[str], split: str, data_dir: str | os.PathLike | None = None,
               limit_per_task: int | Mapping[str, int] | None = None, seed: int = 0,
               shuffle: bool = True) -> list[Example]:
    """Several tasks mixed into one list: each capped at its first ``limit_per_task`` examples
    (one number, or a number per task name), then shuffled with ``random.Random(seed)``."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError(f"no task names given; name at least one, e.g. of the known tasks: {', '.join(TASKS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"task names repeat: {names}")
    caps = limit_per_task if isinstance(limit_per_task, Mapping) else dict.fromkeys(names, limit_per_task)
    unused = set(caps) - set(names)
    if unused:
        raise ValueError(f"limit_per_task names tasks that are not loaded: {sorted(unused)}")
    examples = [ex for name in names for ex in load_task(name, split, data_dir, caps.get(name))]
    if shuffle:
        random.Random(seed).shuffle(examples)
    return examples
