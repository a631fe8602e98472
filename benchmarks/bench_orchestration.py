"""Orchestration overhead of the Prefect path, side by side in one run (issue 10 item 9).

Measured, each as a fresh `deepperception reproduce` process (what a user types), on one local
store in a temporary directory:

* **full**: a toy reproduction from an empty store: wall time vs the *stage compute*, the sum of
  the durations of the top-level task runs (the thin task that calls ``run_stage``: reads inputs,
  computes, commits) read back from the Prefect API. The rest (subflow runs, state round trips,
  hooks, the CLI's imports) is orchestration.
* **eval-only**: the same run with one evaluation setting changed (``--set evaluation.seed=1``, the
  bootstrap seed): only the evaluations and the report recompute (counted: new manifests).
* **no-op**, three ways: ``--run-flow`` through the Prefect flow with the server already running
  (``PREFECT_API_URL`` set: per-subflow API cost only), ``--run-flow`` with the CLI starting its own
  server (what every unchanged rerun did before the run record), and the default, answered from
  the run record without Prefect (deepperception/plan.py). Each no-op checks that no manifest
  was added.
* **worker start-up latency**: a process worker on its own pool and a trivial deployment; each run
  is created with ``run_deployment(timeout=0)`` and its state history read back: created ->
  Pending (the worker polled and claimed it) -> Running (the flow's subprocess started) ->
  Completed, at ``PREFECT_WORKER_QUERY_SECONDS`` = Prefect's default (10) and 1.
* **the make-up stack** (``infra.stack.Stack``, skipped with ``--skip stack``): bring-up, a full
  reproduction by deployment name through the cpu and gpu workers into SeaweedFS, the same run
  again, and the CLI against the stack (no-op through the flow, then from the run record).

The Prefect server for the "server running" cases is ``deepperception.prefect_server.local_server``
(the CLI's own, started once here); the worker part starts its own worker processes.

Run: nice -n 5 .venv/bin/python benchmarks/bench_orchestration.py [--profile toy] [--noop-repeats 3]
     [--latency-runs 4] [--skip full,eval,latency] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLI_TIMEOUT_S = 1800


def _cli_env(api_url: str | None, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "DP_STORE"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(ROOT))
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _manifests(store: Path) -> int:
    return sum(1 for _ in store.glob("*/*/_manifest.json"))


def run_cli(args: list[str], store: Path, api_url: str | None, home: Path, log: Path) -> dict:
    """One `deepperception reproduce` process: wall time, new manifests, its output's last lines."""
    before = _manifests(store) if store.exists() else 0
    cmd = [sys.executable, "-m", "deepperception.cli", "reproduce", "--store", str(store), *args]
    started = dt.datetime.now(dt.timezone.utc)
    t = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=ROOT, env=_cli_env(api_url, home), stdout=out, stderr=subprocess.STDOUT,
                              timeout=CLI_TIMEOUT_S)
    wall = time.perf_counter() - t
    tail = log.read_text(errors="replace").strip().splitlines()[-4:]
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); log {log}:\n" + "\n".join(tail))
    return {"args": args, "wall_s": round(wall, 2), "new_manifests": _manifests(store) - before,
            "started": started, "ended": dt.datetime.now(dt.timezone.utc), "tail": tail}


def task_compute(api_url: str, since: dt.datetime, until: dt.datetime) -> dict:
    """Sum of the top-level task runs' durations (tasks called from a task, e.g. shards, are
    inside their parent's duration) of the runs in [since, until], with the per-task list."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime
    import asyncio

    async def paged(read, **filters):  # the API returns at most 200 rows per call
        rows = []
        while True:
            page = await read(**filters, limit=200, offset=len(rows))
            rows += page
            if len(page) < 200:
                return rows

    async def read():
        async with get_client() as client:
            tasks = await paged(client.read_task_runs, task_run_filter=TaskRunFilter(
                start_time=TaskRunFilterStartTime(after_=since, before_=until)))
            flows = await paged(client.read_flow_runs, flow_run_filter=FlowRunFilter(
                start_time=FlowRunFilterStartTime(after_=since, before_=until)))
            return tasks, flows

    os.environ["PREFECT_API_URL"] = api_url
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()
    tasks, flows = asyncio.run(read())
    # A subflow call is also a task run in the parent (the one its flow run points back to): not compute.
    subflow_calls = {f.parent_task_run_id for f in flows if f.parent_task_run_id is not None}
    top = [t for t in tasks if not t.task_inputs.get("__parents__") and t.id not in subflow_calls
           and t.start_time and t.end_time]
    per = sorted(((t.name, (t.end_time - t.start_time).total_seconds()) for t in top), key=lambda x: -x[1])
    parent = [f for f in flows if f.parent_task_run_id is None]
    flow_wall = sum((f.end_time - f.start_time).total_seconds() for f in parent if f.start_time and f.end_time)
    return {"stage_compute_s": round(sum(d for _, d in per), 2), "n_top_tasks": len(per),
            "n_subflows": len(flows) - len(parent), "parent_flow_wall_s": round(flow_wall, 2),
            "per_task_s": [(n, round(d, 2)) for n, d in per]}


def import_times() -> dict:
    out = {}
    for name, stmt in (("import deepperception.cli", "import deepperception.cli"),
                       ("import flows.reproduce (torch, transformers, prefect)", "import flows.reproduce")):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", stmt], cwd=ROOT, check=True, env=_cli_env(None, Path(tempfile.gettempdir())))
        out[name] = round(time.perf_counter() - t, 2)
    return out


# ---------------------------------------------------------------------------- worker latency
LATENCY_FLOW = '''from prefect import flow


@flow(name="dp-latency-noop")
def noop() -> int:
    return 1
'''


def worker_latency(api_url: str, home: Path, work: Path, query_seconds: float | None, runs: int) -> dict:
    """Created -> Pending -> Running -> Completed of ``runs`` trivial deployment runs on a fresh
    process worker (``query_seconds`` None: Prefect's default)."""
    import asyncio

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_WORKER_QUERY_SECONDS

    tag = "default" if query_seconds is None else f"q{query_seconds:g}"
    pool = f"dp-latency-{tag}"
    src = work / f"latency-{tag}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "latency_flow.py").write_text(LATENCY_FLOW)
    env = _cli_env(api_url, home)
    subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "work-pool", "create", pool, "--type", "process",
                    "--overwrite"], env=env, check=True, capture_output=True, timeout=300)
    deployment_id = flow.from_source(source=str(src), entrypoint="latency_flow.py:noop").deploy(
        name=tag, work_pool_name=pool, print_next_steps=False)
    if query_seconds is not None:
        env["PREFECT_WORKER_QUERY_SECONDS"] = str(query_seconds)
    log = open(work / f"worker-{tag}.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type",
                               "process", "--name", f"w-{tag}"], env=env, cwd=src, stdout=log,
                              stderr=subprocess.STDOUT)
    effective = query_seconds if query_seconds is not None else PREFECT_WORKER_QUERY_SECONDS.value()

    async def history(flow_run_id):
        async with get_client() as client:
            return await client.read_flow_run_states(flow_run_id)

    def one(name: str) -> dict:
        fr = run_deployment(name=f"dp-latency-noop/{tag}", timeout=0)
        deadline = time.monotonic() + 300
        while True:
            states = asyncio.run(history(fr.id))
            if any(s.type.value == "COMPLETED" for s in states):
                break
            if any(s.type.value in ("FAILED", "CRASHED") for s in states) or time.monotonic() > deadline:
                raise SystemExit(f"latency run {fr.id} did not complete: {[s.type.value for s in states]}; "
                                 f"worker log {log.name}")
            time.sleep(0.25)
        first = {}
        for s in sorted(states, key=lambda s: s.timestamp):
            first.setdefault(s.type.value, s.timestamp)
        created = fr.created
        return {"pending_s": (first["PENDING"] - created).total_seconds(),
                "running_s": (first["RUNNING"] - created).total_seconds(),
                "completed_s": (first["COMPLETED"] - created).total_seconds()}

    try:
        one("warm-up")  # the worker's first poll and first subprocess: not what a later run waits
        samples = []
        for i in range(runs):
            time.sleep((i * 0.37 * effective) % effective)  # spread the submissions over the poll cycle
            samples.append(one(f"run-{i}"))
    finally:
        worker.send_signal(2)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
        del deployment_id
    med = {k: round(statistics.median(s[k] for s in samples), 2) for k in samples[0]}
    return {"query_seconds": effective, "runs": runs, "median": med,
            "samples": [{k: round(v, 2) for k, v in s.items()} for s in samples]}


# ---------------------------------------------------------------------------- the make-up stack
def stack_runs(work: Path, profile: str, out: dict, save) -> None:
    """The server path as `make up` gives it (infra/stack: Prefect server, SeaweedFS, cpu/gpu
    process workers polling every 2 s): bring-up time, a full reproduction by deployment name with
    every GPU stage on the gpu worker, the same run again (all reused), and the CLI against that
    stack (S3 store): a no-op through the flow (which writes the run record), then from the record."""
    from infra.stack import Stack

    stack = Stack(work / "stack", prefect_port=0, s3_port=0, tie_to_parent=True)
    t = time.perf_counter()
    did = stack.up()
    out["stack_up_s"] = {"wall_s": round(time.perf_counter() - t, 2), "did": did}
    print(json.dumps({"stack_up_s": out["stack_up_s"]}), flush=True)
    save()
    try:
        params = {"profile": profile, "dispatch": "deployments"}
        for key in ("stack_full", "stack_noop_by_deployment"):
            started = dt.datetime.now(dt.timezone.utc)
            t = time.perf_counter()
            res = stack.run_deployment("reproduce/full-reproduction", params, timeout=CLI_TIMEOUT_S)
            wall = time.perf_counter() - t
            if res.get("state") != "COMPLETED":
                raise SystemExit(f"{key}: {res}")
            r = {"wall_s": round(wall, 2), **task_compute(stack.api_url, started, dt.datetime.now(dt.timezone.utc))}
            out[key] = r
            print(json.dumps({key: {k: v for k, v in r.items() if k != "per_task_s"}}), flush=True)
            save()
        env = {**_cli_env(None, stack.prefect_home), **stack.env()}
        for key in ("stack_cli_noop_flow", "stack_cli_noop_record"):
            log = work / f"{key}.log"
            t = time.perf_counter()
            with open(log, "w") as fh:
                proc = subprocess.run([sys.executable, "-m", "deepperception.cli", "reproduce", "--profile", profile],
                                      cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=CLI_TIMEOUT_S)
            wall = time.perf_counter() - t
            text = log.read_text(errors="replace")
            if proc.returncode != 0:
                raise SystemExit(f"{key} failed, log {log}:\n{text[-2000:]}")
            out[key] = {"wall_s": round(wall, 2), "answered_from_record": "nothing to run" in text}
            print(json.dumps({key: out[key]}), flush=True)
            save()
    finally:
        t = time.perf_counter()
        stack.down()
        out["stack_down_s"] = round(time.perf_counter() - t, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="toy")
    ap.add_argument("--noop-repeats", type=int, default=3)
    ap.add_argument("--latency-runs", type=int, default=4)
    ap.add_argument("--skip", default="", help="comma list of: full, eval, noop, latency, stack")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the store and logs here (default: a temp dir)")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))

    from deepperception.prefect_server import local_server

    work = a.workdir or Path(tempfile.mkdtemp(prefix="dp-bench-orch-"))
    work.mkdir(parents=True, exist_ok=True)
    home, store = work / "prefect-home", work / "store"
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.pop("PREFECT_API_URL", None)
    out: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f} at start",
                 "profile": a.profile, "workdir": str(work), "imports_s": import_times()}
    print(json.dumps({"imports_s": out["imports_s"]}), flush=True)
    prof = ["--profile", a.profile]
    with local_server() as server:
        api = server.api_url

        def step(key: str, args: list[str], api_url: str | None, measure_tasks: bool = True) -> dict:
            r = run_cli(args, store, api_url, home, work / f"{key}.log")
            if measure_tasks and api_url:
                r.update(task_compute(api, r["started"], r["ended"]))
            r["started"], r["ended"] = r["started"].isoformat(), r["ended"].isoformat()
            out[key] = r
            print(json.dumps({key: {k: v for k, v in r.items() if k not in ("per_task_s", "tail")}}), flush=True)
            if a.json:  # what is measured so far survives a later failure
                a.json.write_text(json.dumps(out, indent=1, default=str))
            return r

        if "full" not in skip:
            step("full", [*prof, "--run-flow"], api)
        if "eval" not in skip:
            step("eval_only", [*prof, "--set", "evaluation.seed=1"], api)
        if "noop" not in skip:
            step("noop_flow_server_running", [*prof, "--run-flow"], api)
            r = run_cli([*prof, "--run-flow"], store, None, work / "prefect-home-own", work / "noop_flow_own_server.log")
            r["started"], r["ended"] = r["started"].isoformat(), r["ended"].isoformat()
            out["noop_flow_own_server"] = r
            print(json.dumps({"noop_flow_own_server": r["wall_s"]}), flush=True)
            record = [run_cli(prof, store, None, home, work / f"noop-record-{i}.log") for i in range(a.noop_repeats)]
            assert all(r["new_manifests"] == 0 for r in record) and all("nothing to run" in " ".join(
                open(work / f"noop-record-{i}.log").read().splitlines()[:3]) for i in range(a.noop_repeats)), record
            out["noop_record"] = {"wall_s": [r["wall_s"] for r in record],
                                  "median_s": statistics.median(r["wall_s"] for r in record)}
            print(json.dumps({"noop_record": out["noop_record"]}), flush=True)
        if "latency" not in skip:
            os.environ["PREFECT_API_URL"] = api
            from prefect.context import refresh_global_settings_context

            refresh_global_settings_context()
            out["worker_latency"] = [worker_latency(api, home, work, q, a.latency_runs) for q in (None, 1.0)]
            print(json.dumps({"worker_latency": out["worker_latency"]}), flush=True)
    if "stack" not in skip:
        stack_runs(work, a.profile, out, lambda: a.json and a.json.write_text(json.dumps(out, indent=1, default=str)))
    out["load_at_end"] = round(os.getloadavg()[0], 1)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
