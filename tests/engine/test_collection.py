from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from deepperception.engine.collection import IMAGES_SCHEMA, CollectionConfig, collect_from_image_folder, collect_images
from deepperception.errors import InputDataError


def test_schema_counts_and_ids(images, entity_table):
    assert images.schema == IMAGES_SCHEMA
    assert images.num_rows == entity_table.num_rows * 4
    assert images.column("image_id").to_pylist()[:2] == ["glider/00/000", "glider/00/001"]
    assert set(images.column("source").to_pylist()) == {"synthetic"}


def test_pools_by_split(images):
    rows = images.select(["split", "pool"]).to_pylist()
    assert all(r["pool"] == "test" for r in rows if r["split"] == "unseen")
    seen = [r["pool"] for r in rows if r["split"] == "seen"]
    assert 0.1 < seen.count("test") / len(seen) < 0.5  # test_fraction=0.3, by hash


def test_images_decode_and_boxes_inside(images):
    for row in images.slice(0, 12).to_pylist():
        img = Image.open(io.BytesIO(row["image"]))
        assert img.size == (row["width"], row["height"]) == (96, 96)
        x1, y1, x2, y2 = row["source_box_px"]
        assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96


def test_collection_is_deterministic(entity_table, images):
    again = collect_images(entity_table, CollectionConfig(images_per_entity=4, image_size=96, test_fraction=0.3, seed=1))
    assert again.equals(images)
    other = collect_images(entity_table.slice(0, 1), CollectionConfig(images_per_entity=4, image_size=96, test_fraction=0.3, seed=2))
    assert other.column("image").to_pylist() != images.slice(0, 4).column("image").to_pylist()


def test_pool_assignment_is_order_independent(entity_table):
    cfg = CollectionConfig(images_per_entity=3, image_size=64, test_fraction=0.5)
    full = collect_images(entity_table, cfg)
    part = collect_images(entity_table.slice(5, 3), cfg)
    pools = dict(zip(full.column("image_id").to_pylist(), full.column("pool").to_pylist()))
    assert all(pools[i] == p for i, p in zip(part.column("image_id").to_pylist(), part.column("pool").to_pylist()))


def _write(path, size, colour, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)


def test_image_folder_adapter(tmp_path):
    _write(tmp_path / "Boeing_767-300" / "a.png", (40, 30), (200, 10, 10), "PNG")
    _write(tmp_path / "Boeing_767-300" / "b.jpg", (900, 300), (10, 200, 10), "JPEG")
    _write(tmp_path / "Airbus A320" / "c.jpeg", (20, 20), (10, 10, 200), "JPEG")
    (tmp_path / "Airbus A320" / "notes.txt").write_text("ignored")
    table = collect_from_image_folder(tmp_path, "aircraft", "seen", test_fraction=0.0, max_side=300)
    assert table.schema == IMAGES_SCHEMA
    rows = table.to_pylist()
    assert [r["image_id"] for r in rows] == ["aircraft/airbus-a320/c", "aircraft/boeing-767-300/a", "aircraft/boeing-767-300/b"]
    assert [r["name"] for r in rows] == ["Airbus A320", "Boeing 767-300", "Boeing 767-300"]
    assert all(r["source_box_px"] is None and r["pool"] == "train" for r in rows)
    big = Image.open(io.BytesIO(rows[2]["image"]))
    assert big.format == "PNG" and big.size == (300, 100) == (rows[2]["width"], rows[2]["height"])
    assert np.asarray(Image.open(io.BytesIO(rows[1]["image"])))[0, 0].tolist() == [200, 10, 10]
    unseen = collect_from_image_folder(tmp_path, "aircraft", "unseen")
    assert set(unseen.column("pool").to_pylist()) == {"test"}


def test_image_folder_names_the_corrupt_file(tmp_path):
    _write(tmp_path / "Cessna 172" / "ok.png", (16, 16), (1, 2, 3), "PNG")
    bad = tmp_path / "Cessna 172" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(InputDataError, match=r"broken\.jpg.*field=image.*does not decode"):
        collect_from_image_folder(tmp_path, "aircraft", "seen")


def test_image_folder_errors_for_bad_roots(tmp_path):
    with pytest.raises(InputDataError, match="does not exist"):
        collect_from_image_folder(tmp_path / "nope", "aircraft", "seen")
    with pytest.raises(InputDataError, match="no <entity name>/ sub-directories"):
        collect_from_image_folder(tmp_path, "aircraft", "seen")
    (tmp_path / "Empty").mkdir()
    with pytest.raises(InputDataError, match="holds no"):
        collect_from_image_folder(tmp_path, "aircraft", "seen")
