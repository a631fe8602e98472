"""prefect.yaml deploys for real: `prefect deploy --all` against the test server creates every
deployment, on the right pool, with the nightly cron schedule (explicit UTC), the
evaluate-on-publish event trigger, typed parameter schemas with a description for every
parameter, and no environment templating; the full reproduction's form is a profile plus
overrides. Everything it registers is removed afterwards, so later tests of the session see an
API without a `gpu` pool (dispatch=auto stays inline) and without triggers."""

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


@pytest.fixture
def deployed(prefect_harness, tmp_path):
    """`prefect deploy --all` from the repository root; afterwards its deployments, their
    automations and the two pools are deleted again."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DP_")}  # nothing to template from
    env["PREFECT_API_URL"] = api
    prefect = Path(sys.executable).with_name("prefect")
    for pool in ("cpu", "gpu"):
        subprocess.run([str(prefect), "work-pool", "create", pool, "--type", "process", "--overwrite"],
                       env=env, cwd=ROOT, check=True, capture_output=True, timeout=120)
    try:
        res = subprocess.run([str(prefect), "--no-prompt", "deploy", "--all"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        yield
    finally:
        with get_client(sync_client=True) as client:
            for d in client.read_deployments():
                client.delete_deployment(d.id)
            for a in client.read_automations():
                client.delete_automation(a.id)
            for pool in ("cpu", "gpu"):
                client.delete_work_pool(pool)


def test_prefect_deploy_all(deployed):
    from prefect.client.orchestration import get_client

    from flows.params import resolve_dispatch
    from flows.reproduce import GPU_DEPLOYMENTS

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
        assert {d["name"] for d in spec["deployments"]} <= set(deployments)
        nightly = deployments["nightly-reevaluation"]
        assert nightly.work_pool_name == "gpu"
        assert [(s.schedule.cron, s.schedule.timezone) for s in nightly.schedules] == [("0 2 * * *", "UTC")]
        assert nightly.parameters["checkpoint"] == "grpo-checkpoint@latest"
        full = deployments["full-reproduction"]
        assert full.work_pool_name == "cpu"
        # The UI form: a profile dropdown plus a mapping of overrides (not the whole config to re-enter).
        props = full.parameter_openapi_schema["properties"]
        assert {"profile", "overrides", "force_stages", "dispatch"} <= set(props) and "config" not in props
        assert props["profile"]["enum"] and "toy" in props["profile"]["enum"]
        assert full.parameters == {"profile": "demo", "overrides": {}, "dispatch": "auto"}
        # Stage deployments take references as name@version strings.
        sft = deployments["train-sft"].parameter_openapi_schema["properties"]
        assert sft["base"]["type"] == "string" and "@" in sft["base"]["pattern"]
        for name, d in deployments.items():
            undocumented = [p for p, s in d.parameter_openapi_schema["properties"].items() if not s.get("description")]
            assert not undocumented, (name, undocumented)
            # No environment templating reached a deployment (job variables, pull steps).
            assert "{{" not in repr(d.job_variables) + repr(d.pull_steps), name
            assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]

        # The trigger: committed SFT/GRPO checkpoints of standalone runs start evaluate-on-publish.
        on_publish = deployments["evaluate-on-publish"]
        automations = [a for a in client.read_automations()
                       if any(getattr(act, "deployment_id", None) == on_publish.id for act in a.actions)]
        assert len(automations) == 1 and automations[0].enabled
        trigger = automations[0].trigger
        assert trigger.expect == {"deepperception.artifact.committed"}
        assert trigger.match.model_dump() == {"deepperception.artifact.name": ["sft-checkpoint", "grpo-checkpoint"],
                                              "deepperception.standalone": "true"}
        params = automations[0].actions[0].parameters
        assert params["benches"] == ["bench@latest"]
        assert "event.resource['deepperception.artifact.ref']" in repr(params["checkpoint"])
        assert "event.resource['deepperception.store']" in repr(params["store_uri"])

        # dispatch=auto: this API has the gpu pool and the GPU stages' deployments.
        assert resolve_dispatch("auto", GPU_DEPLOYMENTS.values()) == "deployments"
