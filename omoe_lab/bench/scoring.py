"""The ``loglik`` scorer against the obvious way to write it.

``loglik`` scores ``log P(c | x) = Σ_i log p(c_i | x, c_<i)`` for every option c of a prompt x
(``omoe_lab.evaluate``): each prompt runs once and its KV cache serves all its options, and the
vocabulary projection (49152 × 576 for the default model) is applied only at the positions that
predict an option token.

The baseline (``full_vocabulary_sums``, written here and only here, as the thing to beat) runs
every ``prompt + option`` whole through the model, projects *every* position onto the whole
vocabulary, takes the log-softmax and picks the option tokens' log-probabilities. Both run on the
same examples (the quick profile's test questions, cloze prompts as the runs score them) in
float32, and must give the same sums to 1e-4.
"""
from __future__ import annotations

import torch

from ..data.collate import encode_prompt, pad_rows
from ..data.prompts import option_continuations
from .measure import time_calls, timing_fields
from .options import Options
from .record import of_ratio, ratio, row_metric, target

EXAMPLES, SMOKE_EXAMPLES = 16, 4
BATCH_SIZE = 8  # prompts per pass, for both scorers
PROMPT_STYLE = "cloze"  # what loglik runs score (experiments.DEFAULT_PROMPT_STYLE)
SPEED_LIMIT, AGREEMENT = 2.0, 1e-4


@torch.inference_mode()
def full_vocabulary_sums(model, tokenizer, examples, prompt_style: str = PROMPT_STYLE,
                         batch_size: int = BATCH_SIZE) -> list[list[float]]:
    """Baseline scorer: ``log P(option | prompt)`` per option from full-vocabulary logits at every position.

    Sequences are left-padded with positions counted from each row's first real token, so a
    row's option occupies its last L positions and is predicted by the L positions before them.
    """
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(examples), batch_size):
        sequences, lengths, owners = [], [], []
        for row, example in enumerate(examples[start : start + batch_size]):
            prompt = encode_prompt(tokenizer, example, prompt_style)
            for text in option_continuations(example, prompt_style):
                option = tokenizer(text, add_special_tokens=False).input_ids
                sequences.append(prompt + option)
                lengths.append(len(option))
                owners.append(row)
        ids, mask = pad_rows(sequences, tokenizer.pad_token_id, left=True)
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # counted from each row's first real token
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # [sequences, positions, vocabulary]
        next_token = logprobs[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # position j predicts token j + 1
        sums = [float(next_token[n, -length:].sum()) for n, length in enumerate(lengths)]
        batch_scores = [[] for _ in range(owners[-1] + 1)]
        for owner, value in zip(owners, sums):
            batch_scores[owner].append(value)
        scores += batch_scores
    return scores


def run(options: Options) -> dict:
    from ..evaluate import evaluate
    from ..experiments import RunConfig, spread, test_examples
    from ..models import load_model

    device, rows, ratios = options.device, [], []
    model, tokenizer = load_model(options.model_name, device=device, dtype=torch.float32, progress=options.progress)
    examples = spread(test_examples(RunConfig(method="none", profile="quick", model=options.model_name)),
                      SMOKE_EXAMPLES if options.smoke else EXAMPLES)
    options_count = sum(len(ex.options) for ex in examples)
    scored: dict[str, list[list[float]]] = {}

    def loglik():
        result = evaluate(model, tokenizer, examples, protocol="loglik", batch_size=BATCH_SIZE, progress=False,
                          prompt_style=PROMPT_STYLE)
        scored["loglik"] = [p.loglik_sum for p in result.predictions]

    def baseline():
        scored["baseline"] = full_vocabulary_sums(model, tokenizer, examples)

    for name, call in (("loglik", loglik), ("full-vocabulary baseline", baseline)):
        row = {"id": name, "scorer": name, "examples": len(examples), "options": options_count,
               **timing_fields(time_calls(call, options.repeats, device))}
        row["examples_per_s"] = len(examples) / (row["ms"] / 1000)
        rows.append(row)
        options.say(f"scoring {name:26s} {row['ms']:9.1f} ms  {row['examples_per_s']:7.2f} examples/s")
    difference = max(abs(a - b) for ours, theirs in zip(scored["loglik"], scored["baseline"], strict=True)
                     for a, b in zip(ours, theirs, strict=True))
    rows[0]["max_abs_difference"] = difference
    speed = ratio("loglik / full-vocabulary baseline examples/s", row_metric("loglik", "examples_per_s"),
                  row_metric("full-vocabulary baseline", "examples_per_s"), rows, ratios)
    targets = [
        target("loglik scorer examples/s over the full-vocabulary baseline", of_ratio(speed["name"]), SPEED_LIMIT, rows, ratios,
               at_most=False),
        target("both scorers give the same log-prob sums (max abs difference)", row_metric("loglik", "max_abs_difference"),
               AGREEMENT, rows, ratios),
    ]
    return {
        "description": f"{options.model_name} model (float32), {len(examples)} quick-profile test questions ({options_count} "
                       f"options), {PROMPT_STYLE} prompts, {BATCH_SIZE} prompts per pass.",
        "settings": {"model": options.model_name, "examples": len(examples), "options": options_count, "batch_size": BATCH_SIZE,
                     "prompt_style": PROMPT_STYLE},
        "rows": rows, "ratios": ratios, "targets": targets,
    }
