"""What collapse costs (analysis.merging): merged and expert-dropped mixtures against direct references."""
import pytest
import torch
from torch import nn

import omoe_lab
from omoe_lab.adapters.orthogonal import gram_schmidt
from omoe_lab.analysis import capture_experts, collapse_cost
from omoe_lab.analysis.merging import MERGED, mixture_layers, output_change, token_weights, variant_layers

torch.set_default_dtype(torch.float32)


def tiny_mixture(method: str, num_experts: int = 3, **adapter):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    config = omoe_lab.AdapterConfig(method=method, num_experts=num_experts, rank=2, target_modules=["q_proj", "down_proj"],
                                    b_init_std=0.05, **adapter)
    omoe_lab.attach_adapters(model, config)
    with torch.no_grad():  # as if trained: OMoE's magnitude away from 0, routers that depend on the token
        for layer in omoe_lab.adapter_layers(model).values():
            layer.router.weight.normal_(std=1.0)
            if hasattr(layer, "magnitude"):
                layer.magnitude.fill_(0.7)
    return model


def captured_on(model, tokens: int = 40):
    generator = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 64, (2, tokens // 2), generator=generator)}]
    return capture_experts(model, batches, max_tokens=10_000, progress=False)


def layer_inputs(model, batch):
    """Every adapter layer's input in one forward pass (flattened to [tokens, d_in])."""
    inputs, handles = {}, []
    for name, layer in omoe_lab.adapter_layers(model).items():
        handles.append(layer.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, args[0].reshape(-1, args[0].shape[-1]))))
    with torch.no_grad():
        model(input_ids=batch)
    for handle in handles:
        handle.remove()
    return inputs


@pytest.mark.parametrize("method", ["moe", "omoe"])
def test_token_weights_reproduce_the_layers_output(method):
    model = tiny_mixture(method)
    captured = captured_on(model)
    batch = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(1))
    inputs = layer_inputs(model, batch)
    for name, layer in mixture_layers(model).items():
        weights = token_weights(layer, captured[name])
        mine = layer.scaling * torch.einsum("ne,neo->no", weights, captured[name].expert_outputs.double())
        with torch.no_grad():
            theirs = layer.adapter_output(inputs[name])
        torch.testing.assert_close(mine.float(), theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["moe", "omoe"])
def test_merged_layers_are_one_lora_with_the_mean_weights(method):
    model = tiny_mixture(method)
    captured = captured_on(model)
    x = torch.randn(7, 32, generator=torch.Generator().manual_seed(2))
    for name, layer in mixture_layers(model).items():
        if layer.in_features != 32:
            continue
        mean = token_weights(layer, captured[name]).mean(dim=0)
        # the merged LoRA written out: ΔW = s · Σ_j w̄_j B_j A_j, [d_out, d_in]
        delta = layer.scaling * sum(float(mean[j]) * layer.lora_B[j] @ layer.lora_A[j] for j in range(layer.num_experts))
        with torch.no_grad(), variant_layers(mixture_layers(model), captured, MERGED):
            merged = layer(x)
        torch.testing.assert_close(merged, layer.base_layer(x) + x @ delta.T, rtol=1e-5, atol=1e-6)


def test_dropping_an_expert_matches_the_mixture_without_it():
    for method in ("moe", "omoe"):
        model = tiny_mixture(method)
        captured = captured_on(model)
        x = torch.randn(7, 32, generator=torch.Generator().manual_seed(2))
        layer = next(layer for layer in mixture_layers(model).values() if layer.in_features == 32)
        with torch.no_grad():
            gates, active = layer.route_with_mask(x)
            gates, active = gates.clone(), active.clone()
            gates[:, 1], active[:, 1] = 0.0, False
            outputs = layer.expert_outputs(x)
            if method == "omoe":  # the materialized reference: Gram–Schmidt over the experts that are left
                outputs = layer.magnitude * gram_schmidt(outputs.double(), active, layer.orthogonalize, layer.redundancy_tol).float()
            expected = layer.base_layer(x) + layer.scaling * torch.einsum("ne,neo->no", gates, outputs)
            with variant_layers(mixture_layers(model), captured, 1):
                dropped = layer(x)
        torch.testing.assert_close(dropped, expected, rtol=1e-5, atol=1e-6)


def test_merging_is_free_when_the_weights_do_not_depend_on_the_token():
    model = tiny_mixture("moe")
    with torch.no_grad():
        for layer in omoe_lab.adapter_layers(model).values():
            layer.router.weight.zero_()  # uniform gates for every token
    captured = captured_on(model)
    layers = mixture_layers(model)
    assert output_change(layers, captured, MERGED)["output_change"] < 1e-7
    assert output_change(layers, captured, 0)["output_change"] > 0.1  # taking an expert out is not free


def test_collapse_cost_reports_every_variant_and_restores_the_layers():
    model = tiny_mixture("omoe", num_experts=3)
    captured = captured_on(model)
    batch = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = model(input_ids=batch).logits

    def score():  # "accuracy": the share of positions whose argmax equals the full model's
        with torch.no_grad():
            same = (model(input_ids=batch).logits.argmax(-1) == before.argmax(-1)).flatten().int()
        return float(same.float().mean()), same.tolist()

    cost = collapse_cost(model, captured, 1.0, score)
    assert [v["variant"] for v in cost["variants"]] == [MERGED, "without expert 0", "without expert 1", "without expert 2"]
    assert cost["probe_tokens"] == len(captured)
    for variant in cost["variants"]:
        assert variant["accuracy_lost"] == pytest.approx(1.0 - variant["accuracy"])
        assert len(variant["correct"]) == batch.numel() and variant["output_change"] > 0
        assert set(variant["output_change_per_layer"]) == set(mixture_layers(model))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=batch).logits, before)  # the layers are back
    assert not any("mixed_inputs" in layer.__dict__ or "slot_gates" in layer.__dict__ for layer in mixture_layers(model).values())
    assert len(collapse_cost(tiny_mixture("moe", num_experts=8), captured_on(tiny_mixture("moe", num_experts=8)), 1.0, score,
                             max_dropped=4)["variants"]) == 1  # E = 8: merged only


def test_collapse_cost_needs_a_mixture():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    omoe_lab.attach_adapters(model, omoe_lab.AdapterConfig(method="lora", rank=2))
    with pytest.raises(ValueError, match="no mixture layers"):
        collapse_cost(model, None, 1.0, lambda: (1.0, []))
    shared = tiny_mixture("moe", shared_expert=True)
    with pytest.raises(ValueError, match="shared expert"):
        mixture_layers(shared)


def test_the_run_option_is_out_of_the_cache_key_at_its_default():
    from omoe_lab.experiments import RunConfig

    assert RunConfig(method="lora", collapse_cost=True).key() == RunConfig(method="lora").key()  # nothing to merge
    assert RunConfig(method="moe", collapse_cost=True).key() != RunConfig(method="moe").key()
