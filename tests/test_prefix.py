"""The frozen-prefix cache replays exactly what the frozen blocks compute, for scoring too."""
from __future__ import annotations

import pytest
import torch

from omoe_lab.evaluate import evaluate
from omoe_lab.models import byte_tokenizer
from omoe_lab.prefix import FrozenPrefix
from tests.test_train import fresh_model, toy_examples


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
        assert prefix.recorded_batches == 3 and prefix.replayed_batches == 0 and len(prefix.states) == 10
        second = evaluate(model, tokenizer, examples, protocol="label", batch_size=4, progress=False)
        assert prefix.replayed_batches == 3
    for a, b, c in zip(expected.predictions, first.predictions, second.predictions):
        assert a.scores == pytest.approx(b.scores, abs=1e-5) and a.scores == pytest.approx(c.scores, abs=1e-5)
    assert model.model.layers[0] is not None and len(model.model.layers) == 3  # blocks restored


def test_generation_with_a_kv_cache_is_never_replayed():
    model, tokenizer = fresh_model(layers=[2]), byte_tokenizer()
    ids = torch.tensor([tokenizer("Which colour is red?").input_ids])
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0)
    prefix = FrozenPrefix(model, start_block=2)
    with prefix.active():
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)  # recorded
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(out, expected) and prefix.replayed_batches == 0


def test_unsupported_models_and_blocks_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(ValueError, match="supports"):
        FrozenPrefix(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4)), 1)
    with pytest.raises(ValueError, match="start_block"):
        FrozenPrefix(fresh_model(), 0)
