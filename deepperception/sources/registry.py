"""Source adapters by name (the ``source`` of a collection spec and of ``data inspect --source``)."""

from __future__ import annotations

import inspect
import os
from typing import Any, Sequence

from deepperception.errors import ConfigError
from deepperception.sources.base import Source
from deepperception.sources.fgvc_aircraft import FGVCAircraft
from deepperception.sources.food101 import Food101
from deepperception.sources.image_folder import ImageFolder
from deepperception.sources.inat2017 import INat2017
from deepperception.sources.stanford_cars import StanfordCars

SOURCES: dict[str, type[Source]] = {
    "fgvc-aircraft": FGVCAircraft,
    "stanford-cars": StanfordCars,
    "inat2017": INat2017,
    "food101": Food101,
    "image-folder": ImageFolder,
}


def open_source(name: str, root: str | os.PathLike[str], supercategories: Sequence[str] | None = None,
                **opts: Any) -> Source:
    """The adapter ``name`` over ``root``; ``opts`` go to its constructor (image-folder: test_fraction,
    seed, category, underscores_as_spaces).

    >>> open_source("imagenet", ".")
    Traceback (most recent call last):
    ...
    deepperception.errors.ConfigError: unknown source 'imagenet' (known: fgvc-aircraft, stanford-cars, inat2017, food101, image-folder)
    """
    cls = SOURCES.get(name)
    if cls is None:
        raise ConfigError(f"unknown source {name!r} (known: {', '.join(SOURCES)})")
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "root", "supercategories")]
    unknown = sorted(k for k in opts if k not in accepted)
    if unknown:
        raise ConfigError(f"source {name} takes no option {', '.join(unknown)} "
                          f"(options: {', '.join(accepted) or 'none'})")
    return cls(root, supercategories, **opts)
