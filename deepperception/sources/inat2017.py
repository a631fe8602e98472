"""iNaturalist 2017 in its published layout (COCO-style JSON, read with the standard ``json``).

::

    train_val_images/<supercategory>/<species>/<hash>.jpg
    train2017.json, val2017.json     images[{id, file_name, width, height}], annotations[{image_id,
                                     category_id}], categories[{id, name, supercategory}]
    train_2017_bboxes.json, val_2017_bboxes.json   (optional) COCO annotations with bbox [x, y, w, h]

Split "train" = ``train2017.json``, "test" = ``val2017.json`` (both point into ``train_val_images/``).
Entity = species (category ``name``); ``supercategories`` (case-insensitive, e.g. ``Reptilia``,
``Aves``) keep only those categories. Key = the file stem (a unique hash in the published files).

**Boxes.** COCO boxes are 0-based pixel ``[x, y, w, h]``, converted to ``(x, y, x + w, y + h)``. An
image with several boxes (several animals) keeps the largest one. Boxes are matched to images by
``file_name``, so the box files need not share image ids with the split files.

**Memory.** JSON cannot be parsed incrementally with the standard library: each split file is
parsed once, reduced at once to a compact per-category index of the *kept* categories
(stem, file name, width, height) and the parsed document is released. Images are then yielded
category by category, so each species directory is listed once for the existence checks.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, NamedTuple

from deepperception.errors import ConfigError
from deepperception.sources.base import Source, SourceImage, SourceSplit, meta_error, split_names

SPLIT_FILES = {"train": "train2017.json", "test": "val2017.json"}
BOX_FILES = {"train": "train_2017_bboxes.json", "test": "val_2017_bboxes.json"}


class _Category(NamedTuple):
    name: str
    supercategory: str


class _Image(NamedTuple):
    stem: str
    file_name: str
    width: int | None
    height: int | None


def coco_box(bbox: Any) -> tuple[float, float, float, float]:
    """COCO ``[x, y, w, h]`` -> ``(x1, y1, x2, y2)``; anything else raises ``ValueError``.

    >>> coco_box([10, 20, 30, 40.5])
    (10.0, 20.0, 40.0, 60.5)
    """
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"bbox must be [x, y, w, h], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise ValueError(f"bbox {bbox!r} has a negative width or height")
    return x, y, x + w, y + h


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


class INat2017(Source):
    """iNaturalist 2017, optionally filtered by supercategory (Reptilia, Aves, ...)."""

    name = "inat2017"
    supports_supercategories = True

    def __init__(self, root, supercategories=None) -> None:
        super().__init__(root, supercategories)
        self._categories: dict[int, _Category] | None = None
        self._index: dict[str, tuple[dict[int, _Category], dict[int, list[_Image]]]] = {}

    def _load(self, rel: str, what: str) -> dict[str, Any]:
        data = self.fs.read_bytes(rel, what=what)
        try:
            doc = json.loads(data)
        except json.JSONDecodeError as exc:
            raise meta_error(self.fs, rel, f"is not valid JSON at column {exc.colno} ({exc.msg})",
                             line=exc.lineno) from None
        except UnicodeDecodeError as exc:
            raise meta_error(self.fs, rel, f"is not UTF-8 ({exc.reason} at byte {exc.start})") from None
        if not isinstance(doc, dict):
            raise meta_error(self.fs, rel, f"top level is a {type(doc).__name__}, expected a COCO object")
        return doc

    @staticmethod
    def _records(fs, rel: str, doc: dict, key: str, fields: tuple[str, ...]) -> list[dict]:
        recs = doc.get(key)
        if not isinstance(recs, list):
            raise meta_error(fs, rel, f"has no '{key}' list", field=key)
        for i, r in enumerate(recs):
            if not isinstance(r, dict):
                raise meta_error(fs, rel, f"{key}[{i}] is not an object", row=i, field=key)
            for f in fields:
                if f not in r:
                    raise meta_error(fs, rel, f"{key}[{i}] lacks '{f}'", row=i, field=f)
        return recs

    def _parse_categories(self, rel: str, doc: dict) -> dict[int, _Category]:
        cats: dict[int, _Category] = {}
        for i, c in enumerate(self._records(self.fs, rel, doc, "categories", ("id", "name", "supercategory"))):
            cats[int(c["id"])] = _Category(str(c["name"]).strip(), str(c["supercategory"]).strip())
        if not cats:
            raise meta_error(self.fs, rel, "lists no category", field="categories")
        return cats

    def _kept(self, cats: dict[int, _Category]) -> dict[int, _Category]:
        if not self.supercategories:
            return cats
        wanted = {s.lower() for s in self.supercategories}
        available = sorted({c.supercategory for c in cats.values()})
        unknown = sorted(s for s in self.supercategories if s.lower() not in {a.lower() for a in available})
        if unknown:
            raise ConfigError(f"inat2017 at {self.root}: unknown supercategory {', '.join(unknown)} "
                              f"(available: {', '.join(available)})")
        return {k: c for k, c in cats.items() if c.supercategory.lower() in wanted}

    def categories(self) -> dict[int, _Category]:
        """The kept categories (after the supercategory filter), by id: those of ``train2017.json``,
        or of ``val2017.json`` where only the validation annotations were downloaded."""
        if self._categories is None:
            only_val = not self.fs.is_file(SPLIT_FILES["train"]) and self.fs.is_file(SPLIT_FILES["test"])
            self._split_index("test" if only_val else "train")
        assert self._categories is not None
        return self._categories

    def entities(self) -> list[str]:
        return [c.name for _, c in sorted(self.categories().items())]

    def _split_index(self, split: str) -> tuple[dict[int, _Category], dict[int, list[_Image]]]:
        """``(kept categories, kept images by category)`` of one split file, parsed once."""
        if split in self._index:
            return self._index[split]
        rel = SPLIT_FILES[split]
        doc = self._load(rel, f"iNat2017 {split} annotations")
        cats = self._kept(self._parse_categories(rel, doc))
        if self._categories is None:
            self._categories = cats
        images = self._records(self.fs, rel, doc, "images", ("id", "file_name"))
        annos = self._records(self.fs, rel, doc, "annotations", ("image_id", "category_id"))
        category_of: dict[Any, int] = {}
        all_cats = {int(c["id"]) for c in doc["categories"]}
        for i, a in enumerate(annos):
            cid = int(a["category_id"])
            if cid not in all_cats:
                raise meta_error(self.fs, rel, f"annotations[{i}].category_id {cid} is not a listed category",
                                 row=i, field="category_id")
            category_of.setdefault(a["image_id"], cid)
        del annos
        index: dict[int, list[_Image]] = {cid: [] for cid in sorted(cats)}
        for i, im in enumerate(images):
            cid = category_of.get(im["id"])
            if cid is None:
                raise meta_error(self.fs, rel, f"images[{i}] (id {im['id']}) has no annotation", row=i, field="id")
            if cid not in index:
                continue
            fname = str(im["file_name"])
            stem = fname.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            index[cid].append(_Image(stem, fname, _int_or_none(im.get("width")), _int_or_none(im.get("height"))))
        del doc, images, category_of
        self._index[split] = (cats, index)
        return cats, index

    def _boxes(self, split: str, wanted: set[str]) -> dict[str, tuple[float, float, float, float]]:
        rel = BOX_FILES[split]
        if not self.fs.is_file(rel):
            return {}
        doc = self._load(rel, f"iNat2017 {split} boxes")
        images = self._records(self.fs, rel, doc, "images", ("id", "file_name"))
        name_of = {im["id"]: str(im["file_name"]) for im in images if str(im["file_name"]) in wanted}
        best: dict[str, tuple[float, float, float, float]] = {}
        for i, a in enumerate(self._records(self.fs, rel, doc, "annotations", ("image_id", "bbox"))):
            fname = name_of.get(a["image_id"])
            if fname is None:
                continue
            try:
                box = coco_box(a["bbox"])
            except (TypeError, ValueError) as exc:
                raise meta_error(self.fs, rel, f"annotations[{i}].bbox: {exc}", row=i, field="bbox") from None
            old = best.get(fname)
            if old is None or (box[2] - box[0]) * (box[3] - box[1]) > (old[2] - old[0]) * (old[3] - old[1]):
                best[fname] = box
        return best

    def iter_images(self, split: SourceSplit = "all") -> Iterator[SourceImage]:
        for s in split_names(split):
            cats, index = self._split_index(s)
            boxes = self._boxes(s, {im.file_name for ims in index.values() for im in ims})
            for cid, ims in index.items():
                cat = cats[cid]
                for im in ims:
                    yield SourceImage(
                        key=im.stem, entity=cat.name, uri=self.fs.uri(im.file_name), split=s,  # type: ignore[arg-type]
                        box_px=boxes.get(im.file_name), width=im.width, height=im.height,
                        exists=self.fs.exists(im.file_name), supercategory=cat.supercategory,
                    )
