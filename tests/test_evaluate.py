"""Scoring protocols: exact agreement with a plain full forward in every prompt style and on
both loglik paths, padding invariance, predictions forced by a hand-set logit boost, the
normalizations, PMI calibration, the majority baseline and the answer parser."""
from __future__ import annotations

import copy
import json
import logging
import warnings

import pytest
import torch

from omoe_lab.data import Example, build_prompt, encode_example, option_continuations, option_labels
from omoe_lab.data.collate import IGNORE_INDEX, encode_prompt
from omoe_lab.data.prompts import PROMPT_STYLES
from omoe_lab.evaluate import EvalResult, evaluate, majority_baseline, parse_answer, score_all_ways, score_neutral
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


def continuation_logliks(model, context: list[int], continuations: list[list[int]]) -> list[float]:
    """Independent reference: one unpadded forward per continuation, log_softmax, sum over its tokens."""
    sums = []
    for option in continuations:
        ids = torch.tensor([context + option])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        sums.append(sum(logprobs[len(context) - 1 + k, token].item() for k, token in enumerate(option)))
    return sums


def option_ids(tokenizer, example: Example) -> list[list[int]]:
    return [tokenizer(text, add_special_tokens=False).input_ids for text in option_continuations(example)]


def full_forward_logliks(model, tokenizer, example: Example, style: str = "listed") -> list[float]:
    # The tiny tokenizer appends no EOS, so the plain tokenizer call is the prompt.
    return continuation_logliks(model, tokenizer(build_prompt(example, style)).input_ids, option_ids(tokenizer, example))


def full_forward_label_logprobs(model, tokenizer, example: Example, style: str = "listed") -> list[float]:
    ids = torch.tensor([tokenizer(build_prompt(example, style)).input_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
    return [logprobs[first_token(tokenizer, w)].item() for w in option_labels(example)]


def boost_token(model, token_id: int, amount: float = 60.0):
    """Make ``token_id`` the overwhelming next token at every position (hook on the LM head)."""
    boost = torch.zeros(model.get_output_embeddings().out_features)
    boost[token_id] = amount
    return model.get_output_embeddings().register_forward_hook(lambda module, args, out: out + boost.to(out))


@pytest.mark.parametrize("full_sequences", [False, True], ids=["kv-cache", "full-sequences"])
@pytest.mark.parametrize("style", PROMPT_STYLES)
def test_loglik_equals_full_forward(tiny, style, full_sequences):
    model, tokenizer = tiny
    result = evaluate(model, tokenizer, EXAMPLES, "loglik", batch_size=3, progress=False, prompt_style=style, full_sequences=full_sequences)
    assert result.prompt_style == style
    for example, prediction in zip(EXAMPLES, result.predictions):
        expected = full_forward_logliks(model, tokenizer, example, style)
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


def test_cloze_labels_only_true_false_questions(tiny):
    """Under cloze the letters name options the prompt never shows; true/false still works."""
    model, tokenizer = tiny
    boolean = [EXAMPLES[2]]
    result = evaluate(model, tokenizer, boolean, "label", prompt_style="cloze", progress=False)
    assert result.predictions[0].scores == pytest.approx(full_forward_label_logprobs(model, tokenizer, boolean[0], "cloze"), abs=1e-4)
    for protocol in ("label", "generate"):
        with pytest.raises(ValueError, match="cloze prompt does not list"):
            evaluate(model, tokenizer, EXAMPLES, protocol, prompt_style="cloze", progress=False)


def test_full_sequences_match_the_kv_cache_path_through_plain_decoder_calls(tiny):
    """full_sequences calls the decoder only as a frozen-prefix cache can replay it:
    input_ids and attention_mask, no past_key_values, no use_cache."""
    model, tokenizer = tiny
    calls = []

    def record(module, args, kwargs):
        calls.append((kwargs.get("input_ids") is not None and kwargs.get("attention_mask") is not None,
                      kwargs.get("past_key_values") is None and not kwargs.get("use_cache")))

    handle = model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)
    try:
        cached = evaluate(model, tokenizer, EXAMPLES, "loglik", batch_size=2, progress=False, calibrate=True)
        assert not all(replayable for _, replayable in calls)  # the hook sees the cache when there is one
        calls.clear()
        full = evaluate(model, tokenizer, EXAMPLES, "loglik", batch_size=2, progress=False, calibrate=True, full_sequences=True)
    finally:
        handle.remove()
    assert calls and all(plain and replayable for plain, replayable in calls)
    for a, b in zip(cached.predictions, full.predictions):
        assert a.loglik_sum == pytest.approx(b.loglik_sum, abs=1e-5)
        assert a.neutral_sum == pytest.approx(b.neutral_sum, abs=1e-5)
        assert a.prediction == b.prediction


@pytest.mark.parametrize("protocol", ["loglik", "label"])
def test_batch_padding_does_not_change_scores(tiny, protocol):
    model, tokenizer = tiny
    single = evaluate(model, tokenizer, EXAMPLES, protocol, batch_size=1, progress=False)
    batched = evaluate(model, tokenizer, EXAMPLES, protocol, batch_size=len(EXAMPLES), progress=False)
    for a, b in zip(single.predictions, batched.predictions):
        assert a.scores == pytest.approx(b.scores, abs=1e-4)
        assert a.prediction == b.prediction


def test_frozen_prefix_replays_full_sequence_scoring(tiny):
    from omoe_lab.prefix import FrozenPrefix

    model, tokenizer = tiny
    plain = evaluate(model, tokenizer, EXAMPLES, "loglik", calibrate=True, prompt_style="cloze", progress=False)
    prefix = FrozenPrefix(model, start_block=2, dtype=torch.float32)
    with prefix.active():
        for _ in range(2):  # the second run finds every sequence cached
            replayed = evaluate(model, tokenizer, EXAMPLES, "loglik", calibrate=True, prompt_style="cloze", full_sequences=True, progress=False)
    assert prefix.replayed_batches > 0
    for a, b in zip(plain.predictions, replayed.predictions):
        assert a.scores == pytest.approx(b.scores, abs=1e-5)


@pytest.mark.parametrize("full_sequences", [False, True], ids=["kv-cache", "full-sequences"])
def test_absolute_position_model_is_padding_invariant(tiny, full_sequences):
    """GPT-2 adds learned position embeddings, so wrong position ids under left padding would show."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer = tiny
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2, initializer_range=0.2,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    single = evaluate(model, tokenizer, EXAMPLES, "loglik", batch_size=1, progress=False, full_sequences=full_sequences)
    batched = evaluate(model, tokenizer, EXAMPLES, "loglik", batch_size=4, progress=False, full_sequences=full_sequences)
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


@pytest.mark.parametrize("normalize, alias", [("mean", True), ("sum", False), ("char", None)])
def test_normalize_chooses_by_mean_sum_or_characters(tiny, normalize, alias):
    model, tokenizer = tiny
    result = evaluate(model, tokenizer, EXAMPLES, "loglik", normalize=normalize, progress=False)
    assert result.normalize == normalize and not result.calibrate
    for example, p in zip(EXAMPLES, result.predictions):
        assert p.n_chars == [len(option) for option in example.options]  # lm-eval's acc_norm: no leading space
        length = {"mean": p.n_tokens, "sum": [1] * len(p.n_tokens), "char": p.n_chars}[normalize]
        assert p.scores == pytest.approx([x / n for x, n in zip(p.loglik_sum, length)])
        assert p.prediction == max(range(len(p.scores)), key=p.scores.__getitem__)
    if alias is not None:  # the old boolean spelling
        old = evaluate(model, tokenizer, EXAMPLES, "loglik", normalize=alias, progress=False)
        assert old.normalize == normalize and [p.scores for p in old.predictions] == [p.scores for p in result.predictions]


def test_char_normalization_can_change_the_choice():
    """Same sum per token, different characters: mean ties where char prefers the longer text."""
    from omoe_lab.evaluate import normalized_scores

    sums, n_tokens, n_chars = [-4.0, -4.0], [2, 2], [4, 16]
    assert normalized_scores(sums, n_tokens, n_chars, "mean") == [-2.0, -2.0]
    assert normalized_scores(sums, n_tokens, n_chars, "char") == [-1.0, -0.25]
    assert normalized_scores(sums, n_tokens, n_chars, "sum") == sums


def test_calibrate_subtracts_the_neutral_context_loglik(tiny):
    """PMI: log P(option | prompt) - log P(option | "Answer:"), both sums, against a full forward."""
    model, tokenizer = tiny
    result = evaluate(model, tokenizer, EXAMPLES, "loglik", calibrate=True, prompt_style="cloze", progress=False)
    assert result.calibrate and result.normalize == "sum" and result.prompt_style == "cloze"
    neutral = tokenizer("Answer:").input_ids
    for example, p in zip(EXAMPLES, result.predictions):
        expected_neutral = continuation_logliks(model, neutral, option_ids(tokenizer, example))
        assert p.neutral_sum == pytest.approx(expected_neutral, abs=1e-4)
        assert p.loglik_sum == pytest.approx(full_forward_logliks(model, tokenizer, example, "cloze"), abs=1e-4)
        assert p.scores == pytest.approx([s - u for s, u in zip(p.loglik_sum, p.neutral_sum)], abs=1e-6)
        assert p.prediction == max(range(len(p.scores)), key=p.scores.__getitem__)
    with pytest.raises(ValueError, match="calibrate applies to the loglik"):
        evaluate(model, tokenizer, EXAMPLES, "label", calibrate=True, progress=False)


def test_neutral_context_scores_each_distinct_option_once(tiny):
    model, tokenizer = tiny
    examples = EXAMPLES + [
        Example("facts", "Ice is cold.", ("true", "false"), 0),
        Example("capitals", "What is the capital of Germany?", ("Paris", "Berlin"), 1),
    ]
    sequences = []

    def record(module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        sequences.extend(tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask))

    handle = model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)
    try:
        neutral = score_neutral(model, tokenizer, examples, batch_size=2, progress=False, full_sequences=True)
    finally:
        handle.remove()
    distinct = {tuple(c) for ex in examples for c in option_ids(tokenizer, ex)}
    context = tokenizer("Answer:").input_ids
    assert sorted(sequences) == sorted(tuple(context) + c for c in distinct)  # each once, nothing else
    assert neutral[-2] == neutral[2] and neutral[-1] == [neutral[0][0], neutral[0][1]]


def test_score_all_ways_equals_evaluate_with_one_pass_per_style(tiny):
    model, tokenizer = tiny
    calls = []
    handle = model.get_decoder().register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        results = score_all_ways(model, tokenizer, EXAMPLES, batch_size=2, progress=False, full_sequences=True)
    finally:
        handle.remove()
    assert list(results) == [f"{style}/{way}" for style in PROMPT_STYLES for way in ("mean", "sum", "char", "pmi")]
    # full_sequences: one decoder call per batch of 2 prompts (3 per style); the neutral pass,
    # shared by both styles, always uses the KV cache (a prompt call and an option call per
    # batch): 14 distinct options in groups of 4 (the widest question) make 4 groups, 2 batches.
    assert len({tuple(c) for ex in EXAMPLES for c in option_ids(tokenizer, ex)}) == 14
    assert len(calls) == 3 * len(PROMPT_STYLES) + 2 * 2
    for key, result in results.items():
        style, way = key.split("/")
        kwargs = {"calibrate": True} if way == "pmi" else {"normalize": way}
        alone = evaluate(model, tokenizer, EXAMPLES, "loglik", prompt_style=style, progress=False, **kwargs)
        assert (result.prompt_style, result.normalize, result.calibrate) == (alone.prompt_style, alone.normalize, alone.calibrate)
        for a, b in zip(result.predictions, alone.predictions):
            assert a.scores == pytest.approx(b.scores, abs=1e-5) and a.prediction == b.prediction
        assert result.accuracy == alone.accuracy
    with pytest.raises(ValueError, match="unknown prompt style"):
        score_all_ways(model, tokenizer, EXAMPLES, styles=("listed", "chat"), progress=False)


def test_majority_baseline_uses_the_train_split_per_task():
    train = [
        Example("facts", "a", ("true", "false"), 1),
        Example("facts", "b", ("true", "false"), 1),
        Example("facts", "c", ("true", "false"), 0),
        Example("quiz", "d", ("w", "x", "y", "z"), 2),
        Example("quiz", "e", ("w", "x", "y", "z"), 3),
        Example("quiz", "f", ("w", "x", "y", "z"), 3),
        Example("quiz", "g", ("w", "x", "y", "z"), 2),  # 2 and 3 tie: the lower index wins
        Example("quiz", "h", ("w", "x", "y", "z"), 1),
    ]
    # The test labels disagree with the train majority, so peeking at them would show.
    test = [
        Example("facts", "g", ("true", "false"), 0),
        Example("facts", "h", ("true", "false"), 1),
        Example("quiz", "i", ("w", "x", "y", "z"), 0),
        Example("quiz", "j", ("w", "x", "y", "z"), 0),
        Example("quiz", "k", ("w", "x", "y", "z"), 2),
        Example("quiz", "l", ("w", "x"), 1),  # no position 2 here: its most frequent position is 1
    ]
    result = majority_baseline(train, test)
    assert result.protocol == "majority" and result.prompt_style is None and result.normalize is None
    assert [p.prediction for p in result.predictions] == [1, 1, 2, 2, 2, 1]
    assert result.per_task == {"facts": 0.5, "quiz": 0.5} and result.accuracy == pytest.approx(0.5)
    assert result.predictions[0].scores == [1.0, 2.0]
    assert str(result).startswith("majority (most frequent training answer per task): accuracy 0.500")
    with pytest.raises(ValueError, match="no training examples for \\['other'\\]"):
        majority_baseline(train, test + [Example("other", "m", ("a", "b"), 0)])


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
    assert data["prompt_style"] == "listed" and data["normalize"] is None and data["calibrate"] is False
    assert str(result).startswith("label (listed prompt): accuracy")


@pytest.mark.parametrize(
    "settings, described",
    [
        ({}, "loglik (listed prompt, per-token mean): accuracy"),
        ({"normalize": "char", "prompt_style": "cloze"}, "loglik (cloze prompt, per-character mean): accuracy"),
        ({"calibrate": True, "prompt_style": "cloze"}, "loglik (cloze prompt, PMI of sums against 'Answer:'): accuracy"),
    ],
)
def test_result_names_style_normalization_and_calibration(tiny, settings, described):
    model, tokenizer = tiny
    assert str(evaluate(model, tokenizer, EXAMPLES[:2], "loglik", progress=False, **settings)).startswith(described)


def test_rejects_empty_and_unknown(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="no examples"):
        evaluate(model, tokenizer, [], "loglik")
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate(model, tokenizer, EXAMPLES, "beam")
    with pytest.raises(ValueError, match="unknown prompt style 'chat'.*'listed', 'cloze'"):
        evaluate(model, tokenizer, EXAMPLES, "loglik", prompt_style="chat")
    with pytest.raises(ValueError, match="unknown normalize 'token'"):
        evaluate(model, tokenizer, EXAMPLES, "loglik", normalize="token")


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
        ("B", EXAMPLES[0], 1),
        ("(B) Berlin", EXAMPLES[0], 1),
        ("C) Madrid", EXAMPLES[0], 2),
        (" B\nQuestion: next one", EXAMPLES[0], 1),
        ("The answer is B", EXAMPLES[0], 1),
        ("Answer: C Madrid", EXAMPLES[0], 2),
        ("the answer is (A)", EXAMPLES[0], 0),
    ],
)
def test_parse_answer(text, example, expected):
    assert parse_answer(text, example) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A cat sits on the mat.", -1),  # the article, not option A
        (" A city in France, most likely.", -1),
        ("A good guess is B.", 1),
        ("A", 0),
        ("A.", 0),
        ("A: Paris", 0),
        ("I think C, because", 2),
    ],
)
def test_parse_answer_reads_a_letter_only_where_it_stands_as_an_answer(text, expected):
    assert parse_answer(text, EXAMPLES[0]) == expected


def eos_appending(tokenizer):
    """A copy of ``tokenizer`` that wraps every text in BOS ... EOS, like some chat models' tokenizers."""
    from tokenizers import processors

    tokenizer = copy.deepcopy(tokenizer)
    bos, eos = tokenizer.bos_token or tokenizer.eos_token, tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, tokenizer.convert_tokens_to_ids(bos)), (eos, tokenizer.eos_token_id)]
    )
    assert tokenizer("Answer:").input_ids[-1] == tokenizer.eos_token_id
    return tokenizer


def test_every_scorer_sees_the_training_prompt_with_an_eos_appending_tokenizer(tiny):
    model, base_tokenizer = tiny
    tokenizer = eos_appending(base_tokenizer)
    letters = [ex for ex in EXAMPLES if option_labels(ex)[0] == " A"]
    trained = {}
    for ex in letters:
        encoded = encode_example(tokenizer, ex, max_length=256)
        trained[ex] = [t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label == IGNORE_INDEX]
        assert trained[ex] == encode_prompt(tokenizer, ex) and trained[ex][-1] != tokenizer.eos_token_id
    seen = []

    def record(input_ids, attention_mask):
        seen.extend(row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask))

    def record_decoder_call(module, args, kwargs):
        if kwargs.get("past_key_values") is None:  # the KV path's option pass continues a prompt
            record(kwargs["input_ids"], kwargs["attention_mask"])

    def recording_generate(input_ids, attention_mask, **settings):
        record(input_ids, attention_mask)
        return type(model).generate(model, input_ids=input_ids, attention_mask=attention_mask, **settings)

    def prompts_seen(protocol, **settings):
        seen.clear()
        evaluate(model, tokenizer, letters, protocol, batch_size=len(letters), progress=False, **settings)
        return sorted(seen)

    expected = sorted(trained.values())
    with_options = sorted(trained[ex] + c for ex in letters for c in option_ids(tokenizer, ex))
    handle = model.get_decoder().register_forward_pre_hook(record_decoder_call, with_kwargs=True)
    try:
        assert prompts_seen("label") == expected
        assert prompts_seen("loglik") == expected
        assert prompts_seen("loglik", full_sequences=True) == with_options
    finally:
        handle.remove()
    model.generate = recording_generate
    try:
        assert prompts_seen("generate", max_new_tokens=1) == expected
    finally:
        del model.generate


def test_neutral_context_is_encoded_like_a_prompt(tiny):
    """With a tokenizer that wraps texts in BOS ... EOS, the neutral context keeps the BOS, loses the EOS."""
    model, base_tokenizer = tiny
    tokenizer = eos_appending(base_tokenizer)
    context = tokenizer("Answer:").input_ids[:-1]
    neutral = score_neutral(model, tokenizer, EXAMPLES[:2], progress=False)
    for example, sums in zip(EXAMPLES[:2], neutral):
        assert sums == pytest.approx(continuation_logliks(model, context, option_ids(tokenizer, example)), abs=1e-4)


def test_scoring_emits_no_deprecation_warning(tiny):
    """Neither Python warnings nor transformers' logger may flag the decoder calls as deprecated."""
    model, tokenizer = tiny
    logged = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: logged.append(record.getMessage())
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for full_sequences in (False, True):
                evaluate(model, tokenizer, EXAMPLES, "loglik", calibrate=True, full_sequences=full_sequences, progress=False)
            evaluate(model, tokenizer, EXAMPLES, "label", progress=False)
    finally:
        transformers_logger.removeHandler(handler)
    messages = [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    messages += [m for m in logged if "deprecat" in m.lower()]
    assert not messages


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


def test_kv_cache_scoring_uses_no_deprecated_argument(tiny):
    """The KV-cache path hands the context's cache back as ``past_key_values``, the argument
    transformers 5.23's decoders take (no ``cache`` argument exists there): no Deprecation- or
    FutureWarning may come from scoring, so a rename in a later transformers shows up here."""
    import logging
    import warnings

    model, tokenizer = tiny
    logged: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: logged.append(record.getMessage())  # transformers also warns through logging
    logging.getLogger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            warnings.simplefilter("error", FutureWarning)
            evaluate(model, tokenizer, EXAMPLES, "loglik", batch_size=3, progress=False)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not [m for m in logged if "deprecat" in m.lower() or "past_key_values" in m], logged
