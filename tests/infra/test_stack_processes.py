"""The stack's bookkeeping without starting its servers (fast): pid records that survive the
process that wrote them, a stop that gets past a worker-like process ignoring SIGTERM and one
SIGINT and takes its children along, ports and credentials kept per root, a sourceable env file."""

from __future__ import annotations

import doctest
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from infra.stack import Stack, StackError
from infra.stack import processes
from infra.stack import stack as stack_module

# Like a Prefect process worker: ignores SIGTERM and the first SIGINT, and has a child of its own.
STUBBORN = """
import signal, subprocess, sys, time
seen = []
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def on_int(*_):
    seen.append(1)
    if len(seen) >= 2:
        sys.exit(0)
signal.signal(signal.SIGINT, on_int)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
while True:
    time.sleep(0.1)
"""


def test_doctests():
    result = doctest.testmod(stack_module)
    assert result.attempted >= 2 and result.failed == 0


def test_stop_gets_past_a_stubborn_worker_and_its_children(tmp_path):
    run, logs = tmp_path / "run", tmp_path / "logs"
    record, popen = processes.start(run, logs, "w", [sys.executable, "-c", STUBBORN], dict(os.environ), tmp_path)
    assert processes.wait_until(lambda: (logs / "w.log").read_text().strip() != "", 30)
    child = int((logs / "w.log").read_text().split()[0])
    again = processes.read_record(run, "w")  # what `down` in another process reads
    assert again == record and again.alive()
    popen.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert again.alive()  # SIGTERM alone does not stop it
    t = time.monotonic()
    assert processes.stop(run, "w", ((signal.SIGINT, 1.0), (signal.SIGINT, 10.0)), popen)
    assert time.monotonic() - t < 10  # the second SIGINT did it, not the kill at the end
    assert popen.returncode == 0
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert processes.read_record(run, "w") is None
    assert not processes.stop(run, "w", ((signal.SIGINT, 1.0),))  # nothing left to stop


def test_a_reused_pid_is_not_ours(tmp_path):
    record, popen = processes.start(tmp_path / "run", tmp_path / "logs", "s",
                                    [sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ), tmp_path)
    try:
        imposter = processes.ProcessRecord(**{**record.__dict__, "create_time": record.create_time - 3600})
        assert record.alive() and not imposter.alive()
    finally:
        popen.kill()
        popen.wait()
    assert not record.alive()


def test_ports_and_credentials_are_kept_per_root(tmp_path, monkeypatch):
    monkeypatch.delenv("DP_STACK_PREFECT_PORT", raising=False)
    monkeypatch.delenv("DP_STACK_S3_PORT", raising=False)
    first = Stack(tmp_path, prefect_port=0, s3_port=0)
    assert first.ports["prefect"] != 4200 and len(set(first.ports.values())) == len(first.ports)
    first._save()
    second = Stack(tmp_path)  # no ports asked: the saved ones
    assert second.ports == first.ports and second.env() == first.env()
    assert (tmp_path / "stack.json").stat().st_mode & 0o077 == 0  # the S3 secret is private
    assert Stack(tmp_path, prefect_port=0).ports == first.ports  # 0 = any free port: the saved one is
    monkeypatch.setenv("DP_STACK_PREFECT_PORT", "4321")
    assert Stack(tmp_path).api_url == "http://127.0.0.1:4321/api"
    monkeypatch.setenv("DP_STACK_PREFECT_PORT", "many")
    with pytest.raises(StackError, match="DP_STACK_PREFECT_PORT"):
        Stack(tmp_path)
    monkeypatch.delenv("DP_STACK_PREFECT_PORT")
    fresh = Stack(tmp_path / "other")
    assert fresh.api_url == "http://127.0.0.1:4200/api" and fresh.store_uri == "s3://deepperception/store"
    assert fresh.env()["AWS_SECRET_ACCESS_KEY"] != first.env()["AWS_SECRET_ACCESS_KEY"]


def test_a_taken_prefect_port_is_refused_by_name(tmp_path, monkeypatch):
    import socket

    monkeypatch.delenv("DP_STACK_PREFECT_PORT", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        stack = Stack(tmp_path, prefect_port=s.getsockname()[1])
        with pytest.raises(StackError, match="in use.*DP_STACK_PREFECT_PORT"):
            stack._check_ports(["prefect-server"])


def test_the_env_file_is_sourceable(tmp_path):
    stack = Stack(tmp_path, prefect_port=0, s3_port=0)
    stack._save()
    env = stack.env()
    out = subprocess.run(["bash", "-c", f"source {tmp_path / 'env'} && env"], capture_output=True, text=True,
                         check=True, env={"PATH": os.environ["PATH"]}).stdout
    got = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert {k: got.get(k) for k in env} == env
