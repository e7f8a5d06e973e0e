"""The trainer on a tiny random Llama: learning, resuming, the prefix cache, bad input."""
from __future__ import annotations

import pytest
import torch

from omoe_lab import AdapterConfig, attach_adapters
from omoe_lab.data import Example
from omoe_lab.inject import adapter_state_dict
from omoe_lab.models import byte_tokenizer
from omoe_lab.prefix import FrozenPrefix
from omoe_lab.train import TrainConfig, train
from tests.conftest import make_tiny_llama

VOCAB = 352  # byte_tokenizer's 351 tokens, rounded up


def toy_examples(n: int = 24) -> list[Example]:
    """A learnable rule: the answer is the option that repeats the question's colour."""
    colours = ["red", "blue", "green", "gold", "gray", "pink"]
    out = []
    for i in range(n):
        colour, other = colours[i % 6], colours[(i + 1 + i // 6) % 6]
        label = i % 2
        options = (colour, other) if label == 0 else (other, colour)
        out.append(Example("toy", f"Which colour is {colour}?", options, label))
    return out


def fresh_model(method="omoe", layers=None, seed=0, targets=("q_proj", "v_proj"), **kwargs):
    # a wide init, so a tiny model's logits can move far enough to learn in a few steps
    model = make_tiny_llama(seed=seed, vocab=VOCAB, layers=3, init_range=0.2)
    config = AdapterConfig(method=method, num_experts=3, rank=4, target_modules=list(targets) if not isinstance(targets, str) else targets, layers=layers, **kwargs)
    return attach_adapters(model, config)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in adapter_state_dict(model).items()}


def test_training_lowers_the_answer_loss():
    model, tokenizer = fresh_model(targets="all-linear"), byte_tokenizer()
    config = TrainConfig(steps=30, batch_size=8, lr=2e-2, magnitude_lr=5e-2, warmup_steps=2)
    result = train(model, tokenizer, toy_examples(), config, progress=False)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 30 and result.steps == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert all(k in result.history[0] for k in ("loss", "aux_loss", "lr", "tokens_per_s"))
    assert result.routing and {"layer", "entropy", "load"} <= set(result.routing[0])


def test_interrupted_then_resumed_run_ends_with_the_same_weights(tmp_path):
    config = TrainConfig(steps=6, batch_size=4, lr=5e-3, warmup_steps=1, routing_every=2)
    tokenizer, data = byte_tokenizer(), toy_examples()
    straight = fresh_model(top_k=2, dropout=0.1)
    full = train(straight, tokenizer, data, config, progress=False)

    first = fresh_model(top_k=2, dropout=0.1)
    partial = train(first, tokenizer, data, config, out_dir=tmp_path, stop_after=3, progress=False)
    assert partial.interrupted and partial.steps == 3
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-3"
    resumed_model = fresh_model(top_k=2, dropout=0.1)
    resumed = train(resumed_model, tokenizer, data, config, out_dir=tmp_path, resume_from=tmp_path, progress=False)
    assert resumed.steps == 6 and not resumed.interrupted
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-6)
    for name, tensor in weights(straight).items():
        assert torch.allclose(weights(resumed_model)[name], tensor, atol=1e-7), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6", "latest"]


def test_resume_from_another_config_is_refused(tmp_path):
    tokenizer, data = byte_tokenizer(), toy_examples()
    train(fresh_model(), tokenizer, data, TrainConfig(steps=2, batch_size=4), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="belongs to another run"):
        train(fresh_model(), tokenizer, data, TrainConfig(steps=2, batch_size=4, lr=1e-3), resume_from=tmp_path, progress=False)


def test_prefix_cache_gives_the_same_losses():
    """Past the first epoch every batch replays cached states, and the losses do not change."""
    tokenizer, data = byte_tokenizer(), toy_examples()
    config = dict(steps=9, batch_size=8, lr=5e-3, warmup_steps=0)  # three epochs of 24 examples
    plain = train(fresh_model(layers=[1, 2]), tokenizer, data, TrainConfig(prefix_cache=False, **config), progress=False)
    model = fresh_model(layers=[1, 2])
    prefix = FrozenPrefix(model, start_block=1, dtype=torch.float32)
    cached = train(model, tokenizer, data, TrainConfig(**config), prefix=prefix, progress=False)
    assert prefix.replayed_batches == 9 and len(prefix.states) == 24  # every pass replays, the first too
    assert [h["loss"] for h in cached.history] == pytest.approx([h["loss"] for h in plain.history], rel=1e-5)
    half = train(fresh_model(layers=[1, 2]), tokenizer, data, TrainConfig(**config), progress=False)  # float16 states
    assert [h["loss"] for h in half.history] == pytest.approx([h["loss"] for h in plain.history], rel=1e-2)


def test_resume_with_the_float16_prefix_cache_on_ends_with_the_same_weights(tmp_path):
    """The resumed run starts with an empty cache; every pass replays the same stored states."""
    config = TrainConfig(steps=6, batch_size=8, lr=5e-3, warmup_steps=1)  # cache on, float16 states
    tokenizer, data = byte_tokenizer(), toy_examples()
    straight = fresh_model(layers=[1, 2])
    full = train(straight, tokenizer, data, config, progress=False)
    train(fresh_model(layers=[1, 2]), tokenizer, data, config, out_dir=tmp_path, stop_after=3, progress=False)
    resumed_model = fresh_model(layers=[1, 2])
    resumed = train(resumed_model, tokenizer, data, config, out_dir=tmp_path, resume_from=tmp_path, progress=False)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for name, tensor in weights(straight).items():
        assert torch.equal(weights(resumed_model)[name], tensor), name


def test_a_shared_prefix_cache_does_not_make_a_run_depend_on_the_runs_before_it():
    tokenizer, data = byte_tokenizer(), toy_examples()
    config = TrainConfig(steps=4, batch_size=8, lr=5e-3, warmup_steps=0)
    alone = fresh_model(layers=[1, 2])
    train(alone, tokenizer, data, config, progress=False)
    shared_base = fresh_model(layers=[1, 2], seed=0)
    prefix = FrozenPrefix(shared_base, start_block=1)
    # another run first (other seed: other batches, so states are recorded in other company)
    train(shared_base, tokenizer, data, TrainConfig(steps=4, batch_size=8, lr=5e-3, warmup_steps=0, seed=7), prefix=prefix, progress=False)
    second = fresh_model(layers=[1, 2])
    prefix.model = second  # the same frozen base weights (seed 0), new adapters
    train(second, tokenizer, data, config, prefix=prefix, progress=False)
    for name, tensor in weights(alone).items():
        assert torch.equal(weights(second)[name], tensor), name


def test_resume_refuses_another_base_model_or_tokenizer(tmp_path):
    config = TrainConfig(steps=2, batch_size=4, lr=1e-3)
    tokenizer, data = byte_tokenizer(), toy_examples()
    train(fresh_model(), tokenizer, data, config, out_dir=tmp_path, stop_after=1, progress=False)
    with pytest.raises(ValueError, match="base model, tokenizer"):
        train(fresh_model(seed=1), tokenizer, data, config, resume_from=tmp_path, progress=False)  # other frozen weights

    class Shifted:  # another tokenizer: every id moved by one
        def __init__(self, inner):
            self.inner, self.eos_token_id, self.bos_token_id, self.pad_token_id = inner, inner.eos_token_id, inner.bos_token_id, inner.pad_token_id

        def __call__(self, text, **kwargs):
            out = self.inner(text, **kwargs)
            return {"input_ids": [min(i + 1, VOCAB - 1) for i in out["input_ids"]]}

    with pytest.raises(ValueError, match="base model, tokenizer"):
        train(fresh_model(), Shifted(tokenizer), data, config, resume_from=tmp_path, progress=False)


def test_prefix_cache_refuses_adapters_below_its_block():
    model = fresh_model(layers=[0, 2])
    prefix = FrozenPrefix(model, start_block=1)
    ids = torch.randint(3, VOCAB, (2, 5))
    with prefix.active(), pytest.raises(ValueError, match="stale"):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    assert not prefix.states


def test_gradient_accumulation_matches_one_big_batch():
    tokenizer, data = byte_tokenizer(), toy_examples()
    one, two = fresh_model(), fresh_model()
    train(one, tokenizer, data, TrainConfig(steps=3, batch_size=8, lr=5e-3), progress=False)
    train(two, tokenizer, data, TrainConfig(steps=3, batch_size=8, grad_accum=2, lr=5e-3), progress=False)
    for name, tensor in weights(one).items():
        assert torch.allclose(weights(two)[name], tensor, atol=1e-6), name


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(steps=0), "steps must be >= 1"), (dict(batch_size=0), "batch_size must be >= 1"), (dict(lr=0), "lr must be > 0")],
)
def test_nonsense_budgets_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_bad_runs_fail_before_any_work(tmp_path):
    tokenizer = byte_tokenizer()
    with pytest.raises(ValueError, match="no adapters"):
        train(make_tiny_llama(vocab=VOCAB), tokenizer, toy_examples(), progress=False)
    with pytest.raises(ValueError, match="multiple of"):
        train(fresh_model(), tokenizer, toy_examples(), TrainConfig(batch_size=3, grad_accum=2), progress=False)
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(PermissionError, match="cannot write"):
        train(fresh_model(), tokenizer, toy_examples(), out_dir=blocked / "run", progress=False)


def test_diversity_over_training_is_recorded_without_changing_the_run(tmp_path):
    from omoe_lab.data.collate import encode_prompt, pad_rows

    tokenizer, data = byte_tokenizer(), toy_examples()
    ids, mask = pad_rows([encode_prompt(tokenizer, ex) for ex in data[:6]], 0)
    probe = [{"input_ids": ids, "attention_mask": mask}]
    config = TrainConfig(steps=5, batch_size=4, lr=5e-3, warmup_steps=1, diversity_every=2)
    plain_model, probed_model = fresh_model(), fresh_model()
    train(plain_model, tokenizer, data, config, progress=False)
    probed = train(probed_model, tokenizer, data, config, diversity_probe=probe, progress=False)
    for name, tensor in weights(plain_model).items():
        assert torch.equal(weights(probed_model)[name], tensor), name  # eval mode, no random state touched
    assert [row["step"] for row in probed.diversity] == [0, 2, 4, 5]
    first = probed.diversity[0]
    assert set(first) >= {"mean_abs_cosine", "mean_cka", "mean_cka_debiased", "effective_rank", "per_layer"}
    assert len(first["per_layer"]) == 6 and 1.0 <= first["effective_rank"] <= 3.0  # 3 blocks × q, v; E = 3
    # resumed: the same records as the uninterrupted run
    train(fresh_model(), tokenizer, data, config, out_dir=tmp_path, stop_after=3, diversity_probe=probe, progress=False)
    resumed = train(fresh_model(), tokenizer, data, config, out_dir=tmp_path, resume_from=tmp_path, diversity_probe=probe, progress=False)
    assert resumed.diversity == probed.diversity
