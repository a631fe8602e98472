"""Stage 3: multi-entity composites, the KVG images.

KVG needs several same-category entities in one picture ("which of these airliners is the
Boeing 767?"). As in the paper, k in [k_min, k_max] single-entity photos of DIFFERENT entities
of ONE category are placed with a horizontal, vertical, grid or random layout, and every
entity's box is carried into the composite's own 0-1000 frame. Composites are drawn from one
pool, so bench composites ("test") never reuse a training photo.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal, Sequence

import pyarrow as pa
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deepperception import boxes
from deepperception.domain.seeding import rng_for
from deepperception.engine.common import check_box, decode_image, encode_png, require_columns
from deepperception.errors import InputDataError

log = logging.getLogger(__name__)

Layout = Literal["horizontal", "vertical", "grid", "random"]

COMPOSITES_SCHEMA = pa.schema(
    [
        pa.field("composite_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("pool", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("layout", pa.string(), nullable=False),
        pa.field("entities", pa.string(), nullable=False),
    ]
)


class CompositionConfig(BaseModel):
    """How many composites per category, how many entities each, and how they are laid out."""

    model_config = ConfigDict(extra="forbid")

    k_min: int = Field(2, ge=2, description="Fewest entities per composite (the paper: 2).")
    k_max: int = Field(6, ge=2, description="Most entities per composite (the paper: 6); capped by entities available.")
    layouts: list[Layout] = Field(
        default_factory=lambda: ["horizontal", "vertical", "grid", "random"],
        min_length=1, description="Layouts used round-robin over each category's composites.",
    )
    composites_per_category: int = Field(16, ge=1, description="Composites made for every category in the pool.")
    tile_size: int = Field(128, ge=16, description="Tile side in pixels before any canvas down-scaling.")
    max_canvas_side: int = Field(640, ge=64, description="A longer canvas is scaled down to this (boxes are relative).")
    random_canvas_factor: float = Field(
        2.2, ge=1.2, description="Random layout: canvas area as a multiple of k tile areas (room to avoid overlaps)."
    )
    pool: Literal["train", "test"] = Field("train", description="Which image pool to draw from.")
    categories: list[str] | None = Field(None, description="Restrict to these categories (None: all in the pool).")
    seed: int = Field(0, description="Seed for entity/photo choice and random placement.")

    @model_validator(mode="after")
    def _check(self) -> "CompositionConfig":
        if self.k_min > self.k_max:
            raise ValueError(f"k_min {self.k_min} > k_max {self.k_max}")
        return self


@dataclass(frozen=True)
class Placement:
    """Where one tile lands on the canvas, in pixels."""

    x: int
    y: int
    w: int
    h: int


def _fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    """Scale ``(w, h)`` so the longer side is ``side``.

    >>> _fit((100, 50), 64)
    (64, 32)
    """
    w, h = size
    s = side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def layout_tiles(
    layout: Layout, sizes: Sequence[tuple[int, int]], tile: int, rng: random.Random, random_canvas_factor: float = 2.2
) -> tuple[tuple[int, int], list[Placement]]:
    """Canvas size and one placement per tile. Horizontal rows share a height, vertical stacks a
    width; grid centres each tile in a ``tile`` x ``tile`` cell, row-major; random places tiles
    at random scales without overlap (rejection sampling, growing the canvas if it is too full).

    >>> layout_tiles("horizontal", [(10, 10), (20, 10)], 10, random.Random(0))
    ((30, 10), [Placement(x=0, y=0, w=10, h=10), Placement(x=10, y=0, w=20, h=10)])
    >>> layout_tiles("grid", [(10, 10)] * 3, 10, random.Random(0))[0]
    (20, 20)
    """
    if layout == "horizontal":
        out, x = [], 0
        for w, h in sizes:
            nw = max(1, round(w * tile / h))
            out.append(Placement(x, 0, nw, tile))
            x += nw
        return (x, tile), out
    if layout == "vertical":
        out, y = [], 0
        for w, h in sizes:
            nh = max(1, round(h * tile / w))
            out.append(Placement(0, y, tile, nh))
            y += nh
        return (tile, y), out
    if layout == "grid":
        cols = math.ceil(math.sqrt(len(sizes)))
        rows = math.ceil(len(sizes) / cols)
        out = []
        for i, size in enumerate(sizes):
            w, h = _fit(size, tile)
            r, c = divmod(i, cols)
            out.append(Placement(c * tile + (tile - w) // 2, r * tile + (tile - h) // 2, w, h))
        return (cols * tile, rows * tile), out
    if layout == "random":
        side = math.ceil(tile * math.sqrt(len(sizes) * random_canvas_factor))
        while True:
            placed = _place_random(sizes, tile, side, rng)
            if placed is not None:
                return (side, side), placed
            side = math.ceil(side * 1.15)
    raise ValueError(f"unknown layout {layout!r}")


def _place_random(sizes: Sequence[tuple[int, int]], tile: int, side: int, rng: random.Random) -> list[Placement] | None:
    out: list[Placement] = []
    for size in sizes:
        w, h = _fit(size, max(8, round(tile * rng.uniform(0.6, 1.0))))
        for _ in range(200):
            x, y = rng.randint(0, side - w), rng.randint(0, side - h)
            if all(x + w <= p.x or p.x + p.w <= x or y + h <= p.y or p.y + p.h <= y for p in out):
                out.append(Placement(x, y, w, h))
                break
        else:
            return None
    return out


def remap_box(box: Sequence[int], p: Placement, canvas: tuple[int, int]) -> tuple[int, int, int, int]:
    """A tile's 0-1000 box -> the canvas's 0-1000 box.

    >>> remap_box((0, 0, 1000, 1000), Placement(50, 0, 50, 100), (100, 100))
    (500, 0, 1000, 1000)
    """
    x1, y1, x2, y2 = box
    px = (p.x + x1 / 1000 * p.w, p.y + y1 / 1000 * p.h, p.x + x2 / 1000 * p.w, p.y + y2 / 1000 * p.h)
    return boxes.pixels_to_qwen(px, canvas[0], canvas[1])


def compose(labeled: pa.Table, cfg: CompositionConfig) -> pa.Table:
    """Build ``composites_per_category`` composites per category from the ``cfg.pool`` rows of a
    labeled images table (rows with a null box are skipped). Schema ``COMPOSITES_SCHEMA``;
    ``entities`` is a JSON list ``[{entity_id, name, image_id, box}]`` in reading order."""
    stage = "compose"
    require_columns(labeled, ["image_id", "entity_id", "category", "name", "split", "pool", "image", "box"], stage=stage)
    cols = {c: labeled.column(c).to_pylist() for c in ["image_id", "entity_id", "category", "name", "split", "pool", "box"]}
    by_cat: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    split_of: dict[str, str] = {}
    for i in range(labeled.num_rows):
        if cols["pool"][i] != cfg.pool or cols["box"][i] is None:
            continue
        cat = cols["category"][i]
        if cfg.categories is not None and cat not in cfg.categories:
            continue
        if split_of.setdefault(cat, cols["split"][i]) != cols["split"][i]:
            raise InputDataError(f"category {cat!r} mixes splits {split_of[cat]!r} and {cols['split'][i]!r}", stage=stage, row=cols["image_id"][i], field="split")
        check_box(cols["box"][i], stage=stage, row=cols["image_id"][i])
        by_cat[cat][cols["entity_id"][i]].append(i)

    if not by_cat:
        # Zero composites would be committed as an empty (but "successful") version; say why instead.
        in_pool = sum(1 for p in cols["pool"] if p == cfg.pool)
        unboxed = sum(1 for p, b in zip(cols["pool"], cols["box"]) if p == cfg.pool and b is None)
        raise InputDataError(
            f"no labeled image of pool {cfg.pool!r} to compose: {labeled.num_rows} rows, {in_pool} in the pool, "
            f"{unboxed} of those without a box" + (f", categories restricted to {cfg.categories}" if cfg.categories else ""),
            stage=stage, field="box")
    image_col = labeled.column("image")
    rows: dict[str, list] = {n: [] for n in COMPOSITES_SCHEMA.names}
    for cat in sorted(by_cat):
        entity_ids = sorted(by_cat[cat])
        if len(entity_ids) < cfg.k_min:
            log.warning("compose: category %r has %d entities with labeled %s images, fewer than k_min=%d; skipped",
                        cat, len(entity_ids), cfg.pool, cfg.k_min)
            continue
        for n in range(cfg.composites_per_category):
            rng = rng_for("compose", cfg.seed, cfg.pool, cat, n)
            k = rng.randint(cfg.k_min, min(cfg.k_max, len(entity_ids)))
            picks = [rng.choice(by_cat[cat][e]) for e in rng.sample(entity_ids, k)]
            tiles = [decode_image(image_col[i].as_py(), stage=stage, row=cols["image_id"][i]) for i in picks]
            layout: Layout = cfg.layouts[n % len(cfg.layouts)]
            canvas_size, places = layout_tiles(layout, [t.size for t in tiles], cfg.tile_size, rng, cfg.random_canvas_factor)
            shade = rng.randint(200, 245)
            canvas = Image.new("RGB", canvas_size, (shade, shade, shade))
            items = []
            for i, tile, p in zip(picks, tiles, places):
                canvas.paste(tile.resize((p.w, p.h), Image.Resampling.BILINEAR), (p.x, p.y))
                items.append((p, {"entity_id": cols["entity_id"][i], "name": cols["name"][i], "image_id": cols["image_id"][i],
                                  "box": list(remap_box(cols["box"][i], p, canvas_size))}))
            # Reading order: rows of tile height top to bottom, then left to right.
            items.sort(key=lambda it: ((it[0].y + it[0].h / 2) // cfg.tile_size, it[0].x + it[0].w / 2))
            if max(canvas.size) > cfg.max_canvas_side:
                s = cfg.max_canvas_side / max(canvas.size)
                canvas = canvas.resize((max(1, round(canvas.width * s)), max(1, round(canvas.height * s))), Image.Resampling.BILINEAR)
            rows["composite_id"].append(f"{cat}-{cfg.pool}-{n:04d}")
            rows["category"].append(cat)
            rows["split"].append(split_of[cat])
            rows["pool"].append(cfg.pool)
            rows["image"].append(encode_png(canvas))
            rows["width"].append(canvas.width)
            rows["height"].append(canvas.height)
            rows["layout"].append(layout)
            rows["entities"].append(json.dumps([it[1] for it in items]))
    return pa.Table.from_pydict(rows, schema=COMPOSITES_SCHEMA)
