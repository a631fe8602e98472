"""Stanford Cars in its published layout (MATLAB metadata read with ``scipy.io.loadmat``).

::

    cars_train/<fname>.jpg, cars_test/<fname>.jpg
    devkit/cars_meta.mat                 class_names: 1x196 cell of strings (class k = class_names{k})
    devkit/cars_train_annos.mat          annotations: 1xN struct, fields bbox_x1 bbox_y1 bbox_x2 bbox_y2 class fname
    cars_test_annos_withlabels.mat       same struct for cars_test/ (with `class`); also looked up in devkit/

``class`` is 1-based (MATLAB). Entity = class name. The train and test folders reuse the same file
names (``00001.jpg`` is in both), so the key is ``train-00001`` / ``test-00001``.

**Boxes.** The devkit's boxes are MATLAB pixel indices (1-based, inclusive), converted like
FGVC-Aircraft's to 0-based pixel edges: ``(x1 - 1, y1 - 1, x2, y2)``.
"""

from __future__ import annotations

import io
from typing import Any, Iterator

import numpy as np

from deepperception.sources.base import Source, SourceImage, SourceSplit, meta_error, split_names
from deepperception.sources.fs import STAGE, MissingFileError

META = "devkit/cars_meta.mat"
TRAIN_ANNOS = "devkit/cars_train_annos.mat"
TEST_ANNOS = ("cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat")
IMAGE_DIRS = {"train": "cars_train", "test": "cars_test"}
FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")


def _mat_string(value: Any) -> str:
    """A MATLAB char array as loaded by scipy (``array(['x'], dtype='<U1')``) -> ``'x'``.

    >>> _mat_string(np.array(["Audi S4 Sedan 2012"]))
    'Audi S4 Sedan 2012'
    """
    flat = np.asarray(value).ravel()
    if flat.size == 0:
        return ""
    if flat.size != 1:
        raise ValueError(f"expected one string, got {flat.size} values")
    item = flat[0]
    if isinstance(item, np.ndarray):
        return _mat_string(item)
    return str(item)


def _mat_number(value: Any) -> float:
    """
    >>> _mat_number(np.array([[39]], dtype=np.uint8))
    39.0
    """
    flat = np.asarray(value).ravel()
    if flat.size != 1:
        raise ValueError(f"expected one number, got {flat.size} values")
    return float(flat[0])


class StanfordCars(Source):
    """Stanford Cars: entity = class name; split train = cars_train, test = cars_test."""

    name = "stanford-cars"

    def __init__(self, root, supercategories=None) -> None:
        super().__init__(root, supercategories)
        self._classes: list[str] | None = None
        self._records: dict[str, list[tuple[str, int, tuple[float, float, float, float]]]] = {}

    def _loadmat(self, rel: str) -> dict[str, Any]:
        import scipy.io

        data = self.fs.read_bytes(rel, what="Stanford Cars metadata file")
        try:
            return scipy.io.loadmat(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - scipy raises many types for a bad .mat
            raise meta_error(self.fs, rel, f"is not a readable MATLAB file ({type(exc).__name__}: {exc})") from exc

    def entities(self) -> list[str]:
        if self._classes is None:
            mat = self._loadmat(META)
            if "class_names" not in mat:
                raise meta_error(self.fs, META, "has no 'class_names' variable", field="class_names")
            names = []
            for i, cell in enumerate(np.asarray(mat["class_names"]).ravel()):
                try:
                    name = _mat_string(cell).strip()
                except ValueError as exc:
                    raise meta_error(self.fs, META, f"class_names{{{i + 1}}}: {exc}", row=i + 1,
                                     field="class_names") from None
                if not name:
                    raise meta_error(self.fs, META, f"class_names{{{i + 1}}} is empty", row=i + 1, field="class_names")
                names.append(name)
            if not names:
                raise meta_error(self.fs, META, "class_names is empty", field="class_names")
            self._classes = names
        return list(self._classes)

    def _annotations_file(self, split: str) -> str:
        if split == "train":
            return TRAIN_ANNOS
        for rel in TEST_ANNOS:
            if self.fs.is_file(rel):
                return rel
        uri = self.fs.uri(TEST_ANNOS[0])
        raise MissingFileError(f"Stanford Cars test annotations {uri} are missing (also looked for {TEST_ANNOS[1]}); "
                               "the test split needs the labelled ones (cars_test_annos.mat has no classes)",
                               uri=uri, stage=STAGE)

    def records(self, split: str) -> list[tuple[str, int, tuple[float, float, float, float]]]:
        """``(fname, class index 0-based, box as 0-based edges)`` per annotation of one split, parsed
        once per adapter (``loadmat`` of a struct array is the slow part; ~16K records in the release)."""
        if split in self._records:
            return self._records[split]
        n_classes = len(self.entities())
        rel = self._annotations_file(split)
        mat = self._loadmat(rel)
        annos = mat.get("annotations")
        if annos is None:
            raise meta_error(self.fs, rel, "has no 'annotations' variable", field="annotations")
        annos = np.asarray(annos).ravel()
        names = annos.dtype.names or ()
        lacking = [f for f in FIELDS if f not in names]
        if lacking:
            raise meta_error(self.fs, rel, f"annotations lack field(s) {', '.join(lacking)} "
                             f"(has {', '.join(names) or 'none'})", field=lacking[0])
        out = []
        for i, rec in enumerate(annos):
            row = i + 1  # MATLAB index of the struct element
            field = "fname"
            try:
                fname = _mat_string(rec["fname"])
                field = "class"
                cls = int(_mat_number(rec["class"]))
                field = "bbox"
                x1, y1, x2, y2 = (_mat_number(rec[f]) for f in FIELDS[:4])
            except ValueError as exc:
                raise meta_error(self.fs, rel, f"annotations({row}).{field}: {exc}", row=row, field=field) from None
            if not fname:
                raise meta_error(self.fs, rel, f"annotations({row}).fname is empty", row=row, field="fname")
            if not 1 <= cls <= n_classes:
                raise meta_error(self.fs, rel, f"annotations({row}).class {cls} is outside 1..{n_classes} "
                                 f"(classes of {META})", row=row, field="class")
            if x2 < x1 or y2 < y1 or x1 < 1 or y1 < 1:
                raise meta_error(self.fs, rel, f"annotations({row}) box {x1:g} {y1:g} {x2:g} {y2:g} is not a "
                                 "1-based x1 y1 x2 y2 box", row=row, field="bbox")
            out.append((fname, cls - 1, (x1 - 1.0, y1 - 1.0, x2, y2)))
        del mat, annos
        self._records[split] = out
        return out

    def iter_images(self, split: SourceSplit = "all") -> Iterator[SourceImage]:
        classes = self.entities()
        for s in split_names(split):
            image_dir = IMAGE_DIRS[s]
            for fname, cls, box in self.records(s):
                path = f"{image_dir}/{fname}"
                stem = fname.rsplit("/", 1)[-1].rsplit(".", 1)[0]
                yield SourceImage(
                    key=f"{s}-{stem}", entity=classes[cls], uri=self.fs.uri(path), split=s,  # type: ignore[arg-type]
                    box_px=box, exists=self.fs.exists(path),
                )
