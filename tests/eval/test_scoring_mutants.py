"""Tests written from the mutation-testing survivors of ``deepperception.eval.scoring``.

Each pins a contract the other scoring tests left open: the exact keys of ``summary()``, the
default bootstrap seed, that ``predictions_table`` drops the frame's index, and the text and
the ``stage`` / ``artifact`` / ``row`` / ``field`` attributes of every input error ``score``
raises (the CLI prints them; a wrong ``artifact`` points the user at the wrong file).
"""

from __future__ import annotations

import warnings

import pandas as pd
import pyarrow as pa
import pytest

from deepperception.boxes import grounding_answer
from deepperception.errors import ConfigError, InputDataError
from deepperception.eval.scoring import PREDICTION_COLUMNS, STAGE, predictions_table, score

GT = (0, 0, 100, 100)
ART = "bench@abc"


def _bench(qids, cats=None, answers=None):
    n = len(qids)
    return pa.table({
        "question_id": list(qids),
        "category": list(cats) if cats is not None else ["car"] * n,
        "answer": list(answers) if answers is not None else [grounding_answer("E", GT)] * n,
    })


def _score(bench, outputs, **kw):
    kw.setdefault("seen_categories", ["car"])
    kw.setdefault("all_categories", ["car", "dog"])
    kw.setdefault("n_resamples", 20)
    kw.setdefault("empty_groups", "omit")
    return score(bench, outputs, artifact=ART, **kw)


def _err(bench, outputs, **kw) -> InputDataError:
    with pytest.raises(InputDataError) as ei:
        _score(bench, outputs, **kw)
    return ei.value


# --- ScoreResult.summary ------------------------------------------------------------------------

def test_summary_has_exactly_the_report_keys_and_values():
    bench = _bench(["car/a", "car/b", "car/c"])
    res = _score(bench, {"car/a": "<answer>(0,0),(100,100)</answer>", "car/b": "no box"})
    assert res.summary() == {
        "num_questions": 3,
        "num_outputs": 2,
        "num_missing": 1,
        "missing_ids": ["car/c"],
        "seen_categories": ["car"],
        "all_categories": ["car", "dog"],
        "match_pattern_counts": res.pattern_counts,
    }
    assert res.summary()["match_pattern_counts"]["all"] == [2, 1, 0, 0, 0, 0, 0, 0, 0]


# --- default seed -------------------------------------------------------------------------------

def test_default_seed_is_zero():
    qids = [f"car/{i}" for i in range(12)]
    outputs = {q: ("<answer>(0,0),(100,100)</answer>" if i % 3 else "none") for i, q in enumerate(qids)}
    bench = _bench(qids)
    kw = dict(seen_categories=["car"], all_categories=["car"], n_resamples=50, empty_groups="omit")
    default = score(bench, outputs, **kw).cis
    assert default == score(bench, outputs, seed=0, **kw).cis
    # and the seed matters at all (else the assertion above would prove nothing)
    assert any(default[g] != score(bench, outputs, seed=s, **kw).cis[g] for s in (1, 2, 3) for g in default)


# --- predictions_table ----------------------------------------------------------------------------

def test_predictions_table_drops_the_index():
    df = pd.DataFrame({"pred_bbox": [[float("nan"), 1.0, 2.0, 3.0], None], "iou": [0.0, 0.5]}, index=[7, 3])
    t = predictions_table(df)
    assert t.column_names == ["pred_bbox", "iou"]
    assert t.to_pandas().index.tolist() == [0, 1]
    assert t.column("iou").to_pylist() == [0.0, 0.5]


def test_score_predictions_table_columns():
    bench = _bench(["car/a"])
    res = _score(bench, {"car/a": "<answer>(0,0),(100,100)</answer>"})
    assert res.predictions_table().column_names == list(PREDICTION_COLUMNS)


# --- config errors --------------------------------------------------------------------------------

def test_config_error_messages():
    bench = _bench(["car/a"])
    with pytest.raises(ConfigError, match=r"missing must be 'official' or 'error', not 'skip'"):
        _score(bench, {}, missing="skip")
    with pytest.raises(ConfigError, match=r"empty_groups must be 'error' or 'omit', not 'keep'"):
        _score(bench, {}, empty_groups="keep")


# --- input errors: exact text and attributes ------------------------------------------------------

def test_bench_frame_errors_name_the_artifact():
    bench = pa.table({"question_id": ["car/a"], "category": [3], "answer": ["x"]})
    e = _err(bench, {})
    assert (e.stage, e.artifact, e.field, e.row) == (STAGE, ART, "category", 0)
    assert e.message == "non-string category in 1 row(s): row 0 (question_id='car/a'): category=3"
    e = _err(pa.table({"question_id": ["car/a"], "category": ["car"]}), {})
    assert (e.stage, e.artifact) == (STAGE, ART)


def test_duplicate_question_id_error():
    bench = _bench(["car/a", "car/b", "car/a"])
    e = _err(bench, {})
    assert (e.stage, e.artifact, e.row, e.field) == (STAGE, ART, 0, "question_id")
    assert e.message == ("duplicate question_id in 2 row(s): row 0 (question_id='car/a'): duplicate; "
                         "row 2 (question_id='car/a'): duplicate")


def test_unknown_category_error():
    bench = _bench(["car/a", "x/b"], cats=["car", "cat"])
    e = _err(bench, {})
    assert (e.stage, e.artifact, e.row, e.field) == (STAGE, ART, 1, "category")
    assert e.message == ("unknown category in 1 row(s): row 1 (question_id='x/b'): "
                         "category 'cat' not in ['car', 'dog']")


def test_unparsable_gt_error_quotes_120_chars():
    long = "z" * 200
    bench = _bench(["car/a", "car/b"], answers=[grounding_answer("E", GT), long])
    e = _err(bench, {})
    assert (e.stage, e.artifact, e.row, e.field) == (STAGE, ART, 1, "answer")
    assert e.message == ("unparsable ground-truth answer in 1 row(s): row 1 (question_id='car/b'): "
                         f"no <|box_start|>(x1,y1),(x2,y2)<|box_end|> in {'z' * 120!r}")


def test_extra_output_ids_error():
    bench = _bench(["car/a"])
    extra = [f"car/x{i}" for i in range(11)]
    e = _err(bench, {q: "" for q in extra})
    assert (e.stage, e.artifact, e.row, e.field) == (STAGE, ART, "car/x0", "question_id")
    assert e.message == f"11 output(s) for question ids not in the bench, e.g. {extra[:10]}"


def test_non_string_output_error():
    qids = [f"car/{i:02d}" for i in range(12)]
    bench = _bench(qids)
    e = _err(bench, {q: (None if i % 2 else i) for i, q in enumerate(qids)})
    assert (e.stage, e.artifact, e.row, e.field) == (STAGE, ART, "car/00", "answer")
    assert e.message == f"12 output(s) are not strings, e.g. {qids[:10]}"


def test_empty_group_error():
    e = _err(_bench(["car/a"]), {}, empty_groups="error")
    assert (e.stage, e.artifact, e.row, e.field) == (STAGE, ART, None, "category")
    assert e.message == ("report group(s) ['unseen domain', 'dog'] have no questions; the official scorer divides "
                         "by zero here and writes no metrics.json. Pass all/seen categories that match the bench, "
                         "or empty_groups='omit'.")


# --- numbers -------------------------------------------------------------------------------------

def test_strict_iou_of_an_unparsable_or_missing_output_is_zero():
    bench = _bench(["car/a", "car/b", "car/c"])
    res = _score(bench, {"car/a": "<answer>(0,0),(100,100)</answer>", "car/b": "no box here"})
    p = res.predictions
    assert p["strict_iou"].tolist() == [1.0, 0.0, 0.0]
    assert p["strict_correct"].tolist() == [True, False, False]
    s = res.strict["all"]
    assert (s["Acc"], s["IoU"], s["parse_rate"], s["missing"]) == (1 / 3, 1 / 3, 1 / 3, 1)
    assert s == {"Acc": 1 / 3, "IoU": 1 / 3, "Num": 3, "parse_rate": 1 / 3, "official_hits_outside_answer": 0,
                 "official_correct_outside_answer": 0, "missing": 1,
                 "reasons": {"no_answer_tag": 1, "no_output": 1, "ok": 1}}
    assert res.strict["seen domain"] == s and set(res.strict) == {"all", "seen domain", "car"}
    assert res.metrics["all"]["all"] == {"Acc": 1 / 3, "IoU": 1 / 3, "Num": 3}


def test_predictions_frame_contents():
    bench = _bench(["car/a", "dog/b", "car/c"], cats=["car", "dog", "car"])
    outputs = {"car/a": "<answer>(0,0),(100,100)</answer>",
               "dog/b": "<think>(0,0),(100,60)</think><answer>none</answer>"}
    p = _score(bench, outputs).predictions
    assert p.columns.tolist() == list(PREDICTION_COLUMNS)
    assert p["question_id"].tolist() == ["car/a", "dog/b", "car/c"]
    assert p["category"].tolist() == ["car", "dog", "car"]
    assert p["domain"].tolist() == ["seen", "unseen", "seen"]
    assert p["gt_bbox"].tolist() == [[0.0, 0.0, 100.0, 100.0]] * 3
    assert p["pred_bbox"].tolist() == [[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 100.0, 60.0], [0.0, 0.0, 0.0, 0.0]]
    assert p["iou"].tolist() == [1.0, 0.6000000238418579, 0.0]
    assert p["match_pattern"].tolist() == [1, 3, 0]
    assert p["correct"].tolist() == [True, True, False]
    assert p["strict_bbox"].tolist() == [[0.0, 0.0, 100.0, 100.0], None, None]
    assert p["strict_iou"].tolist() == [1.0, 0.0, 0.0]
    assert p["strict_correct"].tolist() == [True, False, False]
    assert p["strict_reason"].tolist() == ["ok", "no_box", "no_output"]
    assert p["box_outside_answer"].tolist() == [False, True, False]
    assert p["has_output"].tolist() == [True, True, False]


def test_cis_use_the_given_resamples_confidence_and_seed():
    from deepperception.eval.bootstrap import group_cis
    from deepperception.eval.groups import group_indices

    qids = [f"car/{i}" for i in range(9)] + [f"dog/{i}" for i in range(7)]
    cats = ["car"] * 9 + ["dog"] * 7
    outputs = {q: ("<answer>(0,0),(100,100)</answer>" if i % 3 else
                   "<think>(0,0),(100,100)</think>") for i, q in enumerate(qids)}
    bench = _bench(qids, cats=cats)
    res = _score(bench, outputs, n_resamples=37, confidence=0.8, seed=5)
    groups = group_indices(cats, ["car"], ["car", "dog"])
    p = res.predictions
    official = group_cis(p["correct"].to_numpy(dtype=float), groups, n_resamples=37, confidence=0.8, seed=5)
    strict = group_cis(p["strict_correct"].to_numpy(dtype=float), groups, n_resamples=37, confidence=0.8, seed=5)
    assert res.cis == {g: {"official": official[g], "strict": strict[g]} for g in groups}
    assert res.cis != _score(bench, outputs, confidence=0.8, seed=5).cis      # n_resamples matters
    assert res.cis != _score(bench, outputs, n_resamples=37, seed=5).cis      # confidence matters
    assert res.cis != _score(bench, outputs, n_resamples=37, confidence=0.8).cis  # seed matters


def test_overflowing_coordinates_score_zero_without_numpy_warnings():
    huge = "9" * 60  # float() is fine, float32 overflows to inf
    bench = _bench(["car/a", "car/b", "car/c"])
    outputs = {"car/a": f"<answer>({huge},0),(100,100)</answer>",
               "car/b": f"<answer>(0,0),({huge},{huge})</answer>",
               "car/c": f"<answer>({huge},{huge}),({huge},{huge})</answer>"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = _score(bench, outputs)
    assert res.predictions["iou"].tolist() == [0.0, 0.0, 0.0]
    assert res.metrics["all"]["all"]["IoU"] == 0.0


def _missing_message(n_rows: int) -> str:
    qids = [f"car/{i:02d}" for i in range(n_rows)]
    e = _err(_bench(qids), {}, missing="error")
    assert (e.stage, e.artifact, e.row, e.field) == (STAGE, ART, 0, "answer")
    return e.message


@pytest.mark.parametrize("n_rows", [1, 10])
def test_bad_rows_message_lists_up_to_ten_rows_without_tail(n_rows):
    shown = "; ".join(f"row {i} (question_id='car/{i:02d}'): no output" for i in range(n_rows))
    assert _missing_message(n_rows) == f"missing output in {n_rows} row(s): {shown}"


@pytest.mark.parametrize("n_rows", [11, 13])
def test_bad_rows_message_counts_the_rest(n_rows):
    shown = "; ".join(f"row {i} (question_id='car/{i:02d}'): no output" for i in range(10))
    assert _missing_message(n_rows) == f"missing output in {n_rows} row(s): {shown}; ... {n_rows - 10} more"


def test_iou_column_is_float_even_when_every_iou_is_the_int_zero():
    bench = _bench(["car/a", "car/b"])
    res = _score(bench, {"car/a": "no box", "car/b": "<answer>(200,200),(300,300)</answer>"})
    assert res.predictions["iou"].dtype == "float64"
    assert res.predictions_table().schema.field("iou").type == pa.float64()
    assert res.metrics["all"]["all"] == {"Acc": 0.0, "IoU": 0.0, "Num": 2}
