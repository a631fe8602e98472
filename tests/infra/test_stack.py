"""The local stack of `make up` runs a FULL toy reproduction started by deployment name: the parent
on the `cpu` worker, SFT / RL filtering / GRPO / every evaluation on the `gpu` worker through their
deployments, every artifact in the SeaweedFS S3 server; `up` again changes nothing; `down` leaves
no process behind and keeps the data.

One toy run through real workers (each flow run is a fresh Python process), hence `slow`; it
replaces the former tests/flows/test_dispatch.py (the same run with one gpu worker and a local store).
"""

from __future__ import annotations

import os

import httpx
import psutil
import pytest

from deepperception.store import ArtifactRef, ArtifactStore, StoreSettings

# Setup (stack up + the toy run) counts against the first test: minutes on a loaded 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

GPU_STAGES = {"sft_checkpoint": "train-sft", "grpo_dataset": "rl-filter", "grpo_checkpoint": "train-grpo"}


@pytest.fixture(scope="module")
def toy_run(local_stack):
    out = local_stack.run_deployment("reproduce/full-reproduction",
                                     {"profile": "toy", "dispatch": "deployments"}, timeout=1500)
    assert out["state"] == "COMPLETED", out
    return out


def _store(stack, tmp_path) -> ArtifactStore:
    env = stack.env()
    return ArtifactStore(StoreSettings(uri=stack.store_uri, s3_endpoint_url=stack.endpoint,
                                       s3_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                       s3_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                                       cache_dir=str(tmp_path / "cache")))


def test_full_toy_reproduction_by_deployment_name(local_stack, toy_run, tmp_path):
    result = toy_run["result"]
    store = _store(local_stack, tmp_path)
    report = ArtifactRef.parse(result["report"])
    assert store.exists(report)
    # The report's files are objects in the SeaweedFS bucket (not a local directory).
    s3 = local_stack.s3_client()
    files = store.manifest(report).files
    assert files
    for entry in files:
        key = store.file_path(report, entry.path).removeprefix(f"{local_stack.bucket}/")
        assert s3.head_object(Bucket=local_stack.bucket, Key=key)["ContentLength"] == entry.bytes

    arts = result["artifacts"]
    evaluations = {k for k in arts if k.startswith("evaluation_")}
    assert evaluations, sorted(arts)
    with httpx.Client(base_url=local_stack.api_url, timeout=30) as api:
        parent = api.get(f"/flow_runs/{toy_run['flow_run_id']}").json()
        assert parent["work_pool_name"] == "cpu"
        deployment_of = lambda run: api.get(f"/deployments/{run['deployment_id']}").json()["name"]  # noqa: E731
        assert deployment_of(parent) == "full-reproduction"
        for key, deployment in {**GPU_STAGES, **{k: "evaluate-checkpoint" for k in evaluations}}.items():
            manifest = store.manifest(ArtifactRef.parse(arts[key]))
            run = api.get(f"/flow_runs/{manifest.flow_run_id}").json()
            assert (run["work_pool_name"], deployment_of(run)) == ("gpu", deployment), key
            assert run["parent_task_run_id"] is not None, key  # linked under the parent in the UI
        # A CPU stage ran inside the parent's process, not on a pool of its own.
        mined = api.get(f"/flow_runs/{store.manifest(ArtifactRef.parse(arts['entities'])).flow_run_id}").json()
        assert mined["deployment_id"] is None


def test_up_again_starts_nothing(local_stack, toy_run):
    from infra.stack import Stack

    before = {s.name: s.pid for s in local_stack.status()}
    assert all(before.values()), before
    again = Stack(local_stack.root)  # a second `make up`: a new process reading the saved state
    assert (again.api_url, again.endpoint, again.env()) == (local_stack.api_url, local_stack.endpoint,
                                                          local_stack.env())
    did = again.up()
    assert not [d for d in did if d.startswith(("started", "created"))], did
    assert {s.name: s.pid for s in again.status()} == before


def test_nightly_schedule_is_scheduled_and_the_publish_trigger_registered(local_stack, toy_run):
    """The cron deployment has runs scheduled by the server's scheduler (SQLAlchemy 2.1 broke that
    silently: no run was ever scheduled), in UTC; the event trigger is an automation on the server."""
    with httpx.Client(base_url=local_stack.api_url, timeout=30) as api:
        nightly = api.get("/deployments/name/evaluate/nightly-reevaluation").json()
        [sched] = nightly["schedules"]
        assert (sched["schedule"]["cron"], sched["schedule"]["timezone"], sched["active"]) == ("0 2 * * *", "UTC", True)
        runs = api.post("/flow_runs/filter", json={"flow_runs": {
            "deployment_id": {"any_": [nightly["id"]]}, "state": {"type": {"any_": ["SCHEDULED"]}}}}).json()
        assert runs, "the scheduler created no run of the nightly deployment"
        assert all(r["expected_start_time"].split("T")[1].startswith("02:00") for r in runs), runs
        automations = api.post("/automations/filter", json={}).json()
        [trigger] = [a for a in automations if a["name"] == "evaluate-published-checkpoint"]
        assert trigger["enabled"] and trigger["trigger"]["expect"] == ["deepperception.artifact.committed"]


def test_a_published_checkpoint_event_starts_its_evaluation_on_the_gpu_worker(local_stack, toy_run, tmp_path):
    """The trigger end to end: the event a standalone stage run emits when it commits a checkpoint
    (tasks.events.commit_event, sent by a client of the stack) makes the server's automation start
    `evaluate-on-publish`, which the gpu worker runs on that checkpoint and bench@latest."""
    import json
    import subprocess
    import sys
    import time

    grpo = toy_run["result"]["artifacts"]["grpo_checkpoint"]
    emit = ("import sys; from prefect.events import emit_event; from tasks.events import commit_event; "
            "from deepperception.store import ArtifactRef; from deepperception.store.events import Commit; "
            "emit_event(**commit_event(Commit(ArtifactRef.parse(sys.argv[1]), None, sys.argv[2]), None, False))")
    env = {**os.environ, **local_stack.client_env()}
    subprocess.run([sys.executable, "-c", emit, grpo, local_stack.store_uri], env=env, cwd=local_stack.repo_dir,
                   check=True, timeout=120)
    with httpx.Client(base_url=local_stack.api_url, timeout=30) as api:
        dep = api.get("/deployments/name/evaluate/evaluate-on-publish").json()
        deadline, run = time.monotonic() + 900, None
        while time.monotonic() < deadline:
            runs = api.post("/flow_runs/filter", json={"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}}).json()
            run = runs[0] if runs else None
            if run and run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(3)
        assert run is not None, "the automation started no run of evaluate-on-publish"
        assert run["state"]["type"] == "COMPLETED", json.dumps(run["state"])[:2000]
        assert run["parameters"]["checkpoint"] == grpo and run["work_pool_name"] == "gpu"
    store = _store(local_stack, tmp_path)
    made = [m for m in store.list("evaluation") if m.flow_run_id == run["id"]]
    assert [m.metadata.get("checkpoint") for m in made] == [grpo]


def _ours(root) -> list[psutil.Process]:
    """Every live process whose environment points into this stack's root (flow runs included)."""
    found = []
    for proc in psutil.process_iter():
        try:
            home = proc.environ().get("PREFECT_HOME", "")
        except psutil.Error:
            continue
        if home.startswith(str(root)) and proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def test_down_stops_every_process_and_keeps_the_data(local_stack, toy_run):
    assert len(_ours(local_stack.root)) >= 4
    ports = [local_stack.ports["prefect"], local_stack.ports["s3"]]
    stopped = local_stack.down()
    assert sorted(stopped) == ["prefect-server", "seaweedfs", "worker-cpu", "worker-gpu"]
    assert _ours(local_stack.root) == []
    assert not any(s.running for s in local_stack.status())
    from infra.stack.stack import port_free

    assert all(port_free(p) for p in ports)
    assert local_stack.down() == []  # idempotent
    assert any((local_stack.root / "seaweedfs").rglob("*.dat"))  # SeaweedFS volumes
    assert (local_stack.root / "prefect" / "prefect.db").is_file()  # runs and deployments
