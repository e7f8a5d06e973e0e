"""Checkpoints survive a SIGKILL at any point of ``_write_checkpoint``.

Each case runs a short training in a child process that kills itself (SIGKILL: no cleanup, no
``finally``) at one point of writing a checkpoint. The parent then checks that the run folder
still resumes from the last complete checkpoint and that the resumed run ends with exactly the
weights of an uninterrupted run of the same configuration.
"""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from omoe_lab import AdapterConfig, attach_adapters
from omoe_lab.inject import adapter_state_dict, load_adapters
from omoe_lab.models import byte_tokenizer
from omoe_lab.train import TrainConfig, _read_checkpoint, train
from tests.conftest import make_tiny_llama
from tests.test_train import VOCAB, toy_examples

STEPS = 4
REPO = Path(__file__).resolve().parents[1]


def fresh_model(with_adapters: bool = True):
    model = make_tiny_llama(seed=0, vocab=VOCAB, layers=2, init_range=0.2)
    # top-k routing and dropout: resuming must restore the RNG streams, not only the weights
    config = AdapterConfig(method="omoe", num_experts=3, rank=4, top_k=2, dropout=0.1, target_modules=["q_proj", "v_proj"])
    return attach_adapters(model, config) if with_adapters else model


def train_config() -> TrainConfig:
    return TrainConfig(steps=STEPS, batch_size=4, lr=5e-3, warmup_steps=1, routing_every=2, checkpoint_every=1)


def run_training(out_dir, resume: bool = False):
    model = fresh_model()
    train(model, byte_tokenizer(), toy_examples(16), train_config(), out_dir=out_dir,
          resume_from=out_dir if resume else None, progress=False)
    return model


# ----------------------------------------------------------------------------- the child process
def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def child(out_dir: str, mode: str) -> None:
    """Train with a kill armed at one point of ``_write_checkpoint`` (runs in the child process)."""
    import omoe_lab.train as trainer

    if mode == "while-writing-trainer-state-3":
        real_save, calls = torch.save, []

        def save_then_die(obj, target, *args, **kwargs):
            calls.append(target)
            if len(calls) < 3:
                return real_save(obj, target, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer)
            Path(target).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # half a file, then death
            _die()

        torch.save = save_then_die
    elif mode in ("after-rename-before-latest-3", "after-first-rename-before-any-latest"):
        step = 3 if mode.endswith("-3") else 1
        real_write = trainer.atomic_write_text

        def write_or_die(path, text):
            if Path(path).name == "latest" and text == f"checkpoint-{step}\n":
                _die()
            return real_write(path, text)

        trainer.atomic_write_text = write_or_die
    elif mode in ("while-deleting-old-checkpoint-2", "while-replacing-last-checkpoint"):
        doomed = "checkpoint-2" if mode.endswith("-2") else f"checkpoint-{STEPS}"
        real_rmtree = shutil.rmtree

        def rmtree_partly_then_die(path, *args, **kwargs):
            path = Path(path)
            if path.name == doomed and path.is_dir():
                (path / "adapter_model.safetensors").unlink()  # part of the folder is gone
                _die()
            return real_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree_partly_then_die
    else:
        raise ValueError(f"unknown kill mode {mode!r}")
    run_training(out_dir)
    # A finished run's last checkpoint is rewritten when the run is resumed: a second chance to
    # reach a replacement, should the first call not rewrite its last step.
    run_training(out_dir, resume=True)


def run_child(out_dir: Path, mode: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    code = f"from tests.test_crash_safety import child; child({str(out_dir)!r}, {mode!r})"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


# ----------------------------------------------------------------------------- the parent's checks
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Weights and run fingerprint of the same configuration trained without a crash."""
    out = tmp_path_factory.mktemp("uninterrupted")
    model = run_training(out)
    fingerprint = torch.load(out / f"checkpoint-{STEPS}" / "trainer_state.pt", weights_only=False)["fingerprint"]
    return {k: v.detach().clone() for k, v in adapter_state_dict(model).items()}, fingerprint


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("trainer_state.pt", "adapter_config.json", "adapter_model.safetensors"))


# mode -> step of the checkpoint the run must resume from after the kill
KILL_POINTS = {
    "while-writing-trainer-state-3": 2,  # checkpoint 3 half written: 2 is the last good one
    "after-rename-before-latest-3": 2,  # checkpoint-3 is complete but `latest` still names checkpoint-2
    "after-first-rename-before-any-latest": 1,  # no `latest` file yet: the newest complete checkpoint
    "while-deleting-old-checkpoint-2": 3,  # `latest` names checkpoint-3; checkpoint-2 half deleted
    "while-replacing-last-checkpoint": STEPS,  # the step `latest` named is being rewritten
}


@pytest.mark.parametrize("mode", list(KILL_POINTS))
def test_a_kill_while_checkpointing_leaves_a_run_that_resumes_to_the_same_weights(mode, tmp_path, uninterrupted):
    expected_weights, fingerprint = uninterrupted
    done = run_child(tmp_path, mode)
    assert done.returncode == -signal.SIGKILL, f"the kill point was never reached (rc {done.returncode}):\n{done.stderr[-3000:]}"

    latest = tmp_path / "latest"
    if mode != "after-first-rename-before-any-latest":
        assert is_complete(tmp_path / latest.read_text().strip()), sorted(p.name for p in tmp_path.iterdir())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the missing-`latest` fallback warns; tested below
        state = _read_checkpoint(tmp_path, fingerprint)
    assert state["step"] == KILL_POINTS[mode] and len(state["history"]) == KILL_POINTS[mode]
    load_adapters(fresh_model(with_adapters=False), state["adapters"])  # the last good checkpoint loads

    resumed = run_training(tmp_path, resume=True)
    for name, tensor in adapter_state_dict(resumed).items():
        assert torch.allclose(tensor, expected_weights[name], rtol=0, atol=1e-6), name
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"checkpoint-{STEPS}", "latest"]  # leftovers cleaned


def test_latest_naming_a_missing_folder_falls_back_to_the_newest_complete_checkpoint(tmp_path, uninterrupted):
    _, fingerprint = uninterrupted
    run_training(tmp_path)
    (tmp_path / "checkpoint-2").mkdir()  # an older, incomplete folder is never picked
    shutil.copytree(tmp_path / f"checkpoint-{STEPS}", tmp_path / ".checkpoint-9.123.tmp")  # nor a staging folder
    (tmp_path / "latest").write_text("checkpoint-7\n")
    with pytest.warns(UserWarning, match=rf"names 'checkpoint-7', which is missing.*resuming from checkpoint-{STEPS}"):
        state = _read_checkpoint(tmp_path, fingerprint)
    assert state["step"] == STEPS and Path(state["adapters"]).name == f"checkpoint-{STEPS}"


def test_a_run_folder_without_a_complete_checkpoint_says_what_to_pass(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint at .*leave resume_from out to start afresh"):
        _read_checkpoint(tmp_path, "0" * 16)
