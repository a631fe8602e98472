"""FGVC-Aircraft adapter on a tiny tree in the published layout (fgvc-aircraft-2013b/data/)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from fixture_trees import build_fgvc_aircraft

from deepperception.errors import InputDataError
from deepperception.sources import open_source
from deepperception.sources.collect import SourceSpec, collect_batches, collect_drops
from deepperception.sources.inspect import inspect_source


@pytest.fixture
def tree(tmp_path):
    return build_fgvc_aircraft(tmp_path / "fgvc-aircraft-2013b", n_variants=3, per_variant=3, test_per_variant=2,
                               missing=1)


def test_reads_variants_splits_boxes_and_banner(tree):
    src = open_source("fgvc-aircraft", tree.root)
    assert src.entities() == tree.entities  # "F-16A/B" and names with spaces survive
    train, test = list(src.iter_images("train")), list(src.iter_images("test"))
    assert len(train) == tree.count("train") == 9 and len(test) == tree.count("test") == 6
    assert {im.split for im in train} == {"train"} and {im.split for im in test} == {"test"}
    assert len(list(src.iter_images("all"))) == 15
    for im in train + test:
        assert len(im.key) == 7 and im.key.startswith("00")  # ids keep their leading zeros
        xmin, ymin, xmax, ymax = tree.boxes[im.key]
        assert im.box_px == (xmin - 1, ymin - 1, xmax, ymax)  # 1-based inclusive -> 0-based edges
        assert im.crop_bottom == 20
        assert im.width is None and im.height is None  # FGVC ships no sizes; nothing is decoded
        assert Path(im.uri).is_absolute() and im.uri.endswith(f"data/images/{im.key}.jpg")
        assert im.exists == Path(im.uri).is_file()
    assert sorted(im.uri for im in test if not im.exists) == sorted(tree.missing)
    assert {im.entity for im in train} == set(tree.entities)


def test_inspect_counts(tree):
    report = inspect_source("fgvc-aircraft", tree.root, split="test")
    assert list(report) == ["source", "split", "entities", "images", "images_with_box", "missing", "per_entity"]
    assert report == {"source": "fgvc-aircraft", "split": "test", "entities": 3, "images": 6,
                      "images_with_box": 6, "missing": 1, "per_entity": tree.test}


def test_collect_rows_reference_files(tree):
    spec = SourceSpec(source="fgvc-aircraft", root=str(tree.root), category="aircraft", split="seen")
    table = pa.Table.from_batches(list(collect_batches(spec, batch_rows=4)))
    assert table.num_rows == 14  # 15 named, 1 missing
    rows = table.to_pylist()
    assert all(r["image"] is None and Path(r["image_uri"]).is_file() for r in rows)
    split_of = {im.key: im.split for im in open_source("fgvc-aircraft", tree.root).iter_images()}
    assert all(r["pool"] == split_of[r["image_id"].rsplit("/", 1)[1]] for r in rows)  # trainval -> train
    assert sum(r["pool"] == "train" for r in rows) == 9
    for r in rows:
        xmin, ymin, xmax, ymax = tree.boxes[r["image_id"].rsplit("/", 1)[1]]
        assert r["source_box_px"] == [xmin - 1, ymin - 1, xmax, ymax]
    f16 = [r for r in rows if r["name"] == "F-16A/B"]
    assert f16[0]["entity_id"] == "aircraft/f-16a-b" and f16[0]["image_id"].startswith("aircraft/f-16a-b/00")
    assert all(r["crop_bottom"] == 20 and r["source"] == "fgvc-aircraft" for r in rows)
    drops = collect_drops(spec).to_pylist()
    assert [(d["reason"], d["uri"]) for d in drops] == [("missing_file", tree.missing[0])]


def test_unknown_variant_names_file_and_line(tree):
    path = tree.root / "data" / "images_variant_test.txt"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].split(" ")[0] + " Boeing 999"
    path.write_text("\n".join(lines) + "\n")
    src = open_source("fgvc-aircraft", tree.root)
    assert len(list(src.iter_images("train"))) == 9  # the train list is fine
    with pytest.raises(InputDataError, match=r"images_variant_test\.txt line 3: variant 'Boeing 999' is not in"):
        list(src.iter_images("test"))


def test_bad_box_line_and_missing_metadata(tree):
    box = tree.root / "data" / "images_box.txt"
    text = box.read_text().splitlines()
    text[4] = text[4].rsplit(" ", 1)[0]  # 4 fields
    box.write_text("\n".join(text) + "\n")
    with pytest.raises(InputDataError, match=r"images_box\.txt line 5: expected '<id> xmin ymin xmax ymax'"):
        list(open_source("fgvc-aircraft", tree.root).iter_images())
    (tree.root / "data" / "variants.txt").unlink()
    with pytest.raises(InputDataError, match=r"variants file .*data/variants\.txt is missing"):
        open_source("fgvc-aircraft", tree.root).entities()


def test_missing_root_is_bad_input(tmp_path):
    with pytest.raises(InputDataError, match="does not exist or is not a directory"):
        open_source("fgvc-aircraft", tmp_path / "nowhere")
