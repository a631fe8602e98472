"""A source read from ``s3://`` (moto server) with the store's settings: same answers as on disk."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import pytest
from fixture_trees import build_food101, build_stanford_cars, upload_tree

from deepperception.errors import InputDataError
from deepperception.sources import open_source
from deepperception.sources.collect import SourceSpec, collect_batches
from deepperception.sources.fs import MissingFileError, read_uri
from deepperception.sources.inspect import inspect_source


@pytest.fixture
def s3_root(moto_endpoint, monkeypatch):
    """A fresh bucket; the endpoint reaches the adapters the way it reaches the store (env)."""
    monkeypatch.setenv("DP_STORE_S3_ENDPOINT_URL", moto_endpoint)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"dp-src-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def test_food101_on_s3_matches_local(tmp_path, s3_root):
    client, bucket = s3_root
    tree = build_food101(tmp_path / "food-101", n_classes=3, per_class_train=3, per_class_test=2, missing=1)
    root = upload_tree(tree.root, client, bucket, "datasets/food-101")
    src = open_source("food101", root)
    images = list(src.iter_images())
    local = list(open_source("food101", tree.root).iter_images())
    assert [(im.key, im.entity, im.split, im.exists) for im in images] == \
           [(im.key, im.entity, im.split, im.exists) for im in local]
    assert images[0].uri == f"s3://{bucket}/datasets/food-101/images/apple_pie/1000000.jpg"
    assert read_uri(images[0].uri) == Path(local[0].uri).read_bytes()
    missing = [im.uri for im in images if not im.exists]
    assert len(missing) == 1
    with pytest.raises(MissingFileError, match="does not exist") as e:
        read_uri(missing[0])
    assert isinstance(e.value, FileNotFoundError) and e.value.uri == missing[0]
    assert inspect_source("food101", root) == inspect_source("food101", tree.root)
    spec = SourceSpec(source="food101", root=root, category="food", split="seen")
    rows = [r for b in collect_batches(spec) for r in b.to_pylist()]
    assert len(rows) == 14 and all(r["image_uri"].startswith(f"s3://{bucket}/") for r in rows)


def test_stanford_cars_mat_files_from_s3(tmp_path, s3_root):
    client, bucket = s3_root
    tree = build_stanford_cars(tmp_path / "cars", n_classes=2, per_class_train=2, per_class_test=1)
    root = upload_tree(tree.root, client, bucket, "cars")
    report = inspect_source("stanford-cars", root)
    assert (report["images"], report["images_with_box"], report["missing"]) == (6, 6, 1)
    with pytest.raises(InputDataError, match="does not exist or is not a directory"):
        open_source("stanford-cars", f"s3://{bucket}/nothing-here")
    with pytest.raises(InputDataError, match="dp-no-such-bucket"):
        open_source("stanford-cars", "s3://dp-no-such-bucket/cars")
