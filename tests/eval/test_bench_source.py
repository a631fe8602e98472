"""Extra-bench sources: store refs, local files and s3:// objects (fetched with the store's S3
settings from a real S3-compatible server, once per object version); a missing source is named."""

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepperception.errors import InputDataError
from deepperception.eval.bench_source import local_bench_file, source_kind
from deepperception.store import StoreSettings


def _bench_bytes(tmp_path):
    t = pa.table({"question_id": ["q1"], "question": ["Where is the car?"],
                  "image": pa.array([{"bytes": b"png", "path": None}],
                                    pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                  "answer": ["[(1,2),(3,4)]"], "category": ["car"]})
    pq.write_table(t, tmp_path / "b.parquet")
    return (tmp_path / "b.parquet").read_bytes()


def test_kinds(tmp_path):
    (tmp_path / "odd@name").write_bytes(b"")
    assert source_kind("bench@latest") == "ref"
    assert source_kind(str(tmp_path / "odd@name")) == "local"  # an existing file wins over the ref syntax
    assert source_kind("s3://bucket/k.parquet") == "s3"


def test_s3_object_is_fetched_once_with_the_store_settings(s3_store_uri, tmp_path):
    uri, endpoint = s3_store_uri
    bucket = uri[len("s3://"):].split("/")[0]
    data = _bench_bytes(tmp_path)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").put_object(
        Bucket=bucket, Key="benches/kvg-bench.parquet", Body=data)
    settings = StoreSettings(uri=uri, s3_endpoint_url=endpoint, cache_dir=str(tmp_path / "cache"))
    src = f"s3://{bucket}/benches/kvg-bench.parquet"
    path = local_bench_file(src, settings)
    assert path.read_bytes() == data and path.name == "kvg-bench.parquet"
    assert local_bench_file(src, settings) == path  # cached: same object size and mtime
    with pytest.raises(InputDataError, match=rf"artifact=s3://{bucket}/benches/nope.parquet.*no such bench file"):
        local_bench_file(f"s3://{bucket}/benches/nope.parquet", settings)


def test_missing_local_file_is_named(tmp_path):
    with pytest.raises(InputDataError, match=r"artifact=.*missing.parquet\] no such bench file"):
        local_bench_file(str(tmp_path / "missing.parquet"))
