"""Prompt templates shared by training and every scorer (OMOE_SPEC §7).

The prompt lists the options under short labels and ends with ``"Answer:"``. What follows it is
- for training and the ``label`` protocol: the label word of an option (``" A"``, ``" true"``),
- for the ``loglik`` protocol: the option's own text (``" " + option``),
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


def target_text(example: Example) -> str:
    """What training teaches the model to write after the prompt: the correct label word."""
    return option_labels(example)[example.label]


def option_continuations(example: Example) -> list[str]:
    """Continuations scored by the ``loglik`` protocol: each option's text after a space."""
    return [" " + option for option in example.options]
