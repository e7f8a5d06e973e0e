"""Prompt templates shared by training and every scorer (OMOE_SPEC §7).

The prompt lists the options under short labels and ends with ``"Answer:"``. What follows it is
- for the ``label`` protocol (and training with ``target="label"``): the label word of an option
  (``" A"``, ``" true"``),
- for the ``loglik`` protocol (and training with ``target="option"``): the option's own text
  (``" " + option``),
- for the ``generate`` protocol: whatever the model writes, parsed back to a label.
Label words start with a space and their first tokens differ, so one next-token distribution
scores them all.
"""
from __future__ import annotations

from .example import Example

LETTERS = "ABCDEFGH"
BOOLEAN_OPTIONS = ("true", "false")


def is_boolean(example: Example) -> bool:
    return tuple(o.lower() for o in example.options) == BOOLEAN_OPTIONS


def option_labels(example: Example) -> list[str]:
    """Label words, one per option: ``[" true", " false"]`` or ``[" A", " B", ...]``."""
    if is_boolean(example):
        return [" true", " false"]
    if len(example.options) > len(LETTERS):
        raise ValueError(f"{example.task}: at most {len(LETTERS)} options are supported")
    return [" " + letter for letter in LETTERS[: len(example.options)]]


def build_prompt(example: Example) -> str:
    """The text before the answer, ending with ``"Answer:"`` (no trailing space)."""
    if is_boolean(example):
        return f"Question: {example.question}\nTrue or false?\nAnswer:"
    lines = [f"Question: {example.question}"]
    lines += [f"{label.strip()}. {option}" for label, option in zip(option_labels(example), example.options)]
    lines.append("Answer:")
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


def option_continuations(example: Example) -> list[str]:
    """Continuations scored by the ``loglik`` protocol: each option's text after a space."""
    return [" " + option for option in example.options]
