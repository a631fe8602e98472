"""Corruption is caught: by readers (sha256), by ``verify``, and by a stage about to reuse it."""

import datetime as dt
import hashlib

import pyarrow as pa
import pytest
from store_helpers import all_files, flip_byte, overwrite

from deepperception.errors import ArtifactError
from deepperception.store import ArtifactStore, FileEntry, Manifest, StoreSettings
from deepperception.store.artifacts import new_attempt_id
from deepperception.store.stage import run_stage

CODE = ("deepperception.boxes",)  # a stable code scope: versions must not move while others edit


def _produce(calls):
    def produce(w):
        calls.append(w.ref)
        w.write_table(pa.table({"x": list(range(50))}))
        w.write_bytes("files/w.bin", bytes(range(256)) * 8)
        return {"rows": 50}
    return produce


def _commit(store):
    ref, _ = run_stage(store, "t", "s", {"k": 1}, {}, _produce([]), code=CODE)
    return ref


def test_same_size_byte_flip_is_caught_by_every_reader_and_deep_verify(store):
    ref = _commit(store)
    flip_byte(store, store.file_path(ref, "files/w.bin"))
    flip_byte(store, store.file_path(ref, "data.parquet"))
    with pytest.raises(ArtifactError, match=r"t@\w+: file files/w.bin is corrupt \(sha256"):
        store.read_bytes(ref, "files/w.bin")
    with pytest.raises(ArtifactError, match=r"file data.parquet is corrupt \(sha256"):
        store.read_table(ref)
    with pytest.raises(ArtifactError, match=r"file files/w.bin is corrupt \(sha256"):
        store.materialize(ref)  # local: checked in place; S3: checked while downloading
    problems = store.verify(ref, deep=True)
    assert sorted(p.split(":")[0] for p in problems) == ["file data.parquet", "file files/w.bin"]
    assert all("sha256" in p for p in problems)
    assert store.verify(ref, deep=False) == []  # sizes are intact: only a re-hash sees it


def test_quick_verify_sees_missing_and_truncated_files(store):
    ref = _commit(store)
    overwrite(store, store.file_path(ref, "data.parquet"), b"short")
    store.fs.delete_file(store.file_path(ref, "files/w.bin"))
    problems = store.verify(ref, deep=False)
    assert any(p.startswith("file data.parquet: size 5 bytes") for p in problems), problems
    assert any(p.startswith("file files/w.bin: missing") for p in problems), problems
    assert store.verify(ref, deep=True) == problems


def test_corrupt_manifest_is_reported_not_raised(store):
    ref = _commit(store)
    overwrite(store, f"{store._dir(ref.name, ref.version)}/_manifest.json", b"{not json")
    (problem,) = store.verify(ref)
    assert problem.startswith("manifest:") and "corrupt" in problem


def test_failed_stage_leaves_no_files_at_all(store):
    def produce(w):
        w.write_table(pa.table({"x": [1]}))
        w.write_bytes("files/half.bin", b"x" * 100)
        raise RuntimeError("boom half way")

    with pytest.raises(RuntimeError, match="boom"):
        run_stage(store, "t", "s", {"k": 1}, {}, produce, code=CODE)
    assert store.refs("t") == []
    assert all_files(store, f"{store.root}/t") == set()  # not even the failed attempt's files


def test_reusing_a_corrupt_version_is_refused_naming_artifact_and_file(store):
    calls = []
    ref, _ = run_stage(store, "t", "s", {"k": 1}, {}, _produce(calls), code=CODE)
    overwrite(store, store.file_path(ref, "data.parquet"), b"truncated")
    with pytest.raises(ArtifactError, match=rf"{ref}.*file data.parquet: size 9 bytes.*repair"):
        run_stage(store, "t", "s", {"k": 1}, {}, _produce(calls), code=CODE)
    assert len(calls) == 1


def test_a_cache_hit_rehashes_small_files_so_a_same_size_flip_is_refused(store):
    calls = []
    ref, _ = run_stage(store, "t", "s", {"k": 1}, {}, _produce(calls), code=CODE)
    flip_byte(store, store.file_path(ref, "data.parquet"))  # same size: only a re-hash sees it
    with pytest.raises(ArtifactError, match=rf"{ref}.*file data.parquet: .*sha256.*repair"):
        run_stage(store, "t", "s", {"k": 1}, {}, _produce(calls), code=CODE)
    assert len(calls) == 1
    assert store.verify(ref, deep=False, rehash_up_to=0) == []  # a size-only check would miss it


def test_a_cache_hit_only_size_checks_files_above_the_rehash_limit(store):
    calls = []
    ref, _ = run_stage(store, "t", "s", {"k": 1}, {}, _produce(calls), code=CODE)
    flip_byte(store, store.file_path(ref, "files/w.bin"))  # 2048 bytes, above the limit below
    small_limit = ArtifactStore(store.settings.model_copy(update={"reuse_rehash_max_bytes": 1024}))
    assert run_stage(small_limit, "t", "s", {"k": 1}, {}, _produce(calls), code=CODE) == (ref, True)
    with pytest.raises(ArtifactError, match="files/w.bin is corrupt"):
        small_limit.materialize(ref)  # still caught where the bytes are used


def test_repair_quarantines_the_corrupt_version_and_recomputes_the_same_id(store):
    calls = []
    ref, _ = run_stage(store, "t", "s", {"k": 1}, {}, _produce(calls), code=CODE)
    store.fs.delete_file(store.file_path(ref, "files/w.bin"))
    repairing = ArtifactStore(store.settings.model_copy(update={"repair": True}))
    ref2, reused = run_stage(repairing, "t", "s", {"k": 1}, {}, _produce(calls), code=CODE)
    assert (ref2, reused, len(calls)) == (ref, False, 2)
    assert store.verify(ref) == [] and store.read_table(ref).num_rows == 50
    moved = all_files(store, f"{store.root}/_quarantine/{ref.name}")
    assert any(p.endswith("/_manifest.json") for p in moved) and any(p.endswith("data.parquet") for p in moved)
    assert [m.ref for m in store.list()] == [ref]


def test_repair_flag_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("DP_STORE_REPAIR", "1")
    assert StoreSettings().repair is True


def test_manifests_without_keys_still_read_verify_and_materialize(store):
    """Versions committed before attempts existed keep their data at the plain path."""
    table_bytes = b"PAR1" + b"\x00" * 10  # not parsed: read_bytes only
    vdir = store._dir("old", "v1")
    store.fs.create_dir(f"{vdir}/files", recursive=True)
    overwrite(store, f"{vdir}/blob.bin", table_bytes)
    overwrite(store, f"{vdir}/files/config.json", b"{}")
    entries = [FileEntry(path=p, sha256=hashlib.sha256(b).hexdigest(), bytes=len(b))
               for p, b in (("blob.bin", table_bytes), ("files/config.json", b"{}"))]
    m = Manifest(name="old", version="v1", stage="s", created_at=dt.datetime.now(dt.timezone.utc).isoformat(),
                 config={}, config_hash="c", code_version="0", files=entries)
    body = m.model_dump_json(exclude={"files": {"__all__": {"key"}}}).encode()
    assert b'"key"' not in body
    assert store._create_exclusive(f"{vdir}/_manifest.json", body)
    assert store.read_bytes(m.ref, "blob.bin") == table_bytes
    assert store.verify(m.ref) == []
    assert (store.materialize(m.ref) / "config.json").read_bytes() == b"{}"


def test_stale_attempts_are_collected_but_live_and_committed_ones_kept(store):
    writer = store.plan("t", "s", {"k": 1}, {})
    attempts = f"{writer.dir}/_attempts"
    crashed, live = "20000101T000000-1-deadbeef", new_attempt_id()
    for a in (crashed, live):
        overwrite_mkdir(store, f"{attempts}/{a}/data.parquet")
    with writer:
        writer.write_table(pa.table({"x": [1]}))
        ref = writer.commit()
    assert {p.split("/")[0] for p in all_files(store, attempts)} == {live, writer.attempt}
    # Even when everything counts as stale, the committed version's own attempt stays.
    assert store.collect_stale_attempts(ref, older_than=dt.timedelta(seconds=-1)) == [live]
    assert {p.split("/")[0] for p in all_files(store, attempts)} == {writer.attempt}
    assert store.read_table(ref).num_rows == 1


def overwrite_mkdir(store, path):
    store.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    overwrite(store, path, b"debris")
