from __future__ import annotations

import io
import json
import random

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from deepperception import boxes
from deepperception.engine.common import encode_png
from deepperception.engine.composition import COMPOSITES_SCHEMA, CompositionConfig, compose, layout_tiles
from deepperception.errors import InputDataError

COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
SIZES = [(60, 40), (40, 60), (50, 50), (80, 40), (40, 40), (64, 48)]


def solid_tiles() -> pa.Table:
    """Six entities of one category: white photos with one coloured rectangle = the entity."""
    rows = []
    for i, (colour, (w, h)) in enumerate(zip(COLOURS, SIZES)):
        img = Image.new("RGB", (w, h), (255, 255, 255))
        px = (w // 5, h // 4, w - w // 6, h - h // 5)
        img.paste(colour, (px[0], px[1], px[2], px[3]))
        rows.append({
            "image_id": f"tile/{i}/000", "entity_id": f"tile/{i}", "category": "tile", "name": f"Tile {i}",
            "split": "seen", "pool": "train", "image": encode_png(img), "box": list(boxes.pixels_to_qwen(px, w, h)),
        })
    return pa.Table.from_pylist(rows)


@pytest.mark.parametrize("layout", ["horizontal", "vertical", "grid", "random"])
@pytest.mark.parametrize("max_side", [2000, 150])
def test_remapped_boxes_cover_the_right_pixels(layout, max_side):
    cfg = CompositionConfig(k_min=3, k_max=6, layouts=[layout], composites_per_category=3, tile_size=64,
                            max_canvas_side=max_side, seed=4)
    out = compose(solid_tiles(), cfg)
    assert out.num_rows == 3
    for row in out.to_pylist():
        img = np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB")).astype(int)
        H, W = img.shape[:2]
        assert (W, H) == (row["width"], row["height"]) and max(W, H) <= max_side
        items = json.loads(row["entities"])
        assert 3 <= len(items) <= 6 and len({it["entity_id"] for it in items}) == len(items)
        for it in items:
            colour = np.array(COLOURS[int(it["entity_id"].split("/")[1])])
            x1, y1, x2, y2 = boxes.qwen_to_pixels(it["box"], W, H)
            assert x2 - x1 > 4 and y2 - y1 > 4
            inner = img[int(np.ceil(y1)) + 1 : int(y2) - 1, int(np.ceil(x1)) + 1 : int(x2) - 1]
            assert np.abs(inner - colour).max() < 40, "box interior must be the entity's colour"
            # Just outside each edge (2 px), no pixel has that colour: the box is tight.
            m = 2
            ring = [img[int(y1) - m - 1, int(x1):int(x2)] if y1 >= m + 1 else None,
                    img[min(H - 1, int(np.ceil(y2)) + m), int(x1):int(x2)] if y2 + m < H else None,
                    img[int(y1):int(y2), int(x1) - m - 1] if x1 >= m + 1 else None,
                    img[int(y1):int(y2), min(W - 1, int(np.ceil(x2)) + m)] if x2 + m < W else None]
            for strip in ring:
                if strip is not None and len(strip):
                    assert np.abs(strip - colour).sum(-1).min() > 30


def test_reading_order_and_layout_geometry():
    out = compose(solid_tiles(), CompositionConfig(layouts=["horizontal"], composites_per_category=4, tile_size=64))
    for row in out.to_pylist():
        xs = [it["box"][0] for it in json.loads(row["entities"])]
        assert xs == sorted(xs)
    out = compose(solid_tiles(), CompositionConfig(layouts=["vertical"], composites_per_category=4, tile_size=64))
    for row in out.to_pylist():
        ys = [it["box"][1] for it in json.loads(row["entities"])]
        assert ys == sorted(ys)


def test_random_layout_never_overlaps():
    rng = random.Random(0)
    for k in range(2, 7):
        (W, H), places = layout_tiles("random", [(64, 48)] * k, 64, rng)
        for i, p in enumerate(places):
            assert 0 <= p.x and p.x + p.w <= W and 0 <= p.y and p.y + p.h <= H
            for q in places[i + 1:]:
                assert p.x + p.w <= q.x or q.x + q.w <= p.x or p.y + p.h <= q.y or q.y + q.h <= p.y


def test_compose_real_pipeline_tables(labeled):
    cfg = CompositionConfig(composites_per_category=4, seed=2)
    out = compose(labeled, cfg)
    assert out.schema == COMPOSITES_SCHEMA
    assert compose(labeled, cfg).equals(out)  # deterministic, byte for byte
    assert set(out.column("pool").to_pylist()) == {"train"}
    assert set(out.column("category").to_pylist()) == {"glider", "beetle", "kite", "fish"}  # unseen: test pool only
    assert out.column("composite_id").to_pylist()[0] == "beetle-train-0000"
    assert out.column("layout").to_pylist()[:4] == ["horizontal", "vertical", "grid", "random"]
    test_images = set(labeled.filter(pa.compute.equal(labeled.column("pool"), "test")).column("image_id").to_pylist())
    for row in out.to_pylist():
        for it in json.loads(row["entities"]):
            assert it["entity_id"].startswith(row["category"] + "/")
            assert it["image_id"] not in test_images
    bench = compose(labeled, CompositionConfig(composites_per_category=2, pool="test"))
    assert {"badge", "moth"} <= set(bench.column("category").to_pylist())
    assert set(bench.column("split").to_pylist()) == {"seen", "unseen"}


def test_skips_categories_without_enough_entities(caplog):
    tiles = solid_tiles().slice(0, 1)
    assert compose(tiles, CompositionConfig(composites_per_category=2)).num_rows == 0
    assert "fewer than k_min" in caplog.text


def test_rows_without_a_box_are_skipped_and_bad_input_is_named():
    tiles = solid_tiles()
    b = tiles.column("box").to_pylist()
    b[0] = None
    out = compose(tiles.set_column(tiles.column_names.index("box"), "box", pa.array(b)),
                  CompositionConfig(composites_per_category=5, k_min=5, k_max=5))
    assert all("tile/0" not in row for row in out.column("entities").to_pylist())
    b[0] = [900, 0, 100, 50]
    with pytest.raises(InputDataError, match=r"row=tile/0/000 field=box"):
        compose(tiles.set_column(tiles.column_names.index("box"), "box", pa.array(b)), CompositionConfig())
    data = tiles.column("image").to_pylist()
    data[2] = b"garbage"
    broken = tiles.set_column(tiles.column_names.index("image"), "image", pa.array(data, pa.binary()))
    with pytest.raises(InputDataError, match=r"row=tile/2/000 field=image"):
        compose(broken, CompositionConfig(k_min=6, k_max=6, composites_per_category=1))
    with pytest.raises(InputDataError, match="field=box"):
        compose(tiles.drop_columns(["box"]), CompositionConfig())
