"""Adapters on a whole (tiny, random) Hugging Face model: attach, train, save, load, detach."""
from __future__ import annotations

import copy

import pytest
import torch

import omoe_lab
from omoe_lab import AdapterConfig, adapter_layers, attach_adapters, detach_adapters, load_adapters, save_adapters
from tests.conftest import make_tiny_llama

METHOD_CONFIGS = {
    "lora": dict(method="lora", rank=4),
    "moe": dict(method="moe", num_experts=4, rank=4),
    "moe-top2": dict(method="moe", num_experts=4, rank=4, top_k=2),
    "omoe": dict(method="omoe", num_experts=4, rank=4),
    "omoe-top2": dict(method="omoe", num_experts=4, rank=4, top_k=2),
    "omoe-orthogonal": dict(method="omoe", num_experts=3, rank=4, orthogonalize="orthogonal"),
    "omoe-norm": dict(method="omoe", num_experts=3, rank=4, orthogonalize="norm_preserving"),
}
TARGETS = ["q_proj", "v_proj", "down_proj"]


def batch(device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding in the first row
    return ids.to(device), mask.to(device)


@pytest.mark.parametrize("name", list(METHOD_CONFIGS))
def test_fresh_adapters_reproduce_the_base_model_exactly(device, name):
    model = make_tiny_llama().to(device)
    ids, mask = batch(device)
    with torch.no_grad():
        base = model(ids, attention_mask=mask).logits
        attach_adapters(model, AdapterConfig(target_modules=TARGETS, **METHOD_CONFIGS[name]))
        adapted = model(ids, attention_mask=mask).logits
    assert len(adapter_layers(model)) == 6
    assert torch.equal(base, adapted)


@pytest.mark.parametrize("name", list(METHOD_CONFIGS))
def test_every_trainable_parameter_gets_gradient_within_two_steps(device, name):
    model = attach_adapters(make_tiny_llama().to(device), AdapterConfig(target_modules=TARGETS, **METHOD_CONFIGS[name]))
    model.train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n or "router" in n or "magnitude" in n) for n in trainable)
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    reached = set()
    ids, mask = batch(device)
    for _ in range(2):
        optimizer.zero_grad()
        out = model(ids, attention_mask=mask, labels=ids)
        (out.loss + omoe_lab.router_aux_loss(model, mask).to(device)).backward()
        for n, p in trainable.items():
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
            if p.grad.abs().sum() > 0:
                reached.add(n)
        optimizer.step()
    assert reached == set(trainable)


def test_router_aux_loss_is_recorded_in_training_only_and_padding_aware():
    model = attach_adapters(make_tiny_llama(), AdapterConfig(method="moe", num_experts=4, rank=4, top_k=1))
    ids, mask = batch()
    model.eval()
    model(ids, attention_mask=mask)
    assert omoe_lab.router_aux_loss(model, mask).item() == 0.0
    model.train()
    model(ids, attention_mask=mask)
    masked = omoe_lab.router_aux_loss(model, mask)
    assert masked.item() > 0 and masked.requires_grad
    assert omoe_lab.router_aux_loss(model, mask).item() == 0.0  # consumed
    model(ids, attention_mask=mask)
    assert omoe_lab.router_aux_loss(model, None).item() != pytest.approx(masked.item())


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    config = AdapterConfig(target_modules=TARGETS, **METHOD_CONFIGS["omoe-top2"])
    model = attach_adapters(make_tiny_llama(), config)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    ids, mask = batch()
    expected = model(ids, attention_mask=mask).logits
    save_adapters(model, tmp_path / "adapters")
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    restored = load_adapters(make_tiny_llama(), tmp_path / "adapters")
    assert restored.omoe_config == config
    assert torch.equal(restored(ids, attention_mask=mask).logits, expected)
    # loading into a model that already has the same adapters fills them in place
    same = attach_adapters(make_tiny_llama(), config)
    assert torch.equal(load_adapters(same, tmp_path / "adapters")(ids, attention_mask=mask).logits, expected)


def test_loading_into_another_config_or_architecture_says_what_differs(tmp_path):
    model = attach_adapters(make_tiny_llama(), AdapterConfig(method="omoe", num_experts=4, rank=4))
    save_adapters(model, tmp_path)
    other = attach_adapters(make_tiny_llama(), AdapterConfig(method="omoe", num_experts=2, rank=4))
    with pytest.raises(ValueError, match="num_experts"):
        load_adapters(other, tmp_path)
    wider = make_tiny_llama(hidden=48)
    with pytest.raises(ValueError, match=r"tensor model\.layers\.0\.self_attn\.q_proj\.lora_A has shape"):
        load_adapters(wider, tmp_path)
    with pytest.raises(FileNotFoundError, match="save_adapters"):
        load_adapters(make_tiny_llama(), tmp_path / "missing")


def test_detach_restores_original_modules_and_requires_grad():
    model = make_tiny_llama()
    model.lm_head.weight.requires_grad_(True)
    model.model.norm.weight.requires_grad_(False)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    q_proj = model.model.layers[0].self_attn.q_proj
    ids, mask = batch()
    base = model(ids, attention_mask=mask).logits
    attach_adapters(model, AdapterConfig(method="moe", rank=4, target_modules="all-linear"))
    assert not any(p.requires_grad for n, p in model.named_parameters() if "base_layer" in n or "embed" in n)
    detach_adapters(model)
    assert model.model.layers[0].self_attn.q_proj is q_proj
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert torch.equal(model(ids, attention_mask=mask).logits, base)
    with pytest.raises(ValueError, match="no adapters"):
        detach_adapters(model)


def test_target_selection_by_name_suffix_regex_all_linear_and_layers():
    names = lambda cfg: sorted(adapter_layers(attach_adapters(make_tiny_llama(layers=3), cfg)))  # noqa: E731
    assert names(AdapterConfig(target_modules=["model.layers.1.self_attn.q_proj"])) == ["model.layers.1.self_attn.q_proj"]
    assert len(names(AdapterConfig(target_modules=["q_proj"]))) == 3
    assert names(AdapterConfig(target_modules=r".*\.(0|2)\.mlp\.up_proj")) == [
        "model.layers.0.mlp.up_proj", "model.layers.2.mlp.up_proj"]
    all_linear = names(AdapterConfig(target_modules="all-linear"))
    assert len(all_linear) == 3 * 7 and "lm_head" not in all_linear
    assert names(AdapterConfig(target_modules=["v_proj"], layers=[2])) == ["model.layers.2.self_attn.v_proj"]


def test_bad_targets_and_double_attach_are_refused():
    with pytest.raises(ValueError, match=r"matches no linear module.*'q_proj'"):
        attach_adapters(make_tiny_llama(), AdapterConfig(target_modules=["query"]))
    model = attach_adapters(make_tiny_llama(), AdapterConfig())
    with pytest.raises(ValueError, match="already has adapters"):
        attach_adapters(model, AdapterConfig())


def test_experts_pattern_gives_more_experts_to_higher_blocks():
    model = attach_adapters(
        make_tiny_llama(layers=4), AdapterConfig(method="omoe", rank=4, experts_pattern=[2, 4], target_modules=["q_proj"])
    )
    counts = {layer.layer_index: layer.num_experts for layer in adapter_layers(model).values()}
    assert counts == {0: 2, 1: 2, 2: 4, 3: 4}
    assert model.model.layers[3].self_attn.q_proj.lora_A.shape == (4, 4, 32)


def test_trainable_parameter_count_matches_hand_count():
    model = attach_adapters(make_tiny_llama(), AdapterConfig(method="omoe", num_experts=4, rank=4))
    summary = omoe_lab.trainable_parameters(model)
    # per layer: A 4·4·32 + B 4·out·4 + router 32·4 + magnitude 1; q_proj out 32, v_proj out 16 (2 kv heads)
    per_q = 4 * 4 * 32 + 4 * 32 * 4 + 32 * 4 + 1
    per_v = 4 * 4 * 32 + 4 * 16 * 4 + 32 * 4 + 1
    assert summary.trainable == 2 * (per_q + per_v)
    assert summary.by_kind == {"lora_A": 2048, "lora_B": 1536, "router": 512, "magnitude": 4}
    assert summary.total == sum(p.numel() for p in model.parameters())
    assert "omoe: trainable 4,100" in str(summary)


def test_generate_matches_base_model_at_start():
    model = make_tiny_llama()
    ids, mask = batch()
    kwargs = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    expected = model.generate(ids, **kwargs)
    attach_adapters(model, AdapterConfig(method="omoe", rank=4, top_k=2))
    assert torch.equal(model.generate(ids, **kwargs), expected)


def test_gradient_checkpointing_gives_the_same_gradients():
    ids, mask = batch()

    def grads(checkpointing: bool):
        model = attach_adapters(make_tiny_llama(), AdapterConfig(method="omoe", rank=4, target_modules=TARGETS))
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(ids, attention_mask=mask, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = grads(False), grads(True)
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


def test_torch_compile_matches_eager():
    model = attach_adapters(make_tiny_llama(), AdapterConfig(method="omoe", rank=4, top_k=2))
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.magnitude.fill_(0.5)
    ids, mask = batch()
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        assert torch.allclose(compiled(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits, atol=1e-5)


def test_bf16_model_close_to_float32():
    ids, mask = batch()
    model = attach_adapters(make_tiny_llama(), AdapterConfig(method="omoe", rank=4, top_k=2))
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.magnitude.fill_(0.5)
        expected = model(ids, attention_mask=mask).logits
        low = copy.deepcopy(model).to(torch.bfloat16)(ids, attention_mask=mask).logits
    assert low.dtype == torch.bfloat16
    assert ((low.float() - expected).norm() / expected.norm()).item() < 3e-2


def test_gpt2_conv1d_layers_can_be_adapted():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()
    ids = torch.randint(0, 64, (1, 8))
    base = model(ids).logits
    attach_adapters(model, AdapterConfig(method="omoe", rank=4, target_modules=["c_attn"]))
    assert len(adapter_layers(model)) == 2 and torch.equal(model(ids).logits, base)
    layer = model.transformer.h[0].attn.c_attn
    assert (layer.in_features, layer.out_features) == (32, 96)


def test_transformers_trainer_trains_the_adapters(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = attach_adapters(make_tiny_llama(), AdapterConfig(method="omoe", rank=4, top_k=2))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": row, "labels": row} for row in torch.randint(3, 128, (8, 12), generator=g)]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
        report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
    )
    Trainer(model=model, args=args, train_dataset=data).train()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(changed) == len(before)
    assert all(torch.equal(p, q) for (n, p), q in zip(model.named_parameters(), model.parameters()) if "base_layer" in n)
