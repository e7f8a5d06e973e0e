"""Scoring protocols for multiple-choice examples (OMOE_SPEC §7). Name the protocol, the prompt
style and the normalization next to every number (``str(EvalResult)`` does).

Prompts come from :func:`omoe_lab.data.collate.encode_prompt`, the encoder training uses, in one
of the styles of :data:`omoe_lab.data.prompts.PROMPT_STYLES` (``"listed"``: options shown under
labels; ``"cloze"``: the question alone, lm-eval-harness's zero-shot convention).

- ``label``: one forward pass over the prompt; the prediction is the option whose label word
  (``" A"``, ``" true"``) has the highest next-token log-probability after ``"Answer:"``.
  Letters need the listed prompt; under cloze only true/false examples can be labelled.
- ``loglik``: for each option text ``c`` with tokens ``c_1..c_L`` (``N`` characters, the leading
  space not counted, as lm-eval counts them) after the prompt ``x``,
  ``sum = log P(c | x) = Σ_i log p(c_i | x, c_<i)``, and the prediction is the argmax of
  ``normalize="mean"``: ``sum / L`` (long options are not penalized for their token count),
  ``"sum"``: ``sum``, or ``"char"``: ``sum / N`` (lm-eval's ``acc_norm``).
  ``calibrate=True`` scores domain-conditional PMI (Holtzman et al. 2021) instead,
  ``log P(c | x) − log P(c | "Answer:")`` from sums, which takes out how likely an option is
  whatever the question (the neutral context is ``"Answer:"`` encoded like a prompt).
- ``generate``: greedy decoding, then the first label word that stands as an answer
  (:func:`parse_answer`); ``-1`` if none.
- ``majority`` (:func:`majority_baseline`): no model; each task's most frequent training answer.

Batches are left-padded with an attention mask and position ids counted from each row's first
real token, so padding does not change any score. Logits are computed only where they are scored:
the decoder's hidden states are gathered at those positions before the output embedding, instead
of projecting every position onto the whole vocabulary.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from .data.collate import encode_prompt, encode_prompt_text, option_token_ids, pad_rows
from .data.example import Example
from .data.prompts import (
    ANSWER_CUE, LETTERS, PROMPT_STYLES, check_label_words_are_shown, check_prompt_style, is_boolean,
    option_labels,
)

PROTOCOLS = ("loglik", "label", "generate")
NORMALIZATIONS = ("mean", "sum", "char")
NORMALIZATION_NAMES = {"mean": "per-token mean", "sum": "sum", "char": "per-character mean"}
NUMBERED_ANSWER = re.compile(r"\b(?:answer|solution|option|ending)\s*([1-9])\b", re.IGNORECASE)


@dataclass
class Prediction:
    """One scored example. ``scores`` are what ``prediction`` is the argmax of (empty for generate).

    Under ``loglik`` the raw material of every normalization is kept, so another one can be
    recomputed without a second model pass: per option ``loglik_sum`` (log P(option | prompt)),
    ``n_tokens``, ``n_chars`` and, when calibrated, ``neutral_sum`` (log P(option | "Answer:")).
    """

    task: str
    label: int
    prediction: int
    scores: list[float]
    loglik_sum: list[float] | None = None
    n_tokens: list[int] | None = None
    generated: str | None = None
    n_chars: list[int] | None = None
    neutral_sum: list[float] | None = None

    @property
    def correct(self) -> bool:
        return self.prediction == self.label


@dataclass
class EvalResult:
    protocol: str
    accuracy: float
    per_task: dict[str, float]
    n: int
    predictions: list[Prediction] = field(repr=False)
    chance: dict[str, float] = field(default_factory=dict)  # expected accuracy of uniform guessing
    normalize: str | None = None  # loglik only: "mean", "sum" or "char" ("sum" when calibrated)
    prompt_style: str | None = None  # "listed" or "cloze"; None for the majority baseline
    calibrate: bool = False  # loglik only: scores are PMI against the neutral context "Answer:"

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The protocol with everything that decides its number, e.g. ``loglik (cloze prompt, per-token mean)``."""
        details = []
        if self.prompt_style is not None:
            details.append(f"{self.prompt_style} prompt")
        if self.calibrate:
            details.append(f"PMI of sums against {ANSWER_CUE!r}")
        elif self.normalize is not None:
            details.append(NORMALIZATION_NAMES[self.normalize])
        if self.protocol == "majority":
            details.append("most frequent training answer per task")
        return f"{self.protocol} ({', '.join(details)})" if details else self.protocol

    def __str__(self) -> str:
        tasks = ", ".join(f"{task} {acc:.3f}" for task, acc in self.per_task.items())
        return f"{self.describe()}: accuracy {self.accuracy:.3f} on n={self.n} [{tasks}]"


def resolve_normalize(normalize: str | bool) -> str:
    """``"mean"``, ``"sum"`` or ``"char"``; ``True``/``False`` are the old spellings of mean/sum."""
    if normalize is True or normalize is False:
        return "mean" if normalize else "sum"
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; choose one of {NORMALIZATIONS} (or True/False for mean/sum)")
    return normalize


def normalized_scores(sums: list[float], n_tokens: list[int], n_chars: list[int], normalize: str) -> list[float]:
    """``sum``, ``sum / L`` (tokens) or ``sum / N`` (characters) for each option."""
    if normalize == "sum":
        return list(sums)
    lengths = n_tokens if normalize == "mean" else n_chars
    return [s / n for s, n in zip(sums, lengths)]


# ---------------------------------------------------------------------------------------------
# Batching and partial logits


def _pad(rows: list[list[int]], pad_id: int, device, left: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask on ``device``, padded on the left (prompts) or the right (continuations)."""
    ids, mask = pad_rows(rows, pad_id, left=left)
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # Count from each row's first real token: with left padding the default arange would shift
    # every position, which changes absolute-position models (GPT-2).
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _decoder(model):
    """The transformer under the LM head (``model.model`` for Llama, ``model.transformer`` for GPT-2)."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.base_model


def hidden_states(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Final hidden states (after the last norm) of a left-padded batch, without the LM head.

    No KV cache is asked for or passed, so a frozen-prefix cache (``omoe_lab.prefix``) can replay
    this call.
    """
    return _decoder(model)(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False)[0]


def logits_at(model, hidden: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits for the given hidden states only, in float32."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma-style models squash logits in their forward; do the same here
        logits = cap * torch.tanh(logits / cap)
    return logits


def _token_logprobs(model, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log p(token | hidden)`` for matching rows of ``hidden`` [n, d] and ``tokens`` [n]."""
    return torch.log_softmax(logits_at(model, hidden), dim=-1).gather(-1, tokens[:, None])[:, 0]


def _batches(order: list[int], batch_size: int):
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _scoring_mode(model):
    """Eval mode while scoring (no dropout), then the caller's mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------
# Continuation log-likelihoods: log P(c | x) = Σ_i log p(c_i | x, c_<i)


def _sums_with_kv_cache(model, contexts, continuations, pad_id, device) -> torch.Tensor:
    """Each context runs once; its key/value cache is repeated for every one of its continuations
    and only the continuation tokens run again, which costs about one context pass, not one per
    continuation."""
    decoder = _decoder(model)
    ids, mask = _pad(contexts, pad_id, device)
    out = decoder(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True)
    # log p(first continuation token | context) comes from the context's last position.
    next_logprobs = torch.log_softmax(logits_at(model, out.last_hidden_state[:, -1]), dim=-1)
    owner = torch.tensor([row for row, conts in enumerate(continuations) for _ in conts], device=device)
    cache = out.past_key_values
    cache.reorder_cache(owner)  # repeated indices: one copy of the context's cache per continuation
    # Continuations follow their context, so they are right-padded; padding after them is causal-masked away.
    cont, cont_mask = _pad([c for conts in continuations for c in conts], pad_id, device, left=False)
    hidden = decoder(
        input_ids=cont,
        attention_mask=torch.cat([mask[owner], cont_mask], dim=-1),
        position_ids=mask.sum(-1)[owner, None] + torch.arange(cont.shape[1], device=device),
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state
    # Continuation position k predicts continuation token k+1.
    scored = cont_mask[:, 1:].bool()
    later = _token_logprobs(model, hidden[:, :-1][scored], cont[:, 1:][scored])
    return next_logprobs[owner, cont[:, 0]].index_add(0, scored.nonzero()[:, 0], later)


def _sums_of_full_sequences(model, contexts, continuations, pad_id, device) -> torch.Tensor:
    """Each ``context + continuation`` runs as one left-padded sequence, without a KV cache, as a
    plain ``decoder(input_ids=..., attention_mask=...)`` call that a frozen-prefix cache can replay."""
    sequences, is_continuation = [], []
    for context, conts in zip(contexts, continuations):
        for c in conts:
            sequences.append(context + c)
            is_continuation.append([0] * len(context) + [1] * len(c))
    ids, mask = _pad(sequences, pad_id, device)
    in_continuation, _ = _pad(is_continuation, 0, device)
    hidden = hidden_states(model, ids, mask)
    # Position j predicts token j+1: score the positions whose next token is a continuation token.
    scored = in_continuation[:, 1:].bool()
    logprobs = _token_logprobs(model, hidden[:, :-1][scored], ids[:, 1:][scored])
    return torch.zeros(len(sequences), device=device).index_add(0, scored.nonzero()[:, 0], logprobs)


@torch.inference_mode()
def score_continuations(
    model,
    contexts: list[list[int]],
    continuations: list[list[list[int]]],
    pad_id: int,
    batch_size: int = 8,
    progress: bool = True,
    *,
    full_sequences: bool = False,
    desc: str = "loglik",
) -> list[list[float]]:
    """Per context ``x`` (token ids), ``log P(c | x) = Σ_i log p(c_i | x, c_<i)`` for each of its
    continuations ``c`` (token ids, at least one each), ``batch_size`` contexts per pass.

    By default each context runs once and its KV cache serves all its continuations;
    ``full_sequences=True`` runs every ``x + c`` whole, without a cache (same scores to float
    round-off; what a frozen-prefix cache needs to replay the frozen blocks).
    """
    for conts in continuations:
        if not conts or not all(conts):
            raise ValueError("score_continuations: every context needs continuations of at least one token")
    score_batch = _sums_of_full_sequences if full_sequences else _sums_with_kv_cache
    order = sorted(range(len(contexts)), key=lambda i: -(len(contexts[i]) + max(map(len, continuations[i]))))
    results: list[list[float]] = [[] for _ in contexts]
    device = _model_device(model)
    with tqdm(total=len(contexts), desc=desc, disable=not progress) as bar:
        for batch in _batches(order, batch_size):
            sums = score_batch(model, [contexts[i] for i in batch], [continuations[i] for i in batch], pad_id, device).tolist()
            start = 0
            for i in batch:
                results[i], start = sums[start : start + len(continuations[i])], start + len(continuations[i])
            bar.update(len(batch))
    return results


# ---------------------------------------------------------------------------------------------
# Protocols


def _label_token_ids(tokenizer, example: Example) -> list[int]:
    first = [tokenizer(word, add_special_tokens=False).input_ids[0] for word in option_labels(example)]
    if len(set(first)) != len(first):
        raise ValueError(f"{example.task}: label words {option_labels(example)} share a first token; the label protocol needs distinct ones")
    return first


@torch.inference_mode()
def score_labels(
    model, tokenizer, examples: list[Example], batch_size: int = 8, progress: bool = True, *, prompt_style: str = "listed"
) -> list[list[float]]:
    """Per example, ``log p(label word's first token | prompt)`` for each option."""
    for ex in examples:
        check_label_words_are_shown(ex, prompt_style, "the label protocol")
    prompts = [encode_prompt(tokenizer, ex, prompt_style) for ex in examples]
    label_ids = [_label_token_ids(tokenizer, ex) for ex in examples]
    order = sorted(range(len(examples)), key=lambda i: -len(prompts[i]))
    scores: list[list[float]] = [[] for _ in examples]
    device = _model_device(model)
    with tqdm(total=len(examples), desc="label", disable=not progress) as bar:
        for batch in _batches(order, batch_size):
            ids, mask = _pad([prompts[i] for i in batch], tokenizer.pad_token_id, device)
            last = hidden_states(model, ids, mask)[:, -1]  # left padding: every prompt ends here
            logprobs = torch.log_softmax(logits_at(model, last), dim=-1)
            for row, i in enumerate(batch):
                scores[i] = logprobs[row, label_ids[i]].tolist()
            bar.update(len(batch))
    return scores


def score_options(
    model,
    tokenizer,
    examples: list[Example],
    batch_size: int = 8,
    progress: bool = True,
    *,
    prompt_style: str = "listed",
    full_sequences: bool = False,
) -> list[tuple[list[float], list[int]]]:
    """Per example, ``(log P(option | prompt), number of option tokens)`` for each option
    (:func:`score_continuations` of the prompt and the option texts, ``batch_size`` prompts per pass)."""
    prompts = [encode_prompt(tokenizer, ex, prompt_style) for ex in examples]
    options = [option_token_ids(tokenizer, ex, prompt_style) for ex in examples]
    sums = score_continuations(
        model, prompts, options, tokenizer.pad_token_id, batch_size, progress, full_sequences=full_sequences, desc=f"loglik {prompt_style}"
    )
    return [(s, [len(c) for c in conts]) for s, conts in zip(sums, options)]


def score_neutral(
    model, tokenizer, examples: list[Example], batch_size: int = 8, progress: bool = True, *, full_sequences: bool = False
) -> list[list[float]]:
    """Per example, ``log P(option | "Answer:")`` for each option: the calibration term of PMI.

    The neutral context is ``"Answer:"`` encoded like a prompt (a BOS where the tokenizer adds
    one, no trailing EOS). The continuations are the same in every prompt style, so one pass
    serves them all, and each distinct option is scored once, however many questions share it
    ("true", "false", "yes", ...).
    """
    options = [option_token_ids(tokenizer, ex) for ex in examples]
    distinct = list(dict.fromkeys(tuple(c) for conts in options for c in conts))
    # The neutral context is the same for all, so any grouping gives the same scores; groups as
    # wide as the widest question keep a pass about as big as one over the prompts.
    width = max(len(conts) for conts in options)
    groups = [[list(c) for c in distinct[start : start + width]] for start in range(0, len(distinct), width)]
    neutral = encode_prompt_text(tokenizer, ANSWER_CUE)
    sums = score_continuations(
        model, [neutral] * len(groups), groups, tokenizer.pad_token_id, batch_size, progress,
        full_sequences=full_sequences, desc="loglik neutral",
    )
    by_option = {tuple(c): s for group, group_sums in zip(groups, sums) for c, s in zip(group, group_sums)}
    return [[by_option[tuple(c)] for c in conts] for conts in options]


def _letter_answer(letters: str) -> re.Pattern:
    # A letter counts only where it stands as an answer: after "answer is" / "Answer:" (brackets
    # allowed), or followed by the end of the text or line, ".", ")", ":" or ",". A sentence that
    # starts with the article ("A cat sits ...") has a word after the letter, so it does not count.
    letter = f"([{letters}])"
    after_cue = rf"(?i:\banswer\s+is\s*:?|\banswer\s*:)\s*\(?{letter}(?![A-Za-z0-9])"
    standing = rf"(?<![A-Za-z0-9]){letter}(?=[ \t]*(?:$|[\n.):,]))"
    return re.compile(f"{after_cue}|{standing}")


def parse_answer(text: str, example: Example) -> int:
    """Index of the first option named in ``text``, or -1.

    Accepts ``true``/``false`` in any case for true/false questions; LLM-Adapters' numbered
    words (``answer2`` → 1); and the example's letters ``A``..``H``, case-sensitive, where they
    stand as an answer: ``"B"``, ``"B."``, ``"(B)"``, ``"B)"``, ``"B:"``, ``"B, ..."``,
    ``"the answer is B ..."``, ``"Answer: B ..."`` — not ``"A cat sits ..."`` or ``"a city"``.
    """
    if is_boolean(example):
        matches = [(m.start(), ("true", "false").index(m.group(1).lower())) for m in re.finditer(r"\b(true|false)\b", text, re.IGNORECASE)]
    else:
        letters = LETTERS[: len(example.options)]
        matches = [(m.start(), letters.index(m.group(1) or m.group(2))) for m in _letter_answer(letters).finditer(text)]
    matches += [(m.start(), int(m.group(1)) - 1) for m in NUMBERED_ANSWER.finditer(text)]
    valid = sorted((start, index) for start, index in matches if 0 <= index < len(example.options))
    return valid[0][1] if valid else -1


@torch.inference_mode()
def generate_answers(
    model,
    tokenizer,
    examples: list[Example],
    batch_size: int = 8,
    max_new_tokens: int = 16,
    progress: bool = True,
    *,
    prompt_style: str = "listed",
) -> list[str]:
    """Greedy continuations of each prompt (new text only)."""
    for ex in examples:
        check_label_words_are_shown(ex, prompt_style, "the generate protocol")
    prompts = [encode_prompt(tokenizer, ex, prompt_style) for ex in examples]
    order = sorted(range(len(examples)), key=lambda i: -len(prompts[i]))
    texts = [""] * len(examples)
    device = _model_device(model)
    with tqdm(total=len(examples), desc="generate", disable=not progress) as bar:
        for batch in _batches(order, batch_size):
            ids, mask = _pad([prompts[i] for i in batch], tokenizer.pad_token_id, device)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
            )
            for row, i in enumerate(batch):
                texts[i] = tokenizer.decode(out[row, ids.shape[1] :], skip_special_tokens=True)
            bar.update(len(batch))
    return texts


# ---------------------------------------------------------------------------------------------
# Entry points


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first of equal maxima


def _accuracy_by_task(examples: list[Example], predictions: list[Prediction]) -> tuple[dict, dict]:
    per_task, chance = {}, {}
    for task in dict.fromkeys(ex.task for ex in examples):  # first-seen order
        mine = [(ex, p) for ex, p in zip(examples, predictions) if ex.task == task]
        per_task[task] = sum(p.correct for _, p in mine) / len(mine)
        chance[task] = sum(1 / len(ex.options) for ex, _ in mine) / len(mine)
    return per_task, chance


def _result(protocol: str, examples: list[Example], predictions: list[Prediction], **settings) -> EvalResult:
    per_task, chance = _accuracy_by_task(examples, predictions)
    return EvalResult(
        protocol=protocol,
        accuracy=sum(p.correct for p in predictions) / len(predictions),
        per_task=per_task,
        n=len(predictions),
        predictions=predictions,
        chance=chance,
        **settings,
    )


def _loglik_result(examples, option_scores, neutral, prompt_style: str, normalize: str, calibrate: bool) -> EvalResult:
    """The loglik EvalResult of one normalization (or PMI) from already computed sums."""
    predictions = []
    for i, (ex, (sums, n_tokens)) in enumerate(zip(examples, option_scores)):
        n_chars = [len(option) for option in ex.options]  # lm-eval's acc_norm length: no leading space
        if calibrate:
            scores = [s - u for s, u in zip(sums, neutral[i])]
        else:
            scores = normalized_scores(sums, n_tokens, n_chars, normalize)
        predictions.append(Prediction(
            ex.task, ex.label, _argmax(scores), scores, loglik_sum=list(sums), n_tokens=list(n_tokens), n_chars=n_chars,
            neutral_sum=list(neutral[i]) if calibrate else None,
        ))
    return _result("loglik", examples, predictions, normalize="sum" if calibrate else normalize, prompt_style=prompt_style, calibrate=calibrate)


def _check_scoring_inputs(tokenizer, examples) -> list[Example]:
    examples = list(examples)
    if not examples:
        raise ValueError("evaluate: no examples to score")
    if tokenizer.pad_token_id is None:
        raise ValueError("evaluate: the tokenizer has no pad token (load_model sets one)")
    return examples


def evaluate(
    model,
    tokenizer,
    examples: list[Example],
    protocol: str = "loglik",
    batch_size: int = 8,
    progress: bool = True,
    *,
    normalize: str | bool = "mean",
    prompt_style: str = "listed",
    calibrate: bool = False,
    max_new_tokens: int = 16,
    full_sequences: bool = False,
) -> EvalResult:
    """Score ``examples`` under ``protocol`` ("loglik", "label" or "generate") with prompts of ``prompt_style``.

    loglik only: ``normalize`` chooses by ``"mean"`` (per token), ``"sum"`` or ``"char"`` (per
    character); ``calibrate=True`` chooses by PMI of sums, ``log P(c | x) − log P(c | "Answer:")``,
    and ignores ``normalize`` (recorded as ``"sum"``); ``full_sequences=True`` scores each prompt
    + option as one sequence without a KV cache (for a frozen-prefix cache; the label protocol
    always runs that way, generation always needs its cache).
    The model is put in eval mode while scoring and returned to its previous mode.
    """
    examples = _check_scoring_inputs(tokenizer, examples)
    if protocol not in PROTOCOLS:
        raise ValueError(f"evaluate: unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    check_prompt_style(prompt_style)
    normalize = resolve_normalize(normalize)
    if calibrate and protocol != "loglik":
        raise ValueError(f"evaluate: calibrate applies to the loglik protocol, not {protocol!r}")
    with _scoring_mode(model):
        if protocol == "loglik":
            option_scores = score_options(
                model, tokenizer, examples, batch_size, progress, prompt_style=prompt_style, full_sequences=full_sequences
            )
            neutral = score_neutral(model, tokenizer, examples, batch_size, progress, full_sequences=full_sequences) if calibrate else None
            return _loglik_result(examples, option_scores, neutral, prompt_style, normalize, calibrate)
        if protocol == "label":
            scores = score_labels(model, tokenizer, examples, batch_size, progress, prompt_style=prompt_style)
            predictions = [Prediction(ex.task, ex.label, _argmax(s), s) for ex, s in zip(examples, scores)]
        else:
            texts = generate_answers(model, tokenizer, examples, batch_size, max_new_tokens, progress, prompt_style=prompt_style)
            predictions = [Prediction(ex.task, ex.label, parse_answer(t, ex), [], generated=t) for ex, t in zip(examples, texts)]
    return _result(protocol, examples, predictions, prompt_style=prompt_style)


def score_all_ways(
    model,
    tokenizer,
    examples: list[Example],
    styles: tuple[str, ...] = PROMPT_STYLES,
    batch_size: int = 8,
    progress: bool = True,
    full_sequences: bool | Collection[str] = False,
) -> dict[str, EvalResult]:
    """Zero-shot loglik under every prompt style × normalization, plus PMI per style.

    Keys ``"<style>/<mean|sum|char|pmi>"`` (``"listed/mean"``, ``"cloze/pmi"``, ...). One model
    pass per style gives the sums every normalization divides, and one pass over the neutral
    context ``"Answer:"``, shared by all styles, gives the PMI term.
    ``full_sequences``: for every style (True) or the named ones, score whole sequences (what a
    frozen-prefix cache can replay later); the neutral pass always uses the KV cache (its
    sequences are never scored again).
    """
    examples = _check_scoring_inputs(tokenizer, examples)
    styles = tuple(check_prompt_style(style) for style in styles)
    if not styles or len(set(styles)) != len(styles):
        raise ValueError(f"score_all_ways: styles must be distinct names from {PROMPT_STYLES}, got {styles}")
    results: dict[str, EvalResult] = {}
    with _scoring_mode(model):
        neutral = score_neutral(model, tokenizer, examples, batch_size, progress)
        for style in styles:
            whole = full_sequences if isinstance(full_sequences, bool) else style in full_sequences
            option_scores = score_options(model, tokenizer, examples, batch_size, progress, prompt_style=style, full_sequences=whole)
            for normalize in NORMALIZATIONS:
                results[f"{style}/{normalize}"] = _loglik_result(examples, option_scores, neutral, style, normalize, calibrate=False)
            results[f"{style}/pmi"] = _loglik_result(examples, option_scores, neutral, style, "sum", calibrate=True)
    return results


def majority_baseline(train_examples: list[Example], test_examples: list[Example]) -> EvalResult:
    """Per task, always answer what the task's training split answers most often (protocol ``"majority"``).

    The answer is an option position (the label index): for true/false tasks that is the label
    itself, for multiple choice the most frequent position of the correct option. Equal counts
    go to the lower index; a test question with fewer options than that position (ARC has 3 to 5)
    gets its most frequent position that it has. Test labels are only used to score.
    ``scores`` are the training counts of each of the question's positions.
    """
    test_examples = list(test_examples)
    if not test_examples:
        raise ValueError("majority_baseline: no test examples")
    counts: dict[str, Counter] = {}
    for ex in train_examples:
        counts.setdefault(ex.task, Counter())[ex.label] += 1
    missing = sorted({ex.task for ex in test_examples} - set(counts))
    if missing:
        raise ValueError(f"majority_baseline: no training examples for {missing}")
    predictions = []
    for ex in test_examples:
        scores = [float(counts[ex.task][position]) for position in range(len(ex.options))]
        predictions.append(Prediction(ex.task, ex.label, _argmax(scores), scores))
    return _result("majority", test_examples, predictions)
