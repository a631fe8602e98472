"""Food-101 in its published layout.

::

    images/<class>/<id>.jpg
    meta/classes.txt     one class directory name per line (apple_pie, ...)
    meta/labels.txt      the human name of each class, same line order (Apple pie, ...)
    meta/train.txt       "<class>/<id>" per line, no extension (split "train")
    meta/test.txt        same syntax (split "test")

Entity = the human name from ``labels.txt``. Food-101 ships no boxes and no image sizes. The
``meta/*.json`` files repeat the ``.txt`` lists and are not read. The key is the ``<id>``;
collection ids also carry the entity (``<category>/<entity slug>/<id>``), so they stay unique.
"""

from __future__ import annotations

from typing import Iterator

from deepperception.sources.base import Source, SourceImage, SourceSplit, meta_error, split_names

CLASSES = "meta/classes.txt"
LABELS = "meta/labels.txt"
SPLIT_FILES = {"train": "meta/train.txt", "test": "meta/test.txt"}
IMAGES_DIR = "images"


class Food101(Source):
    """Food-101: entity = human label, split train/test from meta/{train,test}.txt."""

    name = "food101"

    def __init__(self, root, supercategories=None) -> None:
        super().__init__(root, supercategories)
        self._labels: dict[str, str] | None = None

    def labels(self) -> dict[str, str]:
        """``class directory name -> human name`` (dataset order)."""
        if self._labels is None:
            classes = list(self.fs.iter_lines(CLASSES, what="Food-101 classes file"))
            labels = list(self.fs.iter_lines(LABELS, what="Food-101 labels file"))
            if not classes:
                raise meta_error(self.fs, CLASSES, "lists no class")
            if len(classes) != len(labels):
                raise meta_error(self.fs, LABELS, f"has {len(labels)} labels but {CLASSES} has {len(classes)} "
                                 "classes (they pair up line by line)")
            out: dict[str, str] = {}
            for (n, cls), (_, label) in zip(classes, labels):
                if cls in out:
                    raise meta_error(self.fs, CLASSES, f"class {cls!r} is listed twice", line=n)
                out[cls] = label
            if len(set(out.values())) != len(out):
                dup = sorted({v for v in out.values() if list(out.values()).count(v) > 1})
                raise meta_error(self.fs, LABELS, f"label(s) {', '.join(dup)} name more than one class")
            self._labels = out
        return dict(self._labels)

    def entities(self) -> list[str]:
        return list(self.labels().values())

    def iter_images(self, split: SourceSplit = "all") -> Iterator[SourceImage]:
        labels = self.labels()
        for s in split_names(split):
            rel = SPLIT_FILES[s]
            for n, line in self.fs.iter_lines(rel, what=f"Food-101 {s} list"):
                cls, sep, image_id = line.partition("/")
                if not sep or not image_id or "/" in image_id:
                    raise meta_error(self.fs, rel, f"expected '<class>/<id>', got {line!r}", line=n)
                if cls not in labels:
                    raise meta_error(self.fs, rel, f"class {cls!r} is not in {CLASSES}", line=n)
                path = f"{IMAGES_DIR}/{cls}/{image_id}.jpg"
                yield SourceImage(key=image_id, entity=labels[cls], uri=self.fs.uri(path), split=s,  # type: ignore[arg-type]
                                  exists=self.fs.exists(path))
