"""Strict scoring: only one valid box inside one well-formed answer block counts."""

from __future__ import annotations

import pyarrow as pa
import pytest

from deepperception.boxes import grounding_answer
from deepperception.eval.scoring import score
from deepperception.eval.strict import REASONS, strict_parse

CASES = [
    ("<think>x</think><answer>E(10,20),(300,400)</answer>", (10.0, 20.0, 300.0, 400.0), "ok"),
    ("<answer> ( 10 , 20 ) , ( 300 , 400 ) </answer>", (10.0, 20.0, 300.0, 400.0), "ok"),
    ("<answer>\nE(10,20),(300,400)\n</answer>", (10.0, 20.0, 300.0, 400.0), "ok"),  # newline is fine here
    ("<answer>(10,20),(300,400) i.e. (10,20),(300,400)</answer>", (10.0, 20.0, 300.0, 400.0), "ok"),
    ("<answer>(36, 541, 447, 699)</answer>", (36.0, 541.0, 447.0, 699.0), "ok"),
    ("<answer>(438,471,800,762)</answer>", (438.0, 471.0, 800.0, 762.0), "ok"),  # official: no match
    ("<answer>[10.5, 20, 300, 400.25]</answer>", (10.5, 20.0, 300.0, 400.25), "ok"),
    ("E(10,20),(300,400)", None, "no_answer_tag"),
    ("<think>(10,20),(300,400)</think>", None, "no_answer_tag"),
    ("<think>(10,20),(300,400)</think><answer>the left one</answer>", None, "no_box"),
    ("<answer>31700</answer>", None, "no_box"),
    ("<think>...</think><answer>(10,20),(3", None, "unclosed_answer_tag"),
    ("(10,20),(300,400)</answer>", None, "no_answer_tag"),
    ("<answer>(1,2),(30,40)</answer><answer>(5,6),(70,80)</answer>", None, "multiple_answer_tags"),
    ("<answer><answer1>(120,150),(480,350)</answer> </answer>", None, "multiple_answer_tags"),
    ("<answer>(x1, y1) to (x2, y2)</answer>", None, "malformed"),
    ("<answer>(499, 501) - (999, 978)</answer>", None, "malformed"),
    ("<answer>(10,20),(300,400) or (50,60),(70,80)</answer>", None, "multiple_boxes"),
    ("<answer>[875, 1468, 1050, 1700]</answer>", None, "out_of_range"),
    ("<answer>(-5,20),(300,400)</answer>", None, "out_of_range"),
    ("<answer>[0.3, 0.2, 0.6, 0.4]</answer>", None, "normalized"),
    ("<answer>(1, 3, 4, 2)</answer>", None, "degenerate"),
    ("<answer>(300,400),(10,20)</answer>", None, "degenerate"),
    ("<answer>(10,20),(10,400)</answer>", None, "degenerate"),
]


@pytest.mark.parametrize("text,box,reason", CASES)
def test_strict_parse(text, box, reason):
    r = strict_parse(text)
    assert (r.box, r.reason) == (box, reason)
    assert r.ok == (reason == "ok")


def test_every_reason_is_exercised():
    assert {r for _, _, r in CASES} | {"no_output"} == set(REASONS)


def test_strict_scoring_in_the_report():
    gt = (100, 100, 500, 500)
    ans = grounding_answer("E", gt)
    outputs = {
        "car/0": "<answer>(100,100),(500,500)</answer>",                      # both correct
        "car/1": "<think>(100,100),(500,500)</think><answer>left</answer>",   # official only (from think)
        "car/2": "<answer>(438,471,800,762)</answer>",                        # strict only... wrong box
        "car/3": "<answer>(100, 100, 500, 500)</answer>",                     # both (#7)
        "dog/0": "<answer>[0.1, 0.1, 0.5, 0.5]</answer>",                     # official only (rescaled)
    }
    bench = pa.table({"question_id": list(outputs) + ["dog/1"], "category": ["car"] * 4 + ["dog"] * 2,
                      "answer": [ans] * 6})
    res = score(bench, outputs, seen_categories=["car"], all_categories=["car", "dog"], n_resamples=50)
    p = res.predictions.set_index("question_id")
    assert p["correct"].tolist() == [True, True, False, True, True, False]
    assert p["strict_correct"].tolist() == [True, False, False, True, False, False]
    assert p.loc["car/1", "box_outside_answer"] and not p.loc["car/0", "box_outside_answer"]
    assert p.loc["car/2", "strict_bbox"] == [438.0, 471.0, 800.0, 762.0]
    assert p.loc["dog/0", "strict_bbox"] is None and p.loc["dog/0", "strict_reason"] == "normalized"
    assert p.loc["dog/1", "strict_reason"] == "no_output" and not p.loc["dog/1", "has_output"]
    s = res.strict
    assert s["all"]["Acc"] == 2 / 6 and s["all"]["parse_rate"] == 3 / 6
    assert s["all"]["official_hits_outside_answer"] == 1 and s["all"]["official_correct_outside_answer"] == 1
    assert s["car"]["Acc"] == 0.5 and s["dog"]["Acc"] == 0.0 and s["dog"]["missing"] == 1
    assert res.metrics["all"]["all"]["Acc"] == 4 / 6
