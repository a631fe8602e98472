"""Boundary rules of the scorer, pinned against the official transcription.

Each test puts a value exactly on a rule's boundary (IoU == 0.5, box sum == 4, coordinate ==
1000, ...) so that moving the boundary by one comparison operator changes an asserted result.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import official_reference as ref
from deepperception.boxes import grounding_answer
from deepperception.eval.parsing import official_bbox
from deepperception.eval.scoring import score
from deepperception.eval.strict import strict_parse

GT = (0, 0, 100, 100)


def _bench(outputs: dict[str, str], gt=GT):
    qids = list(outputs)
    return pa.table({"question_id": qids, "category": ["car"] * len(qids),
                     "answer": [grounding_answer("E", gt)] * len(qids)})


def _official(bench, outputs):
    """Per-sample results and metrics.json of the official transcription (temp files round-tripped)."""
    rows = bench.select(["question_id", "category", "answer"]).to_pylist()
    temp = {r["question_id"]: ref.inference_temp_record(r, outputs[r["question_id"]]) for r in rows}
    results, metrics = ref.calculate_ious("car", [temp[r["question_id"]] for r in rows])
    # evaluate.py json.dump()s the per-sample list to <category>.json: what a reader gets back.
    return json.loads(json.dumps(results)), metrics


def _score(outputs, gt=GT):
    bench = _bench(outputs, gt)
    return bench, score(bench, outputs, seen_categories=["car"], all_categories=["car"], n_resamples=20,
                        empty_groups="omit")


def test_iou_exactly_one_half_is_a_hit_and_just_below_is_not():
    outputs = {
        "car/half": "<answer>(0,0),(100,50)</answer>",     # inter 5000 / union 10000: 0.5 exactly in float32
        "car/below": "<answer>(0,0),(100,49)</answer>",    # 0.49
        "car/half2": "<answer>(50,0),(150,100)</answer>",  # inter 5000 / union 15000: 1/3, miss
        "car/above": "<answer>(0,0),(100,51)</answer>",    # 0.51
    }
    bench, res = _score(outputs)
    results, metrics = _official(bench, outputs)
    assert [r["iou"] for r in results] == [0.5, 0.49000000953674316, 0.3333333432674408, 0.5099999904632568]
    p = res.predictions
    assert p["iou"].tolist() == [r["iou"] for r in results]
    assert p["correct"].tolist() == [True, False, False, True]
    assert p["strict_correct"].tolist() == [True, False, False, True]
    assert res.metrics["car"]["all"] == metrics["all"] == {"Acc": 0.5, "IoU": metrics["all"]["IoU"], "Num": 4}
    assert res.metrics["all"]["all"]["Acc"] == 0.5
    assert res.strict["all"]["Acc"] == 0.5
    # the bootstrap CIs are computed from the same per-question hits
    assert res.cis["all"]["official"]["estimate"] == 0.5 and res.cis["all"]["strict"]["estimate"] == 0.5


def test_only_the_exact_half_is_a_hit():
    # One question: Acc flips between 1.0 and 0.0 on the boundary alone.
    _, res = _score({"car/0": "<answer>(0,0),(100,50)</answer>"})
    assert res.metrics["all"]["all"] == {"Acc": 1.0, "IoU": 0.5, "Num": 1}
    assert res.strict["all"]["Acc"] == 1.0
    _, res = _score({"car/0": "<answer>(0,0),(1000,499)</answer>"}, gt=(0, 0, 1000, 1000))  # 0.499
    assert res.metrics["all"]["all"]["Acc"] == 0.0 and res.strict["all"]["Acc"] == 0.0


def test_nan_and_inf_ious_count_as_zero():
    outputs = {
        "car/nan": "[nan, 1, 2, 3]",            # #6 -> float('nan') -> IoU nan
        "car/inf": "[inf, 0, inf, 100]",        # inf - inf -> nan
        "car/inverted": "(100,100),(0,0)",      # no overlap -> 0
        "car/hit": "(0,0),(100,100)",
    }
    bench, res = _score(outputs)
    results, metrics = _official(bench, outputs)
    assert [r["iou"] for r in results] == [0, 0, 0, 1.0]
    assert res.predictions["iou"].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert not res.predictions["iou"].isna().any()
    assert json.dumps(res.metrics["car"]) == json.dumps(metrics)


def test_predictions_keep_the_official_nan_coordinates(tmp_path):
    outputs = {
        "car/nan6": "<answer>[nan, 1, 2, 3]</answer>",       # #6
        "car/NaN4": "from (NaN, 1) to (2, nan)",             # #4, two NaNs
        "car/inf": "[inf, 0, 1, 2]",                          # inf is kept too
        "car/ok": "<answer>(0,0),(100,100)</answer>",
        "car/none": "no box",
    }
    bench, res = _score(outputs)
    results, _ = _official(bench, outputs)
    expected = [[float(v) for v in r["pred_bbox"]] for r in results]
    assert sum(math.isnan(v) for b in expected for v in b) == 3  # the case exists in the official output
    path = tmp_path / "predictions.parquet"
    pq.write_table(res.predictions_table(), path)
    table = pq.read_table(path)
    got = table.column("pred_bbox").to_pylist()
    assert [[repr(v) for v in b] for b in got] == [[repr(v) for v in b] for b in expected]
    assert table.column("pred_bbox").combine_chunks().flatten().null_count == 0
    # the frame reads back as the one scored (NaN == NaN), no nulls introduced anywhere
    back = table.to_pandas()
    assert list(back.columns) == list(res.predictions.columns)
    np.testing.assert_array_equal(np.array(back["pred_bbox"].tolist()), np.array(expected))
    assert back["strict_bbox"].tolist()[3].tolist() == [0.0, 0.0, 100.0, 100.0] and back["strict_bbox"][0] is None


def test_written_run_keeps_the_official_nan_coordinates(tmp_path):
    from deepperception.eval.io import PREDICTIONS_FILE, read_run, write_report

    outputs = {"car/nan6": "<answer>[nan, 1, 2, 3]</answer>", "car/ok": "<answer>(0,0),(100,100)</answer>"}
    _, res = _score(outputs)
    write_report(res, tmp_path)
    got = pq.read_table(tmp_path / PREDICTIONS_FILE).column("pred_bbox").to_pylist()
    assert repr(got[0]) == "[nan, 1.0, 2.0, 3.0]"
    back = read_run(tmp_path).predictions  # and the run still reads back
    assert len(back) == 2 and repr([float(c) for c in back["pred_bbox"][0]]) == "[nan, 1.0, 2.0, 3.0]"


# --- parser: the "normalized" rescale rule (sum < 4) --------------------------------------------

@pytest.mark.parametrize("text,box", [
    ("[1, 1, 1, 1]", [1.0, 1.0, 1.0, 1.0]),                      # sum == 4: kept as is
    ("[1, 1, 1, 0.999]", [1000.0, 1000.0, 1000.0, 999.0]),       # sum < 4: x1000
    ("[0.3, 0.2, 0.6, 0.4]", [300.0, 200.0, 600.0, 400.0]),
    ("[-5, 1, 2, 3]", [-5000.0, 1000.0, 2000.0, 3000.0]),        # negative sums rescale too
    ("(0,0),(0,0)", [0.0, 0.0, 0.0, 0.0]),
])
def test_rescale_boundary(text, box):
    assert official_bbox(text)[0] == box
    assert [float(v) for v in ref.get_bbox(text)[0]] == box


# --- strict rules: every boundary inclusive/exclusive as documented -------------------------------

@pytest.mark.parametrize("text,reason", [
    ("<answer>(0,0),(1000,1000)</answer>", "ok"),                # [0, 1000] is inclusive
    ("<answer>(-0,0),(10,10)</answer>", "ok"),                   # -0.0 >= 0.0
    ("<answer>[0, 0, 1000.5, 10]</answer>", "out_of_range"),
    ("<answer>[-0.5, 0, 10, 10]</answer>", "out_of_range"),
    ("<answer>(0,0),(1,1)</answer>", "ok"),                      # in [0, 1] but no fraction: not normalized
    ("<answer>[0, 0, 1.0, 1]</answer>", "ok"),                   # 1.0 has no fraction
    ("<answer>[0, 0, 0.5, 1]</answer>", "normalized"),
    ("<answer>[0.5, 0.5, 1.5, 1]</answer>", "ok"),               # 1.5 > 1: not a 0-1 box
    ("<answer>(10,20),(30,20)</answer>", "degenerate"),          # y1 == y2
    ("<answer>(10,20),(11,21)</answer>", "ok"),                  # smallest non-degenerate box
    ("</answer><answer>(1,2),(3,4)", "no_answer_tag"),           # close before open
    ("<answer>(1,2),(3,4)</answer></answer>", "multiple_answer_tags"),
])
def test_strict_boundaries(text, reason):
    assert strict_parse(text).reason == reason
