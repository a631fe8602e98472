"""GPU stages dispatched to a work pool: a real Prefect worker (process type) runs SFT, RL
filtering, GRPO and the evaluations from their prefect.yaml deployments; the parent gets the
committed references back and the report is the same shape as an inline run's."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepperception.store import ArtifactRef, ArtifactStore, StoreSettings

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gpu_pool_worker(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "DP_REPO_DIR": str(ROOT),
           "DP_STORE_URI": str(tmp_path / "unused"), "DP_STORE_S3_ENDPOINT_URL": "",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}
    prefect = str(Path(sys.executable).with_name("prefect"))
    run = dict(env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    subprocess.run([prefect, "work-pool", "create", "gpu", "--type", "process", "--overwrite"], check=True, **run)
    res = subprocess.run([prefect, "--no-prompt", "deploy", "--name", "train-sft", "--name", "rl-filter",
                          "--name", "train-grpo", "--name", "evaluate-checkpoint"], **run)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([prefect, "worker", "start", "--pool", "gpu", "--type", "process", "--limit", "1"],
                              env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    yield worker
    # A process worker ignores SIGTERM and one SIGINT; a second SIGINT stops it.
    for _ in range(2):
        worker.send_signal(signal.SIGINT)
        time.sleep(1)
    try:
        worker.wait(timeout=15)
    except subprocess.TimeoutExpired:
        worker.kill()
    log.close()


def test_reproduce_dispatches_gpu_stages_to_the_pool(gpu_pool_worker, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.reproduce import reproduce

    uri = str(tmp_path / "store")
    result = reproduce(profile="toy", store_uri=uri, dispatch="deployments")
    store = ArtifactStore(StoreSettings(uri=uri))
    arts = result["artifacts"]
    with get_client(sync_client=True) as client:
        deployments = {d.id: d.name for d in client.read_deployments()}
        for key, deployment in (("sft_checkpoint", "train-sft"), ("grpo_dataset", "rl-filter"),
                                ("grpo_checkpoint", "train-grpo"), ("evaluation_grpo", "evaluate-checkpoint")):
            manifest = store.manifest(ArtifactRef.parse(arts[key]))
            run = client.read_flow_run(manifest.flow_run_id)
            assert deployments.get(run.deployment_id) == deployment, key
    assert store.exists(ArtifactRef.parse(result["report"]))
    assert gpu_pool_worker.poll() is None  # the worker is still serving
