"""Stage 1 of the data engine on a real dataset: a source -> ``IMAGES_SCHEMA`` batches + drops.

Rows reference the original files (``image_uri``; ``image`` is null): nothing is decoded or
re-encoded here. Two streaming passes over the metadata:

1. count, per entity, the photos the metadata names and those present (memory: one counter per
   entity);
2. yield rows in batches of ``batch_rows`` and, through ``on_drop``, one drop record per photo or
   entity left out, with its reason:

   * ``missing_file``: the metadata names a photo the tree lacks;
   * ``too_few_photos``: the entity has fewer than ``min_images_per_entity`` present photos (one
     record per photo of it);
   * ``empty_entity``: the metadata lists the entity but names no photo of it for the split read;
   * ``duplicate_id``: a second photo with the same ``image_id``.

``max_images_per_entity`` is a selection, not a drop: the first N present photos of an entity in
the dataset's order are kept and the rest are not recorded. The only state that grows with the
number of photos is the set of 64-bit hashes of the ids seen (for ``duplicate_id``), ~70 bytes
per photo.

Pools: "train" for the dataset's train split, "test" for its test split; an unseen category is
"test" whatever the dataset split. Ids: ``entity_id = <category>/<slug(name)>``,
``image_id = <entity_id>/<key>``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, Callable, Iterator, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from deepperception.domain.entity import Entity
from deepperception.engine.collection import IMAGES_SCHEMA, _slug
from deepperception.errors import InputDataError
from deepperception.sources.base import Source, SourceImage
from deepperception.sources.fs import STAGE
from deepperception.sources.registry import SOURCES, open_source

DROPS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("entity_id", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ]
)

DropSink = Callable[[dict[str, Any]], None]


class SourceSpec(BaseModel):
    """One bench category read from one dataset source."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description=f"Adapter name: {', '.join(SOURCES)}.")
    root: str = Field(min_length=1, description="Dataset root in its published layout: a directory or s3://bucket/prefix.")
    category: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                          description="Bench category the entities belong to (e.g. aircraft, car, bird); prefixes "
                          "every id, so it holds no '/' or space.")
    split: Literal["seen", "unseen"] = Field(
        description="'seen': used for training (pools follow the dataset's splits); 'unseen': benchmark only (pool test).")
    source_split: Literal["train", "test", "all"] = Field(
        "all", description="Which of the dataset's own splits to read (train = FGVC trainval/Cars train/iNat train/"
        "Food train, test = FGVC test/Cars test/iNat val/Food test).")
    supercategories: list[str] | None = Field(
        None, description="inat2017 only: keep these supercategories (e.g. ['Reptilia'] or ['Aves']).")
    max_images_per_entity: int | None = Field(
        None, ge=1, description="Keep at most this many present photos per entity (dataset order); None keeps all.")
    min_images_per_entity: int = Field(
        2, ge=1, description="An entity with fewer present photos is dropped (reason too_few_photos).")
    test_fraction: float = Field(
        0.25, ge=0.0, le=1.0, description="image-folder only (no split metadata): share of photos hashed into 'test'.")
    seed: int = Field(0, description="image-folder only: seed of the train/test hash.")

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v not in SOURCES:
            raise ValueError(f"unknown source {v!r} (known: {', '.join(SOURCES)})")
        return v

    def open(self) -> Source:
        """The adapter this spec reads."""
        opts: dict[str, Any] = {}
        if self.source == "image-folder":
            opts = {"test_fraction": self.test_fraction, "seed": self.seed, "category": self.category}
        return open_source(self.source, self.root, self.supercategories, **opts)


def entity_id(category: str, name: str) -> str:
    """
    >>> entity_id("aircraft", "Boeing 737-800")
    'aircraft/boeing-737-800'
    """
    return f"{category}/{_slug(name)}"


class _Plan:
    """Pass 1: per-entity counts, the entity ids, and which entities are kept."""

    def __init__(self, spec: SourceSpec, src: Source) -> None:
        self.spec, self.src = spec, src
        self.names = src.entities()
        self.ids: dict[str, str] = {}
        by_id: dict[str, str] = {}
        for name in self.names:
            eid = entity_id(spec.category, name)
            if not _slug(name):
                raise InputDataError(f"entity name {name!r} of {spec.source} at {spec.root} has no letter or digit "
                                     "to build an id from", stage=STAGE, field="entity")
            if eid in by_id and by_id[eid] != name:
                raise InputDataError(f"entities {by_id[eid]!r} and {name!r} of {spec.source} at {spec.root} "
                                     f"map to the same id {eid}", stage=STAGE, field="entity")
            by_id[eid] = name
            self.ids[name] = eid
        self.named: Counter[str] = Counter()
        self.present: Counter[str] = Counter()
        for im in src.iter_images(spec.source_split):
            self.named[im.entity] += 1
            self.present[im.entity] += im.exists
        self.kept = [n for n in self.names if self.present[n] >= spec.min_images_per_entity]

    def empty_error(self) -> InputDataError:
        spec = self.spec
        total, present = sum(self.named.values()), sum(self.present.values())
        if not self.names:
            why = "the metadata lists no entity"
        elif total == 0:
            why = f"the metadata names no photo for split {spec.source_split}"
        elif present == 0:
            why = f"none of the {total} photos the metadata names exists"
        else:
            why = (f"no entity has {spec.min_images_per_entity} or more present photos "
                   f"(most: {max(self.present.values())})")
        sup = f" (supercategories {', '.join(spec.supercategories)})" if spec.supercategories else ""
        return InputDataError(f"category {spec.category} from {spec.source} at {spec.root}{sup} is empty: {why}",
                              stage=STAGE, field="root")


def _drop(item_id: str, eid: str | None, uri: str | None, reason: str, detail: str) -> dict[str, Any]:
    return {"item_id": item_id, "entity_id": eid, "uri": uri, "reason": reason, "detail": detail}


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _iter(spec: SourceSpec, plan: _Plan) -> Iterator[tuple[str, dict[str, Any]]]:
    """Pass 2: ``("row", row)`` / ``("drop", drop)`` in dataset order."""
    for name in plan.names:
        if plan.named[name] == 0:
            yield "drop", _drop(plan.ids[name], plan.ids[name], None, "empty_entity",
                                f"the metadata names no photo of {name!r} for split {spec.source_split}")
    kept = set(plan.kept)
    taken: Counter[str] = Counter()
    seen: set[int] = set()
    for im in plan.src.iter_images(spec.source_split):
        eid = plan.ids.get(im.entity)
        if eid is None:  # an adapter yielding an entity it does not list is a bug, not bad input
            raise RuntimeError(f"{spec.source} yielded entity {im.entity!r} missing from its entities()")
        image_id = f"{eid}/{im.key}"
        if not im.exists:
            yield "drop", _drop(image_id, eid, im.uri, "missing_file",
                                f"named by the {spec.source} metadata, absent from the tree")
            continue
        if im.entity not in kept:
            yield "drop", _drop(image_id, eid, im.uri, "too_few_photos",
                                f"{im.entity!r} has {plan.present[im.entity]} present photo(s), "
                                f"fewer than min_images_per_entity={spec.min_images_per_entity}")
            continue
        h = _hash64(image_id)
        if h in seen:
            yield "drop", _drop(image_id, eid, im.uri, "duplicate_id", f"a second photo with id {image_id}")
            continue
        seen.add(h)
        if spec.max_images_per_entity is not None and taken[im.entity] >= spec.max_images_per_entity:
            continue
        taken[im.entity] += 1
        yield "row", _row(spec, plan.src, im, eid, image_id)


def _row(spec: SourceSpec, src: Source, im: SourceImage, eid: str, image_id: str) -> dict[str, Any]:
    return {
        "image_id": image_id, "entity_id": eid, "category": spec.category, "name": im.entity,
        "split": spec.split, "pool": "test" if spec.split == "unseen" else im.split,
        "image": None, "image_uri": im.uri, "width": im.width, "height": im.height,
        "source_box_px": list(im.box_px) if im.box_px is not None else None,
        "crop_bottom": im.crop_bottom, "source": src.name,
    }


def _plan(spec: SourceSpec) -> _Plan:
    plan = _Plan(spec, spec.open())
    if not plan.kept:
        raise plan.empty_error()
    return plan


def collect_batches(spec: SourceSpec, batch_rows: int = 1024,
                    on_drop: DropSink | None = None) -> Iterator[pa.RecordBatch]:
    """``IMAGES_SCHEMA`` record batches of at most ``batch_rows`` rows; each drop goes to ``on_drop``.

    An empty category (no entity, no photo, or no entity with enough present photos after the
    filters) raises ``InputDataError`` naming the root and why."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1 (got {batch_rows})")
    plan = _plan(spec)
    rows: list[dict[str, Any]] = []
    for kind, rec in _iter(spec, plan):
        if kind == "drop":
            if on_drop is not None:
                on_drop(rec)
            continue
        rows.append(rec)
        if len(rows) >= batch_rows:
            yield pa.RecordBatch.from_pylist(rows, schema=IMAGES_SCHEMA)
            rows = []
    if rows:
        yield pa.RecordBatch.from_pylist(rows, schema=IMAGES_SCHEMA)


def iter_drops(spec: SourceSpec) -> Iterator[dict[str, Any]]:
    """The drop records alone (``DROPS_SCHEMA`` dicts), streaming."""
    plan = _plan(spec)
    for kind, rec in _iter(spec, plan):
        if kind == "drop":
            yield rec


def collect_drops(spec: SourceSpec) -> pa.Table:
    """Every drop of ``spec`` as a ``DROPS_SCHEMA`` table (use ``collect_batches(on_drop=...)`` to get
    rows and drops in one pass)."""
    return pa.Table.from_pylist(list(iter_drops(spec)), schema=DROPS_SCHEMA)


def source_entities(spec: SourceSpec) -> list[Entity]:
    """The entities ``collect_batches`` yields photos of (same ids), with empty knowledge cards."""
    plan = _plan(spec)
    return [Entity(entity_id=plan.ids[n], category=spec.category, name=n, split=spec.split,
                   knowledge_card="", attributes={}) for n in plan.kept]
