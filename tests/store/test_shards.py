"""Sharded tables and resumable shard records (deepperception.store.shards), local and on S3."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from deepperception.errors import ArtifactError
from store_helpers import flip_byte


def _batch(start: int, n: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"id": [f"r{i:05d}" for i in range(start, start + n)],
                                       "x": list(range(start, start + n))})


def _write_parts(store, rows=250, max_rows=100, name="t"):
    writer = store.plan(name, "s", {"rows": rows, "max_rows": max_rows}, {})
    with writer:
        with writer.table_writer("data", max_rows=max_rows) as tw:
            for start in range(0, rows, 30):
                tw.write(_batch(start, min(30, rows - start)))
        ref = writer.commit({})
    return ref


class TestShardedTableWriter:
    def test_parts_are_bounded_in_rows_and_listed_in_order(self, store):
        ref = _write_parts(store, rows=250, max_rows=100)
        files = store.table_files(ref)
        assert [f.path for f in files] == [f"data/part-{i:05d}.parquet" for i in range(3)]
        assert [f.rows for f in files] == [100, 100, 50]
        assert store.num_rows(ref) == 250
        assert store.read_table(ref).column("x").to_pylist() == list(range(250))
        batches = list(store.iter_batches(ref, batch_size=64))
        assert max(b.num_rows for b in batches) <= 64
        assert sum(b.num_rows for b in batches) == 250
        assert [b.num_rows for b in store.iter_batches(ref, parts=[2])] == [50]
        assert "id: string" in store.manifest(ref).schemas["data"]

    def test_small_batches_are_gathered_into_row_groups(self, store):
        import pyarrow.parquet as pq

        writer = store.plan("t", "s", {"rg": 1}, {})
        with writer:
            with writer.table_writer("data") as tw:
                for start in range(0, 10_000, 100):
                    tw.write(_batch(start, 100))
            ref = writer.commit({})
        with store.fs.open_input_file(store.file_path(ref, "data/part-00000.parquet")) as f:
            meta = pq.ParquetFile(f).metadata
        assert meta.num_rows == 10_000 and meta.num_row_groups == 3  # 4096 + 4096 + 1808, not 100 groups
        assert store.read_table(ref).column("x").to_pylist() == list(range(10_000))

    def test_parts_are_bounded_in_bytes(self, store):
        writer = store.plan("t", "s", {"bytes": 1}, {})
        blob = pa.RecordBatch.from_pydict({"b": [random.Random(i).randbytes(40_000) for i in range(40)]})  # incompressible
        with writer:
            with writer.table_writer("data", max_bytes=100_000) as tw:
                for i in range(0, 40, 2):
                    tw.write(blob.slice(i, 2))
            ref = writer.commit({})
        files = store.table_files(ref)
        assert len(files) > 5 and sum(f.rows for f in files) == 40
        # A part is closed once it passes the limit, so no part exceeds it by more than one batch.
        assert all(f.bytes < 100_000 + 2 * 40_000 + 10_000 for f in files)

    def test_empty_table_is_one_empty_part_with_its_schema(self, store):
        schema = pa.schema([("id", pa.string())])
        writer = store.plan("t", "s", {"empty": 1}, {})
        with writer:
            with writer.table_writer("rejected", schema=schema):
                pass
            writer.write_table(pa.table({"id": ["a"]}))
            ref = writer.commit({})
        assert store.read_table(ref, "rejected").schema.equals(schema)
        assert store.num_rows(ref, "rejected") == 0

    def test_schema_mismatch_names_the_table(self, store):
        writer = store.plan("t", "s", {"bad": 1}, {})
        with pytest.raises(ArtifactError, match="table data .*does not match"):
            with writer:
                with writer.table_writer("data") as tw:
                    tw.write(_batch(0, 3))
                    tw.write(pa.RecordBatch.from_pydict({"other": [1.5]}))
        assert not store.exists(writer.ref)

    def test_a_flipped_byte_in_one_part_is_caught_when_streaming(self, store):
        ref = _write_parts(store, rows=250, max_rows=100, name="flip")
        flip_byte(store, store.file_path(ref, "data/part-00001.parquet"))
        assert store.verify(ref) and "part-00001" in store.verify(ref)[0]
        it = store.iter_batches(ref, batch_size=1000)
        assert next(it).num_rows == 100  # part 0 is intact
        with pytest.raises(ArtifactError, match="part-00001.parquet is corrupt"):
            next(it)

    def test_missing_table_lists_the_tables_there(self, store):
        ref = _write_parts(store, rows=5, max_rows=100, name="m")
        with pytest.raises(ArtifactError, match=r"no table 'nope' \(tables: \['data'\]\)"):
            store.table_files(ref, "nope")


class TestOtherReaders:
    """Artifacts open directly in any Parquet reader, from the locations the store names."""

    def test_duckdb_pandas_and_datasets_read_a_sharded_local_artifact(self, tmp_path):
        import duckdb
        import pandas as pd

        from deepperception.store import ArtifactStore, StoreSettings

        store = ArtifactStore(StoreSettings(uri=str(tmp_path / "store")))
        ref = _write_parts(store, rows=250, max_rows=100)
        paths = store.table_locations(ref)
        assert len(paths) == 3
        ((total, top),) = duckdb.sql(f"select count(*), max(x) from read_parquet({paths!r})").fetchall()
        assert (total, top) == (250, 249)
        assert pd.read_parquet(paths[1])["x"].tolist() == list(range(100, 200))

        import datasets

        ds = datasets.load_dataset("parquet", data_files=paths, split="train", cache_dir=str(tmp_path / "hf"))
        assert ds.num_rows == 250 and ds[249]["id"] == "r00249"

    def test_pyarrow_dataset_filters_across_parts(self, store):
        ref = _write_parts(store, rows=250, max_rows=100)
        got = store.dataset(ref).to_table(filter=pc.field("x") >= 195, columns=["id"])
        assert got.num_rows == 55


class TestShardRecords:
    def _ref(self, store):
        return store.plan("sh", "s", {"k": 1}, {}).ref

    def test_commit_then_list_then_adopt_into_the_manifest(self, store):
        writer = store.plan("sh", "s", {"k": 1}, {})
        for i in (2, 0, 1):
            rec = store.commit_shard(writer.ref, "label", i, {"data": pa.Table.from_batches([_batch(i * 10, 10)])},
                                     {"failed": i})
            assert rec.index == i and rec.rows() == 10
        done = store.completed_shards(writer.ref, "label")
        assert sorted(done) == [0, 1, 2] and done[1].metadata == {"failed": 1}
        with writer:
            writer.adopt_shards(list(done.values()))
            ref = writer.commit({})
        assert [f.path for f in store.table_files(ref)] == [f"data/part-{i:05d}.parquet" for i in range(3)]
        assert store.read_table(ref).column("x").to_pylist() == list(range(30))
        assert store.verify(ref) == []

    def test_second_writer_of_a_shard_loses_and_keeps_the_first(self, store):
        ref = self._ref(store)
        first = store.commit_shard(ref, "u", 0, {"data": pa.table({"v": [1]})})
        second = store.commit_shard(ref, "u", 0, {"data": pa.table({"v": [2]})})
        assert second == first
        assert store.read_shard_table(ref, second).column("v").to_pylist() == [1]

    def test_replace_swaps_a_record(self, store):
        ref = self._ref(store)
        store.commit_shard(ref, "u", 0, {"data": pa.table({"v": [1]})}, {"failed": 1})
        store.commit_shard(ref, "u", 0, {"data": pa.table({"v": [2]})}, {"failed": 0}, replace=True)
        rec = store.completed_shards(ref, "u")[0]
        assert rec.metadata == {"failed": 0} and store.read_shard_table(ref, rec).column("v").to_pylist() == [2]

    def test_damaged_shard_is_forgotten_so_it_is_recomputed(self, store, caplog):
        ref = self._ref(store)
        store.commit_shard(ref, "u", 0, {"data": pa.table({"v": [1]})})
        rec = store.commit_shard(ref, "u", 1, {"data": pa.table({"v": [2]})})
        flip_byte(store, store._path(ref.name, ref.version, rec.files["data"].key))
        with caplog.at_level("WARNING"):
            assert sorted(store.completed_shards(ref, "u")) == [0]
        assert "shard u/1" in caplog.text and "computed again" in caplog.text
        # Its record is gone: committing the shard again works.
        again = store.commit_shard(ref, "u", 1, {"data": pa.table({"v": [2]})})
        assert sorted(store.completed_shards(ref, "u")) == [0, 1] and again.index == 1

    def test_failed_shard_write_leaves_no_record(self, store):
        ref = self._ref(store)

        with pytest.raises(Exception):
            store.commit_shard(ref, "u", 0, {"data": "not a table"})  # type: ignore[dict-item]
        assert store.completed_shards(ref, "u") == {}
