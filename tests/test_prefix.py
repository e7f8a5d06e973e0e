"""The frozen-prefix cache replays exactly what the frozen blocks compute, for scoring too."""
from __future__ import annotations

import pytest
import torch

from omoe_lab import AdapterConfig, attach_adapters
from omoe_lab.evaluate import evaluate
from omoe_lab.inject import adapter_layers
from omoe_lab.models import byte_tokenizer
from omoe_lab.prefix import SUPPORTED_MODEL_TYPES, FrozenPrefix
from tests.test_train import VOCAB, fresh_model, toy_examples


def test_scoring_replays_cached_prefix_states_with_left_padding():
    model, tokenizer = fresh_model(layers=[2]), byte_tokenizer()
    with torch.no_grad():
        for layer in model.model.layers[2].self_attn.q_proj, model.model.layers[2].self_attn.v_proj:
            layer.magnitude.fill_(0.7)
    examples = toy_examples(10)
    expected = evaluate(model, tokenizer, examples, protocol="label", batch_size=4, progress=False)
    prefix = FrozenPrefix(model, start_block=2, dtype=torch.float32)
    with prefix.active():
        first = evaluate(model, tokenizer, examples, protocol="label", batch_size=4, progress=False)
        # every pass replays, the first one too (its unseen sequences are recorded one by one)
        assert prefix.recorded_sequences == 10 and prefix.replayed_batches == 3 and len(prefix.states) == 10
        second = evaluate(model, tokenizer, examples, protocol="label", batch_size=4, progress=False)
        assert prefix.replayed_batches == 6 and prefix.recorded_sequences == 10
    for a, b, c in zip(expected.predictions, first.predictions, second.predictions):
        assert a.scores == pytest.approx(b.scores, abs=1e-5) and a.scores == pytest.approx(c.scores, abs=1e-5)
    assert model.model.layers[0] is not None and len(model.model.layers) == 3  # blocks restored


def test_generation_with_a_kv_cache_is_never_replayed():
    model, tokenizer = fresh_model(layers=[2]), byte_tokenizer()
    ids = torch.tensor([tokenizer("Which colour is red?").input_ids])
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0)
    prefix = FrozenPrefix(model, start_block=2)
    with prefix.active():
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)  # recorded and replayed
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(out, expected) and prefix.replayed_batches == 1


def test_unsupported_models_and_blocks_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(ValueError, match="supports"):
        FrozenPrefix(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4)), 1)
    with pytest.raises(ValueError, match="start_block"):
        FrozenPrefix(fresh_model(), 0)


# --- every supported family, replayed blocks keep their own attention type -------------------
def _tiny_decoder(model_type: str):
    """A tiny random decoder of each supported family; Qwen2/3 mix full and sliding attention."""
    import transformers

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, initializer_range=0.2)
    mixed = dict(use_sliding_window=True, sliding_window=3, layer_types=["full_attention", "full_attention", "sliding_attention", "sliding_attention"])
    config = {
        "llama": lambda: transformers.LlamaConfig(**common),
        "mistral": lambda: transformers.MistralConfig(sliding_window=3, **common),
        "qwen2": lambda: transformers.Qwen2Config(**mixed, **common),
        "qwen3": lambda: transformers.Qwen3Config(head_dim=8, **mixed, **common),
    }[model_type]()
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    attach_adapters(model, AdapterConfig(method="omoe", num_experts=2, rank=2, target_modules=["q_proj", "v_proj"], layers=[2, 3]))
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.magnitude.fill_(0.8)
    return model


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_replayed_blocks_match_the_full_forward_in_every_supported_family(model_type):
    model = _tiny_decoder(model_type)
    ids = torch.randint(3, VOCAB, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, 9:] = 0  # right padding
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        prefix = FrozenPrefix(model, start_block=2, dtype=torch.float32)
        with prefix.active():
            first = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            again = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    real = mask.bool()
    assert prefix.replayed_batches == 2 and prefix.recorded_sequences == 3
    assert (first[real] - expected[real]).abs().max() < 1e-5
    assert torch.equal(first, again)
    assert len(model.model.layers) == 4  # restored
    if model_type.startswith("qwen"):
        assert model.config.layer_types[2:] == ["sliding_attention", "sliding_attention"] and len(model.config.layer_types) == 4


def test_float16_states_beyond_its_range_are_kept_in_float32():
    model = fresh_model(layers=[2])
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(1e6)  # residual stream far beyond float16's 65504
    ids = torch.randint(3, VOCAB, (2, 6))
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
        prefix = FrozenPrefix(model, start_block=2)
        with prefix.active():
            replayed = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    assert all(state.dtype == torch.float32 for state in prefix.states.values())
    assert torch.isfinite(replayed).all() and torch.allclose(replayed, expected, rtol=1e-5, atol=1e-3)


def test_nested_activation_installs_its_hooks_once():
    model = fresh_model(layers=[2])
    prefix = FrozenPrefix(model, start_block=2)
    with prefix.active(), prefix.active():
        assert len(model.model._forward_pre_hooks) == 1
        ids = torch.randint(3, VOCAB, (1, 5))
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    assert prefix.replayed_batches == 1 and not model.model._forward_pre_hooks
