"""Local files written so that a kill never leaves a half-written one behind."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write to a temporary sibling, fsync, then rename over ``path`` (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """JSON with a trailing newline when indented (``indent=None`` gives ``json.dumps``'s exact string)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str)
    atomic_write(path, text + "\n" if indent is not None else text)


def atomic_write_parquet(path: str | os.PathLike[str], table: Any) -> None:
    """A pyarrow table as Parquet, atomically."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write(path, buf.getvalue())
