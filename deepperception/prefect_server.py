"""A local Prefect API server owned by the CLI process, for runs without ``PREFECT_API_URL``.

Why not Prefect's ephemeral server: it is started lazily by the first flow call, waits at most
``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` (20 s by default; a loaded 2-core machine
misses it: ``Timed out while attempting to connect to ephemeral Prefect API server``), and it is
stopped only by an ``atexit`` hook, so a SIGKILLed run leaves the uvicorn process orphaned.
Raising the timeout alone would not fix the orphan: Prefect creates that ``Popen`` itself and
offers no way to make the kernel tie its life to ours.

So the CLI starts its own child, ``python -m prefect server start --host 127.0.0.1 --port
<free>`` (same interpreter, the ``PREFECT_HOME`` of the environment, analytics, UI, scheduler
and late-run services off), and:

* sets ``PR_SET_PDEATHSIG`` = SIGKILL in the child between fork and exec (Linux ``prctl`` through
  ctypes), so the kernel kills the server the moment the CLI dies, however it dies. The
  ``prefect server start`` process serves uvicorn in-process (one worker), so there is no
  grandchild left behind;
* waits for ``GET /api/health`` with a generous timeout (``DP_PREFECT_SERVER_TIMEOUT_S``,
  default 180 s) and fails with :class:`PrefectServerError` naming the server's log file if the
  server exits or never answers;
* exports ``PREFECT_API_URL`` for the run, and stops the server (SIGTERM, then SIGKILL) on exit;
* records ``{"pid", "port", "api_url", "log", "cli_pid"}`` in ``$PREFECT_HOME/dp-server-<cli
  pid>.json`` while it runs, so an operator (or a test) can find the server it belongs to.

An explicitly set ``PREFECT_API_URL`` is respected: :func:`prefect_api` uses it and starts
nothing. "Set" means wherever Prefect reads it from: the environment, or the active Prefect profile
(``prefect config set PREFECT_API_URL=...``) and Prefect's other settings files. On systems without
``prctl`` (not Linux) the child is still stopped at normal exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deepperception.errors import PipelineError

TIMEOUT_ENV = "DP_PREFECT_SERVER_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 180.0
_PR_SET_PDEATHSIG = 1


class PrefectServerError(PipelineError):
    """The local Prefect server did not come up. Not bad input, hence exit code 1."""

    exit_code = 1


@dataclass(frozen=True)
class ServerInfo:
    api_url: str
    pid: int | None  # None: an external server given by PREFECT_API_URL
    log: Path | None
    pid_file: Path | None


def prefect_home() -> Path:
    """``PREFECT_HOME`` as Prefect resolves it (env, else ``~/.prefect``), without importing Prefect."""
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def pid_file_for(cli_pid: int) -> Path:
    """Where the CLI process ``cli_pid`` records the server it started."""
    return prefect_home() / f"dp-server-{cli_pid}.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the child between fork and exec: ask the kernel for SIGKILL when the parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: rely on the stop at exit
        return
    # The parent may have died before prctl took effect; then nobody will ever send the signal.
    if os.getppid() != parent_pid:
        os._exit(1)


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(path: Path, n: int = 8) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_pid_files() -> list[Path]:
    """Delete pid files whose CLI process is gone (a SIGKILLed CLI cannot remove its own; the
    kernel already took its server down). Returns the removed paths."""
    removed = []
    for f in prefect_home().glob("dp-server-*.json"):
        try:
            cli_pid = int(json.loads(f.read_text())["cli_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if cli_pid != os.getpid() and not _alive(cli_pid):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


@contextlib.contextmanager
def local_server(timeout_s: float | None = None) -> Iterator[ServerInfo]:
    """Start a Prefect server child bound to this process (see the module docstring); yield its info."""
    timeout_s = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)) if timeout_s is None else timeout_s
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    remove_stale_pid_files()
    me = os.getpid()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log = home / f"dp-server-{me}.log"
    pid_file = pid_file_for(me)
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
           "--no-ui", "--no-scheduler", "--no-late-runs", "--analytics-off"]
    with open(log, "wb") as log_fh:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=lambda: _die_with_parent(me), close_fds=True)
    try:
        pid_file.write_text(json.dumps({"pid": proc.pid, "port": port, "api_url": api_url, "log": str(log),
                                        "cli_pid": me}))
        deadline = time.monotonic() + timeout_s
        while not _healthy(api_url):
            if proc.poll() is not None:
                raise PrefectServerError(
                    f"the local Prefect server exited with code {proc.returncode} before answering on {api_url}; "
                    f"log: {log}\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise PrefectServerError(
                    f"the local Prefect server did not answer on {api_url} within {timeout_s:.0f} s "
                    f"(raise {TIMEOUT_ENV}, or point PREFECT_API_URL at a running server); log: {log}\n{_tail(log)}")
            time.sleep(0.25)
        yield ServerInfo(api_url=api_url, pid=proc.pid, log=log, pid_file=pid_file)
    finally:
        _stop(proc)
        pid_file.unlink(missing_ok=True)


def _drain_prefect_senders(timeout_s: float = 15.0) -> None:
    """Flush Prefect's background log and event senders while our server still answers; left to
    Prefect's own exit hook they would run after the server is stopped ("Error logging to API")."""
    if "prefect" not in sys.modules:
        return
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
    except ImportError:  # pragma: no cover - moved in another Prefect version: nothing to flush
        return
    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout_s)
        except Exception:  # noqa: BLE001 - best effort: losing a log line must not fail the run
            pass


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` from the environment, else as Prefect resolves it (profile, files)."""
    given = os.environ.get("PREFECT_API_URL")
    if given:
        return given
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def _point_prefect_at(url: str | None) -> None:
    """Make an already imported Prefect see ``url`` (None: unset) in every thread: Prefect reads
    its settings once, at import, into a process-global context that this rebuilds."""
    if url is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = url
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()


@contextlib.contextmanager
def prefect_api() -> Iterator[ServerInfo]:
    """The Prefect API for this run: the configured one (see :func:`configured_api_url`), else a
    :func:`local_server`, which Prefect is pointed at for the duration."""
    given = configured_api_url()
    if given:
        yield ServerInfo(api_url=given, pid=None, log=None, pid_file=None)
        return
    with local_server() as info:
        _point_prefect_at(info.api_url)
        try:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            # Also in this thread's own context, in case a caller entered one (tests do).
            with temporary_settings(updates={PREFECT_API_URL: info.api_url}):
                yield info
        finally:
            _drain_prefect_senders()
            _point_prefect_at(None)
