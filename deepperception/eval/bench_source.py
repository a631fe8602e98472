"""Where an extra bench comes from: a store reference (``name@version``), a local KVG-Bench
Parquet file, or one in an S3 bucket (``s3://bucket/key``).

The import itself (content-hashed ``bench`` artifact, schema checked by
:func:`deepperception.eval.io.read_bench`) is the existing ``import-bench`` stage; this module only
decides which kind a source is and brings a bucket object to a local file first, with pyarrow's
S3 filesystem configured like the store's (same endpoint and credentials settings), so one
importer serves every source. Errors name the source as the user wrote it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Literal

from deepperception.errors import InputDataError
from deepperception.store.settings import StoreSettings

SourceKind = Literal["ref", "local", "s3"]
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*@[A-Za-z0-9_.-]+$")


def source_kind(source: str) -> SourceKind:
    """``ref`` for ``name@version`` (unless such a file exists), ``s3`` for ``s3://``, else ``local``.

    >>> source_kind("bench@3f2a"), source_kind("s3://b/kvg-bench.parquet"), source_kind("data/kvg-bench.parquet")
    ('ref', 's3', 'local')
    """
    if source.startswith("s3://"):
        return "s3"
    if _REF.match(source) and not Path(source).exists():
        return "ref"
    return "local"


def _cached_download(fs, path: str, source: str, cache_dir: Path) -> Path:
    """The bucket object as a local file, downloaded once per (source, size, mtime)."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        info = fs.get_file_info(path)
    except (OSError, pa.ArrowException) as e:
        raise InputDataError(f"cannot reach the bench object: {e}", stage="import-bench", artifact=source) from e
    if info.type != pafs.FileType.File:
        raise InputDataError("no such bench file in the bucket", stage="import-bench", artifact=source)
    mtime = info.mtime.isoformat() if info.mtime else ""
    key = hashlib.sha256(f"{source}|{info.size}|{mtime}".encode()).hexdigest()[:24]
    dest = cache_dir / "benches" / key / Path(path).name
    if dest.is_file() and dest.stat().st_size == info.size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, fs.open_input_stream(path) as src:
            while chunk := src.read(8 << 20):
                out.write(chunk)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def local_bench_file(source: str, settings: StoreSettings | None = None) -> Path:
    """A local file holding a ``local`` or ``s3`` source (its schema is checked on import).

    S3 objects use ``settings``' endpoint and credentials (the store's; default: the
    environment) and are cached under ``settings.local_cache()``. A missing file raises
    :class:`InputDataError` naming ``source``.
    """
    kind = source_kind(source)
    if kind == "ref":
        raise ValueError(f"{source!r} is a store reference, not a file")
    if kind == "local":
        path = Path(source).expanduser()
        if not path.is_file():
            raise InputDataError("no such bench file", stage="import-bench", artifact=source)
    else:
        s = (settings or StoreSettings()).model_copy(update={"uri": source})
        fs, key = s.arrow_filesystem()
        path = _cached_download(fs, key, source, s.local_cache())
    return path


def for_source(error: InputDataError, source: str) -> InputDataError:
    """The same error naming ``source`` (the path or URI the user gave) instead of a local copy.

    >>> print(for_source(InputDataError("bench lacks column(s) ['category']", artifact="/tmp/x.parquet",
    ...                                 field="category"), "s3://b/kvg.parquet"))
    [stage=import-bench artifact=s3://b/kvg.parquet field=category] bench lacks column(s) ['category']
    """
    return InputDataError(error.message, stage="import-bench", artifact=source, row=error.row, field=error.field)
