"""build_fgvr_bench: multiple choice with same-category distractors, deterministic, checked input."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute  # noqa: F401
import pyarrow.parquet as pq
import pytest

from deepperception import prompts
from deepperception.engine.datasets import build_fgvr_bench
from deepperception.errors import InputDataError
from deepperception.eval.fgvr import FGVR_BENCH_SCHEMA, LETTERS, build_question, check_fgvr_items, read_fgvr_bench


def test_fgvr_bench_rows(images, tmp_path):
    bench = build_fgvr_bench(images, n_options=4, pool="test", seed=0)
    assert bench.schema == FGVR_BENCH_SCHEMA
    src = {r["image_id"]: r for r in images.to_pylist()}
    names_by_cat: dict[str, set[str]] = {}
    for r in src.values():
        names_by_cat.setdefault(r["category"], set()).add(r["name"])
    test_ids = [r["image_id"] for r in images.to_pylist() if r["pool"] == "test"]
    assert bench.column("question_id").to_pylist() == test_ids  # one per test image, table order
    letters = []
    for row in bench.to_pylist():
        img = src[row["question_id"]]
        opts = row["options"]
        assert len(opts) == 4 and len(set(opts)) == 4
        assert opts[LETTERS.index(row["answer"])] == img["name"]
        assert set(opts) <= names_by_cat[img["category"]]  # distractors from the same category
        assert row["category"] == img["category"]
        assert row["question"] == build_question(prompts.fgvr_question(img["category"]), opts)
        assert row["image"] == {"bytes": img["image"], "path": f"{img['image_id']}.png"}
        letters.append(row["answer"])
    assert len(set(letters)) > 1  # shuffled, not always "A"
    check_fgvr_items(bench.drop_columns(["image"]))

    # deterministic; other seeds differ; a subset does not change a question
    assert build_fgvr_bench(images, seed=0).equals(bench)
    assert build_fgvr_bench(images, seed=1).column("options").to_pylist() != bench.column("options").to_pylist()
    cat0 = bench.column("category")[0].as_py()
    sub = build_fgvr_bench(images.filter(pa.compute.equal(images.column("category"), cat0)))
    assert sub.num_rows > 0
    first = {r["question_id"]: r["options"] for r in bench.to_pylist()}
    assert all(first[r["question_id"]] == r["options"] for r in sub.to_pylist())

    pq.write_table(bench, tmp_path / "fgvr.parquet")
    assert read_fgvr_bench(tmp_path / "fgvr.parquet").equals(bench)


def test_fgvr_bench_options_count_and_pool(images):
    two = build_fgvr_bench(images, n_options=2, pool="train")
    assert set(two.column("question_id").to_pylist()) == {r["image_id"] for r in images.to_pylist() if r["pool"] == "train"}
    assert all(len(o) == 2 for o in two.column("options").to_pylist())
    # 5 entities per category: at most 5 options
    with pytest.raises(InputDataError) as e:
        build_fgvr_bench(images, n_options=6)
    assert e.value.field == "name" and "/" in str(e.value.row)  # names the image
    with pytest.raises(InputDataError, match="n_options"):
        build_fgvr_bench(images, n_options=1)
    with pytest.raises(InputDataError, match="no image in pool 'val'"):
        build_fgvr_bench(images, pool="val")


def test_fgvr_bench_bad_input_names_rows(images):
    rows = images.slice(0, 8).to_pylist()
    for r in rows:
        r["pool"] = "test"
    schema = images.schema

    bad = [dict(r) for r in rows]
    bad[3]["name"] = " "
    with pytest.raises(InputDataError) as e:
        build_fgvr_bench(pa.Table.from_pylist(bad, schema=schema), n_options=2)
    assert (e.value.row, e.value.field) == (rows[3]["image_id"], "name")

    bad = [dict(r) for r in rows]
    bad[5]["image_id"] = bad[2]["image_id"]
    with pytest.raises(InputDataError) as e:
        build_fgvr_bench(pa.Table.from_pylist(bad, schema=schema), n_options=2)
    assert (e.value.row, e.value.field) == (rows[2]["image_id"], "image_id")

    bad = [dict(r) for r in rows]
    bad[1]["image"] = b""
    with pytest.raises(InputDataError) as e:
        build_fgvr_bench(pa.Table.from_pylist(bad, schema=schema), n_options=2)
    assert (e.value.row, e.value.field) == (rows[1]["image_id"], "image")

    with pytest.raises(InputDataError) as e:
        build_fgvr_bench(images.drop_columns(["name"]))
    assert e.value.field == "name"
