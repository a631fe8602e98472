"""SFT targets: ``direct`` keeps exactly the first <answer>…</answer> of the CoT target, on the
same rows, in both message layouts; ``cot`` leaves rows untouched; a target without an answer is
refused naming the row."""

import pytest

from deepperception.errors import InputDataError
from deepperception.training.targets import apply_target, direct_answer

COT = "<think>the left bird has a red crest, so it is the cardinal</think>\n<answer>[(3,4),(50,60)]</answer>"


def _messages(content):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is the cardinal?"}]},
            {"role": "assistant", "content": content}]


def test_direct_keeps_only_the_answer_of_a_string_turn():
    msgs = _messages(COT)
    out = apply_target(msgs, "direct", row="q1")
    assert out[-1] == {"role": "assistant", "content": "<answer>[(3,4),(50,60)]</answer>"}
    assert out[0] is msgs[0]  # the user turn (image + question) is the same object: same inputs
    assert msgs[-1]["content"] == COT  # the input rows are not modified in place


def test_direct_on_a_list_of_parts_joins_the_text_parts():
    out = apply_target(_messages([{"type": "text", "text": COT[:40]}, {"type": "text", "text": COT[40:]}]), "direct")
    assert out[-1]["content"] == [{"type": "text", "text": "<answer>[(3,4),(50,60)]</answer>"}]
    assert "<think>" not in out[-1]["content"][0]["text"]


def test_first_answer_wins_and_multiline_answers_are_kept_whole():
    text = "<think>x</think><answer>(1,2),\n(3,4)</answer> then <answer>(9,9),(9,9)</answer>"
    assert direct_answer(text) == "<answer>(1,2),\n(3,4)</answer>"


def test_cot_is_the_identity():
    msgs = _messages(COT)
    assert apply_target(msgs, "cot") is msgs


def test_a_target_without_an_answer_is_refused_by_row():
    with pytest.raises(InputDataError, match=r"row=q7 field=messages.*no <answer>"):
        apply_target(_messages("<think>no answer here</think>"), "direct", row="q7")
