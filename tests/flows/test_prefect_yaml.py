"""prefect.yaml deploys for real: `prefect deploy --all` against the test server creates every
deployment, on the right pool, with the nightly cron schedule and typed parameter schemas; the
full reproduction's form is a profile plus overrides."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_every_entrypoint_imports_a_flow():
    import importlib

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert hasattr(getattr(module, func), "deploy"), dep["name"]


def test_prefect_deploy_all(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    env = {**os.environ, "PREFECT_API_URL": api, "DP_REPO_DIR": str(ROOT), "DP_STORE_URI": str(tmp_path / "s"),
           "DP_STORE_S3_ENDPOINT_URL": ""}
    prefect = Path(sys.executable).with_name("prefect")
    for pool in ("cpu", "gpu"):
        subprocess.run([str(prefect), "work-pool", "create", pool, "--type", "process", "--overwrite"],
                       env=env, cwd=ROOT, check=True, capture_output=True, timeout=120)
    res = subprocess.run([str(prefect), "--no-prompt", "deploy", "--all"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
        assert {d["name"] for d in spec["deployments"]} <= set(deployments)
        nightly = deployments["nightly-reevaluation"]
        assert nightly.work_pool_name == "gpu"
        assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
        assert nightly.parameters["checkpoint"] == "grpo-checkpoint@latest"
        full = deployments["full-reproduction"]
        assert full.work_pool_name == "cpu"
        # The UI form: a profile plus a mapping of overrides (not the whole config to re-enter).
        props = full.parameter_openapi_schema["properties"]
        assert {"profile", "overrides", "force_stages"} <= set(props)
        assert full.parameters == {"profile": "paper", "overrides": {}, "dispatch": "deployments"}
