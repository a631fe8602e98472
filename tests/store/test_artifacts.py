import json

import pyarrow as pa
import pytest

from deepperception.errors import ArtifactError
from deepperception.store import ArtifactRef, ArtifactStore, StoreSettings
from deepperception.store.stage import run_stage


def _table(n=3):
    return pa.table({"id": [f"q{i}" for i in range(n)], "x": list(range(n))})


def test_write_then_read_roundtrip_with_manifest_lineage(store, tmp_path):
    up = ArtifactRef(name="entities", version="aaaa")
    writer = store.plan("images", "collect", {"n": 3}, {"entities": up})
    assert not writer.exists
    with writer:
        writer.write_table(_table(), "data")
        writer.write_json("stats.json", {"ok": 1})
        ref = writer.commit({"rows": 3})
    assert store.exists(ref)
    m = store.manifest(ref)
    assert m.upstream == {"entities": "entities@aaaa"}
    assert m.stage == "collect" and m.config == {"n": 3} and m.code_version
    assert {f.path for f in m.files} == {"data.parquet", "stats.json"}
    assert m.file("data.parquet").rows == 3 and len(m.file("data.parquet").sha256) == 64
    assert "id: string" in m.schemas["data"]
    assert store.read_table(ref).column("x").to_pylist() == [0, 1, 2]
    assert json.loads(store.read_bytes(ref, "stats.json")) == {"ok": 1}
    assert [v.ref for v in store.list("images")] == [ref]


def test_version_id_is_deterministic_and_input_sensitive(store):
    a = store.plan("t", "s", {"k": 1}, {}).version
    assert a == store.plan("t", "s", {"k": 1}, {}).version
    assert a != store.plan("t", "s", {"k": 2}, {}).version
    assert a != store.plan("t", "s", {"k": 1}, {"up": ArtifactRef(name="u", version="1")}).version


def test_failed_stage_leaves_no_visible_version(store):
    writer = store.plan("t", "s", {"k": 1}, {})
    with pytest.raises(RuntimeError):
        with writer:
            writer.write_table(_table(), "data")
            raise RuntimeError("boom half way")
    assert not store.exists(writer.ref)
    assert store.list("t") == []
    with pytest.raises(ArtifactError, match="does not exist"):
        store.read_table(writer.ref)


def test_data_without_manifest_is_invisible(store):
    writer = store.plan("t", "s", {"k": 1}, {})
    writer.store.fs.create_dir(writer.dir, recursive=True)
    with writer.store.fs.open_output_stream(f"{writer.dir}/data.parquet") as f:
        f.write(b"partial")
    assert not store.exists(writer.ref)
    assert store.list("t") == []


def test_run_stage_reuses_identical_version_and_force_makes_new(store):
    calls = []

    def produce(w):
        calls.append(1)
        w.write_table(_table(), "data")
        return {"n": 3}

    ref1, reused1 = run_stage(store, "t", "s", {"k": 1}, {}, produce)
    ref2, reused2 = run_stage(store, "t", "s", {"k": 1}, {}, produce)
    assert (reused1, reused2) == (False, True) and ref1 == ref2 and len(calls) == 1
    ref3, reused3 = run_stage(store, "t", "s", {"k": 1}, {}, produce, force=True)
    assert not reused3 and ref3 != ref1 and len(calls) == 2


def test_commit_is_write_once(store):
    writer = store.plan("t", "s", {"k": 1}, {})
    with writer:
        writer.write_table(_table(), "data")
        writer.commit()
    with pytest.raises(ArtifactError, match="already committed"):
        with store.plan("t", "s", {"k": 1}, {}) as w2:
            w2.write_table(_table(), "data")
            w2.commit()


def test_corrupt_file_is_detected_with_names(store):
    with store.plan("t", "s", {}, {}) as w:
        w.write_table(_table(), "data")
        ref = w.commit()
    path = store.file_path(ref, "data.parquet")
    with store.fs.open_output_stream(path) as f:
        f.write(b"garbage")
    with pytest.raises(ArtifactError, match=r"t@.*data.parquet is corrupt"):
        store.read_table(ref)


def test_directory_upload_and_materialize(store, tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "config.json").write_text('{"a": 1}')
    (ckpt / "sub" / "w.bin").write_bytes(b"\x00\x01" * 1000)
    with store.plan("checkpoint", "train", {}, {}) as w:
        w.write_dir(ckpt)
        ref = w.commit()
    local = store.materialize(ref)
    assert (local / "config.json").read_text() == '{"a": 1}'
    assert (local / "sub" / "w.bin").read_bytes() == b"\x00\x01" * 1000


def test_bad_refs_and_uris():
    with pytest.raises(ValueError, match="name@version"):
        ArtifactRef.parse("noversion")
    with pytest.raises(ValueError, match="3 characters"):
        StoreSettings(uri="s3://ab/x").bucket_and_prefix


def test_losing_a_commit_race_keeps_the_winner(store):
    """Two runs of the same version: the second commit is refused and must not delete the first."""
    first = store.plan("t", "s", {"k": 1}, {})
    second = store.plan("t", "s", {"k": 1}, {})
    with first:
        first.write_table(_table(), "data")
        second.__enter__()  # started before the first committed
        ref = first.commit()
    second.write_table(_table(5), "data")  # different bytes: they must not reach the winner's version
    with pytest.raises(ArtifactError, match="already committed"):
        with second:
            second.commit()
    assert store.read_table(ref).num_rows == 3 and store.verify(ref) == []


def test_run_stage_treats_a_concurrent_commit_as_reuse(store):
    def produce(w):
        # Another run commits the same version while this one is producing.
        with store.plan("t", "s", {"k": 1}, {}) as other:
            other.write_table(_table(), "data")
            other.commit()
        w.write_table(_table(), "data")
        return {}

    ref, reused = run_stage(store, "t", "s", {"k": 1}, {}, produce)
    assert reused and store.read_table(ref).num_rows == 3
