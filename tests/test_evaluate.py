"""Scoring protocols: exact agreement with a plain full forward, padding invariance, and
predictions forced by a hand-set logit boost."""
from __future__ import annotations

import json

import pytest
import torch

from omoe_lab.data import Example, build_prompt, option_continuations, option_labels
from omoe_lab.evaluate import EvalResult, evaluate, parse_answer
from omoe_lab.models import build_tiny_model, default_model_available, load_model

EXAMPLES = [
    Example("capitals", "What is the capital of France?", ("Paris", "Berlin", "Madrid"), 0),
    Example("colours", "What colour is the sky on a clear day?", ("green", "blue"), 1),
    Example("facts", "Water boils at 100 degrees Celsius at sea level.", ("true", "false"), 0),
    Example("capitals", "Which city is the capital of Japan, the island nation in East Asia?", ("Kyoto", "Osaka", "Tokyo", "Nagoya"), 2),
    Example("letters", "Pick the second letter.", ("A", "B", "C"), 1),
]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def first_token(tokenizer, word: str) -> int:
    return tokenizer(word, add_special_tokens=False).input_ids[0]


def full_forward_logliks(model, tokenizer, example: Example) -> list[float]:
    """Independent reference: one unpadded forward per option, log_softmax, sum over the option tokens."""
    prompt = tokenizer(build_prompt(example)).input_ids
    sums = []
    for text in option_continuations(example):
        option = tokenizer(text, add_special_tokens=False).input_ids
        ids = torch.tensor([prompt + option])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        sums.append(sum(logprobs[len(prompt) - 1 + k, token].item() for k, token in enumerate(option)))
    return sums


def full_forward_label_logprobs(model, tokenizer, example: Example) -> list[float]:
    ids = torch.tensor([tokenizer(build_prompt(example)).input_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
    return [logprobs[first_token(tokenizer, w)].item() for w in option_labels(example)]


def boost_token(model, token_id: int, amount: float = 60.0):
    """Make ``token_id`` the overwhelming next token at every position (hook on the LM head)."""
    boost = torch.zeros(model.get_output_embeddings().out_features)
    boost[token_id] = amount
    return model.get_output_embeddings().register_forward_hook(lambda module, args, out: out + boost.to(out))


def test_loglik_equals_full_forward(tiny):
    model, tokenizer = tiny
    result = evaluate(model, tokenizer, EXAMPLES, "loglik", batch_size=3, progress=False)
    for example, prediction in zip(EXAMPLES, result.predictions):
        expected = full_forward_logliks(model, tokenizer, example)
        assert prediction.loglik_sum == pytest.approx(expected, abs=1e-4)
        lengths = [len(tokenizer(t, add_special_tokens=False).input_ids) for t in option_continuations(example)]
        assert prediction.n_tokens == lengths
        assert prediction.scores == pytest.approx([s / n for s, n in zip(expected, lengths)], abs=1e-4)


def test_label_equals_full_forward(tiny):
    model, tokenizer = tiny
    result = evaluate(model, tokenizer, EXAMPLES, "label", batch_size=2, progress=False)
    for example, prediction in zip(EXAMPLES, result.predictions):
        expected = full_forward_label_logprobs(model, tokenizer, example)
        assert prediction.scores == pytest.approx(expected, abs=1e-4)
        assert prediction.prediction == max(range(len(expected)), key=expected.__getitem__)


@pytest.mark.parametrize("protocol", ["loglik", "label"])
def test_batch_padding_does_not_change_scores(tiny, protocol):
    model, tokenizer = tiny
    single = evaluate(model, tokenizer, EXAMPLES, protocol, batch_size=1, progress=False)
    batched = evaluate(model, tokenizer, EXAMPLES, protocol, batch_size=len(EXAMPLES), progress=False)
    for a, b in zip(single.predictions, batched.predictions):
        assert a.scores == pytest.approx(b.scores, abs=1e-4)
        assert a.prediction == b.prediction


def test_absolute_position_model_is_padding_invariant(tiny):
    """GPT-2 adds learned position embeddings, so wrong position ids under left padding would show."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer = tiny
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2, initializer_range=0.2,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    single = evaluate(model, tokenizer, EXAMPLES, "loglik", batch_size=1, progress=False)
    batched = evaluate(model, tokenizer, EXAMPLES, "loglik", batch_size=4, progress=False)
    for example, a, b in zip(EXAMPLES, single.predictions, batched.predictions):
        assert a.loglik_sum == pytest.approx(b.loglik_sum, abs=1e-4)
        assert a.loglik_sum == pytest.approx(full_forward_logliks(model, tokenizer, example), abs=1e-4)


def test_boosted_label_word_decides_every_protocol(tiny):
    model, tokenizer = tiny
    letters = [ex for ex in EXAMPLES if option_labels(ex)[0] == " A"]
    handle = boost_token(model, first_token(tokenizer, " B"))
    try:
        label = evaluate(model, tokenizer, letters, "label", batch_size=2, progress=False)
        generate = evaluate(model, tokenizer, letters, "generate", batch_size=2, max_new_tokens=3, progress=False)
        # Only the "letters" example has an option whose text is exactly "B".
        loglik = evaluate(model, tokenizer, [EXAMPLES[-1]], "loglik", progress=False)
    finally:
        handle.remove()
    assert [p.prediction for p in label.predictions] == [1] * len(letters)
    assert all(p.generated.startswith(" B") for p in generate.predictions)
    assert [p.prediction for p in generate.predictions] == [1] * len(letters)
    assert loglik.predictions[0].prediction == 1
    assert loglik.predictions[0].loglik_sum[1] > -1e-3  # log p ≈ 0 for the boosted token
    expected = sum(ex.label == 1 for ex in letters) / len(letters)
    assert label.accuracy == pytest.approx(expected)


def test_boosted_false_decides_boolean_label(tiny):
    model, tokenizer = tiny
    handle = boost_token(model, first_token(tokenizer, " false"))
    try:
        result = evaluate(model, tokenizer, [EXAMPLES[2]], "label", progress=False)
    finally:
        handle.remove()
    assert result.predictions[0].prediction == 1
    assert result.accuracy == 0.0 and result.per_task == {"facts": 0.0}


def test_logits_only_at_scored_positions(tiny):
    """The LM head sees one row per prompt (label) plus one per option token after the first (loglik)."""
    model, tokenizer = tiny
    rows = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    try:
        evaluate(model, tokenizer, EXAMPLES, "label", batch_size=2, progress=False)
        label_rows = sum(rows)
        rows.clear()
        evaluate(model, tokenizer, EXAMPLES, "loglik", batch_size=2, progress=False)
    finally:
        handle.remove()
    assert label_rows == len(EXAMPLES)
    option_tokens = sum(len(tokenizer(t, add_special_tokens=False).input_ids) - 1 for ex in EXAMPLES for t in option_continuations(ex))
    assert sum(rows) == len(EXAMPLES) + option_tokens


def test_normalize_switches_between_mean_and_sum(tiny):
    model, tokenizer = tiny
    by_sum = evaluate(model, tokenizer, EXAMPLES, "loglik", normalize=False, progress=False)
    by_mean = evaluate(model, tokenizer, EXAMPLES, "loglik", normalize=True, progress=False)
    assert by_sum.normalize is False and by_mean.normalize is True
    for s, m in zip(by_sum.predictions, by_mean.predictions):
        assert s.scores == s.loglik_sum
        assert m.scores == pytest.approx([x / n for x, n in zip(m.loglik_sum, m.n_tokens)])
        assert s.prediction == max(range(len(s.scores)), key=s.scores.__getitem__)


def test_result_bookkeeping_and_json(tiny):
    model, tokenizer = tiny
    model.train()
    result = evaluate(model, tokenizer, EXAMPLES, "label", progress=False)
    assert model.training  # evaluate restores the caller's mode
    model.eval()
    assert isinstance(result, EvalResult) and result.n == len(EXAMPLES)
    assert list(result.per_task) == ["capitals", "colours", "facts", "letters"]
    correct = [p.prediction == ex.label for p, ex in zip(result.predictions, EXAMPLES)]
    assert result.accuracy == pytest.approx(sum(correct) / len(correct))
    assert result.per_task["capitals"] == pytest.approx((correct[0] + correct[3]) / 2)
    assert result.chance == pytest.approx({"capitals": (1 / 3 + 1 / 4) / 2, "colours": 0.5, "facts": 0.5, "letters": 1 / 3})
    data = json.loads(json.dumps(result.to_dict()))
    assert data["protocol"] == "label" and data["n"] == 5 and len(data["predictions"]) == 5
    assert str(result).startswith("label: accuracy")


def test_rejects_empty_and_unknown(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="no examples"):
        evaluate(model, tokenizer, [], "loglik")
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate(model, tokenizer, EXAMPLES, "beam")


@pytest.mark.parametrize(
    "text, example, expected",
    [
        ("the correct answer is answer3", EXAMPLES[3], 2),
        (" B. Berlin", EXAMPLES[0], 1),
        ("a city in France", EXAMPLES[0], -1),  # lowercase article is not the label A
        (" False.", EXAMPLES[2], 1),
        ("TRUE", EXAMPLES[2], 0),
        ("answer9 then C", EXAMPLES[0], 2),  # out-of-range numbers are skipped
        ("C, or maybe answer1", EXAMPLES[3], 2),  # the earliest mention wins
        ("solution2", EXAMPLES[1], 1),
        ("ending4", EXAMPLES[3], 3),
        ("", EXAMPLES[1], -1),
    ],
)
def test_parse_answer(text, example, expected):
    assert parse_answer(text, example) == expected


def test_tiny_model_weights_do_not_depend_on_global_rng():
    a = build_tiny_model(50)
    torch.manual_seed(123)
    b = build_tiny_model(50)
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)


slow_default = pytest.mark.skipif(not default_model_available(), reason="default model neither installed nor cached")


@pytest.mark.slow
@slow_default
def test_default_model_loglik_prefers_paris_and_matches_full_forward():
    model, tokenizer = load_model("default", device="cpu")
    examples = EXAMPLES[:2]
    result = evaluate(model, tokenizer, examples, "loglik", batch_size=2, progress=False)
    assert [p.prediction for p in result.predictions] == [0, 1]  # Paris; blue
    for example, prediction in zip(examples, result.predictions):
        assert prediction.loglik_sum == pytest.approx(full_forward_logliks(model, tokenizer, example), abs=1e-3)
