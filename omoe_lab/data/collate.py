"""Training batches whose loss falls only on the answer: ``prompt + target (+ eos)``.

Prompt and target are tokenized separately and their ids concatenated, so the boundary between
what is masked and what is learned is exact. The prompt ids come from :func:`encode_prompt`, the
one prompt encoder that every scorer in ``omoe_lab.evaluate`` uses too, so training and scoring
see the very same prompt tokens (special tokens included, a trailing EOS never).
Labels follow the Hugging Face convention: aligned with ``input_ids`` (the model shifts them) and
``-100`` wherever no loss is wanted.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .example import Example
from .prompts import build_prompt, check_label_words_are_shown, check_prompt_style, option_continuations, target_text

IGNORE_INDEX = -100  # what torch's cross-entropy and HF models skip


def pad_token_id(tokenizer) -> int | None:
    """The id to pad with: the tokenizer's pad token, else its EOS (padding is masked anyway)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_prompt_text(tokenizer, text: str) -> list[int]:
    """``tokenizer(text).input_ids`` without a trailing EOS: a context that the answer continues.

    Special tokens are added as the tokenizer adds them (a BOS stays), but tokenizers that append
    EOS to every text would otherwise end the context before the answer it is meant to lead to.
    """
    ids = list(tokenizer(text)["input_ids"])
    if ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id:
        ids.pop()
    return ids


def encode_prompt(tokenizer, example: Example, style: str = "listed") -> list[int]:
    """The prompt's token ids, exactly as training (:func:`encode_example`) and every scorer feed them."""
    return encode_prompt_text(tokenizer, build_prompt(example, style))


def encode_example(
    tokenizer, example: Example, max_length: int, add_eos: bool = True, target: str = "label", prompt_style: str = "listed"
) -> dict[str, list[int]]:
    """``input_ids`` of prompt + target (+ eos) and ``labels`` that are ``-100`` on the prompt.

    The prompt is :func:`encode_prompt` of ``prompt_style``, the one the scorer of that style
    sees. Too long a prompt loses tokens from its left (after a leading BOS, which is kept); the
    target is never cut, and a ``max_length`` that cannot hold it raises.
    """
    if target == "label":
        check_label_words_are_shown(example, prompt_style, "target='label'")
    prompt_ids = encode_prompt(tokenizer, example, prompt_style)
    eos = tokenizer.eos_token_id
    target_ids = list(tokenizer(target_text(example, target), add_special_tokens=False)["input_ids"])
    if not target_ids:
        raise ValueError(f"{example.task}: target {target_text(example, target)!r} tokenizes to nothing")
    if add_eos and eos is not None:
        target_ids.append(eos)

    keep_bos = 1 if prompt_ids and tokenizer.bos_token_id is not None and prompt_ids[0] == tokenizer.bos_token_id else 0
    room = max_length - len(target_ids) - keep_bos  # prompt tokens after the BOS that still fit
    if room < 1:
        raise ValueError(
            f"{example.task}: max_length={max_length} leaves no room for the prompt beside the "
            f"{len(target_ids)} target tokens"
        )
    if len(prompt_ids) - keep_bos > room:
        prompt_ids = prompt_ids[:keep_bos] + prompt_ids[len(prompt_ids) - room:]
    return {"input_ids": prompt_ids + target_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids}


def option_token_ids(tokenizer, example: Example, style: str = "listed") -> list[list[int]]:
    """Each option's continuation tokens, exactly as the ``loglik`` scorer appends them to the prompt."""
    options = [list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in option_continuations(example, style)]
    if not all(options):
        raise ValueError(f"{example.task}: an option of {example.options} has no tokens")
    return options


def encode_choices(tokenizer, example: Example, max_length: int, prompt_style: str = "listed") -> dict[str, list]:
    """One row per option, ``prompt + option`` as the ``loglik`` scorer reads it (no EOS), for the
    rank-classification objective: ``{"rows", "option_lengths", "gold"}``.

    A prompt too long for its longest option loses tokens from its left (after a kept BOS), as in
    :func:`encode_example`; the options are never cut.
    """
    prompt_ids = encode_prompt(tokenizer, example, prompt_style)
    options = option_token_ids(tokenizer, example, prompt_style)
    keep_bos = 1 if prompt_ids and tokenizer.bos_token_id is not None and prompt_ids[0] == tokenizer.bos_token_id else 0
    room = max_length - max(map(len, options)) - keep_bos
    if room < 1:
        raise ValueError(f"{example.task}: max_length={max_length} leaves no room for the prompt beside an option of "
                         f"{max(map(len, options))} tokens")
    if len(prompt_ids) - keep_bos > room:
        prompt_ids = prompt_ids[:keep_bos] + prompt_ids[len(prompt_ids) - room:]
    return {"rows": [prompt_ids + option for option in options], "option_lengths": [len(o) for o in options], "gold": example.label}


class TrainCollator:
    """Turns a list of Examples into right-padded ``input_ids``, ``attention_mask``, ``labels``.

    Each row is :func:`encode_example` with this collator's ``target`` and ``prompt_style``.
    Padding uses the tokenizer's pad id (its EOS when it has none); padded positions get
    attention 0 and label ``-100`` by position, so a pad id equal to EOS never hides the
    target's EOS from the loss.
    """

    def __init__(self, tokenizer, max_length: int = 256, add_eos: bool = True, *, target: str = "label", prompt_style: str = "listed"):
        pad = pad_token_id(tokenizer)
        if pad is None:
            raise ValueError("TrainCollator: the tokenizer has neither a pad nor an EOS token to pad with")
        check_prompt_style(prompt_style)
        self.tokenizer, self.max_length, self.add_eos, self.pad_token_id = tokenizer, max_length, add_eos, pad
        self.target, self.prompt_style = target, prompt_style

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("TrainCollator: empty batch")
        encoded = [
            encode_example(self.tokenizer, ex, self.max_length, self.add_eos, self.target, self.prompt_style) for ex in examples
        ]
        return pad_encoded(encoded, self.pad_token_id)


def pad_rows(rows: Sequence[Sequence[int]], pad_value: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths as one [N, width] long tensor plus its 0/1 attention mask,
    padded on the right, or on the left (prompts whose last position predicts the next token)."""
    width = max(len(row) for row in rows)
    values = torch.full((len(rows), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        values[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return values, mask


def pad_encoded(encoded: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad outputs of ``encode_example`` into ``input_ids``, ``attention_mask``, ``labels``."""
    input_ids, attention_mask = pad_rows([e["input_ids"] for e in encoded], pad_token_id)
    labels, _ = pad_rows([e["labels"] for e in encoded], IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
