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
from typing import Iterable, Literal, Sequence

import pyarrow as pa
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deepperception import boxes
from deepperception.domain.seeding import rng_for
from deepperception.engine.common import check_box, encode_png, require_columns
from deepperception.errors import InputDataError
from deepperception.images import ImageProblem, open_photo, read_image_bytes

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


@dataclass(frozen=True)
class TilePick:
    """One photo placed in a composite: what rendering needs, without the pixels."""

    image_id: str
    entity_id: str
    name: str
    box: tuple[int, int, int, int]
    part: int
    """Part of the labeled table that holds the row (where inline bytes are read from)."""
    image_uri: str | None = None
    crop_bottom: int = 0
    pool_size: int = 1
    """How many labeled photos the entity had to choose from (replays the random stream)."""


@dataclass(frozen=True)
class CompositePlan:
    """Everything that decides one composite except its pixels; rendering replays the same
    random stream, so a composite rendered on any worker equals the one a single process makes."""

    composite_id: str
    category: str
    split: str
    pool: str
    n: int
    layout: str
    n_entities: int
    picks: tuple[TilePick, ...]


PLAN_COLUMNS = ["image_id", "entity_id", "category", "name", "split", "pool", "box"]


def plan_composites(batches: Iterable[tuple[int, pa.RecordBatch]], cfg: CompositionConfig) -> list[CompositePlan]:
    """Choose the photos of every composite from a labeled table streamed as ``(part, batch)``
    pairs (metadata columns only; rows with a null box are skipped). Memory holds one small
    record per usable photo, never pixels."""
    stage = "compose"
    by_cat: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    split_of: dict[str, str] = {}
    rows = in_pool = unboxed = 0
    for part, batch in batches:
        require_columns(batch, PLAN_COLUMNS, stage=stage)
        cols = batch.to_pydict()
        uris = cols.get("image_uri") or [None] * batch.num_rows
        crops = cols.get("crop_bottom") or [0] * batch.num_rows
        for j in range(batch.num_rows):
            rows += 1
            if cols["pool"][j] != cfg.pool:
                continue
            in_pool += 1
            if cols["box"][j] is None:
                unboxed += 1
                continue
            cat = cols["category"][j]
            if cfg.categories is not None and cat not in cfg.categories:
                continue
            iid = cols["image_id"][j]
            if split_of.setdefault(cat, cols["split"][j]) != cols["split"][j]:
                raise InputDataError(f"category {cat!r} mixes splits {split_of[cat]!r} and {cols['split'][j]!r}",
                                     stage=stage, row=iid, field="split")
            box = check_box(cols["box"][j], stage=stage, row=iid)
            by_cat[cat][cols["entity_id"][j]].append(
                {"image_id": iid, "entity_id": cols["entity_id"][j], "name": cols["name"][j], "box": box,
                 "part": part, "image_uri": uris[j], "crop_bottom": crops[j] or 0})
    if not by_cat:
        # Zero composites would be committed as an empty (but "successful") version; say why instead.
        raise InputDataError(
            f"no labeled image of pool {cfg.pool!r} to compose: {rows} rows, {in_pool} in the pool, "
            f"{unboxed} of those without a box" + (f", categories restricted to {cfg.categories}" if cfg.categories else ""),
            stage=stage, field="box")
    plans = []
    for cat in sorted(by_cat):
        entity_ids = sorted(by_cat[cat])
        if len(entity_ids) < cfg.k_min:
            log.warning("compose: category %r has %d entities with labeled %s images, fewer than k_min=%d; skipped",
                        cat, len(entity_ids), cfg.pool, cfg.k_min)
            continue
        for n in range(cfg.composites_per_category):
            rng = rng_for("compose", cfg.seed, cfg.pool, cat, n)
            k = rng.randint(cfg.k_min, min(cfg.k_max, len(entity_ids)))
            picks = []
            for e in rng.sample(entity_ids, k):
                options = by_cat[cat][e]
                r = rng.choice(options)
                picks.append(TilePick(r["image_id"], r["entity_id"], r["name"], r["box"], r["part"], r["image_uri"],
                                      r["crop_bottom"], len(options)))
            plans.append(CompositePlan(f"{cat}-{cfg.pool}-{n:04d}", cat, split_of[cat], cfg.pool, n,
                                       cfg.layouts[n % len(cfg.layouts)], len(entity_ids), tuple(picks)))
    return plans


def render_composite(plan: CompositePlan, tiles: Sequence[Image.Image], cfg: CompositionConfig) -> dict:
    """The composite row (``COMPOSITES_SCHEMA``) of ``plan`` from its decoded tiles, in pick order."""
    rng = rng_for("compose", cfg.seed, cfg.pool, plan.category, plan.n)
    # Replay the planning draws (their consumption depends only on these sizes) so the layout
    # and shade draws below continue the very stream a single-process run uses.
    k = rng.randint(cfg.k_min, min(cfg.k_max, plan.n_entities))
    if k != len(plan.picks):
        raise ValueError(f"composite {plan.composite_id}: plan has {len(plan.picks)} picks, replay draws {k}")
    rng.sample(range(plan.n_entities), k)
    for p in plan.picks:
        rng.choice(range(p.pool_size))
    canvas_size, places = layout_tiles(plan.layout, [t.size for t in tiles], cfg.tile_size, rng, cfg.random_canvas_factor)
    shade = rng.randint(200, 245)
    canvas = Image.new("RGB", canvas_size, (shade, shade, shade))
    items = []
    for pick, tile, p in zip(plan.picks, tiles, places):
        canvas.paste(tile.resize((p.w, p.h), Image.Resampling.BILINEAR), (p.x, p.y))
        items.append((p, {"entity_id": pick.entity_id, "name": pick.name, "image_id": pick.image_id,
                          "box": list(remap_box(pick.box, p, canvas_size))}))
    # Reading order: rows of tile height top to bottom, then left to right.
    items.sort(key=lambda it: ((it[0].y + it[0].h / 2) // cfg.tile_size, it[0].x + it[0].w / 2))
    if max(canvas.size) > cfg.max_canvas_side:
        s = cfg.max_canvas_side / max(canvas.size)
        canvas = canvas.resize((max(1, round(canvas.width * s)), max(1, round(canvas.height * s))), Image.Resampling.BILINEAR)
    return {"composite_id": plan.composite_id, "category": plan.category, "split": plan.split, "pool": plan.pool,
            "image": encode_png(canvas), "width": canvas.width, "height": canvas.height, "layout": plan.layout,
            "entities": json.dumps([it[1] for it in items])}


def load_tiles(plan: CompositePlan, inline: dict[str, bytes]) -> list[Image.Image]:
    """Decode a plan's photos: inline bytes by image_id, or the original file by URI."""
    tiles = []
    for p in plan.picks:
        try:
            data = read_image_bytes(inline.get(p.image_id), p.image_uri)
            tiles.append(open_photo(data, crop_bottom=p.crop_bottom, name=p.image_uri or p.image_id))
        except ImageProblem as exc:  # it decoded at labeling time: the file changed since
            raise InputDataError(f"photo {p.image_uri or p.image_id} no longer loads ({exc}); was the dataset "
                                 f"changed after labeling?", stage="compose", row=p.image_id, field="image") from None
    return tiles


def compose(labeled: pa.Table, cfg: CompositionConfig) -> pa.Table:
    """Build ``composites_per_category`` composites per category from the ``cfg.pool`` rows of a
    labeled images table (rows with a null box are skipped). Schema ``COMPOSITES_SCHEMA``;
    ``entities`` is a JSON list ``[{entity_id, name, image_id, box}]`` in reading order.
    (In-memory form of the sharded stage: :func:`plan_composites` + :func:`render_composite`.)"""
    require_columns(labeled, PLAN_COLUMNS, stage="compose")
    plans = plan_composites([(0, b) for b in labeled.select(
        [c for c in labeled.column_names if c != "image"]).to_batches()], cfg)
    inline = {}
    if "image" in labeled.column_names:
        inline = dict(zip(labeled.column("image_id").to_pylist(), labeled.column("image").to_pylist()))
    rows = [render_composite(p, load_tiles(p, inline), cfg) for p in plans]
    return pa.Table.from_pylist(rows, schema=COMPOSITES_SCHEMA)
