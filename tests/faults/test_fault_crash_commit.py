"""crash.commit: an artifact version SIGKILLed while it is being written, on the local store and on
S3 (the moto server), then rerun.

The stage (:mod:`fault_commit_children`) commits shard work, writes its own files into its
attempt dir and commits the manifest last. A child process runs it and SIGKILLs itself at a point
``fault_rng`` picks: inside a shard's file, between a shard's file and its record, after k of n
attempt files, inside a 12 MiB file (a random fraction written), between the last file and the
manifest, or (local) with the manifest's temp file complete but not linked. Then:

* the killed version is invisible to every reader (exists, refs, list, latest, resolve,
  manifest, read_table, read_bytes, verify);
* the rerun commits it (same version id), recomputing only the shards the killed run did not
  finish, with the bytes of a clean run on a fresh store;
* the killed run's debris is collectable (``collect_stale_attempts`` removes its attempt and
  nothing the version references) or harmless (unreferenced files, the version verifies).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

import fault_commit_children as fc
from deepperception.errors import ArtifactError
from deepperception.store import ArtifactRef, ArtifactStore, StoreSettings

HERE = Path(__file__).resolve().parent
CHILD = f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import fault_commit_children as m; " \
        "m.main(json.loads(sys.argv[1]))"


def _settings(backend: str, request, tmp_path: Path, which: str) -> dict:
    if backend == "local":
        return {"uri": str(tmp_path / which / "store"), "cache_dir": str(tmp_path / which / "cache")}
    uri, endpoint = request.getfixturevalue("s3_store_uri")
    return {"uri": f"{uri}/{which}", "s3_endpoint_url": endpoint, "cache_dir": str(tmp_path / which / "cache")}


def _kill_point(rng, backend: str) -> tuple[str, int, float]:
    kinds = [k for k in fc.KINDS if backend == "local" or k != "manifest_tmp"]
    kind = rng.choice(kinds)
    k = {"shard_file": rng.randrange(fc.N_SHARDS), "shard_record": rng.randrange(fc.N_SHARDS),
         "after_files": rng.randint(1, fc.N_ATTEMPT_FILES - 1)}.get(kind, 0)
    return kind, k, round(rng.uniform(0.05, 0.95), 3)


def _invisible(store: ArtifactStore, ref: ArtifactRef) -> list[str]:
    """Readers that saw the (killed) version; empty when it is invisible to all of them."""
    seen = []
    if store.exists(ref):
        seen.append("exists")
    if ref in store.refs(ref.name) or ref in store.refs():
        seen.append("refs")
    if any(m.ref == ref for m in store.list(ref.name)) or any(m.ref == ref for m in store.list()):
        seen.append("list")
    if store.latest(ref.name) is not None:
        seen.append("latest")
    for what, read in (("resolve", lambda: store.resolve(ArtifactRef(name=ref.name, version="latest"))),
                       ("manifest", lambda: store.manifest(ref)), ("read_table", lambda: store.read_table(ref)),
                       ("read_table summary", lambda: store.read_table(ref, "summary")),
                       ("read_bytes", lambda: store.read_bytes(ref, "stats.json")),
                       ("verify", lambda: store.verify(ref))):
        try:
            read()
            seen.append(what)
        except ArtifactError as exc:
            assert str(ref.name) in str(exc), exc  # a clear error naming the artifact
    return seen


def _files(store: ArtifactStore, ref: ArtifactRef) -> dict[str, tuple]:
    """Every file of the version: (bytes, rows), read through the verifying reader."""
    return {f.path: (store.read_bytes(ref, f.path), f.rows) for f in store.manifest(ref).files}


def _all_files(store: ArtifactStore, ref: ArtifactRef) -> set[str]:
    """Every object under the version's directory, relative to it."""
    base = store._dir(ref.name, ref.version)
    infos = store.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return {i.path[len(base) + 1:] for i in infos if i.type == pafs.FileType.File}


class _ShardCount:
    """Counts the shards this process commits (wraps the real ``commit_shard``)."""

    def __enter__(self):
        import deepperception.store.shards as shards

        self.indices: list[int] = []
        self._real = shards.commit_shard

        def commit_shard(store, ref, unit, index, *a, **kw):
            self.indices.append(index)
            return self._real(store, ref, unit, index, *a, **kw)

        shards.commit_shard = commit_shard
        return self

    def __exit__(self, *exc):
        import deepperception.store.shards as shards

        shards.commit_shard = self._real


@pytest.mark.fault("crash.commit")
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_version_sigkilled_mid_write_is_invisible_and_the_rerun_completes_it(
        backend, reliability, fault_rng, request, tmp_path):
    kind, k, cut = _kill_point(fault_rng, backend)
    killed_kw, clean_kw = (_settings(backend, request, tmp_path, w) for w in ("killed", "clean"))
    big_dir = fc.big_file(tmp_path)
    args = {"kind": kind, "k": k, "cut": cut, "settings": killed_kw, "big_dir": str(big_dir)}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], env=env, capture_output=True,
                           timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-3000:]

    store = ArtifactStore(StoreSettings(**killed_kw))
    ref = ArtifactRef(name=fc.NAME, version=_planned_version(store))
    debris_before = _all_files(store, ref)
    assert debris_before, "the killed child left nothing behind: the kill point was not mid-write"
    seen = _invisible(store, ref)
    shards_before = sorted(store.completed_shards(ref, fc.UNIT))

    t0 = time.perf_counter()
    with _ShardCount() as count:
        rerun, reused = fc.run(killed_kw, big_dir)
    recover_s = time.perf_counter() - t0
    clean, _ = fc.run(clean_kw, big_dir)
    clean_store = ArtifactStore(StoreSettings(**clean_kw))

    final, want = _files(store, rerun), _files(clean_store, clean)
    rows = store.read_table(rerun).column("id").to_pylist()
    expected_ids = [f"s{i}-{j:04d}" for i in range(fc.N_SHARDS) for j in range(fc.ROWS_PER_SHARD)]
    lost = len(set(expected_ids) - set(rows))
    duplicated = len(rows) - len(set(rows))
    # A reader that saw the killed version read a half-written one: counted as corrupted.
    corrupted = (sum(1 for p in set(final) | set(want) if final.get(p) != want.get(p)) + len(store.verify(rerun))
                 + len(seen))
    redone = [i for i in count.indices if i in shards_before]

    # Debris: the killed attempt is collectable; whatever else it left is referenced by nothing.
    referenced = {f.location for f in store.manifest(rerun).files} | {"_manifest.json"}
    killed_attempts = {p.split("/")[1] for p in debris_before if p.startswith("_attempts/")}
    collected = store.collect_stale_attempts(rerun, older_than=dt.timedelta(0))
    left = _all_files(store, rerun) - referenced
    harmful = [p for p in left if not (p.startswith("_shards/") or p.startswith(".") or p == "_lease.json"
                                        or "/." in p)]
    corrupted += len(store.verify(rerun))  # still intact once the debris is collected
    reliability.record(
        lost=lost, duplicated=duplicated, corrupted=corrupted, recover_s=recover_s, injected=1,
        detail=f"{backend}: killed at {kind} (k={k}, cut={cut:.0%}); {len(debris_before)} files of debris, "
               f"{len(shards_before)}/{fc.N_SHARDS} shards finished; the rerun committed {len(count.indices)} "
               f"shards, redid {len(redone)}; collected {len(collected)} attempt(s), {len(left)} unreferenced "
               f"files left")
    assert seen == [], f"the killed version was visible to {seen}"
    assert (lost, duplicated, corrupted) == (0, 0, 0), [p for p in set(final) | set(want) if final.get(p) != want.get(p)]
    assert rerun == clean == ref and not reused
    assert redone == [] and sorted(count.indices) == sorted(set(range(fc.N_SHARDS)) - set(shards_before))
    assert set(collected) == killed_attempts, (collected, killed_attempts)
    assert harmful == [], harmful
    assert store.latest(fc.NAME) == rerun and [m.ref for m in store.list(fc.NAME)] == [rerun]


def _planned_version(store: ArtifactStore) -> str:
    """The version id the stage plans (the one the killed child was writing)."""
    from deepperception.version import stage_code_version

    code = stage_code_version((), ("deepperception.boxes",), ())
    return store.plan(fc.NAME, fc.STAGE, fc.CONFIG, code=code).version
