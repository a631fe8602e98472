"""A real model server for the serving tests: ``transformers serve`` (through the repo's launcher,
which works without torchvision) serving the tiny random Qwen2-VL checkpoint on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "infra" / "model_servers" / "transformers_serve.py"


@dataclass(frozen=True)
class ModelServer:
    base_url: str
    model: str
    log: Path


@pytest.fixture(scope="session")
def tiny_serve_ckpt(tmp_path_factory):
    from deepperception.model.synthetic import cached_tiny_checkpoint
    return cached_tiny_checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def model_server(tiny_serve_ckpt, tmp_path_factory):
    """Start the server once per session, wait for ``/health``, yield where it is, SIGTERM it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("model-server")
    log = workdir / "serve.log"
    env = dict(os.environ, HF_HOME=str(workdir / "hf"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER), str(tiny_serve_ckpt), "--host", "127.0.0.1", "--port", str(port),
             "--device", "cpu", "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"model server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"model server not healthy after 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield ModelServer(f"{base}/v1", str(tiny_serve_ckpt), log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
