"""Stage 1 of the data engine: single-entity images.

The paper starts from FGVR datasets (one labelled entity per photo). Here the same table comes
either from the synthetic renderer (which also knows the true box) or from an ImageFolder tree
of real photos (no box; a labeler supplies one later). Every image is assigned to a ``pool``
once, by hash: "train" images feed SFT/GRPO composites, "test" images only the benchmark, so
bench composites never reuse a training photo. Unseen categories are "test" only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from deepperception.domain.entity import Entity, entities_from_table
from deepperception.domain.render import render_entity
from deepperception.domain.seeding import stable_fraction
from deepperception.engine.common import BOX_FLOAT, decode_image, encode_png
from deepperception.errors import InputDataError

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("entity_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("pool", pa.string(), nullable=False),
        # Exactly one of image / image_uri: rendered (synthetic) images carry their bytes, real
        # photos only a reference to the original file, so a 100K-photo source stays a small table.
        pa.field("image", pa.binary()),
        pa.field("image_uri", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("source_box_px", BOX_FLOAT),
        pa.field("crop_bottom", pa.int32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class CollectionConfig(BaseModel):
    """How many photos to render per entity, how big, and how many to hold out."""

    model_config = ConfigDict(extra="forbid")

    images_per_entity: int = Field(6, ge=1, description="Rendered photos per entity.")
    image_size: int = Field(128, ge=32, le=1024, description="Square photo side in pixels; keep small on CPU.")
    test_fraction: float = Field(
        0.25, ge=0.0, le=1.0, description="Share of seen-category photos held out (by hash) for the benchmark."
    )
    scale_min: float = Field(0.5, gt=0.0, le=1.0, description="Smallest entity size, as a fraction of the image side.")
    scale_max: float = Field(0.9, gt=0.0, le=1.0, description="Largest entity size, as a fraction of the image side.")
    noise: float = Field(10.0, ge=0.0, le=64.0, description="Background noise amplitude (0-255 scale).")
    seed: int = Field(0, description="Seed for rendering jitter and the train/test hash.")


def assign_pool(image_id: str, split: str, test_fraction: float, seed: int) -> Literal["train", "test"]:
    """Hash-based, order-independent pool assignment; unseen categories are always "test".

    >>> assign_pool("moth/01/000", "unseen", 0.0, 0)
    'test'
    >>> assign_pool("fish/01/000", "seen", 0.0, 0), assign_pool("fish/01/000", "seen", 1.0, 0)
    ('train', 'test')
    """
    if split == "unseen":
        return "test"
    return "test" if stable_fraction("pool", seed, image_id) < test_fraction else "train"


def collect_images(entities: pa.Table, cfg: CollectionConfig) -> pa.Table:
    """Render ``images_per_entity`` photos of every entity (schema ``IMAGES_SCHEMA``).

    ``image_id`` is ``<entity_id>/<nnn>``; ``source_box_px`` is the renderer's true tight box.
    """
    if cfg.scale_min > cfg.scale_max:
        raise ValueError(f"scale_min {cfg.scale_min} > scale_max {cfg.scale_max}")
    rows: dict[str, list] = {n: [] for n in IMAGES_SCHEMA.names}
    for entity in entities_from_table(entities):
        for i in range(cfg.images_per_entity):
            image_id = f"{entity.entity_id}/{i:03d}"
            img, box = render_entity(
                entity, rng_seed=cfg.seed * 1_000_003 + i, size=cfg.image_size,
                scale_range=(cfg.scale_min, cfg.scale_max), noise=cfg.noise,
            )
            rows["image_id"].append(image_id)
            rows["entity_id"].append(entity.entity_id)
            rows["category"].append(entity.category)
            rows["name"].append(entity.name)
            rows["split"].append(entity.split)
            rows["pool"].append(assign_pool(image_id, entity.split, cfg.test_fraction, cfg.seed))
            rows["image"].append(encode_png(img))
            rows["image_uri"].append(None)
            rows["width"].append(img.width)
            rows["height"].append(img.height)
            rows["source_box_px"].append(list(box))
            rows["crop_bottom"].append(0)
            rows["source"].append("synthetic")
    return pa.Table.from_pydict(rows, schema=IMAGES_SCHEMA)


def _slug(text: str) -> str:
    """
    >>> _slug("Boeing 767-300 (ER)")
    'boeing-767-300-er'
    """
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _class_dirs(root: str | Path, stage: str) -> list[Path]:
    """The ``root/<entity name>/`` directories of an ImageFolder dataset, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise InputDataError(f"image folder {root} does not exist or is not a directory", stage=stage, field="root")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise InputDataError(f"image folder {root} has no <entity name>/ sub-directories", stage=stage, field="root")
    return dirs


def _folder_entity(d: Path, category: str, split: str, underscores_as_spaces: bool) -> Entity:
    return Entity(entity_id=f"{category}/{_slug(d.name)}", category=category,
                  name=d.name.replace("_", " ") if underscores_as_spaces else d.name,
                  split=split, knowledge_card="", attributes={})


def folder_entities(
    root: str | Path, category: str, split: Literal["seen", "unseen"], *, underscores_as_spaces: bool = True
) -> list[Entity]:
    """The entities of an ImageFolder dataset: one per ``root/<entity name>/`` directory, with the
    same ids :func:`collect_from_image_folder` gives its images. Real datasets carry no knowledge
    cards, so ``knowledge_card`` is empty."""
    return [_folder_entity(d, category, split, underscores_as_spaces) for d in _class_dirs(root, "mine")]


def collect_from_image_folder(
    root: str | Path,
    category: str,
    split: Literal["seen", "unseen"],
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    max_images_per_entity: int | None = None,
    max_side: int | None = 512,
    underscores_as_spaces: bool = True,
) -> pa.Table:
    """Real photos from ``root/<entity name>/*.jpg|jpeg|png`` (how FGVC-Aircraft, Stanford Cars,
    Food101 and iNat subsets are usually prepared), in ``IMAGES_SCHEMA`` with a null
    ``source_box_px``: boxes come from a labeler.

    Images are re-encoded as RGB PNG, downscaled so the longer side is at most ``max_side``
    (``None`` keeps them as they are; boxes are relative, so scaling loses nothing). A file
    that does not decode raises ``InputDataError`` naming it.
    """
    root = Path(root)
    rows: dict[str, list] = {n: [] for n in IMAGES_SCHEMA.names}
    for class_dir in _class_dirs(root, "collect"):
        entity = _folder_entity(class_dir, category, split, underscores_as_spaces)
        name, entity_id = entity.name, entity.entity_id
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if max_images_per_entity is not None:
            files = files[:max_images_per_entity]
        for path in files:
            img = decode_image(path.read_bytes(), stage="collect", row=str(path), field="image")
            if max_side is not None and max(img.size) > max_side:
                img.thumbnail((max_side, max_side), resample=3)  # BICUBIC
            image_id = f"{entity_id}/{path.stem}"
            rows["image_id"].append(image_id)
            rows["entity_id"].append(entity_id)
            rows["category"].append(category)
            rows["name"].append(name)
            rows["split"].append(split)
            rows["pool"].append(assign_pool(image_id, split, test_fraction, seed))
            rows["image"].append(encode_png(img))
            rows["image_uri"].append(None)
            rows["width"].append(img.width)
            rows["height"].append(img.height)
            rows["source_box_px"].append(None)
            rows["crop_bottom"].append(0)
            rows["source"].append(f"image_folder:{root.name}")
    if not rows["image_id"]:
        raise InputDataError(f"image folder {root} holds no {'/'.join(IMAGE_EXTENSIONS)} files", stage="collect", field="root")
    return pa.Table.from_pydict(rows, schema=IMAGES_SCHEMA)
