"""Bad input names rows/lines; report files round-trip; the typer sub-app works end to end."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from deepperception.boxes import grounding_answer
from deepperception.errors import ConfigError, InputDataError
from deepperception.eval.cli import eval_app
from deepperception.eval.io import read_bench, read_outputs, read_run, write_outputs, write_report
from deepperception.eval.scoring import score
from deepperception.eval.synthetic import make_bench, make_outputs

ANS = grounding_answer("E", (10, 10, 500, 500))
CATS = dict(seen_categories=["car"], all_categories=["car", "dog"])


def _bench(qids, cats, answers=None):
    return pa.table({"question_id": qids, "category": cats, "answer": answers or [ANS] * len(qids)})


def test_missing_column():
    with pytest.raises(InputDataError, match=r"missing column\(s\) \['answer'\]") as e:
        score(pa.table({"question_id": ["a"], "category": ["car"]}), {}, **CATS)
    assert e.value.field == "answer"


def test_unparsable_gt_names_rows():
    b = _bench(["car/0", "car/1", "dog/0"], ["car", "car", "dog"], [ANS, "<|box_start|>(1,2),(3.5,4)<|box_end|>", ANS])
    with pytest.raises(InputDataError, match=r"unparsable ground-truth answer in 1 row\(s\): row 1 \(question_id='car/1'\)") as e:
        score(b, {}, **CATS)
    assert e.value.row == 1 and e.value.field == "answer"


def test_unknown_category_names_rows():
    b = _bench(["car/0", "cat/0", "cat/1"], ["car", "cat", "cat"])
    with pytest.raises(InputDataError, match=r"unknown category in 2 row\(s\): row 1 \(question_id='cat/0'\).*row 2") as e:
        score(b, {}, **CATS)
    assert e.value.row == 1 and e.value.field == "category"


def test_duplicate_question_ids():
    b = _bench(["car/0", "dog/0", "car/0"], ["car", "dog", "car"])
    with pytest.raises(InputDataError, match=r"duplicate question_id in 2 row\(s\): row 0 .*row 2"):
        score(b, {}, **CATS)


def test_outputs_for_unknown_ids_and_missing_policy():
    b = _bench(["car/0", "dog/0"], ["car", "dog"])
    with pytest.raises(InputDataError, match=r"not in the bench, e.g. \['car/9'\]"):
        score(b, {"car/0": "x", "car/9": "y"}, **CATS)
    with pytest.raises(InputDataError, match=r"missing output in 1 row\(s\): row 1 \(question_id='dog/0'\)"):
        score(b, {"car/0": "x"}, missing="error", **CATS)
    assert score(b, {"car/0": "x"}, n_resamples=10, **CATS).num_missing == 1


def test_config_errors():
    b = _bench(["car/0"], ["car"])
    with pytest.raises(ConfigError, match="not in all categories"):
        score(b, {}, seen_categories=["car", "bus"], all_categories=["car"])
    with pytest.raises(ConfigError, match="collide"):
        score(b, {}, seen_categories=["car"], all_categories=["car", "all"])


def test_non_string_cells_named():
    b = pa.table({"question_id": ["car/0", "car/1"], "category": ["car", None], "answer": [ANS, ANS]})
    with pytest.raises(InputDataError, match=r"non-string category in 1 row\(s\): row 1"):
        score(b, {}, **CATS)


def test_read_outputs_errors_name_the_line(tmp_path):
    p = tmp_path / "o.jsonl"
    p.write_text('{"question_id": "a", "answer": "x"}\n\n{"question_id": "b", "answer": "y"\n')
    with pytest.raises(InputDataError, match="line 3: invalid JSON") as e:
        read_outputs(p)
    assert e.value.row == 3
    p.write_text('{"question_id": "a", "answer": "x"}\n{"question_id": "b"}\n')
    with pytest.raises(InputDataError, match=r"line 2: missing key 'answer' \(or 'output'\)"):
        read_outputs(p)
    p.write_text('{"question_id": "a", "answer": 3}\n')
    with pytest.raises(InputDataError, match="line 1: 'answer' must be a string"):
        read_outputs(p)
    p.write_text('{"question_id": "a", "answer": "x"}\n{"question_id": "a", "answer": "y"}\n')
    with pytest.raises(InputDataError, match="line 2: duplicate question_id 'a' \\(first on line 1\\)"):
        read_outputs(p)
    p.write_text('["a"]\n')
    with pytest.raises(InputDataError, match="line 1: expected a JSON object"):
        read_outputs(p)
    p.write_text('{"question_id": "a", "answer": "x\\n<answer>é</answer>", "cot": null}\n')
    assert read_outputs(p) == {"a": "x\n<answer>é</answer>"}
    # the inference module's records carry the text under "output" (and the GT under "gt_answer")
    p.write_text('{"question_id": "a", "output": "<answer>(1,2),(3,4)</answer>", "gt_answer": "g"}\n')
    assert read_outputs(p) == {"a": "<answer>(1,2),(3,4)</answer>"}
    p.write_text('{"question_id": "a", "output": "o", "answer": "t"}\n')
    with pytest.raises(InputDataError, match="line 1: both"):
        read_outputs(p)
    assert read_outputs(p, text_key="output") == {"a": "o"}


def test_read_outputs_non_utf8_names_file_and_line_and_keeps_good_text(tmp_path):
    p = tmp_path / "o.jsonl"
    p.write_bytes('{"question_id": "a", "answer": "é ✓ 猫"}\n'.encode() + b'{"question_id": "b", "answer": "caf\xe9"}\n')
    with pytest.raises(InputDataError, match=r"line 2: not valid UTF-8 at byte 36 of the line \(b'\\xe9'") as e:
        read_outputs(p)
    assert e.value.row == 2 and e.value.artifact == str(p) and str(p) in str(e.value)
    # nothing is replaced or dropped: multi-byte text (and a BOM-prefixed first line) read back exactly
    p.write_bytes(b"\xef\xbb\xbf" + '{"question_id": "a", "answer": "é ✓ 猫\\n"}\r\n{"question_id": "b", "answer": ""}\n'.encode())
    assert read_outputs(p) == {"a": "é ✓ 猫\n", "b": ""}


def test_read_run_bad_files_are_input_errors(tmp_path):
    b = make_bench({"car": 4, "dog": 2}, seed=2)
    write_report(score(b, make_outputs(b, seed=2), n_resamples=20, **CATS), tmp_path / "run")
    (tmp_path / "run" / "metrics.json").write_bytes(b"\xff")
    with pytest.raises(InputDataError, match="metrics.json is not valid UTF-8 JSON"):
        read_run(tmp_path / "run")
    (tmp_path / "run" / "metrics.json").write_text("[1]")
    with pytest.raises(InputDataError, match="must hold a JSON object"):
        read_run(tmp_path / "run")
    (tmp_path / "run" / "metrics.json").write_text("{}")
    (tmp_path / "run" / "predictions.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputDataError, match="cannot read predictions parquet") as e:
        read_run(tmp_path / "run")
    assert e.value.artifact.endswith("predictions.parquet")


def test_read_bench_schema(tmp_path):
    b = make_bench({"car": 3}, seed=0)
    pq.write_table(b, tmp_path / "b.parquet")
    assert read_bench(tmp_path / "b.parquet").num_rows == 3
    bad = b.set_column(2, "image", pa.array([b"x"] * 3))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(InputDataError, match=r"image must be struct<bytes"):
        read_bench(tmp_path / "bad.parquet")
    pq.write_table(b.drop_columns(["category"]), tmp_path / "nocat.parquet")
    with pytest.raises(InputDataError, match=r"lacks column\(s\) \['category'\]"):
        read_bench(tmp_path / "nocat.parquet")
    with pytest.raises(InputDataError, match="cannot read bench parquet"):
        read_bench(tmp_path / "missing.parquet")


def test_write_report_round_trip(tmp_path):
    b = make_bench({"car": 20, "dog": 10}, seed=2)
    res = score(b, make_outputs(b, seed=2), n_resamples=50, **CATS)
    paths = write_report(res, tmp_path / "run")
    assert paths["metrics.json"].read_text() == json.dumps(res.metrics)  # official: json.dump, no indent
    run = read_run(tmp_path / "run")
    assert run.metrics == res.metrics and run.category_order == ["car", "dog"]
    assert run.predictions["question_id"].tolist() == res.predictions["question_id"].tolist()
    assert run.predictions["pred_bbox"].map(list).tolist() == res.predictions["pred_bbox"].tolist()
    assert json.loads(paths["report.json"].read_text())["num_questions"] == 30
    assert set(json.loads(paths["cis.json"].read_text())["dog"]) == {"official", "strict"}
    with pytest.raises(InputDataError, match="not a scoring run"):
        read_run(tmp_path)


def test_cli_score_and_compare(tmp_path):
    b = make_bench({"car": 30, "dog": 20, "bird": 10}, seed=3)
    pq.write_table(b, tmp_path / "bench.parquet")
    write_outputs(tmp_path / "a.jsonl", make_outputs(b, seed=1))
    write_outputs(tmp_path / "b.jsonl", make_outputs(b, seed=2))
    runner = CliRunner()
    common = ["--bench", str(tmp_path / "bench.parquet"), "--seen-categories", "car,bird",
              "--all-categories", "car,dog,bird", "--resamples", "100"]
    r = runner.invoke(eval_app, ["score", *common, "--outputs", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "A")])
    assert r.exit_code == 0, r.output
    assert "seen domain" in r.output and "bird" in r.output
    m = json.loads((tmp_path / "A" / "metrics.json").read_text())
    assert list(m) == ["all", "seen domain", "unseen domain", "car", "dog", "bird"]
    r = runner.invoke(eval_app, ["score", *common, "--outputs", str(tmp_path / "b.jsonl"), "--out", str(tmp_path / "B")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(eval_app, ["compare", str(tmp_path / "A"), str(tmp_path / "B"), "--out", str(tmp_path / "cmp.json")])
    assert r.exit_code == 0, r.output
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    assert list(cmp["groups"]) == list(m)
    assert cmp["groups"]["all"]["a"] == m["all"]["all"]["Acc"]
    # default categories on this 3-category bench: the empty groups are refused, exit code 2
    r = runner.invoke(eval_app, ["score", "--bench", str(tmp_path / "bench.parquet"), "--outputs",
                                 str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "C")])
    assert r.exit_code == 2 and "have no questions" in r.output
