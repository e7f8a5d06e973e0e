"""The frozen-prefix cache replays exactly what the frozen blocks compute, for scoring too; its
float16 states move a trained adapter's log-likelihoods by less than a stated bound."""
from __future__ import annotations

import contextlib

import pytest
import torch

from omoe_lab import AdapterConfig, attach_adapters
from omoe_lab.data.collate import encode_prompt, option_token_ids
from omoe_lab.evaluate import evaluate, hidden_states, logits_at
from omoe_lab.inject import adapter_layers
from omoe_lab.models import byte_tokenizer
from omoe_lab.prefix import SUPPORTED_MODEL_TYPES, FrozenPrefix
from omoe_lab.train import TrainConfig, train
from tests.conftest import make_tiny_llama
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


# --- what float16 states cost a trained adapter ------------------------------------------------
# float16 keeps 11 significant bits: a stored value h becomes h·(1 + δ) with |δ| ≤ u = 2⁻¹¹ = 4.9e-4
# (round to nearest; values below 6.1e-5 are subnormal and rounded to ±3e-8 absolute instead).
FLOAT16_UNIT_ROUNDOFF = 2.0**-11
# To first order, the log-probability of option token t changes by Δ_t = Σ_i g_i h_i δ_i (g = ∂log p_t/∂h
# over every state entering the first adapted block, at every earlier position), so
#     |Δ_t| ≤ u · S_t,   S_t = Σ_i |h_i g_i|    (the worst case: every rounding pushes the same way).
# Measured on this test's model (seeds 0–2): u·S_t ≤ 1.8e-2; the first-order Σ g_i (fp16(h_i) − h_i)
# predicts the measured Δ_t to 2e-6 (so the replay adds no error of its own); the roundings have
# both signs and cancel, so |Δ_t| ≤ 0.14·u·S_t, and max_t |Δ_t| = 1.0–1.4e-3 nats over 96 option
# tokens. The stated bound is ~10·u, a margin of 3.5× on the largest of them (SmolLM2-135M with a
# strong random OMoE in its top 4 blocks: 2.7e-3, docs/decisions.md); bfloat16 states (u = 2⁻⁸)
# give 4.4e-3–1.1e-2 on the same tokens (7.8e-3 at seed 0, which fails it) and float32 states give 0.
FLOAT16_LOGPROB_BOUND = 5e-3  # nats per option token


def option_token_logprobs(model, tokenizer, examples, start_block: int, sensitivity: bool = False):
    """log p of every option token after its cloze prompt, one whole sequence at a time (what the
    cache replays) → [tokens]; with ``sensitivity`` also ``S_t = Σ_i |h_i ∂log p_t/∂h_i|`` [tokens]
    over the hidden states h entering ``start_block`` at every position."""
    logprobs, sensitivities = [], []
    for example in examples:
        prompt = encode_prompt(tokenizer, example, "cloze")
        for option in option_token_ids(tokenizer, example, "cloze"):
            states = {}

            def states_as_leaf(module, args, kwargs):
                hidden = (args[0] if args else kwargs["hidden_states"]).detach().requires_grad_()
                states["h"] = hidden
                return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

            hook = model.model.layers[start_block].register_forward_pre_hook(states_as_leaf, with_kwargs=True) if sensitivity else None
            ids = torch.tensor([prompt + option])
            with torch.set_grad_enabled(sensitivity):
                # position j predicts token j + 1: the option's tokens are predicted from len(prompt) − 1 on
                hidden = hidden_states(model, ids, torch.ones_like(ids))[0, len(prompt) - 1 : -1]
                token_logprobs = torch.log_softmax(logits_at(model, hidden), dim=-1).gather(-1, torch.tensor(option)[:, None])[:, 0]
            if hook is not None:
                hook.remove()
                for t in range(len(option)):
                    (gradient,) = torch.autograd.grad(token_logprobs[t], states["h"], retain_graph=True)
                    sensitivities.append((gradient * states["h"]).abs().sum())
            logprobs.append(token_logprobs.detach())
    return (torch.cat(logprobs), torch.stack(sensitivities)) if sensitivity else torch.cat(logprobs)


def test_float16_states_move_a_trained_adapters_log_likelihoods_less_than_the_stated_bound():
    tokenizer = byte_tokenizer()
    model = make_tiny_llama(seed=0, vocab=VOCAB, layers=4, init_range=0.2)
    attach_adapters(model, AdapterConfig(method="omoe", num_experts=2, rank=4, target_modules="all-linear", layers=[2, 3]))
    # trained without the cache, so the weights are the same whichever states are replayed afterwards
    config = TrainConfig(steps=10, batch_size=8, lr=2e-2, magnitude_lr=5e-2, warmup_steps=1, prefix_cache=False,
                         prompt_style="cloze", target="option")
    train(model, tokenizer, toy_examples(24), config, progress=False)
    model.eval()
    questions = toy_examples(12)

    exact, sensitivity = option_token_logprobs(model, tokenizer, questions, start_block=2, sensitivity=True)
    prefix = FrozenPrefix(model, start_block=2)  # the default dtype
    with prefix.active():
        cached = option_token_logprobs(model, tokenizer, questions, start_block=2)
    assert prefix.states and all(state.dtype == torch.float16 for state in prefix.states.values())
    error = (cached - exact).abs()
    assert error.max() <= FLOAT16_LOGPROB_BOUND, error.max()
    # the worst case of float16 rounding, token by token (plus float32 round-off in the top blocks)
    assert (error <= FLOAT16_UNIT_ROUNDOFF * sensitivity + 1e-5).all()

    # and no answer changes: the loglik scorer, batched and padded, with and without the cache
    answers = {}
    for name, cache in (("exact", None), ("float16", FrozenPrefix(model, start_block=2))):
        with cache.active() if cache else contextlib.nullcontext():
            scored = evaluate(model, tokenizer, questions, protocol="loglik", batch_size=4, progress=False,
                              prompt_style="cloze", full_sequences=True)
        answers[name] = [p.prediction for p in scored.predictions]
    assert len(answers["exact"]) == 12 and answers["float16"] == answers["exact"]
