"""Sharded tables and resumable shard work inside one artifact version.

A paper-scale table (400K source photos, 25K CoTs with images) is never one Parquet file held
in memory. It is written as parts, ``<table>/part-00000.parquet``, ``part-00001.parquet``, ...,
each bounded in rows and bytes, each listed in the version manifest with its sha256 and row
count; readers stream them batch by batch. The manifest stays the single commit point.

Long stages also *commit work shard by shard* before the version exists::

    <name>/<version>/_shards/<unit>/00003.json            # record of a finished shard (created exclusively)
    <name>/<version>/_shards/<unit>/00003-<rand>/data.parquet

A stage killed at 90 % leaves its finished shards' records behind; rerun, it lists them
(:meth:`ArtifactStore.completed_shards`, verified against their recorded sizes and hashes),
computes only the missing shards, and its manifest lists every shard's files under
``<table>/part-<index>.parquet``. Shard outputs are pure functions of the version's inputs,
config and code (the version id hashes all of them), so the resumed version holds exactly the
bytes an uninterrupted run would have written.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from deepperception.errors import ArtifactError
from deepperception.store.artifacts import FileEntry, _utcnow
from deepperception.store.refs import check_segment

if TYPE_CHECKING:  # pragma: no cover
    from deepperception.store.artifacts import ArtifactStore, VersionWriter
    from deepperception.store.refs import ArtifactRef

log = logging.getLogger(__name__)

SHARDS = "_shards"
PART_FMT = "{table}/part-{index:05d}.parquet"
DEFAULT_MAX_ROWS = 50_000
DEFAULT_MAX_BYTES = 128 * 1024 * 1024
PARQUET_COMPRESSION = "zstd"


def part_path(table: str, index: int) -> str:
    """Logical path of part ``index`` of ``table`` in a manifest.

    >>> part_path("data", 3)
    'data/part-00003.parquet'
    """
    return PART_FMT.format(table=check_segment(table, "table name"), index=index)


def table_entries(files: list[FileEntry], table: str) -> list[FileEntry]:
    """The files of ``table`` among a manifest's files: ``<table>.parquet`` or its parts, in order.

    >>> fs = [FileEntry(path=p, sha256="0" * 64, bytes=1) for p in
    ...       ["data/part-00001.parquet", "rejected.parquet", "data/part-00000.parquet"]]
    >>> [e.path for e in table_entries(fs, "data")], [e.path for e in table_entries(fs, "rejected")]
    (['data/part-00000.parquet', 'data/part-00001.parquet'], ['rejected.parquet'])
    """
    single = [f for f in files if f.path == f"{table}.parquet"]
    if single:
        return single
    prefix = f"{table}/part-"
    return sorted((f for f in files if f.path.startswith(prefix) and f.path.endswith(".parquet")),
                  key=lambda f: f.path)


class ShardRecord(BaseModel):
    """What a finished shard wrote: its files (table -> entry) and the stage's per-shard metadata."""

    unit: str
    index: int = Field(ge=0)
    files: dict[str, FileEntry] = Field(description="table name -> the shard's Parquet file.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: str

    def rows(self, table: str = "data") -> int:
        entry = self.files.get(table)
        return int(entry.rows or 0) if entry else 0


class _HashingSink(io.RawIOBase):
    """A write-only file object that forwards to a pyarrow output stream while hashing."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.sha.update(data)
        self.size += len(data)
        self._out.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        if not self.closed:
            self._out.close()
        super().close()


@dataclass
class _OpenPart:
    index: int
    key: str
    sink: _HashingSink
    writer: pq.ParquetWriter
    rows: int = 0


@dataclass
class ShardedTableWriter:
    """Streams record batches of one table into bounded Parquet parts of a version being written.

    A part is closed once it holds ``max_rows`` rows or ``max_bytes`` bytes (checked after each
    row group, so a part may pass ``max_bytes`` by one row group); memory holds one row group.
    Use through :meth:`VersionWriter.table_writer`; every part becomes a manifest entry.
    """

    version_writer: "VersionWriter"
    table: str = "data"
    schema: pa.Schema | None = None
    max_rows: int = DEFAULT_MAX_ROWS
    max_bytes: int = DEFAULT_MAX_BYTES
    row_group_rows: int = 4096
    entries: list[FileEntry] = field(default_factory=list)
    _part: _OpenPart | None = None
    _closed: bool = False
    _pending: list[pa.Table] = field(default_factory=list)
    _pending_rows: int = 0

    def __post_init__(self) -> None:
        check_segment(self.table, "table name")
        if self.max_rows < 1 or self.max_bytes < 1:
            raise ValueError(f"table {self.table}: max_rows and max_bytes must be >= 1")

    @property
    def rows(self) -> int:
        return (sum(int(e.rows or 0) for e in self.entries) + (self._part.rows if self._part else 0)
                + self._pending_rows)

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        """Append rows (a table or a batch with this table's schema). Small batches are gathered
        into row groups of about ``row_group_rows`` rows (one row group per call would bloat the
        file's metadata and slow every reader); memory holds at most one row group."""
        if self._closed:
            raise ArtifactError(f"table {self.table} of {self.version_writer.ref} is already closed")
        table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
        if self.schema is None:
            self.schema = table.schema
        elif not table.schema.equals(self.schema):
            try:
                table = table.cast(self.schema)
            except (pa.ArrowInvalid, ValueError, TypeError) as exc:
                raise ArtifactError(f"table {self.table} of {self.version_writer.ref}: batch schema {table.schema} "
                                    f"does not match {self.schema}: {exc}") from exc
        self._pending.append(table)
        self._pending_rows += table.num_rows
        part_rows = self._part.rows if self._part else 0
        if self._pending_rows >= self.row_group_rows or part_rows + self._pending_rows >= self.max_rows or \
                sum(t.nbytes for t in self._pending) >= self.max_bytes // 4:
            self._flush()

    def _flush(self, final: bool = False) -> None:
        """Write whole row groups of the gathered rows (everything when ``final``), keep the rest."""
        if not self._pending:
            return
        table = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        keep = 0 if final else table.num_rows % self.row_group_rows
        if keep and table.num_rows > keep and sum(t.nbytes for t in self._pending) < self.max_bytes // 4:
            table, rest = table.slice(0, table.num_rows - keep), table.slice(table.num_rows - keep)
            self._pending, self._pending_rows = [rest], rest.num_rows
        else:
            self._pending, self._pending_rows = [], 0
        start = 0
        while start < table.num_rows:
            part = self._part or self._open_part()
            n = min(table.num_rows - start, self.max_rows - part.rows)
            part.writer.write_table(table.slice(start, n), row_group_size=self.row_group_rows)
            part.rows += n
            start += n
            if part.rows >= self.max_rows or part.sink.size >= self.max_bytes:
                self._close_part()

    def close(self) -> list[FileEntry]:
        """Finish the last part; a table that got no row is still written as one empty part."""
        if self._closed:
            return self.entries
        self._flush(final=True)
        if self._part is None and not self.entries:
            if self.schema is None:
                raise ArtifactError(f"table {self.table} of {self.version_writer.ref}: no rows and no schema given")
            self._open_part()
        if self._part is not None:
            self._close_part()
        self._closed = True
        self.version_writer._schemas[self.table] = str(self.schema)
        return self.entries

    def __enter__(self) -> "ShardedTableWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._part is not None:  # the attempt directory is deleted by the version writer
            self._pending = []
            self._part.writer.close()
            self._part.sink.close()
            self._part = None

    def _open_part(self) -> _OpenPart:
        w = self.version_writer
        index = len(self.entries)
        rel = part_path(self.table, index)
        key = w._entry_key(rel)
        path = w.store._path(w.name, w.version, key)
        w.store.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        sink = _HashingSink(w.store.fs.open_output_stream(path))
        writer = pq.ParquetWriter(sink, self.schema, compression=PARQUET_COMPRESSION)
        self._part = _OpenPart(index=index, key=key, sink=sink, writer=writer)
        return self._part

    def _close_part(self) -> None:
        part = self._part
        assert part is not None
        part.writer.close()
        part.sink.close()
        entry = FileEntry(path=part_path(self.table, part.index), sha256=part.sink.sha.hexdigest(),
                          bytes=part.sink.size, rows=part.rows, key=part.key)
        self.entries.append(entry)
        self.version_writer._files.append(entry)
        self._part = None


def table_bytes(table: pa.Table) -> bytes:
    """``table`` as Parquet bytes, the way every stored table is written."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=PARQUET_COMPRESSION)
    return sink.getvalue()


def _record_path(store: "ArtifactStore", ref: "ArtifactRef", unit: str, index: int) -> str:
    return store._path(ref.name, ref.version, SHARDS, check_segment(unit, "shard unit"), f"{index:05d}.json")


def commit_shard(store: "ArtifactStore", ref: "ArtifactRef", unit: str, index: int,
                 tables: dict[str, pa.Table], metadata: dict[str, Any] | None = None,
                 *, replace: bool = False) -> ShardRecord:
    """Write one finished shard's tables and then its record; returns the record that stands.

    The record is created exclusively, so of two writers of one shard exactly one record wins
    and the loser removes its own files. ``replace`` swaps an existing record (a shard redone to
    retry its failed items, by the one run holding the version's lease).
    """
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    if not tables:
        raise ArtifactError(f"shard {unit}/{index} of {ref}: no table to commit")
    d = f"{index:05d}-{uuid.uuid4().hex[:12]}"
    files: dict[str, FileEntry] = {}
    base = f"{SHARDS}/{check_segment(unit, 'shard unit')}/{d}"
    try:
        for table, data in tables.items():
            body = table_bytes(data)
            key = f"{base}/{check_segment(table, 'table name')}.parquet"
            path = store._path(ref.name, ref.version, key)
            store.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with store.fs.open_output_stream(path) as out:
                out.write(body)
            files[table] = FileEntry(path=part_path(table, index), sha256=hashlib.sha256(body).hexdigest(),
                                     bytes=len(body), rows=data.num_rows, key=key)
        record = ShardRecord(unit=unit, index=index, files=files, metadata=json.loads(json.dumps(metadata or {},
                             default=str)), created_at=_utcnow().isoformat(timespec="microseconds"))
        body = record.model_dump_json().encode()
        rpath = _record_path(store, ref, unit, index)
        if replace:
            store._overwrite_or_create(rpath, body)
            return record
        if store._create_exclusive(rpath, body):
            return record
    except BaseException:
        store._delete_dir(store._path(ref.name, ref.version, base))
        raise
    store._delete_dir(store._path(ref.name, ref.version, base))  # another writer finished this shard first
    existing = read_record(store, ref, unit, index)
    if existing is None:
        raise ArtifactError(f"shard {unit}/{index} of {ref}: record vanished while committing; retry the run")
    return existing


def read_record(store: "ArtifactStore", ref: "ArtifactRef", unit: str, index: int) -> ShardRecord | None:
    try:
        raw = store._read_small(_record_path(store, ref, unit, index))
    except (FileNotFoundError, OSError):
        return None
    return ShardRecord.model_validate_json(raw)


def completed_shards(store: "ArtifactStore", ref: "ArtifactRef", unit: str,
                     rehash_up_to: int | None = None) -> dict[int, ShardRecord]:
    """Finished shards of ``unit`` in the (uncommitted or committed) version ``ref``, by index.

    Each record's files are checked (present, recorded size; files up to ``rehash_up_to`` bytes,
    default the store's ``reuse_rehash_max_bytes``, re-hashed). A shard that fails the check
    (torn write, bit rot, an unreadable record) is forgotten: its record is deleted so the
    shard is computed again, with a warning naming the file.
    """
    import pyarrow.fs as pafs

    limit = store.settings.reuse_rehash_max_bytes if rehash_up_to is None else rehash_up_to
    d = store._path(ref.name, ref.version, SHARDS, check_segment(unit, "shard unit"))
    infos = store.fs.get_file_info(pafs.FileSelector(d, allow_not_found=True))
    out: dict[int, ShardRecord] = {}
    for info in infos:
        name = info.path.rsplit("/", 1)[-1]
        if info.type != pafs.FileType.File or not name.endswith(".json") or not name[:-5].isdigit():
            continue
        index = int(name[:-5])
        try:
            record = ShardRecord.model_validate_json(store._read_small(info.path))
            problems = [f"{t}: {p}" for t, e in record.files.items()
                        if (p := store._entry_problem(ref, e, e.bytes <= limit))]
            if record.index != index or record.unit != unit:
                problems.append(f"record describes {record.unit}/{record.index}")
        except (ValueError, OSError) as exc:
            problems = [f"record unreadable ({exc})"]
        if problems:
            log.warning("shard %s/%d of %s is damaged (%s); it will be computed again", unit, index, ref,
                        "; ".join(problems))
            store._delete_file(info.path)
            continue
        out[index] = record
    return out


def read_shard_table(store: "ArtifactStore", ref: "ArtifactRef", record: ShardRecord, table: str = "data") -> pa.Table:
    """One table of a finished shard, verified against its record."""
    entry = record.files.get(table)
    if entry is None:
        raise ArtifactError(f"shard {record.unit}/{record.index} of {ref} has no table {table!r}")
    data = store._read_verified(ref, entry)
    return pq.read_table(pa.BufferReader(data))


def iter_entries_batches(store: "ArtifactStore", ref: "ArtifactRef", entries: Iterable[FileEntry],
                         columns: list[str] | None, batch_size: int) -> Iterable[pa.RecordBatch]:
    """Record batches of Parquet files, verified file by file (memory: one file at a time)."""
    for entry in entries:
        data = store._read_verified(ref, entry)
        try:
            pf = pq.ParquetFile(pa.BufferReader(data))
            yield from pf.iter_batches(batch_size=batch_size, columns=columns)
        except pa.ArrowException as exc:
            raise ArtifactError(f"artifact {ref}: {entry.path} does not parse as Parquet: {exc}") from exc

