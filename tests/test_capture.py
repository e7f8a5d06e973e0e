import numpy as np
import pytest
import torch

import omoe_lab
from omoe_lab.analysis.capture import capture_experts, reservoir_slots, select_layers
from omoe_lab.analysis.stiefel import assert_on_stiefel


@pytest.fixture(autouse=True)
def single_thread():
    # the tiny model's matmuls take microseconds; with 2 intra-op threads on a busy 2-core machine
    # each one waited ~16 ms for the second thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _attach(model, method, **overrides):
    config = dict(method=method, num_experts=4, rank=4, target_modules=["q_proj", "v_proj"])
    config.update(overrides)
    return omoe_lab.attach_adapters(model, omoe_lab.AdapterConfig(**config))


def _batches(seed=0):
    """Two padded batches: right padding, then left padding; tasks per sequence."""
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(3, 128, (3, 7), generator=generator)
    first_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    second = torch.randint(3, 128, (2, 5), generator=generator)
    second_mask = torch.tensor([[0, 0, 1, 1, 1], [1] * 5])
    return [
        {"input_ids": first, "attention_mask": first_mask, "task": ["boolq", "piqa", "boolq"]},
        {"input_ids": second, "attention_mask": second_mask, "task": ["arc_e", "piqa"]},
    ]


def _reference_expert_outputs(model, batches):
    """e_i per (sequence, position, layer name), from adapter inputs recomputed without hooks:
    the input of q_proj / v_proj in block i is input_layernorm(hidden_states[i])."""
    reference = {}
    layers = omoe_lab.adapter_layers(model)
    sequence = 0
    with torch.no_grad():
        for batch in batches:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
            for name, layer in layers.items():
                block = model.model.layers[layer.layer_index]
                x = block.input_layernorm(out.hidden_states[layer.layer_index])
                e = layer.expert_outputs(x)
                for b in range(x.shape[0]):
                    real = torch.nonzero(batch["attention_mask"][b]).flatten()
                    for position, column in enumerate(real.tolist()):
                        reference[(sequence + b, position, name)] = (e[b, column], int(batch["input_ids"][b, column]))
            sequence += x.shape[0]
    return reference


def test_captures_every_real_token_with_outputs_equal_to_an_independent_recomputation(tiny_llama):
    model = _attach(tiny_llama, "omoe")
    batches = _batches()
    captured = capture_experts(model, batches, progress=False)
    real_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    assert len(captured) == captured.tokens_seen == real_tokens == 21
    assert list(captured.layers) == list(omoe_lab.adapter_layers(model))
    assert captured.task_names == ("boolq", "piqa", "arc_e")

    # no sampling: rows come in reading order, sequence by sequence, padding skipped
    masks = [b["attention_mask"] for b in batches]
    expected_tokens = torch.cat([b["input_ids"][b["attention_mask"] > 0] for b in batches])
    assert torch.equal(captured.token_ids, expected_tokens)
    assert captured.sequence_ids.tolist() == [0] * 7 + [1] * 4 + [2] * 2 + [3] * 3 + [4] * 5
    assert captured.positions.tolist() == list(range(7)) + list(range(4)) + list(range(2)) + list(range(3)) + list(range(5))
    assert captured.tasks.tolist() == ["boolq"] * 7 + ["piqa"] * 4 + ["boolq"] * 2 + ["arc_e"] * 3 + ["piqa"] * 5
    assert sum(int(m.sum()) for m in masks) == len(captured.metadata_frame())

    reference = _reference_expert_outputs(model, batches)
    for name, layer in captured.layers.items():
        assert layer.method == "omoe" and layer.num_experts == 4
        assert layer.expert_outputs.dtype == torch.float32 and layer.expert_outputs.shape[:2] == (21, 4)
        for row in range(len(captured)):
            e, token = reference[(int(captured.sequence_ids[row]), int(captured.positions[row]), name)]
            assert int(captured.token_ids[row]) == token
            torch.testing.assert_close(layer.expert_outputs[row], e, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.gates.sum(-1), torch.ones(21))
        assert layer.active.all()  # soft routing
        assert layer.orthogonal_outputs.shape == layer.expert_outputs.shape
        assert_on_stiefel(layer.orthogonal_outputs, active=layer.active)


def test_max_tokens_keeps_a_deterministic_aligned_sample(tiny_llama):
    model = _attach(tiny_llama, "moe", top_k=2)
    batches = _batches()
    captured = capture_experts(model, batches, max_tokens=9, seed=1, progress=False)
    assert len(captured) == 9 and captured.tokens_seen == 21
    keys = list(zip(captured.sequence_ids.tolist(), captured.positions.tolist()))
    assert len(set(keys)) == 9  # no token twice
    reference = _reference_expert_outputs(model, batches)
    for name, layer in captured.layers.items():
        assert layer.expert_outputs.shape[0] == layer.gates.shape[0] == 9
        assert layer.orthogonal_outputs is None
        assert layer.active.sum(-1).tolist() == [2] * 9
        assert torch.equal(layer.gates > 0, layer.active)
        for row, key in enumerate(keys):
            e, token = reference[(*key, name)]
            assert int(captured.token_ids[row]) == token
            torch.testing.assert_close(layer.expert_outputs[row], e, rtol=1e-5, atol=1e-6)

    again = capture_experts(model, batches, max_tokens=9, seed=1, progress=False)
    assert torch.equal(again.token_ids, captured.token_ids) and torch.equal(again.sequence_ids, captured.sequence_ids)
    other = capture_experts(model, batches, max_tokens=9, seed=2, progress=False)
    assert list(zip(other.sequence_ids.tolist(), other.positions.tolist())) != keys


def test_lora_capture_and_batches_without_mask_or_tasks(tiny_llama):
    model = _attach(tiny_llama, "lora")
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    captured = capture_experts(model, [{"input_ids": ids}], layers=["layers.1.self_attn.v_proj"], progress=False)
    assert list(captured.layers) == ["model.layers.1.self_attn.v_proj"]
    layer = captured["layers.1.self_attn.v_proj"]
    assert layer.expert_outputs.shape == (12, 1, 16)  # 2 kv heads × 8
    assert torch.equal(layer.gates, torch.ones(12, 1)) and layer.orthogonal_outputs is None
    assert not layer.expert_outputs.any()  # LoRA starts with B = 0
    assert captured.tasks is None and "task" not in captured.metadata_frame()


class _CharacterTokenizer:
    """Decodes token id t as chr(t): enough to check which ids the frame decodes, in order."""

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_metadata_frame_rows_and_token_text(tiny_llama):
    model = _attach(tiny_llama, "omoe")
    captured = capture_experts(model, _batches()[1:], progress=False)
    frame = captured.metadata_frame(tokenizer=_CharacterTokenizer())
    assert list(frame.columns) == ["row", "sequence", "position", "token", "task", "token_text"]
    assert frame["token_text"].tolist() == [chr(t) for t in captured.token_ids.tolist()]
    assert frame["task"].tolist() == ["arc_e"] * 3 + ["piqa"] * 5


def test_layer_selection(tiny_llama):
    model = _attach(tiny_llama, "omoe")
    assert list(select_layers(model, [1])) == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    assert list(select_layers(model, "q_proj")) == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    with pytest.raises(ValueError, match="no adapter layer matches 'k_proj'"):
        select_layers(model, ["k_proj"])
    with pytest.raises(KeyError, match="matches 2"):
        capture_experts(model, _batches()[:1], layers="q_proj", progress=False)["q_proj"]


def test_hooks_removed_and_modes_restored_even_on_error(tiny_llama):
    model = _attach(tiny_llama, "omoe")
    model.train()
    bad = _batches()
    bad[1]["task"] = ["only one"]
    with pytest.raises(ValueError, match="2 sequences but 1 tasks"):
        capture_experts(model, bad, progress=False)
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert all(m.training for m in model.modules())
    capture_experts(model, _batches(), progress=False)
    assert all(not m._forward_pre_hooks for m in model.modules()) and model.training


def test_model_without_adapters_or_tokens_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="no adapter layers"):
        capture_experts(tiny_llama, _batches(), progress=False)
    model = _attach(tiny_llama, "omoe")
    empty = {"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.zeros(1, 3, dtype=torch.long)}
    with pytest.raises(ValueError, match="no non-padding tokens"):
        capture_experts(model, [empty], progress=False)


def test_reservoir_sampling_keeps_every_item_with_equal_probability():
    stream, capacity, batch = 200, 20, 37
    counts = np.zeros(stream)
    for seed in range(400):
        rng = np.random.default_rng(seed)
        reservoir = np.full(capacity, -1)
        for start in range(0, stream, batch):
            size = min(batch, stream - start)
            items, slots = reservoir_slots(size, start, capacity, rng)
            assert len(np.unique(slots)) == len(slots)
            reservoir[slots] = start + items
        assert len(np.unique(reservoir)) == capacity
        counts[reservoir] += 1
    inclusion = counts / 400  # expected capacity / stream = 0.1 for every item
    assert abs(inclusion[:100].mean() - 0.1) < 0.01 and abs(inclusion[100:].mean() - 0.1) < 0.01
    assert abs(inclusion[:20].mean() - 0.1) < 0.02  # the first fill is not favoured
