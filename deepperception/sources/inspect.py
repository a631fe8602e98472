"""``data inspect``: what a source holds, from its metadata alone (nothing decoded).

The first thing a user runs on a freshly downloaded dataset: how many entities and photos the
metadata names for a split, how many carry a dataset box, and how many of the named files are
absent from the tree. ``images`` counts every photo the metadata names (present or not);
``per_entity`` counts the same photos per entity name and lists every entity, even one with none.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from deepperception.sources.base import split_names
from deepperception.sources.registry import open_source

INSPECT_KEYS = ("source", "split", "entities", "images", "images_with_box", "missing", "per_entity")


def inspect_source(name: str, root: str | os.PathLike[str], split: str = "all",
                   supercategories: Sequence[str] | None = None, **opts: Any) -> dict[str, Any]:
    """Counts of one source split: exactly the keys of :data:`INSPECT_KEYS`."""
    split_names(split)  # a bad split fails before anything is read
    src = open_source(name, root, supercategories, **opts)
    per_entity: dict[str, int] = {e: 0 for e in src.entities()}
    images = with_box = missing = 0
    for im in src.iter_images(split):  # type: ignore[arg-type]
        images += 1
        with_box += im.box_px is not None
        missing += not im.exists
        per_entity[im.entity] = per_entity.get(im.entity, 0) + 1
    return {"source": name, "split": split, "entities": len(per_entity), "images": images,
            "images_with_box": with_box, "missing": missing, "per_entity": per_entity}
