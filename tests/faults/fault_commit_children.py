"""The stage the crash.commit scenario kills, and its child process (``test_fault_crash_commit.py``).

One artifact version, written through ``run_stage`` the way the long data-engine stages write
theirs: shard work committed shard by shard (``store.commit_shard``, resumed from
``completed_shards``), then the version's own files in its attempt dir (a table, small files,
a large file streamed by ``write_dir`` in 8 MiB chunks, a JSON), then the manifest. Every byte
is a pure function of the constants below, so a rerun and a clean run must write the same bytes.

``main(json)`` is the child: it installs one kill point (SIGKILL of its own process: no handler,
no ``finally``, no ``__exit__`` cleanup runs) and runs the stage. Kill points (``kind``):

* ``shard_file``: inside the Parquet write of shard ``k`` (a ``cut`` fraction of its bytes written);
* ``shard_record``: shard ``k``'s file is complete, its record not yet created;
* ``after_files``: after the ``k``-th file of the attempt is closed (``k`` of ``N_ATTEMPT_FILES``);
* ``in_big_file``: inside the large file's write, a ``cut`` fraction of its bytes written;
* ``before_manifest``: every file written, the manifest not yet created;
* ``manifest_tmp`` (local store): the manifest's temp file is complete on disk, not yet linked.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
from pathlib import Path

import pyarrow as pa

NAME, STAGE, UNIT = "commit-fault", "commit-fault", "rows"
CONFIG = {"scenario": "crash.commit", "shards": 4}
N_SHARDS, N_NOTES, ROWS_PER_SHARD = 4, 3, 500
BIG_BYTES = 12 * 1024 * 1024 + 12345  # two 8 MiB chunks in write_dir; S3 multipart on the way
# Files of the version's attempt, in write order: summary table, notes, files/big.bin,
# files/small.txt, stats.json.
N_ATTEMPT_FILES = 1 + N_NOTES + 2 + 1
KINDS = ("shard_file", "shard_record", "after_files", "in_big_file", "before_manifest", "manifest_tmp")


def shard_table(i: int) -> pa.Table:
    rng = random.Random(i)
    return pa.table({"id": [f"s{i}-{j:04d}" for j in range(ROWS_PER_SHARD)],
                     "value": [rng.random() for _ in range(ROWS_PER_SHARD)]})


def big_file(dest: Path) -> Path:
    """The large file, deterministic (a SHA-256 counter stream), written once per directory."""
    d = dest / "ckpt"
    if not (d / "big.bin").is_file():
        d.mkdir(parents=True, exist_ok=True)
        block = b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(4096))  # 128 KiB
        data = (block * (BIG_BYTES // len(block) + 1))[:BIG_BYTES]
        tmp = d / ".big.bin.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, d / "big.bin")
        (d / "small.txt").write_text("a small file next to the large one\n")
    return d


def produce_into(store, w, big_dir: Path) -> dict:
    """The stage body (see the module docstring); returns the manifest metadata."""
    done = store.completed_shards(w.ref, UNIT)
    for i in range(N_SHARDS):
        if i not in done:
            done[i] = store.commit_shard(w.ref, UNIT, i, {"data": shard_table(i)}, {"index": i})
    w.adopt_shards(list(done.values()), {"data": shard_table(0).schema})
    w.write_table(pa.table({"shard": list(range(N_SHARDS)), "rows": [ROWS_PER_SHARD] * N_SHARDS}), "summary")
    for j in range(N_NOTES):
        w.write_bytes(f"notes/{j:02d}.txt", f"note {j}\n".encode() * (50 + j))
    w.write_dir(big_dir, prefix="files/")
    w.write_json("stats.json", {"rows": N_SHARDS * ROWS_PER_SHARD, "shards": N_SHARDS})
    return {"rows": N_SHARDS * ROWS_PER_SHARD}


def run(settings_kwargs: dict, big_dir: Path):
    """Run the stage on the store ``settings_kwargs`` describe; returns ``(ref, reused)``."""
    from deepperception.store import ArtifactStore, StoreSettings
    from deepperception.store.stage import run_stage

    store = ArtifactStore(StoreSettings(**settings_kwargs))

    def produce(w):
        return produce_into(store, w, big_dir)

    return run_stage(store, NAME, STAGE, CONFIG, {}, produce, code=("deepperception.boxes",))


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _Stream:
    """Delegates to a real pyarrow output stream; ``on_write(stream, data)`` may cut and kill."""

    def __init__(self, real, path: str, hooks: "_Hooks") -> None:
        self.real, self.path, self.hooks, self.written = real, path, hooks, 0

    def write(self, data) -> int:
        self.hooks.on_write(self, bytes(data))
        self.written += len(data)
        return self.real.write(data)

    def close(self) -> None:
        self.real.close()
        self.hooks.on_close(self)

    def flush(self) -> None:
        self.real.flush()

    @property
    def closed(self) -> bool:
        return self.real.closed

    def tell(self) -> int:
        return self.real.tell()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.real.closed:
            self.close()


class _Hooks:
    def __init__(self, kind: str, k: int, cut: float) -> None:
        self.kind, self.k, self.cut = kind, k, cut
        self.closed_attempt_files = 0

    def _is_shard(self, stream: _Stream, index: int) -> bool:
        return f"/_shards/{UNIT}/{index:05d}-" in stream.path

    def on_write(self, stream: _Stream, data: bytes) -> None:
        target = ((self.kind == "shard_file" and self._is_shard(stream, self.k))
                  or (self.kind == "in_big_file" and stream.path.endswith("/files/big.bin")))
        if not target:
            return
        size = BIG_BYTES if self.kind == "in_big_file" else None
        if size is None:  # a shard's Parquet arrives in pieces: cut inside the first piece past 1 KiB
            if stream.written + len(data) < 1024:
                return
            stop = max(1, int(len(data) * self.cut))
        else:
            stop_at = int(size * self.cut)
            if stream.written + len(data) <= stop_at:
                return
            stop = stop_at - stream.written
        stream.real.write(data[:stop])
        stream.real.flush()  # what a local write leaves on disk; on S3 the parts already sent
        _die()

    def on_close(self, stream: _Stream) -> None:
        if "/_attempts/" in stream.path:
            self.closed_attempt_files += 1
            if self.kind == "after_files" and self.closed_attempt_files == self.k:
                _die()


def main(args: dict) -> None:
    import deepperception.store.artifacts as artifacts
    from deepperception.store import ArtifactStore

    kind, k, cut = args["kind"], args["k"], args["cut"]
    hooks = _Hooks(kind, k, cut)
    real_init = ArtifactStore.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        fs = self.fs
        real_open = fs.open_output_stream

        class FS:  # the store's filesystem with its output streams observed
            def __getattr__(self, name):
                return getattr(fs, name)

            def open_output_stream(self, path, *a, **kw):
                return _Stream(real_open(path, *a, **kw), path, hooks)

        self.fs = FS()
        real_create = self._create_exclusive

        def create_exclusive(path: str, body: bytes) -> bool:
            if kind == "shard_record" and path.endswith(f"/_shards/{UNIT}/{k:05d}.json"):
                _die()
            if kind == "before_manifest" and path.endswith(f"/{artifacts.MANIFEST}"):
                _die()
            return real_create(path, body)

        self._create_exclusive = create_exclusive

    ArtifactStore.__init__ = init
    if kind == "manifest_tmp":
        real_link = os.link

        def link(src, dst, *a, **kw):
            if str(dst).endswith(f"/{artifacts.MANIFEST}"):
                _die()  # the complete temp file is on disk; the manifest name does not exist
            return real_link(src, dst, *a, **kw)

        artifacts.os.link = link
    run(args["settings"], Path(args["big_dir"]))
    raise SystemExit(f"error: the kill point {kind} k={k} was never reached")


if __name__ == "__main__":  # pragma: no cover - run by the test with -c, under its module name
    main(json.loads(sys.argv[1]))
