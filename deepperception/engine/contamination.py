"""Contamination check: training photos and composite crops against the benchmark's images.

Why: KVG-Bench must measure knowledge of entities, not memory of pictures. Pools are split by
hash (collection.assign_pool), but real sources overlap (the same Flickr photo in two datasets,
a re-upload in the web images of a hand-built bench), so the pools alone prove nothing.

What "near duplicate" must catch, and how it is probed
------------------------------------------------------
A bench image is a composite (or a web photo) of several entities; a training item is either a
single photo or a training composite. The same picture can therefore reach both sides

* whole: a bench image equals a training photo or composite, re-encoded, resized, re-brightened;
* as a tile: a test photo sits, resized, inside a bench composite while the same photo (or a copy)
  is a training photo, or a tile of a training composite.

Whole-image hashes cannot see the second case (a tile is a small part of the bench image), and a
photo's whole hash differs from its tile's box crop (the box is tighter than the photo). So both
sides are hashed as several *probes*:

* bench: every whole image (deduplicated by content), and the crop of every entity box it has
  (the answer box of each KVG question, every ``entities`` box of a composites table, the box of a
  single test photo);
* training photo (``train_kind="photo"``): the whole photo and, when the row has a box (``box``
  in 0-1000 or ``source_box_px`` in pixels), its box crop, after cutting ``crop_bottom`` pixels;
* training composite: its whole image (``train_kind="composite"``) and the crop of each entity box
  (``train_kind="crop"``, boxes are 0-1000 relative to the composite).

Every training probe is compared with every bench probe; a training item matches a bench item
when, for some pair of probes, the perceptual hash (``imagehash.phash``, 64-bit DCT hash of the
32x32 grayscale image) differs in at most ``max_distance`` bits AND the difference hash
(``imagehash.dhash``, 64-bit gradient hash) in at most ``max_dhash_distance`` bits: two
different hash families must both agree, which keeps chance collisions of small, low-texture crops
out while JPEG re-encoding, resizing and brightness changes (which both hashes are built to ignore)
stay inside the thresholds. Defaults (phash <= 10, dhash <= 12): in the tests, a photo that went
through two composites (two resizes, box rounding) lands at <= 8 phash bits from its bench crop,
unrelated photo-like pictures at >= 18.

A KVG bench table only carries the box of each question's target, so other entities of its images
are covered by the whole-image probe only; when the bench was built here, index its composites
table too (``from_batches([*bench_batches, *test_composite_batches])``: identical images and boxes
are indexed once). Synthetic renders of one entity are near-identical drawings and do match each
other: that is a true near duplicate, not a false positive. Hashes are computed with the ``imagehash`` library. Crops smaller than
``min_crop_side`` pixels carry too little signal to hash and are recorded, not matched.

Cost: the bench is small (a few thousand probes), so its hashes sit in two ``uint64`` numpy arrays
and each batch of training probes is compared with all of them at once, XOR plus
``numpy.bitwise_count`` (a vectorised popcount), in bounded chunks: no Python loop over pairs.
Training input is streamed batch by batch; memory holds one batch and the matches found.

An item that cannot be hashed (missing file, corrupt image, decompression bomb, too small a crop)
is a row with ``hash_reason``/``hash_error`` and null bench columns, so nothing is silently skipped.
"""

from __future__ import annotations

import io
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import imagehash
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field
import pyarrow.compute as pc
from PIL import Image

from deepperception import boxes
from deepperception.errors import InputDataError

LoadBytes = Callable[[dict], bytes]

MATCH_SCHEMA = pa.schema(
    [
        pa.field("train_id", pa.string(), nullable=False),
        pa.field("train_kind", pa.string(), nullable=False),  # photo | crop | composite
        pa.field("bench_id", pa.string()),
        pa.field("distance", pa.int32()),  # phash Hamming distance (bits of 64)
        pa.field("dhash_distance", pa.int32()),
        pa.field("bench_kind", pa.string()),  # image | crop
        pa.field("image_id", pa.string()),  # the training photo (a crop's source photo, if known)
        pa.field("composite_id", pa.string()),  # the training composite of a crop / composite
        pa.field("hash_reason", pa.string()),  # set when the item could not be hashed
        pa.field("hash_error", pa.string()),
    ]
)

DEFAULT_MAX_DISTANCE = 10
DEFAULT_MAX_DHASH_DISTANCE = 12
DEFAULT_MIN_CROP_SIDE = 16
_CHUNK = 1 << 22  # probe x bench pairs compared at once (4M uint64 = 32 MiB)


class _Unhashable(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def default_load_bytes(row: dict) -> bytes:
    """The encoded bytes of a row: ``row["image"]`` as bytes or as a ``{bytes, path}`` struct.
    Rows that only reference their file (``image_uri``) need the caller's loader, e.g.
    ``lambda r: deepperception.images.read_image_bytes(r.get("image"), r.get("image_uri"))``.

    >>> default_load_bytes({"image": {"bytes": b"x", "path": "a.png"}})
    b'x'
    """
    value = row.get("image")
    if isinstance(value, dict):
        value = value.get("bytes")
    if not value:
        uri = row.get("image_uri")
        raise _Unhashable("empty_image", "row has no image bytes" + (f" (image_uri {uri!r}: pass load_bytes)" if uri else ""))
    return bytes(value)


def _load_raw(row: dict, load_bytes: LoadBytes) -> bytes:
    try:
        data = load_bytes(row)
    except _Unhashable:
        raise
    except FileNotFoundError as exc:
        raise _Unhashable("missing_file", f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # a loader may fail in many ways (S3, permissions); record, not crash
        reason = getattr(exc, "reason", None)  # deepperception.images.ImageProblem carries its code
        if isinstance(reason, str) and reason:
            raise _Unhashable(reason, str(getattr(exc, "detail", exc))) from None
        raise _Unhashable("load_error", f"{type(exc).__name__}: {exc}") from None
    if not data:
        raise _Unhashable("empty_image", "loader returned no bytes")
    return data


def _decode(data: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise _Unhashable("decompression_bomb", str(exc)) from None
    except Exception as exc:  # PIL raises many unrelated types for corrupt data
        raise _Unhashable("corrupt_image", f"image does not decode: {type(exc).__name__}: {exc}") from None


def _load(row: dict, load_bytes: LoadBytes) -> Image.Image:
    return _decode(_load_raw(row, load_bytes))


def _bits(h: imagehash.ImageHash) -> int:
    return int.from_bytes(np.packbits(h.hash.flatten()).tobytes(), "big")


def image_hashes(img: Image.Image) -> tuple[int, int]:
    """``(phash, dhash)`` of an image as 64-bit unsigned integers.

    >>> ph, dh = image_hashes(Image.new("RGB", (40, 40), (200, 10, 10)))
    >>> 0 <= ph < 2**64 and 0 <= dh < 2**64
    True
    """
    return _bits(imagehash.phash(img)), _bits(imagehash.dhash(img))


def crop_box(img: Image.Image, box: Sequence[float]) -> Image.Image:
    """The pixels of a 0-1000 relative box.

    >>> crop_box(Image.new("RGB", (200, 100)), [0, 0, 500, 1000]).size
    (100, 100)
    """
    w, h = img.size
    x1, y1, x2, y2 = (float(v) for v in box)
    px = (round(x1 * w / 1000), round(y1 * h / 1000), round(x2 * w / 1000), round(y2 * h / 1000))
    return img.crop((max(0, px[0]), max(0, px[1]), min(w, px[2]), min(h, px[3])))


def _crop_probe(img: Image.Image, box: Sequence[float], min_side: int) -> tuple[int, int]:
    c = crop_box(img, box)
    if min(c.size) < min_side:
        raise _Unhashable("crop_too_small", f"box {list(box)} is {c.size[0]}x{c.size[1]} px (< {min_side})")
    return image_hashes(c)


def _photo_box(row: dict, img: Image.Image) -> list[float] | None:
    """The photo's box in 0-1000 of the (bottom-cropped) image: the labeled ``box`` first, else
    the dataset's ``source_box_px`` (pixels of the original file)."""
    if row.get("box") is not None:
        return [float(v) for v in row["box"]]
    px = row.get("source_box_px")
    if px is not None:
        x1, y1, x2, y2 = (float(v) for v in px)
        w, h = img.size
        y2 = min(y2, h)
        if x2 > x1 and y2 > y1:
            return [x1 * 1000 / w, y1 * 1000 / h, x2 * 1000 / w, y2 * 1000 / h]
    return None


def _cut_bottom(row: dict, img: Image.Image) -> Image.Image:
    cut = int(row.get("crop_bottom") or 0)
    if 0 < cut < img.height:
        return img.crop((0, 0, img.width, img.height - cut))
    return img


def _entities(row: dict, id_col: str) -> list[dict]:
    try:
        items = json.loads(row["entities"])
    except (TypeError, json.JSONDecodeError) as exc:
        raise InputDataError(f"entities is not JSON ({exc})", stage="contamination", row=row.get(id_col), field="entities") from None
    if not isinstance(items, list):
        raise InputDataError("entities must be a JSON list", stage="contamination", row=row.get(id_col), field="entities")
    return items


def _kind_of(names: Sequence[str], stage: str) -> str:
    if "composite_id" in names and "entities" in names:
        return "composites"
    if "question_id" in names and "image" in names:
        return "questions"
    if "image_id" in names:
        return "photos"
    raise InputDataError(
        f"cannot tell the table kind from columns {list(names)}: expected a composites table "
        "(composite_id, entities, image), a bench table (question_id, image[, answer]) or an images table (image_id, image|image_uri)",
        stage=stage, field="columns")


@dataclass
class BenchIndex:
    """Hashes of every bench probe: whole images (deduplicated by content) and entity crops.

    ``ids[i]``/``kinds[i]`` name probe ``i``: a whole image is named by its first question id
    (bench tables), composite id or image id; a crop by its question id, ``<composite_id>#<j>``
    or ``<image_id>#box``. ``kinds`` is ``image`` or ``crop``.
    """

    ids: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    phash: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    dhash: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    skipped: Counter = field(default_factory=Counter)

    @classmethod
    def from_batches(cls, batches: Iterable[pa.RecordBatch | pa.Table], *, load_bytes: LoadBytes | None = None,
                     min_crop_side: int = DEFAULT_MIN_CROP_SIDE) -> "BenchIndex":
        """Index a KVG bench table (``question_id, image, answer``: whole image + the answer's
        box crop), a composites table (whole image + every ``entities`` box) or an images table
        of test photos (whole photo + its box). A bench image that does not decode raises
        ``InputDataError`` naming the row: a check against an incomplete bench would pass wrongly.
        Crops under ``min_crop_side`` pixels are counted in ``skipped`` instead."""
        stage = "contamination"
        load_bytes = load_bytes or default_load_bytes
        ids: list[str] = []
        kinds: list[str] = []
        ph: list[int] = []
        dh: list[int] = []
        skipped: Counter = Counter()
        seen_images: set[str] = set()
        seen_crops: set[tuple] = set()
        for batch in batches:
            kind = _kind_of(batch.schema.names, stage)
            id_col = {"composites": "composite_id", "questions": "question_id", "photos": "image_id"}[kind]
            for row in batch.to_pylist():
                rid = row[id_col]
                try:
                    raw = _load_raw(row, load_bytes)
                    img = _decode(raw)
                except _Unhashable as exc:
                    raise InputDataError(f"bench image cannot be hashed ({exc.reason}): {exc.detail}", stage=stage, row=rid, field="image") from None
                if kind == "photos":
                    img = _cut_bottom(row, img)
                digest = hashlib.sha256(raw).hexdigest()
                if digest not in seen_images:
                    seen_images.add(digest)
                    p, d = image_hashes(img)
                    ids.append(rid), kinds.append("image"), ph.append(p), dh.append(d)
                crops: list[tuple[str, Sequence[float]]] = []
                if kind == "composites":
                    crops = [(f"{rid}#{j}", e["box"]) for j, e in enumerate(_entities(row, id_col)) if isinstance(e, dict) and e.get("box")]
                elif kind == "questions" and isinstance(row.get("answer"), str):
                    box = boxes.parse_gt_box(row["answer"])
                    if box is not None:
                        crops = [(rid, box)]
                elif kind == "photos":
                    box = _photo_box(row, img)
                    if box is not None:
                        crops = [(f"{rid}#box", box)]
                for cid, box in crops:
                    key = (digest, tuple(float(v) for v in box))
                    if key in seen_crops:
                        continue
                    seen_crops.add(key)
                    try:
                        p, d = _crop_probe(img, box, min_crop_side)
                    except _Unhashable as exc:
                        skipped[exc.reason] += 1
                        continue
                    ids.append(cid), kinds.append("crop"), ph.append(p), dh.append(d)
        return cls(ids, kinds, np.array(ph, np.uint64), np.array(dh, np.uint64), skipped)

    def __len__(self) -> int:
        return len(self.ids)

    def counts(self) -> dict[str, int]:
        """Probes by kind.

        >>> BenchIndex().counts()
        {'image': 0, 'crop': 0}
        """
        c = Counter(self.kinds)
        return {"image": c.get("image", 0), "crop": c.get("crop", 0)}

    def within(self, phash: np.ndarray, dhash: np.ndarray, max_distance: int, max_dhash_distance: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All (probe, bench) pairs within both thresholds: ``(probe_idx, bench_idx, pdist, ddist)``.
        Vectorised XOR + popcount over the bench arrays, ``_CHUNK`` pairs at a time."""
        out: list[tuple[np.ndarray, ...]] = []
        m = len(self.ids)
        if m == 0 or len(phash) == 0:
            e = np.zeros(0, np.int64)
            return e, e, e, e
        step = max(1, _CHUNK // m)
        for s in range(0, len(phash), step):
            pd = np.bitwise_count(phash[s:s + step, None] ^ self.phash[None, :])
            dd = np.bitwise_count(dhash[s:s + step, None] ^ self.dhash[None, :])
            pi, bi = np.nonzero((pd <= max_distance) & (dd <= max_dhash_distance))
            out.append((pi + s, bi, pd[pi, bi].astype(np.int64), dd[pi, bi].astype(np.int64)))
        return tuple(np.concatenate(c) for c in zip(*out))  # type: ignore[return-value]


@dataclass
class _Item:
    train_id: str
    kind: str
    image_id: str | None
    composite_id: str | None
    probes: list[tuple[int, int]] = field(default_factory=list)
    reason: str | None = None
    error: str | None = None


class NearDuplicateScan:
    """Streams training batches against a :class:`BenchIndex`; ``scan(batch)`` returns the rows
    (``MATCH_SCHEMA``) for that batch so a caller can write them as they come, and ``summary()``
    the counts for the manifest and the data card."""

    def __init__(self, index: BenchIndex, *, max_distance: int = DEFAULT_MAX_DISTANCE,
                 max_dhash_distance: int = DEFAULT_MAX_DHASH_DISTANCE, load_bytes: LoadBytes | None = None,
                 min_crop_side: int = DEFAULT_MIN_CROP_SIDE) -> None:
        if not 0 <= max_distance <= 64 or not 0 <= max_dhash_distance <= 64:
            raise ValueError("distances are bits of a 64-bit hash: 0..64")
        self.index = index
        self.max_distance = max_distance
        self.max_dhash_distance = max_dhash_distance
        self.load_bytes = load_bytes or default_load_bytes
        self.min_crop_side = min_crop_side
        self.checked: Counter = Counter()
        self.unhashable: Counter = Counter()
        self._matches: list[pa.Table] = []  # matched rows only: few by nature, unlike unhashable items

    def _items(self, batch: pa.RecordBatch | pa.Table) -> Iterator[_Item]:
        kind = _kind_of(batch.schema.names, "contamination")
        if kind == "questions":
            raise InputDataError("training input must be an images or composites table, not a bench/question table",
                                 stage="contamination", field="question_id")
        for row in batch.to_pylist():
            if kind == "photos":
                item = _Item(row["image_id"], "photo", row["image_id"], None)
                try:
                    img = _cut_bottom(row, _load(row, self.load_bytes))
                    item.probes.append(image_hashes(img))
                    box = _photo_box(row, img)
                    if box is not None:
                        try:
                            item.probes.append(_crop_probe(img, box, self.min_crop_side))
                        except _Unhashable:
                            pass  # the whole photo was still checked
                except _Unhashable as exc:
                    item.reason, item.error = exc.reason, exc.detail
                yield item
                continue
            cid = row["composite_id"]
            whole = _Item(cid, "composite", None, cid)
            try:
                img = _load(row, self.load_bytes)
            except _Unhashable as exc:
                whole.reason, whole.error = exc.reason, exc.detail
                yield whole
                continue
            whole.probes.append(image_hashes(img))
            yield whole
            for j, e in enumerate(_entities(row, "composite_id")):
                item = _Item(f"{cid}#{j}", "crop", e.get("image_id") if isinstance(e, dict) else None, cid)
                try:
                    if not isinstance(e, dict) or e.get("box") is None:
                        raise _Unhashable("no_box", f"entities[{j}] has no box")
                    item.probes.append(_crop_probe(img, e["box"], self.min_crop_side))
                except _Unhashable as exc:
                    item.reason, item.error = exc.reason, exc.detail
                yield item

    def scan(self, batch: pa.RecordBatch | pa.Table) -> pa.Table:
        """Match rows (one per training item x bench probe within the thresholds, with the
        smallest distance over the item's probes) plus one row per item that could not be hashed."""
        items = list(self._items(batch))
        owner, ph, dh = [], [], []
        for n, it in enumerate(items):
            self.checked[it.kind] += 1
            for p, d in it.probes:
                owner.append(n), ph.append(p), dh.append(d)
        pi, bi, pd, dd = self.index.within(np.array(ph, np.uint64), np.array(dh, np.uint64),
                                           self.max_distance, self.max_dhash_distance)
        best: dict[tuple[int, int], tuple[int, int]] = {}
        for p, b, x, y in zip(pi.tolist(), bi.tolist(), pd.tolist(), dd.tolist()):
            key = (owner[p], b)
            if key not in best or (x, y) < best[key]:
                best[key] = (x, y)
        rows: dict[str, list] = {n: [] for n in MATCH_SCHEMA.names}

        def add(it: _Item, bench: int | None, dist: tuple[int, int] | None) -> None:
            rows["train_id"].append(it.train_id)
            rows["train_kind"].append(it.kind)
            rows["bench_id"].append(None if bench is None else self.index.ids[bench])
            rows["distance"].append(None if dist is None else dist[0])
            rows["dhash_distance"].append(None if dist is None else dist[1])
            rows["bench_kind"].append(None if bench is None else self.index.kinds[bench])
            rows["image_id"].append(it.image_id)
            rows["composite_id"].append(it.composite_id)
            rows["hash_reason"].append(it.reason)
            rows["hash_error"].append(it.error)

        for n, it in enumerate(items):
            if it.reason is not None:
                add(it, None, None)
        for (n, b), dist in sorted(best.items()):
            add(items[n], b, dist)
        table = pa.Table.from_pydict(rows, schema=MATCH_SCHEMA)
        self.unhashable.update(r for r in rows["hash_reason"] if r is not None)
        self._matches.append(_matched(table))
        return table

    def table(self) -> pa.Table:
        """The matched rows :meth:`scan` returned so far (unhashable items are only counted)."""
        return pa.concat_tables(self._matches) if self._matches else MATCH_SCHEMA.empty_table()

    def summary(self) -> dict[str, Any]:
        return contamination_summary(self.table(), self.index, checked=dict(self.checked), unhashable=dict(self.unhashable),
                                     max_distance=self.max_distance, max_dhash_distance=self.max_dhash_distance)


def find_near_duplicates(train_batches: Iterable[pa.RecordBatch | pa.Table], index: BenchIndex, max_distance: int = DEFAULT_MAX_DISTANCE,
                         *, max_dhash_distance: int = DEFAULT_MAX_DHASH_DISTANCE, load_bytes: LoadBytes | None = None,
                         min_crop_side: int = DEFAULT_MIN_CROP_SIDE) -> pa.Table:
    """Near duplicates of bench images among training photos and composite crops (``MATCH_SCHEMA``).
    Rows with a null ``bench_id`` are items that could not be hashed (``hash_reason``)."""
    scan = NearDuplicateScan(index, max_distance=max_distance, max_dhash_distance=max_dhash_distance,
                             load_bytes=load_bytes, min_crop_side=min_crop_side)
    parts = [scan.scan(batch) for batch in train_batches]
    return pa.concat_tables(parts) if parts else MATCH_SCHEMA.empty_table()


def _matched(matches: pa.Table) -> pa.Table:
    return matches.filter(pc.is_valid(matches.column("bench_id")))


def contamination_summary(matches: pa.Table, index: BenchIndex | None = None, *, checked: dict[str, int] | None = None,
                          unhashable: dict[str, int] | None = None, max_distance: int | None = DEFAULT_MAX_DISTANCE,
                          max_dhash_distance: int | None = DEFAULT_MAX_DHASH_DISTANCE, examples: int = 5) -> dict[str, Any]:
    """A JSON-able summary for manifests and data cards (``cards.render_card`` reads it from
    ``meta["contamination"]``); ``unhashable`` defaults to the reasons in ``matches``."""
    hit = _matched(matches)
    failed = matches.filter(pc.is_null(matches.column("bench_id")))
    kinds = hit.column("train_kind").to_pylist()
    ids = hit.column("train_id").to_pylist()
    out: dict[str, Any] = {
        "method": f"imagehash {imagehash.__version__} phash<= {max_distance} and dhash<= {max_dhash_distance} bits of 64",
        "max_distance": max_distance,
        "max_dhash_distance": max_dhash_distance,
        "bench_probes": index.counts() if index is not None else None,
        "bench_skipped": dict(index.skipped) if index is not None else None,
        "checked": checked,
        "unhashable": dict(sorted((unhashable if unhashable is not None else Counter(failed.column("hash_reason").to_pylist())).items())),
        "pairs": hit.num_rows,
        "contaminated": dict(sorted(Counter(k for k, _ in {(k, i) for k, i in zip(kinds, ids)}).items())),
        "contaminated_image_ids": len(contaminated_ids(matches, "image_id")),
        "contaminated_composite_ids": len(contaminated_ids(matches, "composite_id")),
        "examples": [{"train_id": r["train_id"], "bench_id": r["bench_id"], "distance": r["distance"]}
                     for r in hit.sort_by([("distance", "ascending"), ("train_id", "ascending")]).slice(0, examples).to_pylist()],
    }
    return out


def contaminated_ids(matches: pa.Table, column: str = "image_id") -> set[str]:
    """Ids to drop: ``image_id`` (training photos, including the source photos of matched crops),
    ``composite_id`` (training composites with a matched crop or whole image) or ``train_id``.
    Only rows with a bench match count (not unhashable items)."""
    if column not in ("image_id", "composite_id", "train_id"):
        raise ValueError(f"column must be image_id, composite_id or train_id, got {column!r}")
    return {v for v in _matched(matches).column(column).to_pylist() if v is not None}


def drop_contaminated(batches: Iterable[pa.RecordBatch | pa.Table], ids: Iterable[str] | pa.Table, id_column: str,
                      *, matches_column: str | None = None) -> Iterator[pa.RecordBatch]:
    """Stream ``batches`` without the rows whose ``id_column`` is in ``ids`` (a set of ids, or a
    matches table, then read through :func:`contaminated_ids` with ``matches_column``, by default
    ``id_column`` when it is one of its columns, else ``image_id``)."""
    if isinstance(ids, pa.Table):
        col = matches_column or (id_column if id_column in ("image_id", "composite_id", "train_id") else "image_id")
        ids = contaminated_ids(ids, col)
    value_set = pa.array(sorted(set(ids)), pa.string())
    for batch in batches:
        if id_column not in batch.schema.names:
            raise InputDataError(f"missing column {id_column!r}; batch has {batch.schema.names}", stage="contamination", field=id_column)
        keep = pc.invert(pc.fill_null(pc.is_in(batch.column(id_column), value_set=value_set), False))
        out = batch.filter(keep)
        yield from (out.to_batches() if isinstance(out, pa.Table) else [out])


class ContaminationConfig(BaseModel):
    """Near-duplicate check of every training photo and composite crop against the bench."""

    model_config = ConfigDict(extra="forbid")

    max_distance: int = Field(DEFAULT_MAX_DISTANCE, ge=0, le=64,
                              description="Largest phash Hamming distance (of 64 bits) that counts as a near duplicate.")
    max_dhash_distance: int = Field(DEFAULT_MAX_DHASH_DISTANCE, ge=0, le=64,
                                    description="Largest dhash distance; both hashes must agree (fewer false alarms).")
    drop: bool = Field(False, description="Leave contaminated composites (a matched crop or whole image, or a "
                                          "flagged photo inside) out of the SFT rows and the GRPO pool.")
