"""edge.worker_killed: a Prefect process worker and its flow-run process SIGKILLed mid-run (a lost
node). Nothing is left to report the run's end, so without help it stays Running forever; the
zombie automation of infra/stack/zombies.py (flow-run heartbeats + a proactive trigger) must mark
it Crashed, and a rerun of the deployment must complete and reuse what the killed run committed.

Real parts: a real Prefect server (its own subprocess, own database), a real process worker and
pool, a real deployment of the toy flow below, the real automation as ``Stack.up`` applies it.
The heartbeat is Prefect's minimum (30 s), ``within`` 40 s: after the kill the run is Crashed
within about 15-45 s, so the test takes about 75-85 s wall (the server start 10-17 s of it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from infra.stack import zombies
from infra.stack.stack import free_port

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = f"{Path(__file__).resolve().relative_to(REPO)}:zombie_toy"
ITEMS = 10
HEARTBEAT_S = 30
WITHIN_S = 40


def _item_text(i: int) -> str:
    return json.dumps({"item": i, "value": i * i}) + "\n"


def zombie_toy_fn(out_dir: str, item_s: float = 1.0) -> dict:
    """Commit ITEMS items, each an atomically renamed file; an item already committed is reused.
    Every write is logged (writes.log) so the test can count items computed twice."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reused = written = 0
    for i in range(ITEMS):
        final = out / f"item-{i:03d}.json"
        if final.is_file():
            reused += 1
            continue
        time.sleep(item_s)
        tmp = out / f".item-{i:03d}.json.tmp-{os.getpid()}"
        tmp.write_text(_item_text(i))
        os.replace(tmp, final)
        with open(out / "writes.log", "a") as log:
            log.write(f"{i}\n")
        written += 1
    summary = {"reused": reused, "written": written}
    with open(out / "runs.log", "a") as log:
        log.write(json.dumps(summary) + "\n")
    return summary


try:  # the flow-run process imports this module by its entrypoint
    from prefect import flow

    zombie_toy = flow(name="zombie-toy", log_prints=True)(zombie_toy_fn)
except ImportError:  # pragma: no cover
    zombie_toy = None


def _env(home: Path, api: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_LOGGING_LEVEL="WARNING", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    if api:
        env["PREFECT_API_URL"] = api
    return env


def _wait(pred, timeout: float, what: str, interval: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"error: {what} did not happen within {timeout:.0f} s")


def _kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and every descendant at once (the flow-run process is in a session of
    its own, so its process group is killed too): a node loss, nothing gets to clean up."""
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        try:
            os.killpg(os.getpgid(p.pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    return [p.pid for p in procs]


@pytest.fixture
def prefect_server(tmp_path):
    home = tmp_path / "prefect"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=_env(home, PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY="PT2S"), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=tmp_path)
    import httpx

    def healthy():
        assert server.poll() is None, f"error: prefect server exited: {(tmp_path / 'server.log').read_text()[-2000:]}"
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait(healthy, 120, "the Prefect server answering")
        yield api, home
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _start_worker(tmp_path: Path, api: str, home: Path, n: int) -> subprocess.Popen:
    log = open(tmp_path / f"worker-{n}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "zombie-pool", "--type", "process",
         "--name", f"zombie-worker-{n}"],
        env=_env(home, api, PREFECT_WORKER_QUERY_SECONDS="1",
                 PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_S)),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)


@pytest.mark.fault("edge.worker_killed")
def test_worker_killed_run_is_crashed_and_rerun_reuses(prefect_server, tmp_path, reliability, fault_rng):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.objects import StateType
    from prefect.workers.process import ProcessWorker

    api, home = prefect_server
    out_dir = tmp_path / "artifact"
    # The automation exactly as the stack applies it (Stack.up), with a short `within`; twice: idempotent.
    assert zombies.ensure_zombie_automation(api, WITHIN_S, HEARTBEAT_S) == "created"
    assert zombies.ensure_zombie_automation(api, WITHIN_S, HEARTBEAT_S) == "unchanged"
    with SyncPrefectClient(api=api) as client:
        assert len(client.read_automations_by_name(zombies.AUTOMATION_NAME)) == 1
        client.create_work_pool(WorkPoolCreate(name="zombie-pool", type="process",
                                               base_job_template=ProcessWorker.get_default_base_job_template()))
        flow_id = client.create_flow_from_name("zombie-toy")
        dep_id = client.create_deployment(
            flow_id=flow_id, name="zombie-toy", work_pool_name="zombie-pool", entrypoint=ENTRYPOINT,
            path=str(REPO), job_variables={"working_dir": str(REPO)},
            parameters={"out_dir": str(out_dir), "item_s": 0.5})
    worker = _start_worker(tmp_path, api, home, 1)
    killed_pids: list[int] = []
    try:
        with SyncPrefectClient(api=api) as client:
            run = client.create_flow_run_from_deployment(dep_id)

            def state():
                return client.read_flow_run(run.id).state

            _wait(lambda: state().type == StateType.RUNNING, 90, "the flow run reaching Running")
            # Kill at a random point once it runs, while items are being committed.
            _wait(lambda: len(list(out_dir.glob("item-*.json"))) >= 1, 30, "the first committed item")
            time.sleep(fault_rng.uniform(0.0, 2.5))  # the run has 9 x 0.5 s of items left
            killed_pids = _kill_tree(worker.pid)
            t_kill = time.monotonic()
            committed_at_kill = sorted(p.name for p in out_dir.glob("item-*.json"))
            assert state().type == StateType.RUNNING, "the run must still be Running right after the kill"
            assert len(committed_at_kill) < ITEMS, "error: the run finished before the kill (item_s too short)"
            # The replacement node's worker comes up while the zombie is still Running.
            worker = _start_worker(tmp_path, api, home, 2)

            # Nothing reports the end: only the automation can move it. It must become Crashed.
            seen = []

            def ended():
                s = state()
                seen.append(s.type)
                return s.is_final()

            _wait(ended, WITHIN_S + 40, "the zombie automation marking the killed run Crashed", 1.0)
            t_crashed = time.monotonic()
            final_state = state()
            assert final_state.type == StateType.CRASHED, f"error: killed run ended {final_state.type}, not Crashed"
            assert "heartbeat" in (final_state.message or ""), final_state.message

            # Recovery: a rerun of the same deployment, on the replacement worker.
            rerun = client.create_flow_run_from_deployment(dep_id)
            _wait(lambda: client.read_flow_run(rerun.id).state.is_final(), 90, "the rerun finishing")
            t_done = time.monotonic()
            rerun_state = client.read_flow_run(rerun.id).state
            killed_state = client.read_flow_run(run.id).state
    finally:
        for p in (worker,):
            if p.poll() is None:
                _kill_tree(p.pid)

    items = sorted(out_dir.glob("item-*.json"))
    writes = [int(x) for x in (out_dir / "writes.log").read_text().split()]
    expected = {f"item-{i:03d}.json": _item_text(i) for i in range(ITEMS)}
    lost = sum(1 for name in expected if not (out_dir / name).is_file())
    duplicated = sum(1 for i in set(writes) if writes.count(i) > 1)
    corrupted = sum(1 for p in items if expected.get(p.name) != p.read_text())
    reused = len(committed_at_kill)
    redone = len(writes) - reused
    reliability.record(
        lost=lost, duplicated=duplicated, corrupted=corrupted, recover_s=t_done - t_kill, injected=1,
        detail=(f"worker+flow-run tree SIGKILLed ({len(killed_pids)} processes) after {reused}/{ITEMS} items; "
                f"Crashed by the automation {t_crashed - t_kill:.1f} s after the kill; rerun reused {reused}, "
                f"wrote {redone}"))
    assert lost == 0 and duplicated == 0 and corrupted == 0
    assert StateType.CRASHED in seen and set(seen) <= {StateType.RUNNING, StateType.CRASHED}, seen
    assert killed_state.type == StateType.CRASHED, "the killed run must stay Crashed"
    assert rerun_state.type == StateType.COMPLETED, f"error: rerun ended {rerun_state.type}: {rerun_state.message}"
    runs = [json.loads(line) for line in (out_dir / "runs.log").read_text().splitlines()]
    assert runs == [{"reused": reused, "written": ITEMS - reused}], f"error: runs.log {runs}: the rerun must " \
        f"reuse the {reused} items the killed run committed and write only the rest"
