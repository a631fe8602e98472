"""Readers for real FGVR datasets in their *own published layouts* (issue 8, item 1).

Each adapter streams :class:`~deepperception.sources.base.SourceImage` records (metadata only:
entity name, a URI of the original file, the dataset's split and box) from a local directory or an
``s3://bucket/prefix``. Nothing here decodes an image: photos are referenced, never re-encoded, so a
100K-photo source becomes a small table. :func:`open_source` picks the adapter by name.
"""

from __future__ import annotations

from deepperception.sources.base import SourceImage
from deepperception.sources.registry import SOURCES, open_source

__all__ = ["SOURCES", "SourceImage", "open_source"]
