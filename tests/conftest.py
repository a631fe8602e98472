"""Test-wide isolation: nothing writes into the home directory or reaches a hub."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

# Set before anything imports prefect / transformers (module import time of conftest).
_TMP = Path(tempfile.mkdtemp(prefix="dp-tests-"))
os.environ["PREFECT_HOME"] = str(_TMP / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ["HF_HOME"] = str(_TMP / "hf")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TORCH_EXTENSIONS_DIR"] = str(_TMP / "torch_extensions")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["WANDB_DISABLED"] = "true"
os.environ["DP_STORE_CACHE_DIR"] = str(_TMP / "dp-cache")
os.environ.pop("DP_STORE_URI", None)
os.environ.pop("DP_STORE_S3_ENDPOINT_URL", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3-compatible HTTP server (moto in server mode) on loopback."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in creds}
    os.environ.update(creds)
    yield f"http://{host}:{port}"
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_store_uri(moto_endpoint, request):
    """A fresh bucket per test: ``(uri, endpoint)``."""
    import boto3

    import uuid

    bucket = f"dp-test-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/runs", moto_endpoint


@pytest.fixture(scope="session")
def prefect_harness():
    """One real (temporary) Prefect API server for every test of the session that needs one.

    One per session, not per module: Prefect's events worker (which records client-side task runs)
    is a process-wide service bound to the first API it talks to, so a second harness would read
    an API the task runs never reach."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


_OUR_LOGGERS = ("tasks", "flows", "deepperception")


@pytest.fixture(autouse=True)
def _our_loggers_reach_caplog():
    """Tests that read our log lines (caplog) must not depend on what an earlier test's library did
    to logging: a `logging.config.dictConfig`/`fileConfig` with `disable_existing_loggers` (their
    default) silently disables every logger that existed then, ours included. Re-enable ours."""
    import logging

    for name, lg in list(logging.root.manager.loggerDict.items()):
        if isinstance(lg, logging.Logger) and name.split(".")[0] in _OUR_LOGGERS:
            if lg.disabled or not lg.propagate or lg.level not in (logging.NOTSET, logging.DEBUG, logging.INFO):
                print(f"conftest: re-enabling logger {name} (disabled={lg.disabled}, propagate={lg.propagate}, "
                      f"level={lg.level})")
            lg.disabled = False
            lg.propagate = True
            if lg.level > logging.INFO:
                lg.setLevel(logging.NOTSET)
    yield
