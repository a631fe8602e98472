"""map_shards: shard work as Prefect task runs on threads or a local Ray, in job order, failures last.

The shard functions, flows and tasks are module-level on purpose: Ray workers import them by
name. Ray gives its workers only the installed packages (and the driver script's directory), not
pytest's ``sys.path``, so the Ray test puts this directory on the workers' ``PYTHONPATH`` through
``runtime_env``, the same way a cluster job ships settings to its workers.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from prefect import flow, task
from prefect.context import FlowRunContext

from deepperception.engine.shard_runner import ShardRunnerConfig
from deepperception.errors import ConfigError
from tasks.sharding import map_shards


# --- shard functions (module level: picklable by reference) -------------------------------------

def square_after(job: tuple[int, float]) -> int:
    x, delay = job
    time.sleep(delay)
    return x * x


def write_marker(job: dict) -> int:
    """Commit-like side effect: one file per finished shard, holding the pid that ran it."""
    if job.get("fail"):
        raise ValueError(f"shard {job['i']} is bad")
    time.sleep(job.get("delay", 0.0))
    (Path(job["dir"]) / f"shard-{job['i']}.txt").write_text(str(os.getpid()))
    return job["i"]


# --- Prefect API ----------------------------------------------------------------------------------

@pytest.fixture
def prefect_api(prefect_harness):
    """The session's real temporary Prefect API server (not the ephemeral one: Ray workers would
    share its SQLite)."""
    yield


def task_runs(flow_run_id, expect: int = 1, timeout_s: float = 60.0) -> dict[str, str]:
    """``{task run name: state type}`` of one flow run, read back from the API (what the UI shows).

    Prefect 3 records client-side task runs through its events pipeline, asynchronously: on a
    loaded machine they reach the API a few seconds after the flow returns, so wait for them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        states = {r.name: r.state_type.value for r in runs}
        final = all(v in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for v in states.values())
        if (len(states) >= expect and final) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def _flow_run_id():
    return FlowRunContext.get().flow_run.id


def _capture(fn, jobs, runner, name, **kw) -> dict:
    try:
        return {"results": map_shards(fn, jobs, runner, name, **kw)}
    except ValueError as exc:
        return {"error": exc}


@flow(name="shards-in-flow")
def shards_in_flow(jobs, runner, name):
    return _capture(square_after, jobs, runner, name), _flow_run_id()


@task(name="stage")
def stage_task(fn, jobs, runner, name, shard_ids=None):
    """Like the engine's stage task: map_shards called from inside a running task."""
    return _capture(fn, jobs, runner, name, shard_ids=shard_ids)


@flow(name="shards-in-task")
def shards_in_task(fn, jobs, runner, name, shard_ids=None):
    # .submit: the stage task runs on a worker thread of the flow's runner, as in the pipeline
    return stage_task.submit(fn, jobs, runner, name, shard_ids).result(), _flow_run_id()


# --- threads -------------------------------------------------------------------------------------

def test_threads_in_flow_results_in_job_order_one_task_run_per_shard(prefect_api):
    # later jobs finish first: the order must come from the jobs, not from completion
    jobs = [(i, 0.05 * (4 - i)) for i in range(5)]
    out, run_id = shards_in_flow(jobs, ShardRunnerConfig(max_workers=5), "square")
    assert out == {"results": [0, 1, 4, 9, 16]}
    assert task_runs(run_id, expect=5) == {f"square-{i}": "COMPLETED" for i in range(5)}


def test_threads_in_task_failure_raised_after_the_other_shards_finished(prefect_api, tmp_path):
    # shard 1 fails at once, the others are still sleeping: they must still commit before the raise
    jobs = [{"dir": str(tmp_path), "i": i, "delay": 0.3, "fail": i == 1} for i in range(4)]
    out, run_id = shards_in_task(write_marker, jobs, ShardRunnerConfig(max_workers=4), "label",
                                 shard_ids=[10, 11, 12, 13])
    err = out["error"]
    assert str(err) == "shard 1 is bad"
    assert "1 of 4 shards failed (shards 11)" in " ".join(err.__notes__)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-0.txt", "shard-2.txt", "shard-3.txt"]
    runs = task_runs(run_id, expect=5)
    stage_runs = [k for k in runs if k.startswith("stage-")]
    assert len(stage_runs) == 1 and runs.pop(stage_runs[0]) == "COMPLETED"  # it caught the error
    assert runs == {"label-10": "COMPLETED", "label-11": "FAILED", "label-12": "COMPLETED",
                    "label-13": "COMPLETED"}


def test_threads_outside_any_run_fall_back_to_a_plain_pool(tmp_path):
    """No flow or task run: no task runs are created (that would need an API), same contract."""
    jobs = [(i, 0.02 * (3 - i)) for i in range(4)]
    assert map_shards(square_after, jobs, ShardRunnerConfig(max_workers=4), "plain") == [0, 1, 4, 9]
    bad = [{"dir": str(tmp_path), "i": i, "delay": 0.2, "fail": i in (0, 2)} for i in range(4)]
    with pytest.raises(ValueError, match="shard 0 is bad") as info:
        map_shards(write_marker, bad, ShardRunnerConfig(max_workers=4), "plain")
    assert "2 of 4 shards failed (shards 0, 2)" in " ".join(info.value.__notes__)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-1.txt", "shard-3.txt"]


def test_lambda_closure_and_unpicklable_jobs_are_refused_before_anything_runs(tmp_path):
    def local(job):
        return job

    with pytest.raises(TypeError, match="module-level function, got .*<lambda>"):
        map_shards(lambda job: job, [1, 2], ShardRunnerConfig(), "x")
    with pytest.raises(TypeError, match="module-level function, got .*<locals>.local"):
        map_shards(local, [1], ShardRunnerConfig(), "x")
    ok = {"dir": str(tmp_path), "i": 0}
    with pytest.raises(TypeError, match=r"job 1 \(generator\) does not pickle"):
        map_shards(write_marker, [ok, (x for x in [])], ShardRunnerConfig(), "x")
    assert list(tmp_path.iterdir()) == []  # job 0 did not run either


def test_shard_ids_must_match_jobs_and_empty_jobs_start_nothing():
    with pytest.raises(ValueError, match="2 jobs but 1 shard_ids"):
        map_shards(square_after, [(1, 0), (2, 0)], ShardRunnerConfig(), "x", shard_ids=[7])
    # an empty map returns at once, even for a Ray address nothing listens on
    assert map_shards(square_after, [], ShardRunnerConfig(kind="ray", address="ray://127.0.0.1:1"), "x") == []


# --- config --------------------------------------------------------------------------------------

def test_config_env_overrides_and_validation(monkeypatch):
    monkeypatch.setenv("DP_SHARD_RUNNER", "ray")
    monkeypatch.setenv("DP_RAY_ADDRESS", "ray://head.svc:10001")
    monkeypatch.setenv("DP_SHARD_MAX_WORKERS", "8")
    cfg = ShardRunnerConfig.from_env(ShardRunnerConfig(init_kwargs={"num_cpus": 2}))
    assert (cfg.kind, cfg.address, cfg.max_workers, cfg.init_kwargs) == ("ray", "ray://head.svc:10001", 8,
                                                                         {"num_cpus": 2})
    monkeypatch.setenv("DP_SHARD_MAX_WORKERS", "0")
    with pytest.raises(ConfigError, match="max_workers"):
        ShardRunnerConfig.from_env()
    monkeypatch.setenv("DP_SHARD_MAX_WORKERS", "many")
    with pytest.raises(ConfigError, match="DP_SHARD_MAX_WORKERS='many' is not an integer"):
        ShardRunnerConfig.from_env()
    with pytest.raises(ValueError, match="neither 'auto'"):
        ShardRunnerConfig(kind="ray", address="headnode")
    with pytest.raises(ValueError, match="extra"):
        ShardRunnerConfig(workers=3)
    assert all(f.description for f in ShardRunnerConfig.model_fields.values())


# --- Ray -----------------------------------------------------------------------------------------

def _ray_processes(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines() if marker in line and "ps -eo" not in line]


# One token for the whole test process: Ray keeps the first token it read, so a second local Ray
# started with a different one would refuse its own workers ("InvalidAuthToken").
RAY_TOKEN = secrets.token_hex(32)


@pytest.fixture
def ray_env(monkeypatch):
    """A local Ray's temp dir under the system temp dir, no telemetry, and its auth token in the
    environment (by default Ray writes a new one into the home directory)."""
    temp = tempfile.mkdtemp(prefix="dp-ray-")  # short: Ray's unix socket paths must fit in 107 bytes
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", RAY_TOKEN)
    yield temp
    deadline = time.monotonic() + 20
    while _ray_processes(temp) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover = _ray_processes(temp)
    shutil.rmtree(temp, ignore_errors=True)
    assert not leftover, f"Ray processes left running: {leftover}"


def test_local_ray_runs_shards_from_inside_a_task_and_shuts_down(prefect_api, ray_env, tmp_path):
    import ray

    here = str(Path(__file__).resolve().parent)
    runner = ShardRunnerConfig(kind="ray", init_kwargs={
        "num_cpus": 2, "include_dashboard": False, "_temp_dir": ray_env,
        "runtime_env": {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}},
    })
    jobs = [{"dir": str(tmp_path), "i": i, "delay": 0.1 * (3 - i)} for i in range(4)]
    started = time.monotonic()
    out, run_id = shards_in_task(write_marker, jobs, runner, "ray-label")
    elapsed = time.monotonic() - started
    assert out == {"results": [0, 1, 2, 3]}, out
    pids = {p.read_text() for p in tmp_path.iterdir()}
    assert len(list(tmp_path.iterdir())) == 4 and str(os.getpid()) not in pids  # ran in Ray workers
    runs = task_runs(run_id, expect=5)
    assert {k: v for k, v in runs.items() if k.startswith("ray-label")} == {
        f"ray-label-{i}": "COMPLETED" for i in range(4)}
    assert not ray.is_initialized()  # the runner started that Ray, so it stopped it (the fixture
    # checks that no process of it is left)

    # a failing shard on Ray: the original exception comes back after the others finished
    for p in tmp_path.iterdir():
        p.unlink()
    jobs[2] = {**jobs[2], "fail": True}
    out, _ = shards_in_task(write_marker, jobs, runner, "ray-label")
    assert str(out["error"]) == "shard 2 is bad"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-0.txt", "shard-1.txt", "shard-3.txt"]
    print(f"local Ray map of 4 shards inside a task: {elapsed:.1f} s (mostly Ray start-up)")


def test_a_data_engine_stage_runs_its_shards_on_a_local_ray(prefect_api, ray_env, tmp_path):
    """The labeling stage itself, unchanged, with runner kind=ray: each shard is a Prefect task run
    executed by a Ray worker, and the version equals the one the thread runner commits."""
    from deepperception.config import ShardingConfig, profile
    from deepperception.store import ArtifactStore, StoreSettings
    from flows import stages

    cfg = profile("toy")
    ray_uri, threads_uri = str(tmp_path / "ray-store"), str(tmp_path / "threads-store")
    refs = {}
    for uri in (ray_uri, threads_uri):
        entities = stages.mine_entities(cfg.data, uri)
        refs[uri] = stages.collect_images(cfg.data, cfg.collection, entities, uri,
                                          sharding=ShardingConfig(images_per_shard=12))
    ray_runner = ShardRunnerConfig(kind="ray", init_kwargs={"num_cpus": 2, "include_dashboard": False,
                                                            "_temp_dir": ray_env})
    on_ray = stages.label_boxes(cfg.labeling, refs[ray_uri], ray_uri, runner=ray_runner)
    on_threads = stages.label_boxes(cfg.labeling, refs[threads_uri], threads_uri)
    assert on_ray == on_threads
    a = ArtifactStore(StoreSettings(uri=ray_uri)).manifest(on_ray)
    b = ArtifactStore(StoreSettings(uri=threads_uri)).manifest(on_threads)
    assert len(a.files) == 6  # 3 shards x (data, rejected)
    assert [(f.path, f.sha256) for f in a.files] == [(f.path, f.sha256) for f in b.files]
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_task_runs() if r.name.startswith("label-shard-")]
    assert {r.name for r in runs} >= {"label-shard-0", "label-shard-1", "label-shard-2"}
    assert all(r.state_type.value == "COMPLETED" for r in runs)
