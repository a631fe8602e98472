"""One way to reach a dataset root, local or on S3, through ``pyarrow.fs``.

A dataset root is a local directory or ``s3://bucket/prefix``. S3 clients are built by
:meth:`deepperception.store.settings.StoreSettings.arrow_filesystem`, so the endpoint and the
credentials come from the same environment as the artifact store (``DP_STORE_S3_ENDPOINT_URL``,
``AWS_*``). Existence checks list a directory once and keep the listing of the last few
directories (:attr:`SourceRoot.LISTINGS_KEPT`): adapters visit images directory by directory, so a
100K-photo dataset costs one listing per directory, not one request per photo, and memory holds
at most a few listings.
"""

from __future__ import annotations

import functools
import io
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from deepperception.errors import InputDataError

STAGE = "sources"


class MissingFileError(InputDataError, FileNotFoundError):
    """A file a URI or the metadata names is absent (also a ``FileNotFoundError``; reason ``missing_file``)."""

    reason = "missing_file"

    def __init__(self, message: str, *, uri: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.uri = uri
        self.filename = uri

    def __str__(self) -> str:  # OSError's "[Errno None] ..." would hide the message
        return str(self.args[0]) if self.args else self.message


def is_s3(uri: str) -> bool:
    """
    >>> is_s3("s3://bucket/x"), is_s3("/data/x")
    (True, False)
    """
    return uri.startswith("s3://")


def _s3_settings(uri: str):
    from deepperception.store.settings import StoreSettings

    try:
        return StoreSettings(uri=uri)
    except ValueError as exc:  # pydantic: an env value that does not parse
        raise InputDataError(f"cannot build S3 settings for {uri}: {exc}", stage=STAGE, field="root") from exc


def _env_key() -> tuple[str | None, ...]:
    names = ("DP_STORE_S3_ENDPOINT_URL", "DP_STORE_S3_REGION", "DP_STORE_S3_ACCESS_KEY_ID",
             "DP_STORE_S3_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
             "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    return tuple(os.environ.get(n) for n in names)


@functools.lru_cache(maxsize=8)
def _s3_filesystem(bucket: str, env: tuple[str | None, ...]) -> pafs.FileSystem:
    del env  # part of the cache key only: a changed endpoint/credential builds a new client
    fs, _ = _s3_settings(f"s3://{bucket}").arrow_filesystem()
    return fs


def _split_s3(uri: str) -> tuple[str, str]:
    """
    >>> _split_s3("s3://bkt/a/b.jpg")
    ('bkt', 'a/b.jpg')
    """
    bucket, _, key = uri[len("s3://"):].partition("/")
    if len(bucket) < 3:
        raise InputDataError(f"{uri!r}: S3 bucket names need at least 3 characters", stage=STAGE, field="uri")
    return bucket, key.strip("/")


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for an absolute local path or an ``s3://`` URI."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        return _s3_filesystem(bucket, _env_key()), f"{bucket}/{key}".rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute())


def read_uri(uri: str) -> bytes:
    """The bytes of the file at ``uri`` (absolute local path or ``s3://bucket/key``), undecoded.

    A missing file raises :class:`MissingFileError` (an ``InputDataError`` and a ``FileNotFoundError``)."""
    fs, path = filesystem_for(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as exc:
        raise MissingFileError(f"file {uri} does not exist", uri=uri, stage=STAGE, field="image_uri") from exc
    except OSError as exc:
        # pyarrow reports a missing S3 key as a plain OSError ("Path does not exist").
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise MissingFileError(f"file {uri} does not exist", uri=uri, stage=STAGE, field="image_uri") from exc
        raise


class SourceRoot:
    """A dataset root: relative paths in, URIs out, directory listings cached (a few at a time)."""

    LISTINGS_KEPT = 8

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root = os.fspath(root)
        if not root:
            raise InputDataError("source root is empty", stage=STAGE, field="root")
        self.root = root
        self.s3 = is_s3(root)
        if self.s3:
            bucket, prefix = _split_s3(root)
            self.fs: pafs.FileSystem = _s3_filesystem(bucket, _env_key())
            self.base = f"{bucket}/{prefix}".rstrip("/")
        else:
            self.fs = pafs.LocalFileSystem()
            self.base = str(Path(root).expanduser().resolve())
        self._listings: OrderedDict[str, tuple[frozenset[str], frozenset[str]]] = OrderedDict()
        try:
            info = self.fs.get_file_info(self.base)
        except OSError as exc:  # S3: no such bucket, refused credentials, unreachable endpoint
            raise InputDataError(f"source root {root} cannot be read: {exc}", stage=STAGE, field="root") from exc
        if info.type != pafs.FileType.Directory:
            raise InputDataError(f"source root {root} does not exist or is not a directory", stage=STAGE, field="root")

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel.strip('/')}" if rel.strip("/") else self.base

    def uri(self, rel: str) -> str:
        """Absolute path (local) or ``s3://bucket/key`` of ``rel``."""
        p = self.path(rel)
        return f"s3://{p}" if self.s3 else p

    def _listing(self, rel_dir: str) -> tuple[frozenset[str], frozenset[str]]:
        rel_dir = rel_dir.strip("/")
        hit = self._listings.get(rel_dir)
        if hit is not None:
            self._listings.move_to_end(rel_dir)
            return hit
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel_dir), recursive=False, allow_not_found=True))
        files = frozenset(i.base_name for i in infos if i.type == pafs.FileType.File)
        dirs = frozenset(i.base_name for i in infos if i.type == pafs.FileType.Directory)
        self._listings[rel_dir] = (files, dirs)
        if len(self._listings) > self.LISTINGS_KEPT:
            self._listings.popitem(last=False)
        return files, dirs

    def files(self, rel_dir: str = "") -> list[str]:
        """Names of the plain files directly in ``rel_dir`` (sorted; ``[]`` if it does not exist)."""
        return sorted(self._listing(rel_dir)[0])

    def dirs(self, rel_dir: str = "") -> list[str]:
        """Names of the sub-directories of ``rel_dir`` (sorted)."""
        return sorted(self._listing(rel_dir)[1])

    def exists(self, rel: str) -> bool:
        """Whether the file ``rel`` is present (answered from its directory's listing)."""
        parent, _, name = rel.strip("/").rpartition("/")
        return name in self._listing(parent)[0]

    def is_file(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def read_bytes(self, rel: str, *, what: str = "metadata file") -> bytes:
        """The bytes of ``rel``; a missing one raises :class:`MissingFileError` naming it."""
        if not self.is_file(rel):
            raise MissingFileError(f"{what} {self.uri(rel)} is missing", uri=self.uri(rel), stage=STAGE)
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_text(self, rel: str, *, what: str = "metadata file") -> str:
        """``rel`` as UTF-8 text (a BOM is dropped); bytes that do not decode name the file and line."""
        data = self.read_bytes(rel, what=what)
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise InputDataError(f"{what} {self.uri(rel)} is not UTF-8 text at line {line} ({exc.reason})",
                                 stage=STAGE, row=line) from exc

    def iter_lines(self, rel: str, *, what: str = "metadata file"):
        """``(line number, stripped line)`` for the non-blank lines of ``rel``."""
        for n, line in enumerate(io.StringIO(self.read_text(rel, what=what)), start=1):
            line = line.strip()
            if line:
                yield n, line
