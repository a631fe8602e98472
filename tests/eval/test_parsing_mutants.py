"""Tests written from the mutation-testing survivors of ``deepperception.eval.parsing``.

Hand-picked inputs the property tests in ``test_parsing_bounded.py`` rarely draw: a
``</answer>`` *before* the answer body, a third ``</think>`` after the one that works, and
spans that touch an answer block's edges. Each is checked against the released regex itself.
"""

from __future__ import annotations

import pytest

from deepperception.eval.parsing import (
    ANSWER_BLOCK_RE,
    GRPO_FORMAT_RE,
    answer_spans,
    grpo_format_match,
    is_inside_answer,
)

FORMAT_CASES = [
    # a </answer> inside the think part must not close the answer that comes later
    "<think>a</answer></think><answer>b",
    "<think></answer></think>\n<answer>b</think>",
    # the second </think> works, a third one after it does not: the scan must take them in order
    "<think>a</think>X</think><answer>b</answer></think>Y",
    "<think>a</think>X</think> <answer>b</answer>c</think>",
    # and the plain cases
    "<think>a</think><answer>b</answer>",
    "<think>a</think>X</think>Y",
]


@pytest.mark.parametrize("text", FORMAT_CASES)
def test_grpo_format_match_equals_released_regex(text):
    assert grpo_format_match(text) is bool(GRPO_FORMAT_RE.match(text))


def test_grpo_format_match_expected_values():
    assert [grpo_format_match(t) for t in FORMAT_CASES] == [False, False, True, True, True, False]


def test_is_inside_answer_is_inclusive_at_both_edges():
    text = "a<answer>xy</answer>b"
    assert answer_spans(text) == [m.span(1) for m in ANSWER_BLOCK_RE.finditer(text)] == [(9, 11)]
    assert is_inside_answer((9, 11), text)      # exactly the contents
    assert is_inside_answer((9, 10), text)      # starts at the contents' start
    assert is_inside_answer((10, 11), text)     # ends at the contents' end
    assert not is_inside_answer((8, 11), text)  # one char before
    assert not is_inside_answer((9, 12), text)  # one char after
