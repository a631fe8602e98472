"""Detached service processes the stack starts, finds again from another process, and stops.

Why records on disk: ``make up`` returns while the services keep running, and ``make down`` is a
new process that must stop exactly what ``up`` started and nothing else. A record holds the pid
and the process's creation time (psutil, already installed with accelerate): a pid reused by an
unrelated process after a reboot has another creation time and is never signalled.

Each service runs in its own session (process group), so a worker's flow-run subprocesses can be
found and stopped with it.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessRecord:
    """What ``up`` wrote about one service it started."""

    name: str
    pid: int
    create_time: float
    cmd: list[str]
    log: str

    def process(self) -> psutil.Process | None:
        """The live process of this record, or None (gone, a zombie, or a reused pid)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.5 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None

    def alive(self) -> bool:
        return self.process() is not None


def read_record(run_dir: Path, name: str) -> ProcessRecord | None:
    path = run_dir / f"{name}.json"
    try:
        return ProcessRecord(**json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the child between fork and exec: SIGTERM from the kernel when the parent dies
    (Linux ``prctl(PR_SET_PDEATHSIG)``), so a killed test session leaves no service behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the fixture's teardown stops them
        return
    if os.getppid() != parent_pid:
        os._exit(1)


def start(run_dir: Path, log_dir: Path, name: str, cmd: list[str], env: dict[str, str], cwd: Path,
          tie_to_parent: bool = False) -> tuple[ProcessRecord, subprocess.Popen]:
    """Start ``cmd`` detached (own session, stdin closed, output appended to ``log_dir/name.log``)
    and record it under ``run_dir/name.json``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    parent = os.getpid()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=(lambda: _die_with_parent(parent)) if tie_to_parent else None)
    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.Error:  # died at once: the caller's health check reports the log
        created = 0.0
    record = ProcessRecord(name=name, pid=proc.pid, create_time=created, cmd=cmd, log=str(log_path))
    (run_dir / f"{name}.json").write_text(json.dumps(asdict(record)))
    return record, proc


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def stop(run_dir: Path, name: str, signals: tuple[tuple[int, float], ...], popen: subprocess.Popen | None = None
         ) -> bool:
    """Stop the recorded service ``name``: send each ``(signal, wait_s)`` in turn until it has
    exited, then SIGKILL it and whatever is left of its descendants and process group.
    Returns whether something was running. The record is removed."""
    record = read_record(run_dir, name)
    proc = record.process() if record else None
    if proc is None:
        (run_dir / f"{name}.json").unlink(missing_ok=True)
        return False
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        family = [proc]
    remaining = [proc]
    for sig, wait_s in signals:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            break
        remaining = _wait_gone([proc], wait_s)
        if not remaining:
            break
    # Leftovers: the service itself if it ignored every signal, flow-run subprocesses of a worker.
    leftovers = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    try:
        os.killpg(record.pid, signal.SIGKILL)  # its own session: the group id is its pid
    except (ProcessLookupError, PermissionError):
        pass
    for p in leftovers:
        try:
            p.kill()
        except psutil.Error:
            pass
    _wait_gone(leftovers, 10)
    if popen is not None:  # reap our own child so no zombie stays behind
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    (run_dir / f"{name}.json").unlink(missing_ok=True)
    return True


def wait_until(pred, timeout: float, interval: float = 0.25) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())
