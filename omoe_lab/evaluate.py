"""Scoring protocols for multiple-choice examples (OMOE_SPEC §7). Name the protocol next to every number.

- ``label``: one forward pass over the prompt; the prediction is the option whose label word
  (``" A"``, ``" true"``) has the highest next-token log-probability after ``"Answer:"``.
- ``loglik``: for each option text ``c`` with tokens ``c_1..c_L`` after the prompt ``x``,
  ``sum = Σ_i log p(c_i | x, c_<i)`` and ``mean = sum / L``; the prediction is the argmax of the
  mean (``normalize=True``, so long options are not penalized for their length) or of the sum.
- ``generate``: greedy decoding, then the first label word found in the text (``"B"``, ``"true"``,
  or LLM-Adapters style ``"answer2"``/``"solution1"``/``"option2"``/``"ending3"``); ``-1`` if none.

Batches are left-padded with an attention mask and position ids counted from each row's first
real token, so padding does not change any score. Logits are computed only where they are scored:
the decoder's hidden states are gathered at those positions before the output embedding, instead
of projecting every position onto the whole vocabulary.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from .data.collate import pad_rows
from .data.example import Example
from .data.prompts import build_prompt, option_continuations, option_labels

PROTOCOLS = ("loglik", "label", "generate")
NUMBERED_ANSWER = re.compile(r"\b(?:answer|solution|option|ending)\s*([1-9])\b", re.IGNORECASE)


@dataclass
class Prediction:
    """One scored example. ``scores`` are what ``prediction`` is the argmax of (empty for generate)."""

    task: str
    label: int
    prediction: int
    scores: list[float]
    loglik_sum: list[float] | None = None
    n_tokens: list[int] | None = None
    generated: str | None = None

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
    normalize: bool | None = None  # loglik only: prediction from per-token means (True) or sums

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        protocol = self.protocol
        if self.normalize is not None:
            protocol += " (per-token mean)" if self.normalize else " (sum)"
        tasks = ", ".join(f"{task} {acc:.3f}" for task, acc in self.per_task.items())
        return f"{protocol}: accuracy {self.accuracy:.3f} on n={self.n} [{tasks}]"


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
    """Final hidden states (after the last norm) of a left-padded batch, without the LM head."""
    return _decoder(model)(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False)[0]


def logits_at(model, hidden: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits for the given hidden states only, in float32."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma-style models squash logits in their forward; do the same here
        logits = cap * torch.tanh(logits / cap)
    return logits


def _batches(order: list[int], batch_size: int):
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------------
# Protocols


def _label_token_ids(tokenizer, example: Example) -> list[int]:
    first = [tokenizer(word, add_special_tokens=False).input_ids[0] for word in option_labels(example)]
    if len(set(first)) != len(first):
        raise ValueError(f"{example.task}: label words {option_labels(example)} share a first token; the label protocol needs distinct ones")
    return first


@torch.inference_mode()
def score_labels(model, tokenizer, examples: list[Example], batch_size: int = 8, progress: bool = True) -> list[list[float]]:
    """Per example, ``log p(label word's first token | prompt)`` for each option."""
    prompts = [tokenizer(build_prompt(ex)).input_ids for ex in examples]
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


@torch.inference_mode()
def score_options(model, tokenizer, examples: list[Example], batch_size: int = 8, progress: bool = True) -> list[tuple[list[float], list[int]]]:
    """Per example, ``(sum of option-token log-probs, number of option tokens)`` for each option.

    Each prompt runs once (``batch_size`` prompts per pass); its key/value cache is then repeated
    for every option of its example and only the option tokens run again, which costs about one
    prompt pass instead of one per option.
    """
    prompts = [tokenizer(build_prompt(ex)).input_ids for ex in examples]
    options = [[tokenizer(text, add_special_tokens=False).input_ids for text in option_continuations(ex)] for ex in examples]
    for ex, continuations in zip(examples, options):
        if not all(continuations):
            raise ValueError(f"{ex.task}: an option of {ex.options} has no tokens")
    order = sorted(range(len(examples)), key=lambda i: -len(prompts[i]))
    results: list[tuple[list[float], list[int]]] = [([], []) for _ in examples]
    device, decoder = _model_device(model), _decoder(model)
    with tqdm(total=len(examples), desc="loglik", disable=not progress) as bar:
        for batch in _batches(order, batch_size):
            ids, mask = _pad([prompts[i] for i in batch], tokenizer.pad_token_id, device)
            out = decoder(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True)
            # log p(first option token | prompt) comes from the prompt's last position.
            next_logprobs = torch.log_softmax(logits_at(model, out.last_hidden_state[:, -1]), dim=-1)
            owner = torch.tensor([row for row, i in enumerate(batch) for _ in options[i]], device=device)
            cache = out.past_key_values
            cache.reorder_cache(owner)  # repeated indices: one copy of the prompt's cache per option
            # Options follow their prompt, so they are right-padded; padding after them is causal-masked away.
            cont, cont_mask = _pad([c for i in batch for c in options[i]], tokenizer.pad_token_id, device, left=False)
            positions = mask.sum(-1)[owner, None] + torch.arange(cont.shape[1], device=device)
            hidden = decoder(
                input_ids=cont,
                attention_mask=torch.cat([mask[owner], cont_mask], dim=-1),
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
            # Option position k predicts option token k+1.
            scored = cont_mask[:, 1:].bool()
            later = torch.log_softmax(logits_at(model, hidden[:, :-1][scored]), dim=-1).gather(-1, cont[:, 1:][scored][:, None])[:, 0]
            sums = next_logprobs[owner, cont[:, 0]].index_add(0, scored.nonzero()[:, 0], later)
            lengths = cont_mask.sum(-1)
            start = 0
            for i in batch:
                k = len(options[i])
                results[i] = (sums[start : start + k].tolist(), lengths[start : start + k].tolist())
                start += k
            bar.update(len(batch))
    return results


def parse_answer(text: str, example: Example) -> int:
    """Index of the first option named in ``text``, or -1.

    Accepts the example's label words (``A``..``H`` case-sensitive so the article "a" does not
    count; ``true``/``false`` in any case) and LLM-Adapters' numbered words (``answer2`` → 1).
    """
    words = [w.strip() for w in option_labels(example)]
    boolean = words == ["true", "false"]
    label_word = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE if boolean else 0)
    matches = [(m.start(), words.index(m.group(1).lower() if boolean else m.group(1))) for m in label_word.finditer(text)]
    matches += [(m.start(), int(m.group(1)) - 1) for m in NUMBERED_ANSWER.finditer(text)]
    valid = sorted((start, index) for start, index in matches if 0 <= index < len(example.options))
    return valid[0][1] if valid else -1


@torch.inference_mode()
def generate_answers(model, tokenizer, examples: list[Example], batch_size: int = 8, max_new_tokens: int = 16, progress: bool = True) -> list[str]:
    """Greedy continuations of each prompt (new text only)."""
    prompts = [tokenizer(build_prompt(ex)).input_ids for ex in examples]
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
# Entry point


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _accuracy_by_task(examples: list[Example], predictions: list[Prediction]) -> tuple[dict, dict]:
    per_task, chance = {}, {}
    for task in dict.fromkeys(ex.task for ex in examples):  # first-seen order
        mine = [(ex, p) for ex, p in zip(examples, predictions) if ex.task == task]
        per_task[task] = sum(p.correct for _, p in mine) / len(mine)
        chance[task] = sum(1 / len(ex.options) for ex, _ in mine) / len(mine)
    return per_task, chance


def evaluate(
    model,
    tokenizer,
    examples: list[Example],
    protocol: str = "loglik",
    batch_size: int = 8,
    progress: bool = True,
    *,
    normalize: bool = True,
    max_new_tokens: int = 16,
) -> EvalResult:
    """Score ``examples`` under ``protocol`` ("loglik", "label" or "generate").

    ``normalize`` (loglik only): choose by per-token mean log-probability rather than the sum.
    The model is put in eval mode while scoring and returned to its previous mode.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("evaluate: no examples to score")
    if protocol not in PROTOCOLS:
        raise ValueError(f"evaluate: unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    if tokenizer.pad_token_id is None:
        raise ValueError("evaluate: the tokenizer has no pad token (load_model sets one)")
    was_training = model.training
    model.eval()
    try:
        if protocol == "label":
            scores = score_labels(model, tokenizer, examples, batch_size, progress)
            predictions = [Prediction(ex.task, ex.label, _argmax(s), s) for ex, s in zip(examples, scores)]
        elif protocol == "loglik":
            predictions = []
            for ex, (sums, lengths) in zip(examples, score_options(model, tokenizer, examples, batch_size, progress)):
                chosen = [s / n for s, n in zip(sums, lengths)] if normalize else sums
                predictions.append(Prediction(ex.task, ex.label, _argmax(chosen), chosen, loglik_sum=sums, n_tokens=lengths))
        else:
            texts = generate_answers(model, tokenizer, examples, batch_size, max_new_tokens, progress)
            predictions = [Prediction(ex.task, ex.label, parse_answer(t, ex), [], generated=t) for ex, t in zip(examples, texts)]
    finally:
        model.train(was_training)
    per_task, chance = _accuracy_by_task(examples, predictions)
    return EvalResult(
        protocol=protocol,
        accuracy=sum(p.correct for p in predictions) / len(predictions),
        per_task=per_task,
        n=len(predictions),
        predictions=predictions,
        chance=chance,
        normalize=normalize if protocol == "loglik" else None,
    )
