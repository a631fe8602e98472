from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from deepperception import boxes, prompts
from deepperception.engine.composition import CompositionConfig, compose
from deepperception.engine.datasets import BENCH_SCHEMA, build_bench, build_grpo_rows, build_sft_rows
from deepperception.engine.distillation import DistillConfig, TemplateTeacher, distill
from deepperception.engine.filtering import filter_cot
from deepperception.errors import InputDataError


@pytest.fixture(scope="module")
def train_composites(labeled):
    return compose(labeled, CompositionConfig(composites_per_category=2, seed=7))


@pytest.fixture(scope="module")
def test_composites(labeled):
    return compose(labeled, CompositionConfig(composites_per_category=2, pool="test", seed=7))


def test_bench_schema_is_the_official_one(test_composites, tmp_path):
    bench = build_bench(test_composites, questions_per_composite=2, seed=0)
    assert bench.schema == BENCH_SCHEMA
    assert [(f.name, str(f.type)) for f in bench.schema] == [
        ("question_id", "string"), ("question", "string"),
        ("image", "struct<bytes: binary, path: string>"), ("answer", "string"), ("category", "string")]
    rows = bench.to_pylist()
    cats = [r["category"] for r in rows]
    assert [r["question_id"] for r in rows] == [f"{c}/{cats[:i].count(c)}" for i, c in enumerate(cats)]
    comps = {r["composite_id"]: r for r in test_composites.to_pylist()}
    images_used = [r["image"]["bytes"] for r in rows]
    assert len(set(images_used)) == test_composites.num_rows < len(rows)  # images reused across questions
    for r in rows:
        comp = comps[r["image"]["path"].removesuffix(".png")]
        name = boxes.parse_object_ref(r["answer"])
        item = next(it for it in json.loads(comp["entities"]) if it["name"] == name)
        assert r["question"] == prompts.grounding_question(name)
        assert boxes.parse_gt_box(r["answer"]) == tuple(float(v) for v in item["box"])
        assert r["image"]["bytes"] == comp["image"]
    # As the official evaluator loads it: the image column is a plain dict with raw bytes.
    pq.write_table(bench, tmp_path / "kvg-bench.parquet")
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files={"test": str(tmp_path / "kvg-bench.parquet")}, cache_dir=str(tmp_path / "cache"))["test"]
    first = ds[0]
    assert isinstance(first["image"], dict) and isinstance(first["image"]["bytes"], bytes)
    Image.open(io.BytesIO(first["image"]["bytes"])).load()


def test_bench_refuses_training_images(train_composites):
    with pytest.raises(InputDataError, match="field=pool"):
        build_bench(train_composites, 1, 0)
    assert build_bench(train_composites, 1, 0, allow_train_pool=True).num_rows == train_composites.num_rows


def test_grpo_rows(train_composites):
    grpo = build_grpo_rows(train_composites, targets_per_composite=2, seed=1)
    assert grpo.column_names == ["question_id", "category", "image", "problem", "solution"]
    assert str(grpo.schema.field("image").type) == "struct<bytes: binary, path: string>"
    assert grpo.equals(build_grpo_rows(train_composites, targets_per_composite=2, seed=1))
    for r in grpo.to_pylist():
        name = boxes.parse_object_ref(r["solution"])
        x1, y1, x2, y2 = (int(v) for v in boxes.parse_gt_box(r["solution"]))
        assert r["solution"] == (f"<answer> <|object_ref_start|>{name}<|object_ref_end|>"
                                 f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|> </answer>")
        assert r["problem"] == f"Find and give the bounding box of <|object_ref_start|>{name}<|object_ref_end|>"
        assert r["question_id"].startswith(r["category"] + "/" + r["image"]["path"].removesuffix(".png") + "-")


def test_sft_rows(train_composites, entities):
    cot = distill(train_composites, TemplateTeacher(entities), DistillConfig(targets_per_composite=1))
    kept, _ = filter_cot(cot)
    sft = build_sft_rows(kept, train_composites)
    assert sft.column_names == ["question_id", "messages", "images"]
    assert str(sft.schema.field("images").type) == "list<item: binary>"
    image_of = dict(zip(train_composites.column("composite_id").to_pylist(), train_composites.column("image").to_pylist()))
    for r, k in zip(sft.to_pylist(), kept.to_pylist()):
        assert r["question_id"] == k["question_id"]
        q = prompts.grounding_question(k["target_entity"])
        assert json.loads(r["messages"]) == [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompts.user_text(q, "r1")}]},
            {"role": "assistant", "content": [{"type": "text", "text": k["response"]}]},
        ]
        assert r["images"] == [image_of[k["composite_id"]]]
    with pytest.raises(InputDataError, match=rf"row={kept.column('question_id')[0].as_py()} field=composite_id"):
        build_sft_rows(kept, train_composites.slice(1))
    failed = pa.Table.from_pylist([{**kept.to_pylist()[0], "response": None}], schema=kept.schema)
    with pytest.raises(InputDataError, match="field=response"):
        build_sft_rows(failed, train_composites)
