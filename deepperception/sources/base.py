"""What every source adapter yields, and the parts they share.

An adapter reads a dataset's own metadata and yields one :class:`SourceImage` per photo the
metadata names, streaming, without decoding anything. A photo the metadata names but the tree
lacks is *not* an error: it comes out with ``exists=False`` so that ``data inspect`` can count it
and collection can record it as a ``missing_file`` drop. Missing or unreadable *metadata* is an
error (:class:`~deepperception.errors.InputDataError` naming the file and line/row).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

from deepperception.errors import ConfigError, InputDataError
from deepperception.sources.fs import STAGE, SourceRoot

SourceSplit = Literal["train", "test", "all"]
SPLITS = ("train", "test", "all")


@dataclass(frozen=True)
class SourceImage:
    """One photo as the dataset's metadata describes it (nothing decoded)."""

    key: str
    """Stable id inside the dataset (e.g. the file stem); unique within one source."""
    entity: str
    """Human entity name (an aircraft variant, a car model, a species, a dish)."""
    uri: str
    """Absolute local path or ``s3://bucket/key`` of the original file."""
    split: Literal["train", "test"]
    """The dataset's own split (FGVC trainval/Cars train/iNat train/Food train -> "train")."""
    box_px: tuple[float, float, float, float] | None = None
    """The dataset's box ``x1, y1, x2, y2`` in pixels of the original file (edges, 0-based), or None."""
    width: int | None = None
    """Width in pixels when the metadata states it (never decoded)."""
    height: int | None = None
    crop_bottom: int = 0
    """Pixels to cut off the bottom when loading (FGVC-Aircraft's copyright banner: 20)."""
    exists: bool = True
    """Whether the file is present in the tree."""
    supercategory: str | None = None


def split_names(split: str) -> tuple[str, ...]:
    """The dataset splits a requested split covers.

    >>> split_names("all"), split_names("test")
    (('train', 'test'), ('test',))
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of train, test, all (got {split!r})")
    return ("train", "test") if split == "all" else (split,)


def meta_error(root: SourceRoot, rel: str, message: str, *, line: int | None = None,
               row: int | str | None = None, field: str | None = None) -> InputDataError:
    """An ``InputDataError`` naming the metadata file (its URI), the text line or record row, the field."""
    where = f" line {line}" if line is not None else ""
    return InputDataError(f"{root.uri(rel)}{where}: {message}", stage=STAGE,
                          row=row if row is not None else line, field=field)


class Source(ABC):
    """A dataset in its published layout under ``root`` (local directory or ``s3://`` prefix)."""

    name: str = ""

    def __init__(self, root: str | os.PathLike[str], supercategories: Sequence[str] | None = None) -> None:
        self.fs = SourceRoot(root)
        self.root = self.fs.root
        if supercategories and not self.supports_supercategories:
            raise ConfigError(f"source {self.name} has no supercategories (got --supercategory "
                              f"{', '.join(supercategories)}); only inat2017 filters by supercategory")
        self.supercategories = list(supercategories) if supercategories else None

    supports_supercategories = False

    @abstractmethod
    def entities(self) -> list[str]:
        """Every entity name the metadata lists (after any supercategory filter), in dataset order."""

    @abstractmethod
    def iter_images(self, split: SourceSplit = "all") -> Iterator[SourceImage]:
        """Every photo the metadata names for ``split``, streaming (metadata only)."""
