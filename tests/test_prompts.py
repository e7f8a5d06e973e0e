"""Prompt styles: the listed prompt as it always was, the cloze prompt without options, and the
same continuations under both."""
from __future__ import annotations

import pytest

from omoe_lab.data import Example, build_prompt, option_continuations, target_text
from omoe_lab.data.prompts import PROMPT_STYLES, check_label_words_are_shown

CHOICE = Example("ARC-Easy", "Which of these is a liquid at room temperature?", ("iron", "water", "salt"), 1)
BOOLEAN = Example("boolq", "is the sky blue on a clear day?", ("true", "false"), 0)


def test_listed_prompt_lists_the_options_under_letters():
    assert build_prompt(CHOICE) == build_prompt(CHOICE, "listed") == (
        "Question: Which of these is a liquid at room temperature?\nA. iron\nB. water\nC. salt\nAnswer:"
    )
    assert build_prompt(BOOLEAN, "listed") == "Question: is the sky blue on a clear day?\nTrue or false?\nAnswer:"


def test_cloze_prompt_is_the_question_alone():
    assert build_prompt(CHOICE, "cloze") == "Question: Which of these is a liquid at room temperature?\nAnswer:"
    # "True or false?" would list the boolean options, so cloze leaves it out too.
    assert build_prompt(BOOLEAN, "cloze") == "Question: is the sky blue on a clear day?\nAnswer:"
    for option in CHOICE.options:
        assert option not in build_prompt(CHOICE, "cloze")


@pytest.mark.parametrize("example", [CHOICE, BOOLEAN])
def test_every_style_ends_with_answer_and_scores_the_same_continuations(example):
    continuations = [option_continuations(example, style) for style in PROMPT_STYLES]
    assert all(c == [" " + o for o in example.options] for c in continuations)
    assert all(build_prompt(example, style).endswith("\nAnswer:") for style in PROMPT_STYLES)
    assert target_text(example, "option") == continuations[0][example.label]


def test_unknown_style_names_the_choices():
    for call in (lambda: build_prompt(CHOICE, "chat"), lambda: option_continuations(CHOICE, "chat")):
        with pytest.raises(ValueError, match=r"unknown prompt style 'chat'; choose one of \('listed', 'cloze'\)"):
            call()


def test_letters_need_a_prompt_that_shows_them():
    check_label_words_are_shown(CHOICE, "listed", "label")
    check_label_words_are_shown(BOOLEAN, "cloze", "label")  # true/false need no listing
    with pytest.raises(ValueError, match="ARC-Easy: label answers with option letters"):
        check_label_words_are_shown(CHOICE, "cloze", "label")
