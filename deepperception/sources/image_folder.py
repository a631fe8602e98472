"""A generic ImageFolder tree: ``root/<entity name>/*.jpg|jpeg|png``, no split metadata.

Each sub-directory is one entity (underscores read as spaces unless ``underscores_as_spaces`` is
off). There are no boxes, sizes or splits; the split is assigned per image by the same stable hash
as :func:`deepperception.engine.collection.assign_pool` (``test_fraction``, ``seed``) over the id
``<category>/<entity slug>/<key>``, so with ``category`` set an image lands in the same pool as
``collect_from_image_folder`` put it. The key is the file stem, or the whole file name where two
files of one directory share a stem (``a.jpg`` and ``a.png``).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator

from deepperception.engine.collection import IMAGE_EXTENSIONS, _slug, assign_pool
from deepperception.errors import ConfigError
from deepperception.sources.base import Source, SourceImage, SourceSplit, split_names


class ImageFolder(Source):
    """``root/<entity name>/*.jpg|jpeg|png``; split by stable hash."""

    name = "image-folder"

    def __init__(self, root, supercategories=None, *, test_fraction: float = 0.25, seed: int = 0,
                 category: str | None = None, underscores_as_spaces: bool = True) -> None:
        super().__init__(root, supercategories)
        if not 0.0 <= test_fraction <= 1.0:
            raise ConfigError(f"test_fraction must be within [0, 1] (got {test_fraction})")
        self.test_fraction = test_fraction
        self.seed = seed
        self.category = category
        self.underscores_as_spaces = underscores_as_spaces

    def _dirs(self) -> list[str]:
        return [d for d in self.fs.dirs() if not d.startswith(".")]

    def _name(self, d: str) -> str:
        return d.replace("_", " ") if self.underscores_as_spaces else d

    def entities(self) -> list[str]:
        return [self._name(d) for d in self._dirs()]

    def pool_of(self, entity: str, key: str) -> str:
        """The hash split of one image (``"train"``/``"test"``)."""
        prefix = f"{self.category}/" if self.category else ""
        return assign_pool(f"{prefix}{_slug(entity)}/{key}", "seen", self.test_fraction, self.seed)

    def iter_images(self, split: SourceSplit = "all") -> Iterator[SourceImage]:
        wanted = split_names(split)
        for d in self._dirs():
            entity = self._name(d)
            files = [f for f in self.fs.files(d) if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
            stems = Counter(f.rsplit(".", 1)[0] for f in files)
            for f in files:
                stem = f.rsplit(".", 1)[0]
                key = stem if stems[stem] == 1 else f
                s = self.pool_of(entity, key)
                if s in wanted:
                    yield SourceImage(key=key, entity=entity, uri=self.fs.uri(f"{d}/{f}"), split=s)  # type: ignore[arg-type]
