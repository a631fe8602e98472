"""A real SeaweedFS (`weed mini`) the fault tests can stop (SIGKILL/SIGTERM) and restart on the
same ports and data directory, with a health wait; credentials as tests/store/conftest.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

KEY, SECRET = "dpweedkey", "dpweedsecret"


def _free_port_pair(taken: set[int]) -> int:
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


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.is_file() else shutil.which("weed")


class Weed:
    """``weed mini`` on loopback; ``stop()``/``start()`` keep ports and data, so a restart is the same server."""

    def __init__(self, data: Path, binary: str) -> None:
        taken: set[int] = set()
        self.ports = {k: _free_port_pair(taken) for k in ("s3", "master", "volume", "filer", "admin", "metrics")}
        self.data, self.binary = Path(data), binary
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=KEY,
                            aws_secret_access_key=SECRET,
                            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}))

    def start(self, wait_s: float = 90) -> float:
        """Start and wait until S3 answers; returns the seconds it took."""
        p = self.ports
        cmd = [self.binary, "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
               f"-s3.port={p['s3']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-master.port={p['master']}", f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
               f"-admin.port={p['admin']}", f"-metricsPort={p['metrics']}"]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
        self.data.mkdir(parents=True, exist_ok=True)
        self._log = open(self.data / "weed.log", "ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.data)
        last: Exception | None = None
        while time.monotonic() - t0 < wait_s:  # bounds a broken server's wait; not asserted
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                self.client().list_buckets()
                return time.monotonic() - t0
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.3)
        raise RuntimeError(f"SeaweedFS S3 at {self.endpoint} never answered ({last}): {self.log_tail()}")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None

    def restart(self, sig: int = signal.SIGKILL) -> float:
        self.stop(sig)
        return self.start()

    def log_tail(self) -> str:
        path = self.data / "weed.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""
