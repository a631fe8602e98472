"""Immutable, versioned artifacts: Parquet tables and plain files under one manifest.

Layout (same on a local directory and on S3)::

    <root>/<name>/<version>/<table>.parquet
    <root>/<name>/<version>/files/<relative path>      # e.g. a checkpoint directory
    <root>/<name>/<version>/_manifest.json             # written LAST: the commit point

A version whose manifest is missing does not exist for readers. Version ids derive from the
stage, its config hash, the code version and the upstream versions, so an identical rerun lands
on the same id and is recognised (and skipped) instead of recomputed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from deepperception.errors import AlreadyCommittedError, ArtifactError
from deepperception.store.settings import StoreSettings
from deepperception.version import canonical_json, code_version, git_sha, short_hash

MANIFEST = "_manifest.json"
_CHUNK = 8 * 1024 * 1024


class ArtifactRef(BaseModel):
    """What tasks pass around: a name and a version, never the data itself."""

    model_config = {"frozen": True}

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def parse(cls, text: str) -> "ArtifactRef":
        """``name@version`` -> ref.

        >>> ArtifactRef.parse("entities@abc123")
        ArtifactRef(name='entities', version='abc123')
        """
        name, sep, version = text.partition("@")
        if not sep or not name or not version:
            raise ValueError(f"artifact reference {text!r} is not of the form name@version")
        return cls(name=name, version=version)


class FileEntry(BaseModel):
    path: str = Field(description="Path relative to the version directory.")
    sha256: str
    bytes: int
    rows: int | None = Field(None, description="Row count for Parquet tables.")


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


def _current_flow_run_id() -> str | None:
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        return str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    except Exception:  # outside Prefect, or Prefect absent
        return None


class ArtifactStore:
    """Reads and writes artifact versions on a local directory or any S3-compatible store."""

    def __init__(self, settings: StoreSettings | None = None) -> None:
        self.settings = settings or StoreSettings()
        self.fs, self.root = self.settings.arrow_filesystem()
        self._s3 = self.settings.boto3_client() if self.settings.is_s3 else None

    @classmethod
    def from_uri(cls, uri: str | None = None) -> "ArtifactStore":
        """Store at ``uri`` (endpoint and credentials from the environment), or the env default."""
        settings = StoreSettings() if uri is None else StoreSettings(uri=uri)
        return cls(settings)

    @property
    def uri(self) -> str:
        return self.settings.uri

    # ---- paths -----------------------------------------------------------------------------
    def _dir(self, name: str, version: str) -> str:
        return f"{self.root}/{name}/{version}"

    def location(self, ref: ArtifactRef) -> str:
        """Human-readable location of a version (a path or an s3:// URI)."""
        if self.settings.is_s3:
            return f"s3://{self._dir(ref.name, ref.version)}"
        return self._dir(ref.name, ref.version)

    # ---- reading ---------------------------------------------------------------------------
    def exists(self, ref: ArtifactRef) -> bool:
        info = self.fs.get_file_info(f"{self._dir(ref.name, ref.version)}/{MANIFEST}")
        return info.type == pafs.FileType.File

    def manifest(self, ref: ArtifactRef) -> Manifest:
        path = f"{self._dir(ref.name, ref.version)}/{MANIFEST}"
        try:
            with self.fs.open_input_stream(path) as f:
                raw = f.read()
        except (FileNotFoundError, OSError) as exc:
            raise ArtifactError(
                f"artifact {ref} does not exist in store {self.uri} (no committed manifest at {path})"
            ) from exc
        try:
            return Manifest.model_validate_json(raw)
        except ValueError as exc:
            raise ArtifactError(f"artifact {ref}: manifest {path} is corrupt: {exc}") from exc

    def _read_verified(self, ref: ArtifactRef, entry: FileEntry) -> bytes:
        path = f"{self._dir(ref.name, ref.version)}/{entry.path}"
        try:
            with self.fs.open_input_stream(path) as f:
                data = f.read()
        except (FileNotFoundError, OSError) as exc:
            raise ArtifactError(f"artifact {ref}: file {entry.path} listed in the manifest is missing") from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256 or len(data) != entry.bytes:
            raise ArtifactError(
                f"artifact {ref}: file {entry.path} is corrupt (sha256 {digest[:12]}…, "
                f"{len(data)} bytes; manifest says {entry.sha256[:12]}…, {entry.bytes} bytes)"
            )
        return data

    def read_table(self, ref: ArtifactRef, table: str = "data") -> pa.Table:
        """A table of a committed version, verified against its manifest's sha256."""
        m = self.manifest(ref)
        entry = m.file(f"{table}.parquet")
        data = self._read_verified(ref, entry)
        try:
            return pq.read_table(pa.BufferReader(data))
        except pa.ArrowException as exc:
            raise ArtifactError(f"artifact {ref}: table {table} does not parse as Parquet: {exc}") from exc

    def read_bytes(self, ref: ArtifactRef, path: str) -> bytes:
        m = self.manifest(ref)
        return self._read_verified(ref, m.file(path))

    def materialize(self, ref: ArtifactRef, prefix: str = "files/") -> Path:
        """A local directory holding the version's files under ``prefix`` (e.g. a checkpoint).

        Local stores return the version's own directory (after verifying checksums); S3 stores
        download once into the local cache, keyed by version, so later calls are free.
        """
        m = self.manifest(ref)
        entries = [f for f in m.files if f.path.startswith(prefix)]
        if not entries:
            raise ArtifactError(f"artifact {ref} has no files under {prefix!r}")
        if not self.settings.is_s3:
            for e in entries:
                _verify_local(Path(self._dir(ref.name, ref.version)) / e.path, e, ref)
            return Path(self._dir(ref.name, ref.version)) / prefix
        dest = self.settings.local_cache() / ref.name / ref.version
        marker = dest / ".complete"
        if not marker.exists():
            tmp = Path(tempfile.mkdtemp(prefix=f".{ref.version}-", dir=_ensure(dest.parent)))
            for e in entries:
                target = tmp / e.path
                target.parent.mkdir(parents=True, exist_ok=True)
                with self.fs.open_input_stream(f"{self._dir(ref.name, ref.version)}/{e.path}") as src, open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                _verify_local(target, e, ref)
            (tmp / ".complete").write_text(m.created_at)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        return dest / prefix

    def list(self, name: str | None = None) -> list[Manifest]:
        """Committed versions (newest first), optionally of one artifact name."""
        names: list[str]
        if name is not None:
            names = [name]
        else:
            names = [
                Path(i.path).name
                for i in self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
                if i.type == pafs.FileType.Directory and not Path(i.path).name.startswith("_")
            ]
        out: list[Manifest] = []
        for n in names:
            sel = pafs.FileSelector(f"{self.root}/{n}", allow_not_found=True)
            for info in self.fs.get_file_info(sel):
                if info.type != pafs.FileType.Directory:
                    continue
                ref = ArtifactRef(name=n, version=Path(info.path).name)
                if self.exists(ref):
                    out.append(self.manifest(ref))
        out.sort(key=lambda m: m.created_at, reverse=True)
        return out

    def latest(self, name: str) -> ArtifactRef | None:
        versions = self.list(name)
        return versions[0].ref if versions else None

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
        path = f"{self._dir(name, version)}/{MANIFEST}"
        if self._s3 is not None:
            bucket, _, key = path.partition("/")
            try:
                # Write-once: a second commit of the same version is refused by the server.
                self._s3.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*",
                                    ContentType="application/json")
            except self._s3.exceptions.ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in ("PreconditionFailed", "412"):
                    raise AlreadyCommittedError(f"artifact {name}@{version} is already committed") from exc
                raise
            return
        final = Path(path)
        tmp = final.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
        tmp.write_bytes(body)
        try:
            os.link(tmp, final)  # atomic and fails if the version was committed meanwhile
        except FileExistsError as exc:
            raise AlreadyCommittedError(f"artifact {name}@{version} is already committed") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _delete_dir(self, name: str, version: str) -> None:
        try:
            self.fs.delete_dir(self._dir(name, version))
        except (FileNotFoundError, OSError):
            pass


def _ensure(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _verify_local(path: Path, entry: FileEntry, ref: ArtifactRef) -> None:
    h = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
    except FileNotFoundError as exc:
        raise ArtifactError(f"artifact {ref}: file {entry.path} listed in the manifest is missing") from exc
    if h.hexdigest() != entry.sha256 or size != entry.bytes:
        raise ArtifactError(f"artifact {ref}: file {entry.path} is corrupt (checksum mismatch)")


class VersionWriter:
    """Collects the files of one version; ``commit`` writes the manifest last.

    Use as a context manager: if the body raises, every file written so far is deleted, so no
    half-written version is ever visible (and none would be anyway, without a manifest).
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
        self.name = name
        self.stage = stage
        self.config = (
            config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config or {})
        )
        self.config_hash = config_hash(self.config)
        self.code_version = code or code_version()
        self.upstream = {role: str(ref) for role, ref in sorted(upstream.items())}
        self.version = version_id(name, stage, self.config_hash, self.code_version, self.upstream, salt)
        self.ref = ArtifactRef(name=name, version=self.version)
        self._files: list[FileEntry] = []
        self._schemas: dict[str, str] = {}
        self._committed = False

    @property
    def exists(self) -> bool:
        return self.store.exists(self.ref)

    @property
    def dir(self) -> str:
        return self.store._dir(self.name, self.version)

    def __enter__(self) -> "VersionWriter":
        if self.exists:
            raise AlreadyCommittedError(f"artifact {self.ref} is already committed; read it instead of rewriting")
        # Left-overs of a crashed earlier attempt (no manifest) are not a version: clear them.
        self.store._delete_dir(self.name, self.version)
        self.store.fs.create_dir(self.dir, recursive=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Lost a commit race: the directory now holds the winner's committed version; keep it.
        # (Two runs computing the same version at once is otherwise unsupported: they share paths.
        # The pipeline avoids it by running each stage once per flow run.)
        if exc_type is not None and issubclass(exc_type, AlreadyCommittedError):
            return
        if exc_type is not None or not self._committed:
            self.store._delete_dir(self.name, self.version)

    def _put(self, rel: str, data: bytes, rows: int | None = None) -> FileEntry:
        if any(f.path == rel for f in self._files):
            raise ArtifactError(f"artifact {self.ref}: file {rel} written twice")
        path = f"{self.dir}/{rel}"
        parent = path.rsplit("/", 1)[0]
        self.store.fs.create_dir(parent, recursive=True)
        with self.store.fs.open_output_stream(path) as out:
            out.write(data)
        entry = FileEntry(path=rel, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), rows=rows)
        self._files.append(entry)
        return entry

    def write_table(self, table: pa.Table, name: str = "data") -> FileEntry:
        """Write a pyarrow table as ``<name>.parquet``."""
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        self._schemas[name] = str(table.schema)
        return self._put(f"{name}.parquet", sink.getvalue(), rows=table.num_rows)

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
            dest = f"{self.dir}/{rel}"
            self.store.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            h = hashlib.sha256()
            size = 0
            with open(path, "rb") as src, self.store.fs.open_output_stream(dest) as dst:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    dst.write(chunk)
            entry = FileEntry(path=rel, sha256=h.hexdigest(), bytes=size)
            self._files.append(entry)
            out.append(entry)
        return out

    def commit(self, metadata: dict[str, Any] | None = None) -> ArtifactRef:
        if not self._files:
            raise ArtifactError(f"artifact {self.ref}: refusing to commit a version with no files")
        manifest = Manifest(
            name=self.name,
            version=self.version,
            stage=self.stage,
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
            config=self.config,
            config_hash=self.config_hash,
            code_version=self.code_version,
            git_sha=git_sha(),
            upstream=self.upstream,
            files=self._files,
            schemas=self._schemas,
            metadata=json.loads(canonical_json(metadata or {})),
            flow_run_id=_current_flow_run_id(),
        )
        self.store._commit_manifest(self.name, self.version, manifest)
        self._committed = True
        return self.ref

