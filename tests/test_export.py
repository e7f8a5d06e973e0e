"""PEFT's LoRA format: export_peft → peft.PeftModel gives the same logits; PEFT folders load back.

The tests that load a folder with ``peft`` itself skip when it is absent (``pip install -c
constraints.txt 'omoe_lab[dev]'`` installs it); the format checks and refusals run without it.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import omoe_lab
from omoe_lab import AdapterConfig, adapter_layers, attach_adapters, export_peft, load_peft_lora
from omoe_lab.adapters import METHODS
from omoe_lab.cli import main
from omoe_lab.export import check_exportable
from omoe_lab.inject import adapter_state_dict
from tests.conftest import make_tiny_llama

NEEDS_PEFT = "peft is not installed (an optional test dependency: pip install -c constraints.txt 'omoe_lab[dev]')"
# Both sides compute W0 x + s · B (A x) in float32; PEFT adds the LoRA term in another order of
# operations, so allow float32 round-off on logits of size ~1.
LOGITS_ATOL = 1e-5


def lora_llama(seed: int = 0, **kwargs):
    """A tiny Llama with LoRA whose B is random, so the adapters change the logits (B = 0 would not)."""
    model = make_tiny_llama(seed=seed)
    settings = dict(method="lora", rank=4, alpha=12.0, target_modules=["q_proj", "v_proj", "down_proj"], b_init_std=0.2, seed=seed)
    return attach_adapters(model, AdapterConfig(**{**settings, **kwargs}))


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    return GPT2LMHeadModel(config).eval()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))


def test_exported_folder_has_peft_names_shapes_and_config(tmp_path):
    model = lora_llama(layers=[1])
    export_peft(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["bias"] == "none"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 12.0, 0.0)
    paths = [f"model.layers.1.self_attn.{p}" for p in ("q_proj", "v_proj")] + ["model.layers.1.mlp.down_proj"]
    assert sorted(config["target_modules"]) == sorted(paths)  # `layers=[1]` resolved to exact paths
    weights = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert sorted(weights) == sorted(f"base_model.model.{p}.{k}.weight" for p in paths for k in ("lora_A", "lora_B"))
    down = adapter_layers(model)["model.layers.1.mlp.down_proj"]
    assert weights["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].shape == (4, 64)  # [r, d_in]
    assert weights["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].shape == (32, 4)  # [d_out, r]
    assert torch.equal(weights["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"], down.lora_B[0])


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_peft_loads_the_export_with_the_same_logits(tmp_path, architecture):
    peft = pytest.importorskip("peft", reason=NEEDS_PEFT)
    if architecture == "llama":
        model, base = lora_llama(), make_tiny_llama()
    else:  # GPT-2's Conv1D stores W0 transposed: PEFT needs fan_in_fan_out for it
        model, base = tiny_gpt2(), tiny_gpt2()
        attach_adapters(model, AdapterConfig(method="lora", rank=4, alpha=8.0, target_modules="all-linear", b_init_std=0.2))
    adapted = logits(model, IDS)
    assert not torch.allclose(adapted, logits(base, IDS), atol=1e-3)  # the adapters do change the model
    export_peft(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["fan_in_fan_out"] == (architecture == "gpt2")
    peft_model = peft.PeftModel.from_pretrained(base, str(tmp_path))
    torch.testing.assert_close(logits(peft_model, IDS), adapted, atol=LOGITS_ATOL, rtol=0)


def test_round_trip_through_peft_format_keeps_weights_and_logits(tmp_path):
    model = lora_llama(dropout=0.1)
    model.eval()
    export_peft(model, tmp_path / "peft")
    fresh = load_peft_lora(make_tiny_llama(), tmp_path / "peft")
    assert fresh.omoe_config.method == "lora" and fresh.omoe_config.dropout == pytest.approx(0.1)
    assert fresh.omoe_config.scaling == pytest.approx(model.omoe_config.scaling)
    original, loaded = adapter_state_dict(model), adapter_state_dict(fresh)
    assert sorted(original) == sorted(loaded)
    for name, tensor in original.items():
        assert torch.equal(loaded[name], tensor), name
    torch.testing.assert_close(logits(fresh, IDS), logits(model, IDS), atol=0, rtol=0)
    omoe_lab.save_adapters(fresh, tmp_path / "own")  # and it is an ordinary omoe_lab LoRA from here on
    assert omoe_lab.load_adapters(make_tiny_llama(), tmp_path / "own").omoe_config.rank == 4


@pytest.mark.parametrize("use_rslora", [False, True])
def test_folder_written_by_peft_loads_with_peft_logits(tmp_path, use_rslora):
    peft = pytest.importorskip("peft", reason=NEEDS_PEFT)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["k_proj", "o_proj", "up_proj"], lora_dropout=0.0,
                             use_rslora=use_rslora, task_type="CAUSAL_LM")
    peft_model = peft.get_peft_model(make_tiny_llama(), config)
    with torch.no_grad():  # PEFT starts B at zero; give it values so the comparison means something
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2, generator=torch.Generator().manual_seed(len(name)))
    peft_model.eval()
    expected = logits(peft_model, IDS)
    peft_model.save_pretrained(str(tmp_path))
    model = load_peft_lora(make_tiny_llama(), tmp_path)
    assert len(adapter_layers(model)) == 2 * 3  # two blocks × three target modules
    torch.testing.assert_close(logits(model, IDS), expected, atol=LOGITS_ATOL, rtol=0)


NO_PEER = r"no peer format in PEFT.*token.*can neither be merged into W0 nor written as one LoRA.*save_adapters"


@pytest.mark.parametrize("method", ["moe", "omoe"])
def test_mixtures_are_refused_with_the_reason(tmp_path, method):
    model = attach_adapters(make_tiny_llama(), AdapterConfig(method=method, num_experts=2, rank=2))
    with pytest.raises(ValueError, match=NO_PEER):
        export_peft(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", [m for m in METHODS if m != "lora"])
def test_every_routed_method_is_refused_by_name(method):
    with pytest.raises(ValueError, match=f"method={method!r}.*{NO_PEER}"):
        check_exportable(AdapterConfig(method=method, num_experts=2, rank=1))  # rank 1: every method takes it, smora only it


def test_loading_peft_options_omoe_lab_lacks_is_refused_and_leaves_the_model_bare(tmp_path):
    export_peft(lora_llama(), tmp_path)
    config_path = tmp_path / "adapter_config.json"
    plain = json.loads(config_path.read_text())
    model = make_tiny_llama()
    config_path.write_text(json.dumps({**plain, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora=True .*DoRA.*load this adapter with peft"):
        load_peft_lora(model, tmp_path)
    config_path.write_text(json.dumps({**plain, "target_modules": ["q_proj"]}))  # weights still name v_proj, down_proj
    load_peft_lora(model, tmp_path)  # the saved weights, not target_modules, decide what is adapted
    assert len(adapter_layers(model)) == 2 * 3
    other = make_tiny_llama(hidden=48)
    with pytest.raises(ValueError, match=r"has shape \(4, \d+\) in .* needs \(4, \d+\); load it into the base model it was trained on"):
        load_peft_lora(other, tmp_path)
    assert not adapter_layers(other)
    with pytest.raises(FileNotFoundError, match="expected a PEFT LoRA folder"):
        load_peft_lora(make_tiny_llama(), tmp_path / "absent")


def test_cli_exports_trained_lora_and_refuses_omoe_before_loading_a_model(tmp_path, capsys, monkeypatch):
    peft = pytest.importorskip("peft", reason=NEEDS_PEFT)
    from omoe_lab.models import load_model

    model, _ = load_model("tiny", progress=False)
    attach_adapters(model, AdapterConfig(method="lora", rank=2, target_modules=["q_proj"], b_init_std=0.2))
    omoe_lab.save_adapters(model, tmp_path / "adapters")
    args = ["export", "--peft", "--adapters", str(tmp_path / "adapters"), "--model", "tiny", "--out", str(tmp_path / "peft")]
    assert main(args) == 0
    assert "PeftModel.from_pretrained" in capsys.readouterr().out
    ids = IDS % model.config.vocab_size
    base, _ = load_model("tiny", progress=False)
    torch.testing.assert_close(logits(peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")), ids),
                               logits(model, ids), atol=LOGITS_ATOL, rtol=0)

    assert main([a for a in args if a != "--peft"]) == 2
    assert "name the format to write: --peft" in capsys.readouterr().err
    omoe = attach_adapters(make_tiny_llama(), AdapterConfig(method="omoe", num_experts=2, rank=2))
    omoe_lab.save_adapters(omoe, tmp_path / "omoe")
    monkeypatch.setattr("omoe_lab.models.load_model", lambda *a, **k: pytest.fail("the model was loaded before the refusal"))
    assert main(["export", "--peft", "--adapters", str(tmp_path / "omoe"), "--out", str(tmp_path / "x")]) == 2
    assert "OMoE (method='omoe') has no peer format in PEFT" in capsys.readouterr().err
