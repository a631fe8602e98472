"""Immutable, versioned artifacts: Parquet tables and plain files under one manifest.

Layout (same on a local directory and on S3)::

    <root>/_store.json                                   # the store's identity (random, write-once)
    <root>/<name>/<version>/_manifest.json               # the commit point, created exclusively
    <root>/<name>/<version>/_attempts/<attempt>/<file>   # data of one writer, e.g. data.parquet, files/...
    <root>/_quarantine/<name>/<version>-<time>/...       # corrupt versions moved aside by a repair

Every writer stages its files under its own ``_attempts/<attempt>/`` prefix (unique per
attempt: time, pid, random), so two runs producing the same version never share a path. The
manifest lists each file with its ``key`` (location relative to the version directory) and is
created *exclusively* (local: ``os.link`` of a complete temp file, which fails if the name exists;
S3: ``PutObject`` with ``If-None-Match: *``). Exactly one writer wins; a loser deletes only its own
attempt and reuses the winner's version. Readers only follow the manifest, so they never see a
mix of writers, and a crashed attempt's files are unreferenced debris (collected once older than
``StoreSettings.attempt_ttl_hours``).

A version whose manifest is missing does not exist for readers. Version ids derive from the
stage, its config hash, the code version and the upstream versions, so an identical rerun lands
on the same id and is recognised (and skipped) instead of recomputed.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, field_validator

from deepperception.errors import AlreadyCommittedError, ArtifactError, InvalidRefError
from deepperception.store.events import Commit, notify_commit
from deepperception.store.refs import ArtifactRef, check_relpath, check_segment
from deepperception.store.settings import StoreSettings
from deepperception.version import canonical_json, code_version, git_sha, short_hash

__all__ = ["ArtifactRef", "ArtifactStore", "FileEntry", "Manifest", "VersionWriter", "version_id"]

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
STORE_FILE = "_store.json"
ATTEMPTS = "_attempts"
QUARANTINE = "_quarantine"
_CHUNK = 8 * 1024 * 1024
_TIME_FMT = "%Y%m%dT%H%M%S"


class FileEntry(BaseModel):
    path: str = Field(description="Logical path of the file in the version (what readers ask for).")
    sha256: str
    bytes: int
    rows: int | None = Field(None, description="Row count for Parquet tables.")
    key: str | None = Field(
        None, description="Where the bytes are, relative to the version directory (default: path)."
    )

    @field_validator("path", "key")
    @classmethod
    def _inside_version(cls, v: str | None) -> str | None:
        # A tampered manifest must not point readers outside its version directory.
        return v if v is None else check_relpath(v, "file path in a manifest")

    @property
    def location(self) -> str:
        # Manifests written before attempts existed keep their data at the plain path.
        return self.key or self.path


class Manifest(BaseModel):
    name: str
    version: str
    stage: str
    created_at: str
    config: dict[str, Any]
    config_hash: str
    code_version: str
    git_sha: str | None = None
    upstream: dict[str, str] = Field(default_factory=dict, description="role -> name@version")
    files: list[FileEntry]
    schemas: dict[str, str] = Field(default_factory=dict, description="table -> Arrow schema string")
    metadata: dict[str, Any] = Field(default_factory=dict)
    flow_run_id: str | None = None

    @property
    def ref(self) -> ArtifactRef:
        return ArtifactRef(name=self.name, version=self.version)

    @property
    def failures(self) -> dict[str, Any]:
        """``{"failed": int, "total": int, "examples": [...]}`` as the stage reported it, or ``{}``."""
        return self.metadata.get("failures") or {}

    @property
    def is_partial(self) -> bool:
        """Some items of the stage failed; a rerun retries them in a new version (see run_stage)."""
        return int(self.failures.get("failed", 0) or 0) > 0

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise ArtifactError(f"artifact {self.name}@{self.version} has no file {path!r}")


def version_id(name: str, stage: str, config_hash: str, code: str, upstream: dict[str, str], salt: str = "") -> str:
    """Deterministic version id of a stage output.

    >>> version_id("entities", "mine", "c0", "0.1.0", {}) == version_id("entities", "mine", "c0", "0.1.0", {})
    True
    >>> version_id("entities", "mine", "c0", "0.1.0", {}) != version_id("entities", "mine", "c1", "0.1.0", {})
    True
    """
    return short_hash(
        {"name": name, "stage": stage, "config": config_hash, "code": code, "upstream": upstream, "salt": salt}, 16
    )


def new_attempt_id(now: dt.datetime | None = None) -> str:
    """Unique per writer attempt; starts with its UTC start time so stale ones can be collected.

    >>> new_attempt_id(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)).startswith("20260102T030405-")
    True
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now.strftime(_TIME_FMT)}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def attempt_started(attempt: str) -> dt.datetime | None:
    """Start time encoded in an attempt id (``None`` if it is not one of ours).

    >>> attempt_started("20260102T030405-77-abc").isoformat()
    '2026-01-02T03:04:05+00:00'
    >>> attempt_started("junk") is None
    True
    """
    try:
        return dt.datetime.strptime(attempt.split("-", 1)[0], _TIME_FMT).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def file_problem(entry: FileEntry, sha256: str | None, size: int) -> str | None:
    """Why bytes with this digest and size are not ``entry`` (``sha256=None``: size only), else None.

    >>> e = FileEntry(path="a", sha256="00" * 32, bytes=3)
    >>> file_problem(e, "00" * 32, 3) is None
    True
    >>> file_problem(e, "11" * 32, 3)
    'sha256 111111111111… differs from the manifest (000000000000…)'
    >>> file_problem(e, None, 4)
    'size 4 bytes differs from the manifest (3 bytes)'
    """
    if size != entry.bytes:
        return f"size {size} bytes differs from the manifest ({entry.bytes} bytes)"
    if sha256 is not None and sha256 != entry.sha256:
        return f"sha256 {sha256[:12]}… differs from the manifest ({entry.sha256[:12]}…)"
    return None


def _hash_stream(read: Callable[[int], bytes]) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    while chunk := read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def _current_flow_run_id() -> str | None:
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        return str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    except Exception:  # outside Prefect, or Prefect absent
        return None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class ArtifactStore:
    """Reads and writes artifact versions on a local directory or any S3-compatible store."""

    def __init__(self, settings: StoreSettings | None = None) -> None:
        self.settings = settings or StoreSettings()
        self.fs, self.root = self.settings.arrow_filesystem()
        self._s3 = self.settings.boto3_client() if self.settings.is_s3 else None
        self._identity: str | None = None

    @classmethod
    def from_uri(cls, uri: str | None = None) -> "ArtifactStore":
        """Store at ``uri`` (endpoint and credentials from the environment), or the env default."""
        settings = StoreSettings() if uri is None else StoreSettings(uri=uri)
        return cls(settings)

    @property
    def uri(self) -> str:
        return self.settings.uri

    # ---- paths -----------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        """The one place store paths are built: ``<root>/<part>/...``, provably under the root."""
        rel = "/".join(check_relpath(p, "store path") for p in parts)
        path = f"{self.root}/{rel}"
        normal = os.path.normpath(path) if not self.settings.is_s3 else path
        if not normal.startswith(self.root.rstrip("/") + "/"):
            raise InvalidRefError(f"store path {rel!r} escapes the store root {self.uri}")
        return path

    def _dir(self, name: str, version: str) -> str:
        return self._path(check_segment(name, "artifact name"), check_segment(version, "version"))

    def file_path(self, ref: ArtifactRef, path: str) -> str:
        """Filesystem path (inside ``self.fs``) of the bytes of committed file ``path``."""
        entry = self.manifest(ref).file(path)
        return self._path(ref.name, ref.version, entry.location)

    def location(self, ref: ArtifactRef, path: str | None = None) -> str:
        """Human-readable location (a path or an s3:// URI) of a version, or of its committed file
        ``path`` (which lives under the writer's attempt prefix the manifest names)."""
        where = self._dir(ref.name, ref.version) if path is None else self.file_path(ref, path)
        return f"s3://{where}" if self.settings.is_s3 else where

    # ---- primitives ------------------------------------------------------------------------
    def _create_exclusive(self, path: str, body: bytes) -> bool:
        """Create ``path`` holding ``body`` atomically, only if it does not exist yet.

        Returns False when it already existed (someone else created it first); readers see
        either nothing or the complete body, never a partial file.
        """
        if self._s3 is not None:
            return self._s3_put_if_absent(path, body)
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, final)  # atomic, and fails if the name exists
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _s3_put_if_absent(self, path: str, body: bytes) -> bool:
        bucket, _, key = path.partition("/")
        for _ in range(5):
            try:
                self._s3.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*",
                                    ContentType="application/json")
                return True
            except self._s3.exceptions.ClientError as exc:
                err = exc.response.get("Error", {}).get("Code", "")
                if err in ("PreconditionFailed", "412"):
                    return False
                # AWS answers 409 while another conditional write of the key is in flight: retry.
                if err not in ("ConditionalRequestConflict", "409"):
                    raise
        raise ArtifactError(f"conditional write of {path} kept conflicting; retry the run")

    def _read_small(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def _overwrite(self, path: str, body: bytes) -> None:
        """Replace a small file atomically (readers see the old or the new body)."""
        if self._s3 is not None:
            with self.fs.open_output_stream(path) as f:  # S3 objects are replaced atomically
                f.write(body)
            return
        tmp = Path(path).with_name(f".{Path(path).name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(body)
        os.replace(tmp, path)

    def _overwrite_or_create(self, path: str, body: bytes) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True) if self._s3 is None else None
        self._overwrite(path, body)

    def _delete_file(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except (FileNotFoundError, OSError):
            pass

    def _delete_dir(self, path: str) -> None:
        try:
            self.fs.delete_dir(path)
        except (FileNotFoundError, OSError):
            pass

    def _subdirs(self, path: str) -> list[str]:
        sel = pafs.FileSelector(path, allow_not_found=True)
        return sorted(Path(i.path).name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.Directory)

    # ---- identity --------------------------------------------------------------------------
    @property
    def identity(self) -> str:
        """Stable random id of this store (UUID4 hex), created on first use in ``_store.json``.

        Two stores at different URIs, or the same URI after a wipe, have different identities,
        so local caches keyed on it never serve another store's bytes.
        """
        if self._identity is None:
            path = self._path(STORE_FILE)
            body = json.dumps({"identity": uuid.uuid4().hex, "created_at": _utcnow().isoformat()}).encode()
            create_error: Exception | None = None
            try:
                self._create_exclusive(path, body)  # a concurrent creator may win: read back either way
            except Exception as exc:  # e.g. read-only credentials: an existing identity still works
                create_error = exc
            try:
                self._identity = str(json.loads(self._read_small(path))["identity"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                why = f" and could not be created ({create_error})" if create_error else ""
                raise ArtifactError(f"store {self.uri}: identity file {path} is unreadable ({exc}){why}") from exc
        return self._identity

    # ---- reading ---------------------------------------------------------------------------
    def exists(self, ref: ArtifactRef) -> bool:
        info = self.fs.get_file_info(self._path(ref.name, ref.version, MANIFEST))
        return info.type == pafs.FileType.File

    def manifest(self, ref: ArtifactRef) -> Manifest:
        path = self._path(ref.name, ref.version, MANIFEST)
        try:
            raw = self._read_small(path)
        except (FileNotFoundError, OSError) as exc:
            raise ArtifactError(
                f"artifact {ref} does not exist in store {self.uri} (no committed manifest at {path})"
            ) from exc
        try:
            m = Manifest.model_validate_json(raw)
        except ValueError as exc:
            raise ArtifactError(f"artifact {ref}: manifest {path} is corrupt: {exc}") from exc
        if (m.name, m.version) != (ref.name, ref.version):
            raise ArtifactError(f"artifact {ref}: manifest {path} describes {m.name}@{m.version} instead")
        return m

    def resolve(self, ref: ArtifactRef) -> ArtifactRef:
        """``name@latest`` -> the newest committed version; other refs unchanged."""
        if not ref.is_latest:
            return ref
        latest = self.latest(ref.name)
        if latest is None:
            raise ArtifactError(f"artifact {ref.name} has no committed version in store {self.uri}")
        return latest

    def _read_verified(self, ref: ArtifactRef, entry: FileEntry) -> bytes:
        path = self._path(ref.name, ref.version, entry.location)
        try:
            data = self._read_small(path)
        except (FileNotFoundError, OSError) as exc:
            raise ArtifactError(f"artifact {ref}: file {entry.path} listed in the manifest is missing") from exc
        problem = file_problem(entry, hashlib.sha256(data).hexdigest(), len(data))
        if problem:
            raise ArtifactError(f"artifact {ref}: file {entry.path} is corrupt ({problem})")
        return data

    def table_files(self, ref: ArtifactRef, table: str = "data") -> list[FileEntry]:
        """The Parquet files of ``table``: ``<table>.parquet``, or its parts ``<table>/part-NNNNN.parquet``
        in order (see :mod:`deepperception.store.shards`)."""
        from deepperception.store.shards import table_entries

        m = self.manifest(ref)
        entries = table_entries(m.files, table)
        if not entries:
            tables = sorted({f.path.split("/", 1)[0].removesuffix(".parquet") for f in m.files
                             if f.path.endswith(".parquet")})
            raise ArtifactError(f"artifact {ref} has no table {table!r} (tables: {tables})")
        return entries

    def num_rows(self, ref: ArtifactRef, table: str = "data") -> int:
        """Rows of a table, from the manifest (nothing is read)."""
        return sum(int(e.rows or 0) for e in self.table_files(ref, table))

    def read_table(self, ref: ArtifactRef, table: str = "data", columns: list[str] | None = None) -> pa.Table:
        """A whole table of a committed version (all parts), verified against the manifest's sha256.
        Large tables are better streamed with :meth:`iter_batches`."""
        parts = [self._read_entry(ref, table, e, columns) for e in self.table_files(ref, table)]
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def read_part(self, ref: ArtifactRef, part: int, table: str = "data", columns: list[str] | None = None) -> pa.Table:
        """Part ``part`` of a table (the unit of shard work), verified."""
        entries = self.table_files(ref, table)
        if not 0 <= part < len(entries):
            raise ArtifactError(f"artifact {ref}: table {table} has {len(entries)} part(s), no part {part}")
        return self._read_entry(ref, table, entries[part], columns)

    def _read_entry(self, ref: ArtifactRef, table: str, entry: FileEntry, columns: list[str] | None) -> pa.Table:
        data = self._read_verified(ref, entry)
        try:
            return pq.read_table(pa.BufferReader(data), columns=columns)
        except pa.ArrowException as exc:
            raise ArtifactError(f"artifact {ref}: table {table} ({entry.path}) does not parse as Parquet: "
                                f"{exc}") from exc

    def iter_batches(self, ref: ArtifactRef, table: str = "data", columns: list[str] | None = None,
                     batch_size: int = 1024, parts: list[int] | None = None) -> Iterator[pa.RecordBatch]:
        """Stream a table batch by batch, each part verified before it is parsed (memory: one part).
        ``parts`` limits the stream to those part indices (shard work reads its own part)."""
        from deepperception.store.shards import iter_entries_batches

        entries = self.table_files(ref, table)
        if parts is not None:
            entries = [entries[i] for i in parts]
        yield from iter_entries_batches(self, ref, entries, columns, batch_size)

    def dataset(self, ref: ArtifactRef, table: str = "data"):
        """A ``pyarrow.dataset.Dataset`` over the table's files, for filtered/projected scans.
        Not re-hashed (verify the version first when that matters: :meth:`verify`)."""
        import pyarrow.dataset as pads

        paths = [self._path(ref.name, ref.version, e.location) for e in self.table_files(ref, table)]
        return pads.dataset(paths, filesystem=self.fs, format="parquet")

    def table_locations(self, ref: ArtifactRef, table: str = "data") -> list[str]:
        """Where each file of a table is (paths or s3:// URIs), for any Parquet reader
        (DuckDB ``read_parquet([...])``, pandas, ``datasets.load_dataset("parquet", data_files=...)``)."""
        out = [self._path(ref.name, ref.version, e.location) for e in self.table_files(ref, table)]
        return [f"s3://{p}" for p in out] if self.settings.is_s3 else out

    # ---- resumable shard work (see deepperception.store.shards) ------------------------------
    def commit_shard(self, ref: ArtifactRef, unit: str, index: int, tables: dict[str, pa.Table],
                     metadata: dict[str, Any] | None = None, *, replace: bool = False):
        from deepperception.store.shards import commit_shard

        return commit_shard(self, ref, unit, index, tables, metadata, replace=replace)

    def completed_shards(self, ref: ArtifactRef, unit: str):
        from deepperception.store.shards import completed_shards

        return completed_shards(self, ref, unit)

    def read_shard_table(self, ref: ArtifactRef, record, table: str = "data") -> pa.Table:
        from deepperception.store.shards import read_shard_table

        return read_shard_table(self, ref, record, table)

    def read_bytes(self, ref: ArtifactRef, path: str) -> bytes:
        m = self.manifest(ref)
        return self._read_verified(ref, m.file(path))

    def materialize(self, ref: ArtifactRef, prefix: str = "files/") -> Path:
        """A local directory holding the version's files under ``prefix`` (e.g. a checkpoint).

        Local stores return the writer's own attempt directory (after verifying checksums); S3
        stores download once into ``local_cache()/<identity>/<name>/<version>`` (verified while
        downloading) and reuse that copy while it still matches the manifest; a stale or
        incomplete copy is downloaded again.
        """
        m = self.manifest(ref)
        entries = [f for f in m.files if f.path.startswith(prefix)]
        if not entries:
            raise ArtifactError(f"artifact {ref} has no files under {prefix!r}")
        if not self.settings.is_s3:
            return self._materialize_local(ref, entries, prefix)
        dest = self.settings.local_cache() / self.identity / ref.name / ref.version
        stamp = short_hash([m.created_at, [(e.path, e.sha256, e.bytes) for e in entries]])
        if not _cache_matches(dest, entries, stamp):
            self._download(ref, entries, dest, stamp)
        return dest / prefix

    def _materialize_local(self, ref: ArtifactRef, entries: list[FileEntry], prefix: str) -> Path:
        bases = {e.location[: len(e.location) - len(e.path)] for e in entries if e.location.endswith(e.path)}
        if len(bases) != 1 or not all(e.location.endswith(e.path) for e in entries):
            raise ArtifactError(f"artifact {ref}: files under {prefix!r} are not stored in one directory")
        for e in entries:
            _verify_local(Path(self._path(ref.name, ref.version, e.location)), e, ref)
        base = Path(self._dir(ref.name, ref.version))
        base_rel = bases.pop().rstrip("/")
        return (base / base_rel / prefix) if base_rel else base / prefix

    def _download(self, ref: ArtifactRef, entries: list[FileEntry], dest: Path, stamp: str) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f".{ref.version}-", dir=_ensure(dest.parent)))
        try:
            for e in entries:
                target = tmp / check_relpath(e.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                with self.fs.open_input_stream(self._path(ref.name, ref.version, e.location)) as src, \
                        open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                _verify_local(target, e, ref)
            (tmp / ".complete").write_text(stamp)
            if dest.exists():
                shutil.rmtree(dest, ignore_errors=True)
            try:
                os.replace(tmp, dest)
            except OSError:
                # A concurrent materialiser put its (identical, verified) copy there first.
                if not _cache_matches(dest, entries, stamp):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def refs(self, name: str | None = None) -> list[ArtifactRef]:
        """Every committed version (a manifest exists), of one artifact or of all, unordered."""
        names = [check_segment(name, "artifact name")] if name is not None else [
            n for n in self._subdirs(self.root) if _plain(n)
        ]
        out = []
        for n in names:
            for v in self._subdirs(self._path(n)):
                if _plain(v):
                    ref = ArtifactRef(name=n, version=v)
                    if self.exists(ref):
                        out.append(ref)
        return out

    def list(self, name: str | None = None) -> list[Manifest]:
        """Committed versions (newest first), optionally of one artifact name."""
        out = [self.manifest(ref) for ref in self.refs(name)]
        out.sort(key=lambda m: m.created_at, reverse=True)
        return out

    def latest(self, name: str) -> ArtifactRef | None:
        versions = self.list(name)
        return versions[0].ref if versions else None

    # ---- verification and repair ------------------------------------------------------------
    def verify(self, ref: ArtifactRef, deep: bool = True, rehash_up_to: int = 0) -> list[str]:
        """Problems of a committed version (empty: intact), each naming the file and why.

        ``deep`` re-hashes every file (streaming, bounded memory) against the manifest's sha256
        and size; ``deep=False`` only checks that the manifest parses and that each file exists
        with the recorded size (one metadata call per file: cheap even for a 7B checkpoint),
        except that files of at most ``rehash_up_to`` bytes are still re-hashed (the tables and
        small files a cache hit can afford to check in full).
        """
        try:
            m = self.manifest(ref)
        except ArtifactError as exc:
            if not self.exists(ref):
                raise
            return [f"manifest: {exc}"]
        problems = []
        for e in m.files:
            why = self._file_problem(ref, e, deep or e.bytes <= rehash_up_to)
            if why:
                problems.append(f"file {e.path}: {why}")
        return problems

    def _entry_problem(self, ref: ArtifactRef, entry: FileEntry, deep: bool) -> str | None:
        return self._file_problem(ref, entry, deep)

    def _file_problem(self, ref: ArtifactRef, entry: FileEntry, deep: bool) -> str | None:
        path = self._path(ref.name, ref.version, entry.location)
        if not deep:
            info = self.fs.get_file_info(path)
            if info.type != pafs.FileType.File:
                return f"missing (expected at {entry.location})"
            return file_problem(entry, None, info.size)
        try:
            with self.fs.open_input_stream(path) as f:
                digest, size = _hash_stream(f.read)
        except (FileNotFoundError, OSError):
            return f"missing (expected at {entry.location})"
        return file_problem(entry, digest, size)

    def quarantine(self, ref: ArtifactRef) -> str:
        """Move a committed version aside to ``_quarantine/<name>/<version>-<time>/``; returns where.

        The manifest goes first, so the version stops existing for readers at once and the same
        version id can be recomputed; then the files it references follow (kept for inspection).
        """
        m_path = self._path(ref.name, ref.version, MANIFEST)
        try:
            files = [e.location for e in self.manifest(ref).files]
        except ArtifactError:
            files = []  # an unparsable manifest: move just the manifest
        dest = self._path(QUARANTINE, ref.name, f"{ref.version}-{_utcnow().strftime(_TIME_FMT)}-{uuid.uuid4().hex[:6]}")
        for rel, src in [(MANIFEST, m_path)] + [(f, self._path(ref.name, ref.version, f)) for f in files]:
            target = f"{dest}/{rel}"
            self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            try:
                self.fs.move(src, target)
            except (FileNotFoundError, OSError):
                if rel == MANIFEST:
                    raise
        return f"s3://{dest}" if self.settings.is_s3 else dest

    def collect_stale_attempts(self, ref: ArtifactRef, older_than: dt.timedelta | None = None) -> list[str]:
        """Delete attempts of ``ref`` that started longer ago than ``older_than`` (default: the
        settings' ``attempt_ttl_hours``) and that no committed manifest references; returns them.

        A live writer's attempt is younger than that (its id holds its start time), and the
        committed version's own attempt is never touched.
        """
        age = older_than if older_than is not None else dt.timedelta(hours=self.settings.attempt_ttl_hours)
        attempts_dir = self._path(ref.name, ref.version, ATTEMPTS)
        candidates = [a for a in self._subdirs(attempts_dir)
                      if (t := attempt_started(a)) is not None and _utcnow() - t > age]
        if not candidates:
            return []
        keep = self._referenced_attempts(ref)
        if keep is None:
            return []  # a manifest exists but is unreadable: it may reference any of them
        removed = [a for a in candidates if a not in keep]
        for a in removed:
            self._delete_dir(f"{attempts_dir}/{a}")
        return removed

    def _referenced_attempts(self, ref: ArtifactRef) -> set[str] | None:
        if not self.exists(ref):
            return set()
        try:
            files = self.manifest(ref).files
        except ArtifactError:
            return None
        return {e.key.split("/")[1] for e in files if e.key and e.key.startswith(f"{ATTEMPTS}/")}

    # ---- writing ---------------------------------------------------------------------------
    def plan(
        self,
        name: str,
        stage: str,
        config: BaseModel | dict[str, Any] | None,
        upstream: dict[str, ArtifactRef] | None = None,
        salt: str = "",
        code: str | None = None,
    ) -> "VersionWriter":
        """A writer for the version this stage run would produce; check ``writer.exists``
        to skip recomputing an identical run. ``code`` is the code version (default: the whole
        package's; stages pass the version of the code they actually run)."""
        return VersionWriter(self, name, stage, config, upstream or {}, salt, code)

    def _commit_manifest(self, name: str, version: str, manifest: Manifest) -> None:
        body = manifest.model_dump_json(indent=2).encode()
        if not self._create_exclusive(self._path(name, version, MANIFEST), body):
            raise AlreadyCommittedError(f"artifact {name}@{version} is already committed")


def _with_path(exc: OSError, path: str) -> OSError:
    """pyarrow reports a full disk as ``OSError('Error writing bytes to file. Detail: [errno 28] No
    space left on device')``: no errno attribute, no file. Give it both, so the one-line error names
    the file (``error: No space left on device: <path>``); other errors pass through unchanged.

    >>> e = _with_path(OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"), "/s/x")
    >>> e.errno == errno.ENOSPC, e.filename
    (True, '/s/x')
    """
    if exc.errno is None and exc.filename is None:
        for code in (errno.ENOSPC, errno.EDQUOT):
            if f"[errno {code}]" in str(exc):
                return OSError(code, os.strerror(code), path)
    return exc


def _plain(segment: str) -> bool:
    try:
        check_segment(segment, "entry")
        return True
    except InvalidRefError:
        return False


def _ensure(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _cache_matches(dest: Path, entries: list[FileEntry], stamp: str) -> bool:
    """A cached copy is usable when it was completed for this manifest and no file lost bytes."""
    marker = dest / ".complete"
    if not marker.is_file() or marker.read_text() != stamp:
        return False
    for e in entries:
        p = dest / e.path
        if not p.is_file() or p.stat().st_size != e.bytes:
            return False
    return True


def _verify_local(path: Path, entry: FileEntry, ref: ArtifactRef) -> None:
    try:
        with open(path, "rb") as f:
            digest, size = _hash_stream(f.read)
    except FileNotFoundError as exc:
        raise ArtifactError(f"artifact {ref}: file {entry.path} listed in the manifest is missing") from exc
    problem = file_problem(entry, digest, size)
    if problem:
        raise ArtifactError(f"artifact {ref}: file {entry.path} is corrupt ({problem})")


def _check_failures(ref: ArtifactRef, metadata: dict[str, Any]) -> None:
    """The ``failures`` contract: ``{"failed": int, "total": int, "examples": [str, ...]}``."""
    failures = metadata.get("failures")
    if failures is None:
        return
    ok = (
        isinstance(failures, dict)
        and isinstance(failures.get("failed"), int) and failures["failed"] >= 0
        and isinstance(failures.get("total"), int) and failures["total"] >= failures["failed"]
        and isinstance(failures.get("examples", []), list)
    )
    if not ok:
        raise ArtifactError(
            f"artifact {ref}: metadata field 'failures' must be "
            f'{{"failed": int, "total": int >= failed, "examples": [str]}}, got {failures!r}'
        )


class VersionWriter:
    """Collects the files of one version in a private attempt; ``commit`` writes the manifest last.

    Use as a context manager: if the body raises, or the commit loses a race, this attempt's
    files (and only these) are deleted, so no half-written version is ever visible.
    ``previous`` is set by ``run_stage`` when this version retries the failed items of a partial
    one: the stage may copy that version's good rows and redo only the failures.
    """

    def __init__(
        self,
        store: ArtifactStore,
        name: str,
        stage: str,
        config: BaseModel | dict[str, Any] | None,
        upstream: dict[str, ArtifactRef],
        salt: str = "",
        code: str | None = None,
    ) -> None:
        from deepperception.version import config_hash

        self.store = store
        self.name = check_segment(name, "artifact name")
        self.stage = stage
        self.config = (
            config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config or {})
        )
        self.config_hash = config_hash(self.config)
        self.code_version = code or code_version()
        self.upstream = {role: str(ref) for role, ref in sorted(upstream.items())}
        self.version = version_id(name, stage, self.config_hash, self.code_version, self.upstream, salt)
        self.ref = ArtifactRef(name=name, version=self.version)
        self.previous: ArtifactRef | None = None
        self.attempt = new_attempt_id()
        self._files: list[FileEntry] = []
        self._schemas: dict[str, str] = {}
        self._committed = False

    @property
    def exists(self) -> bool:
        return self.store.exists(self.ref)

    @property
    def dir(self) -> str:
        """The version directory (shared by all writers of this version; holds the manifest)."""
        return self.store._dir(self.name, self.version)

    @property
    def attempt_dir(self) -> str:
        """This writer's private staging directory."""
        return self.store._path(self.name, self.version, ATTEMPTS, self.attempt)

    def __enter__(self) -> "VersionWriter":
        if self.exists:
            raise AlreadyCommittedError(f"artifact {self.ref} is already committed; read it instead of rewriting")
        # Fresh start time: the attempt id is what stale-attempt collection judges liveness by.
        self.attempt = new_attempt_id()
        self.store.collect_stale_attempts(self.ref)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:
            self.store._delete_dir(self.attempt_dir)

    def _entry_key(self, rel: str) -> str:
        check_relpath(rel, f"file path in artifact {self.ref}")
        if any(f.path == rel for f in self._files):
            raise ArtifactError(f"artifact {self.ref}: file {rel} written twice")
        return f"{ATTEMPTS}/{self.attempt}/{rel}"

    def _put(self, rel: str, data: bytes, rows: int | None = None) -> FileEntry:
        key = self._entry_key(rel)
        path = self.store._path(self.name, self.version, key)
        try:
            self.store.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with self.store.fs.open_output_stream(path) as out:
                out.write(data)
        except OSError as exc:
            raise _with_path(exc, path) from exc
        entry = FileEntry(path=rel, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), rows=rows, key=key)
        self._files.append(entry)
        return entry

    def write_table(self, table: pa.Table, name: str = "data") -> FileEntry:
        """Write a pyarrow table as ``<name>.parquet``."""
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        self._schemas[name] = str(table.schema)
        return self._put(f"{name}.parquet", sink.getvalue(), rows=table.num_rows)

    def table_writer(self, name: str = "data", *, schema: pa.Schema | None = None, max_rows: int | None = None,
                     max_bytes: int | None = None):
        """A :class:`~deepperception.store.shards.ShardedTableWriter` streaming ``name`` into bounded
        parts (use as a context manager; ``.write(batch)``)."""
        from deepperception.store.shards import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, ShardedTableWriter

        return ShardedTableWriter(self, name, schema=schema, max_rows=max_rows or DEFAULT_MAX_ROWS,
                                  max_bytes=max_bytes or DEFAULT_MAX_BYTES)

    def adopt_shards(self, records: list, schemas: dict[str, pa.Schema] | None = None) -> list[FileEntry]:
        """List finished shards' files (``store.commit_shard``) in this version as
        ``<table>/part-<index>.parquet``, in index order; they stay where the shard wrote them."""
        out = []
        for record in sorted(records, key=lambda r: r.index):
            for table, entry in sorted(record.files.items()):
                if any(f.path == entry.path for f in self._files):
                    raise ArtifactError(f"artifact {self.ref}: file {entry.path} written twice")
                self._files.append(entry)
                out.append(entry)
        for table, schema in (schemas or {}).items():
            self._schemas[table] = str(schema)
        return out

    def write_bytes(self, rel: str, data: bytes) -> FileEntry:
        return self._put(rel, data)

    def write_json(self, rel: str, obj: Any) -> FileEntry:
        return self._put(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def write_dir(self, local_dir: str | Path, prefix: str = "files/") -> list[FileEntry]:
        """Upload every file of a local directory (e.g. a saved checkpoint), streaming."""
        local_dir = Path(local_dir)
        out = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            rel = prefix + path.relative_to(local_dir).as_posix()
            key = self._entry_key(rel)
            dest = self.store._path(self.name, self.version, key)
            self.store.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            h = hashlib.sha256()
            size = 0
            with open(path, "rb") as src, self.store.fs.open_output_stream(dest) as dst:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    dst.write(chunk)
            entry = FileEntry(path=rel, sha256=h.hexdigest(), bytes=size, key=key)
            self._files.append(entry)
            out.append(entry)
        return out

    def commit(self, metadata: dict[str, Any] | None = None) -> ArtifactRef:
        """Publish the version: exactly one writer of a version succeeds, the others get
        :class:`AlreadyCommittedError` (and their attempt is removed on exit)."""
        if not self._files:
            raise ArtifactError(f"artifact {self.ref}: refusing to commit a version with no files")
        metadata = json.loads(canonical_json(metadata or {}))
        _check_failures(self.ref, metadata)
        manifest = Manifest(
            name=self.name,
            version=self.version,
            stage=self.stage,
            created_at=_utcnow().isoformat(timespec="microseconds"),
            config=self.config,
            config_hash=self.config_hash,
            code_version=self.code_version,
            git_sha=git_sha(),
            upstream=self.upstream,
            files=self._files,
            schemas=self._schemas,
            metadata=metadata,
            flow_run_id=_current_flow_run_id(),
        )
        self.store._commit_manifest(self.name, self.version, manifest)
        self._committed = True
        notify_commit(Commit(ref=self.ref, manifest=manifest, store_uri=self.store.uri))  # e.g. a Prefect event
        return self.ref
