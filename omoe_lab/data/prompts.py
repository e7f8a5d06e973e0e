"""Prompt templates shared by training and every scorer (OMOE_SPEC §7).

Two prompt styles (``PROMPT_STYLES``), named next to every number:

- ``"listed"``: the question, then the options under short labels, then ``"Answer:"``::

      Question: What is the capital of France?
      A. Paris
      B. Berlin
      Answer:

  A true/false question gets the line ``True or false?`` in place of the labelled options.
- ``"cloze"`` (lm-eval-harness's zero-shot convention): the question (or context) alone, then
  ``"Answer:"``; the options are NOT shown, each is scored as its continuation::

      Question: What is the capital of France?
      Answer:

  A true/false question is the question alone as well: the ``True or false?`` line is the
  boolean form of listing the options, so cloze drops it, and ``" true"``/``" false"`` are
  scored as continuations like any other option text. How much more likely the model finds one
  of them regardless of the question is what the calibrated score (domain-conditional PMI,
  ``evaluate(calibrate=True)``) takes out.

Every prompt ends with ``"Answer:"`` (no trailing space). What follows it is
- for the ``label`` protocol (and training with ``target="label"``): the label word of an option
  (``" A"``, ``" true"``). Under cloze, letters name options the prompt never shows, so only
  true/false examples can be labelled there (:func:`check_label_words_are_shown`);
- for the ``loglik`` protocol (and training with ``target="option"``): the option's own text
  (``" " + option``), the same continuation in both styles;
- for the ``generate`` protocol: whatever the model writes, parsed back to a label.
Label words start with a space and their first tokens differ, so one next-token distribution
scores them all.
"""
from __future__ import annotations

from .example import Example

LETTERS = "ABCDEFGH"
BOOLEAN_OPTIONS = ("true", "false")
PROMPT_STYLES = ("listed", "cloze")
ANSWER_CUE = "Answer:"  # every prompt's last word; alone, the neutral context of calibrated scores


def check_prompt_style(style: str) -> str:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {PROMPT_STYLES}")
    return style


def is_boolean(example: Example) -> bool:
    return tuple(o.lower() for o in example.options) == BOOLEAN_OPTIONS


def option_labels(example: Example) -> list[str]:
    """Label words, one per option: ``[" true", " false"]`` or ``[" A", " B", ...]``."""
    if is_boolean(example):
        return [" true", " false"]
    if len(example.options) > len(LETTERS):
        raise ValueError(f"{example.task}: at most {len(LETTERS)} options are supported")
    return [" " + letter for letter in LETTERS[: len(example.options)]]


def check_label_words_are_shown(example: Example, style: str, what: str) -> None:
    """Refuse letter labels under a prompt that does not show which option each letter names."""
    if check_prompt_style(style) == "cloze" and not is_boolean(example):
        raise ValueError(
            f"{example.task}: {what} answers with option letters, which the cloze prompt does not list; "
            "use the listed prompt, or score the option text (loglik / target='option')"
        )


def build_prompt(example: Example, style: str = "listed") -> str:
    """The text before the answer, ending with ``"Answer:"`` (no trailing space); see the module docstring."""
    lines = [f"Question: {example.question}"]
    if check_prompt_style(style) == "listed":
        if is_boolean(example):
            lines.append("True or false?")
        else:
            lines += [f"{label.strip()}. {option}" for label, option in zip(option_labels(example), example.options)]
    lines.append(ANSWER_CUE)
    return "\n".join(lines)


def target_text(example: Example, target: str = "label") -> str:
    """What training teaches the model to write after the prompt.

    ``"label"``: the correct label word (``" B"``), scored by the ``label`` protocol;
    ``"option"``: the correct option's text, scored by the ``loglik`` protocol. Small models
    bind answers to letters poorly, so the option text is often the easier thing to learn.
    """
    if target == "label":
        return option_labels(example)[example.label]
    if target == "option":
        return option_continuations(example)[example.label]
    raise ValueError(f"target must be 'label' or 'option', got {target!r}")


def option_continuations(example: Example, style: str = "listed") -> list[str]:
    """Continuations scored by the ``loglik`` protocol: each option's text after a space (both styles)."""
    check_prompt_style(style)
    return [" " + option for option in example.options]
