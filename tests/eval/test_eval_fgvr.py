"""FGVR multiple choice: prompt, parser fallbacks, scorer."""

from __future__ import annotations

import pandas as pd
import pytest

from deepperception.errors import InputDataError
from deepperception.eval.fgvr import fgvr_prompt, official_choice, parse_choice, score_fgvr

OPTS = ["Boeing 737", "Boeing 737-800", "Airbus A320", "ATR 72"]


def test_prompt_is_the_official_classification_template():
    p = fgvr_prompt("What is the model of the aircraft?", OPTS)
    assert p == ("What is the model of the aircraft?\nA. Boeing 737\nB. Boeing 737-800\nC. Airbus A320\nD. ATR 72"
                 "  Output the thinking process in <think> </think> and final answer in <answer> </answer> tags.")
    with pytest.raises(ValueError):
        fgvr_prompt("q", ["only one"])


@pytest.mark.parametrize("text,letter,how", [
    ("<answer>C</answer>", "C", "letter"),
    ("<answer> c </answer>", "C", "letter"),
    ("<answer>\nD. ATR 72\n</answer>", "D", "letter"),
    ("<answer>(B)</answer>", "B", "letter"),
    ("<answer>[A]</answer>", "A", "letter"),
    ("<answer>The answer is D</answer>", "D", "letter"),
    ("<answer>Option: C</answer>", "C", "letter"),
    ("<answer>A</answer>", "A", "letter"),
    ("<answer>A Boeing 737</answer>", "A", "letter"),            # article + option A's text: still A
    ("<answer>A Boeing 737-800</answer>", "B", "option_text"),   # article, names option B
    ("<answer>I think it is the ATR 72</answer>", "D", "option_text"),
    ("<answer>airbus a320</answer>", "C", "option_text"),
    ("<answer>Boeing 737-800</answer>", "B", "option_text"),     # longest containing match
    ("<answer>the boeing 737.</answer>", "A", "option_text"),
    ("<answer>Boeing 737 or ATR 72</answer>", None, "ambiguous"),
    ("<answer>F</answer>", None, "unrecognized"),
    ("<answer>Embraer E190</answer>", None, "unrecognized"),
    ("<think>It is C</think>", None, "no_answer_tag"),
    ("<think>A B C D</think><answer>C</answer><answer>D</answer>", "C", "letter"),  # first block, like official
])
def test_parse_choice(text, letter, how):
    c = parse_choice(text, OPTS)
    assert (c.letter, c.how) == (letter, how)


def test_official_choice_quirks():
    assert official_choice("<answer>B. Boeing 737-800</answer>") == "B"
    assert official_choice("<answer>(B)</answer>") == "(B)"  # the official rule misses this
    assert official_choice("<answer>\nB\n</answer>") is None  # single-line regex
    assert official_choice("no tag") is None


def _items():
    return pd.DataFrame({
        "question_id": ["aircraft/0", "aircraft/1", "aircraft/2", "bird/0", "bird/1"],
        "category": ["aircraft", "aircraft", "aircraft", "bird", "bird"],
        "options": [OPTS, OPTS, OPTS, ["Blue jay", "Cardinal"], ["Blue jay", "Cardinal"]],
        "answer": ["B", "C", "A", "B", "A"],
    })


def test_score_fgvr():
    outputs = {
        "aircraft/0": "<think>x</think><answer>(B)</answer>",        # ours right, official wrong ("(B)")
        "aircraft/1": "<answer>C. Airbus A320</answer>",             # both right
        "aircraft/2": "<answer>Boeing 737 or ATR 72</answer>",       # ambiguous -> wrong
        "bird/0": "<answer>cardinal</answer>",                        # option text
    }
    r = score_fgvr(_items(), outputs, n_resamples=100)
    assert list(r.metrics) == ["all", "aircraft", "bird"]
    assert r.metrics["all"] == {"Acc": 3 / 5, "Num": 5, "parse_rate": 3 / 5, "official_Acc": 1 / 5}
    assert r.metrics["aircraft"]["Acc"] == 2 / 3 and r.metrics["bird"]["Acc"] == 0.5
    assert r.num_missing == 1
    assert r.predictions.set_index("question_id").loc["bird/1", "how"] == "no_output"
    assert r.cis["all"]["lo"] <= 0.6 <= r.cis["all"]["hi"]


def test_score_fgvr_bad_input():
    items = _items()
    items.loc[3, "answer"] = "C"  # only two options
    with pytest.raises(InputDataError, match=r"row 3 \(question_id='bird/0'\): answer must be one of \['A', 'B'\]"):
        score_fgvr(items, {})
    with pytest.raises(InputDataError, match="unknown question ids"):
        score_fgvr(_items(), {"x": "<answer>A</answer>"})
    with pytest.raises(InputDataError, match=r"missing column\(s\) \['options'\]"):
        score_fgvr(_items().drop(columns=["options"]), {})


class TestAnswerExtractionIsLinearAndExact:
    """The FGVR answer helpers equal the regexes they replace, and finish on adversarial text."""

    from hypothesis import given, settings, strategies as st

    _TEXT = st.lists(st.sampled_from(["<answer>", "</answer>", "\n", "A", " B. x", "<", "answer>", "."]),
                     max_size=30).map("".join)

    @given(_TEXT)
    @settings(max_examples=400, deadline=None)
    def test_first_single_line_answer_equals_the_official_findall(self, text):
        import re

        from deepperception.eval.fgvr import first_single_line_answer

        hits = re.findall(r"<answer>(.*?)</answer>", text)
        assert first_single_line_answer(text) == (hits[0] if hits else None)

    @given(_TEXT)
    @settings(max_examples=400, deadline=None)
    def test_parse_choice_takes_the_first_dotall_block(self, text):
        from deepperception.eval.parsing import ANSWER_BLOCK_RE

        m = ANSWER_BLOCK_RE.search(text)
        got = parse_choice(text, OPTS)
        assert (got.how == "no_answer_tag") == (m is None)

    @pytest.mark.timeout(60)
    def test_many_unclosed_answer_tags(self):
        text = "<answer>B " * 20_000 + "\n<answer>C</answer>"
        assert official_choice(text) == "C"
        assert parse_choice("<answer>B " * 20_000, OPTS).how == "no_answer_tag"
