"""The rank-classification objective: equal to a direct computation, and it pushes wrong options down."""
from __future__ import annotations

import pytest
import torch

from omoe_lab.data import Example
from omoe_lab.data.collate import encode_choices, encode_prompt, option_token_ids
from omoe_lab.evaluate import evaluate
from omoe_lab.models import byte_tokenizer
from omoe_lab.train import TrainConfig, _RankObjective, rank_classification_loss, train
from tests.test_train import fresh_model, toy_examples

QUESTIONS = [
    Example("toy", "Which colour is red?", ("red", "a very long blue"), 0),
    Example("toy", "Which is gold?", ("gray", "gold", "pink sky"), 1),
    Example("toy", "Pick the third one", ("one", "two", "three", "four"), 2),
]


def direct_loss(model, tokenizer, examples, unlikelihood: float) -> torch.Tensor:
    """Each option alone, unpadded, from the maths: CE over per-token-mean log-likelihoods + UL."""
    total = torch.zeros(())
    for ex in examples:
        prompt = encode_prompt(tokenizer, ex, "listed")
        means, wrong_terms, wrong_tokens = [], torch.zeros(()), 0
        for o, option in enumerate(option_token_ids(tokenizer, ex, "listed")):
            ids = torch.tensor([prompt + option])
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            token_lp = torch.stack([logprobs[len(prompt) - 1 + t, tok] for t, tok in enumerate(option)])
            means.append(token_lp.mean())
            if o != ex.label:
                wrong_terms = wrong_terms - torch.log1p(-token_lp.exp()).sum()
                wrong_tokens += len(option)
        total = total - torch.log_softmax(torch.stack(means), 0)[ex.label] + unlikelihood * wrong_terms / wrong_tokens
    return total


@pytest.mark.parametrize("unlikelihood", [0.0, 0.5])
def test_rank_loss_equals_a_direct_computation(unlikelihood):
    torch.manual_seed(0)
    model, tokenizer = fresh_model(method="omoe"), byte_tokenizer()
    for p in model.parameters():  # B ≠ 0, so the adapters take part
        if p.requires_grad:
            p.data.normal_(0, 0.1)
    objective = _RankObjective(TrainConfig(objective="rank", prompt_style="listed", unlikelihood=unlikelihood))
    batch = objective.collate([objective.encode(tokenizer, ex) for ex in QUESTIONS], tokenizer.pad_token_id)
    batched = rank_classification_loss(model, batch, unlikelihood)
    expected = direct_loss(model, tokenizer, QUESTIONS, unlikelihood)
    torch.testing.assert_close(batched, expected, rtol=1e-5, atol=1e-5)
    # and the gradients agree
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(batched, params)
    want = torch.autograd.grad(direct_loss(model, tokenizer, QUESTIONS, unlikelihood), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_a_gradient_step_lowers_the_wrong_options():
    model, tokenizer = fresh_model(method="lora"), byte_tokenizer()
    objective = _RankObjective(TrainConfig(objective="rank", prompt_style="listed"))
    batch = objective.collate([objective.encode(tokenizer, ex) for ex in QUESTIONS], tokenizer.pad_token_id)

    def option_means():
        from omoe_lab.train import option_token_logprobs

        logprobs, _ = option_token_logprobs(model, batch)
        return (logprobs.sum(-1) / batch["option_lengths"]).detach()

    before = option_means()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        rank_classification_loss(model, batch).backward()
        optimizer.step()
    after = option_means()
    gold = batch["option"] == batch["gold"][batch["question"]]
    margin = lambda m: torch.stack([m[(batch["question"] == q) & gold].max() - m[(batch["question"] == q) & ~gold].max()
                                    for q in range(len(QUESTIONS))])
    assert (margin(after) > margin(before)).all()  # gold pulled above every wrong option of its question
    assert (after[~gold] < before[~gold]).float().mean() >= 0.5  # wrong options pushed down, not only gold up


def test_training_with_the_rank_objective_raises_loglik_accuracy():
    model, tokenizer = fresh_model(targets="all-linear"), byte_tokenizer()
    data = toy_examples()
    before = evaluate(model, tokenizer, data, protocol="loglik", prompt_style="cloze", progress=False).accuracy
    config = TrainConfig(steps=30, batch_size=8, lr=2e-2, magnitude_lr=5e-2, warmup_steps=2, objective="rank", prompt_style="cloze")
    result = train(model, tokenizer, data, config, progress=False)
    after = evaluate(model, tokenizer, data, protocol="loglik", prompt_style="cloze", progress=False).accuracy
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert after > max(before, 0.75)


def test_encode_choices_cuts_the_prompt_never_an_option():
    tokenizer = byte_tokenizer()
    ex = Example("toy", "word " * 50, ("alpha", "beta gamma"), 1)
    full = encode_choices(tokenizer, ex, 10_000)
    cut = encode_choices(tokenizer, ex, 40)
    assert full["option_lengths"] == cut["option_lengths"] and cut["gold"] == 1
    assert max(map(len, cut["rows"])) == 40
    for row, n in zip(cut["rows"], cut["option_lengths"]):
        assert row[-n:] == full["rows"][cut["rows"].index(row)][-n:]
    with pytest.raises(ValueError, match="no room"):
        encode_choices(tokenizer, ex, 5)


def test_bad_objective_settings_are_refused():
    with pytest.raises(ValueError, match="objective must be one of"):
        TrainConfig(objective="contrastive")
    with pytest.raises(ValueError, match="only set with objective='rank'"):
        TrainConfig(unlikelihood=1.0)


def test_the_learn_profile_trains_with_the_rank_objective():
    from omoe_lab.experiments import RunConfig

    assert RunConfig(method="lora", profile="learn").train_config().objective == "rank"
    assert RunConfig(method="lora", profile="quick").train_config().objective == "lm"
    # label scoring has no options to rank: the profile's objective gives way to lm
    assert RunConfig(method="lora", profile="learn", protocol="label").train_config().objective == "lm"
    assert RunConfig(method="none", profile="learn").resolved().objective is None  # zero-shot trains nothing
    with pytest.raises(ValueError, match="use it with protocol 'loglik'"):
        RunConfig(method="lora", objective="rank", protocol="label").resolved()
