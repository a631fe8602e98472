"""Exports: the LLaMA-Factory sharegpt dataset and the official GRPO parquet, loaded back with
``datasets`` the way the official trainers load them."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from deepperception.engine.composition import CompositionConfig, compose
from deepperception.engine.datasets import SFT_SCHEMA, build_grpo_rows, build_sft_rows
from deepperception.engine.distillation import DistillConfig, TemplateTeacher, distill
from deepperception.engine.exports import export_grpo, export_sharegpt, sharegpt_dataset_info
from deepperception.engine.filtering import filter_cot
from deepperception.errors import InputDataError


@pytest.fixture(scope="module")
def composites(labeled):
    return compose(labeled, CompositionConfig(composites_per_category=2, seed=11))


@pytest.fixture(scope="module")
def sft(composites, entities):
    kept, _ = filter_cot(distill(composites, TemplateTeacher(entities), DistillConfig(targets_per_composite=2)))
    return build_sft_rows(kept, composites)


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return str(tmp_path / "hf-cache")


def test_sharegpt_export_loads_with_datasets(sft, tmp_path, offline):
    out = tmp_path / "lf"
    out.mkdir()
    (out / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "other.json"}}))
    res = export_sharegpt(sft.to_batches(max_chunksize=3), out, "kvg-fish")
    assert res["rows"] == res["images"] == sft.num_rows
    info = json.loads((out / "dataset_info.json").read_text())
    assert info == {"other": {"file_name": "other.json"}, "kvg-fish": {
        "file_name": "kvg-fish.json", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}
    assert res["dataset_info"] == sharegpt_dataset_info("kvg-fish.json")
    items = json.loads((out / "kvg-fish.json").read_text())
    src = sft.to_pylist()
    assert len(items) == len(src)
    for it, r in zip(items, src):
        msgs = json.loads(r["messages"])
        user, assistant = it["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["content"] == "<image>" + msgs[0]["content"][1]["text"]  # image first, as in the official prompt
        assert sum(m["content"].count("<image>") for m in it["messages"]) == len(it["images"]) == 1
        assert assistant["content"] == msgs[1]["content"][0]["text"]
        path = out / it["images"][0]
        assert it["images"][0].startswith("images/") and path.suffix == ".png"
        assert path.read_bytes() == r["images"][0]  # stored bytes as they are, not re-encoded
    assert len({it["images"][0] for it in items}) == len(items)  # one file per question id

    import datasets

    ds = datasets.load_dataset("json", data_files=str(out / "kvg-fish.json"), split="train", cache_dir=offline)
    assert ds.num_rows == len(items) and ds.column_names == ["messages", "images"]
    ds = ds.map(lambda ex: {"images": [str(out / p) for p in ex["images"]]})  # LLaMA-Factory joins media_dir
    ds = ds.cast_column("images", datasets.List(datasets.Image()))
    img = ds[0]["images"][0]
    assert isinstance(img, Image.Image) and img.size == Image.open(io.BytesIO(src[0]["images"][0])).size


def test_sharegpt_names_extensions_and_bad_rows(tmp_path):
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(jpeg, format="JPEG")
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find A"}]}
    reply = {"role": "assistant", "content": [{"type": "text", "text": "<think>t</think><answer>a</answer>"}]}

    def table(qid, messages, images):
        return pa.Table.from_pylist([{"question_id": qid, "messages": json.dumps(messages), "images": images}], schema=SFT_SCHEMA)

    res = export_sharegpt([table("bird/c-1", [user, reply], [jpeg.getvalue()])], tmp_path, "jpeg-set")
    item = json.loads((tmp_path / "jpeg-set.json").read_text())[0]
    assert item["images"][0].endswith(".jpg") and "/" not in item["images"][0].removeprefix("images/")
    assert res["rows"] == 1
    bad_cases = [
        (table("q1", [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "see <image> here"}]}, reply],
               [jpeg.getvalue()]), r"row=q1 field=messages.*placeholder"),
        (table("q2", [user, reply], [jpeg.getvalue(), jpeg.getvalue()]), r"row=q2 field=messages.*1 <image> placeholder\(s\) for 2"),
        (table("q3", [reply, user], [jpeg.getvalue()]), r"row=q3 field=messages.*expected 'user'"),
        (table("q4", [user, reply], [b"not an image"]), r"row=q4 field=images"),
    ]
    for t, pattern in bad_cases:
        with pytest.raises(InputDataError, match=pattern):
            export_sharegpt([t], tmp_path / "bad", "x")
        assert not (tmp_path / "bad" / "x.json").exists() and not (tmp_path / "bad" / "x.json.tmp").exists()
    with pytest.raises(InputDataError, match="no SFT rows"):
        export_sharegpt([], tmp_path / "empty", "x")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "dataset_info.json").write_text("[1]")
    with pytest.raises(InputDataError, match="dataset_info.json must hold a JSON object"):
        export_sharegpt([table("q", [user, reply], [jpeg.getvalue()])], tmp_path / "broken", "x")


def test_grpo_parquet_one_file_per_category(composites, tmp_path, offline):
    grpo = build_grpo_rows(composites, targets_per_composite=2, seed=3)
    res = export_grpo((b for b in grpo.to_batches(max_chunksize=5)), tmp_path)
    cats = sorted(set(grpo.column("category").to_pylist()))
    assert len(cats) > 1
    assert res == {c: {"file": f"grpo-{c}.parquet", "rows": grpo.column("category").to_pylist().count(c)} for c in cats}
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [f"grpo-{c}.parquet" for c in cats]

    import datasets

    for cat in cats:
        path = tmp_path / f"grpo-{cat}.parquet"
        assert pq.read_schema(path).names == ["image", "problem", "solution"]
        want = [r for r in grpo.to_pylist() if r["category"] == cat]
        got = pq.read_table(path).to_pylist()
        assert [(g["problem"], g["solution"], g["image"]) for g in got] == [(w["problem"], w["solution"], w["image"]) for w in want]
        # as the official grpo.py loads it
        ds = datasets.load_dataset("parquet", data_files={"train": str(path)}, split="train", cache_dir=offline)
        assert ds.column_names == ["image", "problem", "solution"]
        assert isinstance(ds.features["image"], datasets.Image)  # declared in the file's HF metadata
        ds = ds.cast_column("image", datasets.Image())
        img = ds[0]["image"]
        assert isinstance(img, Image.Image)
        assert img.size == Image.open(io.BytesIO(want[0]["image"]["bytes"])).size
        assert ds[0]["solution"].startswith("<answer> <|object_ref_start|>")


def test_grpo_bad_input(composites, tmp_path):
    grpo = build_grpo_rows(composites, targets_per_composite=1, seed=3)
    rows = grpo.to_pylist()
    rows[1]["category"] = "../evil"
    with pytest.raises(InputDataError, match=rf"row={rows[1]['question_id']} field=category"):
        export_grpo([pa.Table.from_pylist(rows, schema=grpo.schema)], tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(InputDataError, match="field=solution"):
        export_grpo([grpo.drop_columns(["solution"])], tmp_path)
    with pytest.raises(InputDataError, match="no GRPO rows"):
        export_grpo([grpo.slice(0, 0)], tmp_path)


def test_exports_stream_in_bounded_memory(tmp_path):
    """Peak traced (Python) memory does not grow with the number of rows: one batch at a time."""
    import tracemalloc

    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    msgs = json.dumps([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q" * 200}]},
                       {"role": "assistant", "content": [{"type": "text", "text": "A" * 400}]}])
    grpo_schema = pa.schema([("question_id", pa.string()), ("category", pa.string()),
                             ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                             ("problem", pa.string()), ("solution", pa.string())])

    def sft_batches(n):
        for b in range(n):
            yield pa.RecordBatch.from_pylist([{"question_id": f"c/{b}-{i}", "messages": msgs, "images": [png.getvalue()]}
                                              for i in range(20)], schema=SFT_SCHEMA)

    def grpo_batches(n):
        for b in range(n):
            yield pa.RecordBatch.from_pylist([{"question_id": f"{c}/{b}-{i}", "category": c, "problem": "P" * 200, "solution": "S" * 100,
                                               "image": {"bytes": png.getvalue(), "path": None}} for i in range(10) for c in ("a", "b")],
                                             schema=grpo_schema)

    def peak(fn):
        tracemalloc.start()
        fn()
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    export_sharegpt(sft_batches(1), tmp_path / "s0", "x")  # warm-up: first-call imports and caches
    export_grpo(grpo_batches(1), tmp_path / "g0")
    small = peak(lambda: export_sharegpt(sft_batches(10), tmp_path / "s1", "x"))
    large = peak(lambda: export_sharegpt(sft_batches(100), tmp_path / "s2", "x"))
    assert large - small < 256 * 1024, (small, large)  # 10x the rows; rows kept in Python would add > 1 MB
    small = peak(lambda: export_grpo(grpo_batches(10), tmp_path / "g1"))
    large = peak(lambda: export_grpo(grpo_batches(100), tmp_path / "g2"))
    assert large - small < 256 * 1024, (small, large)  # 10x the rows; rows kept in Python would add > 1 MB
    assert pq.read_metadata(tmp_path / "g2" / "grpo-a.parquet").num_rows == 1000
