"""The store's identity: random, stable, shared by concurrent creators, new after a wipe."""

import shutil
import threading

import pyarrow as pa

from deepperception.store import ArtifactStore, StoreSettings


def _commit(store, name="t", k=1):
    with store.plan(name, "s", {"k": k}, {}) as w:
        w.write_table(pa.table({"k": [k]}))
        w.write_bytes("files/w.bin", b"\x01" * 1000)
        return w.commit()


def test_identity_is_stable_and_distinct_per_store(store, tmp_path):
    ident = store.identity
    assert len(ident) == 32 and int(ident, 16) >= 0
    assert ArtifactStore(store.settings).identity == ident  # a new client of the same store
    other = ArtifactStore(StoreSettings(uri=str(tmp_path / "other")))
    assert other.identity != ident


def test_concurrent_first_use_agrees_on_one_identity(store):
    barrier, seen = threading.Barrier(6), []

    def first_use():
        s = ArtifactStore(store.settings)
        barrier.wait()
        seen.append(s.identity)

    threads = [threading.Thread(target=first_use) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 6 and len(set(seen)) == 1


def test_wiped_store_gets_a_new_identity(tmp_path):
    settings = StoreSettings(uri=str(tmp_path / "store"))
    before = ArtifactStore(settings).identity
    shutil.rmtree(tmp_path / "store")
    assert ArtifactStore(settings).identity != before


def test_listing_skips_bookkeeping_entries(store):
    ref = _commit(store)
    store.identity  # creates _store.json at the root
    store.fs.create_dir(f"{store.root}/_runs", recursive=True)
    with store.fs.open_output_stream(f"{store.root}/_runs/x.json") as f:
        f.write(b"{}")
    store.quarantine(_commit(store, k=2))
    assert [m.ref for m in store.list()] == [ref]
    assert store.refs() == [ref]


def test_s3_materialize_cache_is_keyed_on_identity_and_recreated_when_stale(s3_store_uri, tmp_path):
    uri, endpoint = s3_store_uri
    store = ArtifactStore(StoreSettings(uri=uri, s3_endpoint_url=endpoint, cache_dir=str(tmp_path / "cache")))
    ref = _commit(store)
    local = store.materialize(ref)
    assert local == tmp_path / "cache" / store.identity / ref.name / ref.version / "files"
    assert (local / "w.bin").read_bytes() == b"\x01" * 1000
    (local / "w.bin").write_bytes(b"\x01" * 10)  # a truncated cached copy: downloaded again
    assert (store.materialize(ref) / "w.bin").read_bytes() == b"\x01" * 1000
    (local.parent / ".complete").write_text("another manifest")  # a stale copy: downloaded again
    (local / "w.bin").write_bytes(b"\x02" * 1000)
    assert (store.materialize(ref) / "w.bin").read_bytes() == b"\x01" * 1000
    # Same bucket and prefix after a wipe: a new identity, so the old copy is never served.
    store.fs.delete_dir_contents(store.root)
    wiped = ArtifactStore(store.settings)
    ref2 = _commit(wiped)
    assert ref2 == ref and wiped.identity != store.identity
    assert wiped.materialize(ref2).parent.parent.parent.name == wiped.identity
