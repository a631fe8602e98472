"""FGVC-Aircraft (fgvc-aircraft-2013b) in its published layout.

::

    data/images/<id>.jpg
    data/variants.txt                    one variant name per line (the 100 entities)
    data/images_variant_trainval.txt     "<id> <variant name, may contain spaces>"  (split "train")
    data/images_variant_test.txt         same syntax                                 (split "test")
    data/images_box.txt                  "<id> <xmin> <ymin> <xmax> <ymax>"

Ids are kept as strings (they have leading zeros: ``0034309``). Entity = variant.

**Boxes.** The published box file gives *1-based, inclusive* pixel indices (the top-left pixel is
(1, 1)). They are converted to 0-based pixel *edges*, the convention of ``source_box_px``:
``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` (so a box covering the whole 1-based image
``1..W`` becomes ``0..W``). Boxes are in the coordinates of the original file, banner included.

**Banner.** Every photo carries a 20-pixel copyright banner at the bottom; ``crop_bottom = 20`` tells
the loader to cut it off (and clamp the box to the cropped height) when it decodes the photo.
"""

from __future__ import annotations

from typing import Iterator

from deepperception.sources.base import Source, SourceImage, SourceSplit, meta_error, split_names

VARIANTS = "data/variants.txt"
BOXES = "data/images_box.txt"
SPLIT_FILES = {"train": "data/images_variant_trainval.txt", "test": "data/images_variant_test.txt"}
IMAGES_DIR = "data/images"
CROP_BOTTOM = 20


def convert_box(xmin: float, ymin: float, xmax: float, ymax: float) -> tuple[float, float, float, float]:
    """1-based inclusive pixel indices -> 0-based pixel edges.

    >>> convert_box(1, 1, 640, 480)
    (0.0, 0.0, 640.0, 480.0)
    >>> convert_box(3, 144, 998, 431)
    (2.0, 143.0, 998.0, 431.0)
    """
    return float(xmin) - 1.0, float(ymin) - 1.0, float(xmax), float(ymax)


class FGVCAircraft(Source):
    """FGVC-Aircraft: entity = variant, split train = trainval, test = test."""

    name = "fgvc-aircraft"

    def __init__(self, root, supercategories=None) -> None:
        super().__init__(root, supercategories)
        self._entities: list[str] | None = None
        self._boxes: dict[str, tuple[float, float, float, float]] | None = None

    def entities(self) -> list[str]:
        if self._entities is None:
            names: list[str] = []
            seen: set[str] = set()
            for n, line in self.fs.iter_lines(VARIANTS, what="FGVC-Aircraft variants file"):
                if line in seen:
                    raise meta_error(self.fs, VARIANTS, f"variant {line!r} is listed twice", line=n)
                seen.add(line)
                names.append(line)
            if not names:
                raise meta_error(self.fs, VARIANTS, "lists no variant")
            self._entities = names
        return list(self._entities)

    def boxes(self) -> dict[str, tuple[float, float, float, float]]:
        """``id -> (x1, y1, x2, y2)`` (0-based edges), from the box file (~10K small tuples)."""
        if self._boxes is None:
            out: dict[str, tuple[float, float, float, float]] = {}
            for n, line in self.fs.iter_lines(BOXES, what="FGVC-Aircraft box file"):
                parts = line.split()
                if len(parts) != 5:
                    raise meta_error(self.fs, BOXES, f"expected '<id> xmin ymin xmax ymax', got {line!r}", line=n)
                try:
                    xmin, ymin, xmax, ymax = (float(p) for p in parts[1:])
                except ValueError:
                    raise meta_error(self.fs, BOXES, f"box coordinates are not numbers: {line!r}", line=n) from None
                if xmax < xmin or ymax < ymin or xmin < 1 or ymin < 1:
                    raise meta_error(self.fs, BOXES, f"box {xmin:g} {ymin:g} {xmax:g} {ymax:g} is not a 1-based "
                                     "xmin ymin xmax ymax box", line=n)
                out[parts[0]] = convert_box(xmin, ymin, xmax, ymax)
            self._boxes = out
        return self._boxes

    def iter_images(self, split: SourceSplit = "all") -> Iterator[SourceImage]:
        splits = split_names(split)
        known = set(self.entities())
        boxes = self.boxes()
        for s in splits:
            rel = SPLIT_FILES[s]
            for n, line in self.fs.iter_lines(rel, what=f"FGVC-Aircraft {s} list"):
                image_id, _, variant = line.partition(" ")
                variant = variant.strip()
                if not variant:
                    raise meta_error(self.fs, rel, f"expected '<id> <variant name>', got {line!r}", line=n)
                if variant not in known:
                    raise meta_error(self.fs, rel, f"variant {variant!r} is not in {VARIANTS}", line=n)
                path = f"{IMAGES_DIR}/{image_id}.jpg"
                yield SourceImage(
                    key=image_id, entity=variant, uri=self.fs.uri(path), split=s,  # type: ignore[arg-type]
                    box_px=boxes.get(image_id), crop_bottom=CROP_BOTTOM, exists=self.fs.exists(path),
                )
