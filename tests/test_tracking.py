"""Trackers: what TensorBoard's event file holds after a run, and that logging changes nothing.

The tests that read an event file skip without ``tensorboard`` (``pip install -c constraints.txt
'omoe_lab[dev]'``); the refusals run without it.
"""
from __future__ import annotations

import json

import pytest
import torch

from omoe_lab.cli import main
from omoe_lab.data.collate import encode_prompt, pad_rows
from omoe_lab.models import byte_tokenizer
from omoe_lab.train import LOGS_FOLDER, TRACKER_PROJECT, TrainConfig, train
from tests.test_train import fresh_model, toy_examples, weights

NEEDS_TENSORBOARD = "tensorboard is not installed (pip install -c constraints.txt 'omoe_lab[dev]')"


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the TensorBoard event files in ``folder``."""
    pytest.importorskip("tensorboard", reason=NEEDS_TENSORBOARD)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def probe_batches(tokenizer, examples):
    ids, mask = pad_rows([encode_prompt(tokenizer, ex) for ex in examples[:6]], 0)
    return [{"input_ids": ids, "attention_mask": mask}]


def test_tensorboard_logs_losses_rates_routing_and_diversity_without_changing_the_run(tmp_path):
    pytest.importorskip("tensorboard", reason=NEEDS_TENSORBOARD)
    tokenizer, data = byte_tokenizer(), toy_examples()
    probe = probe_batches(tokenizer, data)
    settings = dict(steps=4, batch_size=4, lr=5e-3, magnitude_lr=5e-2, warmup_steps=1, routing_every=2, diversity_every=2)
    plain_model, logged_model = fresh_model(dropout=0.1), fresh_model(dropout=0.1)
    plain = train(plain_model, tokenizer, data, TrainConfig(**settings), out_dir=tmp_path / "plain", diversity_probe=probe, progress=False)
    logged = train(logged_model, tokenizer, data, TrainConfig(**settings, log_with="tensorboard"), out_dir=tmp_path / "logged",
                   diversity_probe=probe, progress=False)
    for name, tensor in weights(plain_model).items():
        assert torch.equal(weights(logged_model)[name], tensor), name  # the tracker reads, never draws or steps
    assert logged.history == [dict(h, tokens_per_s=l["tokens_per_s"]) for h, l in zip(plain.history, logged.history)]
    assert not (tmp_path / "plain" / LOGS_FOLDER).exists()  # the default writes no logs

    scalars = read_scalars(tmp_path / "logged" / LOGS_FOLDER / TRACKER_PROJECT)
    approx = lambda values: pytest.approx(values, rel=1e-6, abs=1e-9)  # noqa: E731 - event files store float32
    assert scalars["train/loss"] == [(h["step"], approx(h["loss"])) for h in logged.history]
    assert [step for step, _ in scalars["train/aux_loss"]] == [1, 2, 3, 4]
    assert [value for _, value in scalars["lr/adapter"]] == approx([h["lr"] for h in logged.history])
    # each parameter group at its own rate: magnitude at 10 × lr, the router at lr
    assert [value for _, value in scalars["lr/magnitude"]] == approx([10 * h["lr"] for h in logged.history])
    assert [value for _, value in scalars["lr/router"]] == approx([h["lr"] for h in logged.history])
    for step in (0, 2):
        rows = [row for row in logged.routing if row["step"] == step]
        assert (step, approx(sum(r["entropy"] for r in rows) / len(rows))) in scalars["routing/entropy"]
        assert (step, approx(min(r["normalized_entropy"] for r in rows))) in scalars["routing/normalized_entropy_min"]
    assert [step for step, _ in scalars["routing/normalized_entropy"]] == [0, 2]
    for measure in ("mean_abs_cosine", "mean_cka", "mean_cka_debiased", "effective_rank"):
        assert scalars[f"diversity/{measure}"] == [(row["step"], approx(row[measure])) for row in logged.diversity], measure
    assert [row["step"] for row in logged.diversity] == [0, 2, 4]


def test_a_run_started_without_a_tracker_resumes_with_one(tmp_path):
    pytest.importorskip("tensorboard", reason=NEEDS_TENSORBOARD)
    tokenizer, data = byte_tokenizer(), toy_examples()
    settings = dict(steps=3, batch_size=4, lr=5e-3, warmup_steps=1)
    train(fresh_model(), tokenizer, data, TrainConfig(**settings), out_dir=tmp_path, stop_after=1, progress=False)
    resumed = train(fresh_model(), tokenizer, data, TrainConfig(**settings, log_with=["tensorboard"]), out_dir=tmp_path,
                    resume_from=tmp_path, progress=False)  # the tracker is no part of the run's fingerprint
    assert resumed.steps == 3
    assert [step for step, _ in read_scalars(tmp_path / LOGS_FOLDER / TRACKER_PROJECT)["train/loss"]] == [2, 3]


def test_tracker_without_a_folder_or_package_is_refused_before_training(monkeypatch):
    tokenizer, data = byte_tokenizer(), toy_examples()
    with pytest.raises(ValueError, match=r"log_with='tensorboard' writes its logs under out_dir/logs: pass out_dir="):
        train(fresh_model(), tokenizer, data, TrainConfig(steps=1, batch_size=4, log_with="tensorboard"), progress=False)
    with pytest.raises(ValueError, match="unknown tracker 'tensorbored': choose among"):
        train(fresh_model(), tokenizer, data, TrainConfig(steps=1, batch_size=4, log_with="tensorbored"), out_dir="unused", progress=False)
    monkeypatch.setattr("accelerate.tracking.get_available_trackers", lambda: [])  # as if tensorboard were not installed
    with pytest.raises(ValueError, match=r"tracker 'tensorboard' is not installed .*pip install .*tensorboard.*would log nothing"):
        train(fresh_model(), tokenizer, data, TrainConfig(steps=1, batch_size=4, log_with="tensorboard"), out_dir="unused", progress=False)
    for bad in ([], 3, [""]):
        with pytest.raises(ValueError, match="log_with must be a tracker name"):
            TrainConfig(log_with=bad)


def test_cli_train_logs_to_the_run_folder(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason=NEEDS_TENSORBOARD)
    args = ["train", "--model", "tiny", "--profile", "ci", "--tasks", "boolq", "--steps", "2", "--no-progress",
            "--method", "moe", "--num-experts", "2", "--log-with", "tensorboard", "--out", str(tmp_path)]
    assert main(args) == 0
    folder = json.loads(capsys.readouterr().out)["folder"]
    scalars = read_scalars(f"{folder}/{LOGS_FOLDER}/{TRACKER_PROJECT}")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]
    assert {"train/aux_loss", "lr/adapter", "routing/entropy"} <= set(scalars)
    assert main([*args[:-2], "--log-with", "tensorbored", "--out", str(tmp_path / "other")]) == 2
    assert "unknown tracker 'tensorbored'" in capsys.readouterr().err
