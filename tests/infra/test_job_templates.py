"""The GPU work-pool base job templates (infra/docker, infra/kubernetes) are valid Prefect templates that
ask for GPUs where each worker type looks for them.

Three checks, none needs Docker or a cluster:
- Prefect's own CLI accepts each file (`prefect work-pool create --base-job-template FILE --type T`)
  against a real test server, stores it unchanged, and refuses a broken copy;
- rendered the way every worker renders a template (variable defaults, then `apply_values`), the Docker
  one gives docker-py's HostConfig a GPU DeviceRequest and the Kubernetes one an `nvidia.com/gpu` limit;
- each keeps every key of Prefect's default template for its type, so a worker release that adds one
  makes this fail instead of silently losing it.
Where the worker packages are installed (a worker host), the real worker classes render them too.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = {
    "docker": REPO / "infra" / "docker" / "gpu-base-job-template.json",
    "kubernetes": REPO / "infra" / "kubernetes" / "gpu-base-job-template.json",
}
# Default keys our templates replace on purpose: the Docker worker's free-form `container_create_kwargs`
# variable becomes gpu_count / gpu_device_ids / shm_size (a deployment cannot drop the GPU request).
REPLACED = {"docker": {"container_create_kwargs"}, "kubernetes": set()}


def _load(kind: str) -> dict:
    return json.loads(TEMPLATES[kind].read_text())


def _render(template: dict, values: dict) -> dict:
    """What BaseJobConfiguration.from_template_and_values does before its block/variable lookups:
    variable defaults, overridden by the job variables, applied to job_configuration."""
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    variables = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    variables.update(values)
    return apply_values(copy.deepcopy(template["job_configuration"]), variables)


def _prefect_cli(args: list[str], api_url: str, monkeypatch, capfd) -> tuple[int, str]:
    """`prefect <args>` through Prefect's own CLI entry point, in this process (a subprocess would
    pay Prefect's import again, seconds per call on 2 cores); its exit code and output."""
    from prefect.cli import app

    monkeypatch.setenv("PREFECT_API_URL", api_url)
    monkeypatch.setattr(sys, "argv", ["prefect", *args])
    capfd.readouterr()
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capfd.readouterr()
    return code, captured.out + captured.err


def test_prefect_cli_accepts_the_gpu_templates(prefect_harness, tmp_path, monkeypatch, capfd):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    suffix = uuid.uuid4().hex[:8]
    for kind, path in TEMPLATES.items():
        code, out = _prefect_cli(["work-pool", "create", f"gpu-{kind}-{suffix}", "--type", kind,
                                  "--base-job-template", str(path)], api_url, monkeypatch, capfd)
        assert code == 0, out

    broken = _load("docker")
    del broken["variables"]["properties"]["gpu_count"]  # still referenced by device_requests
    broken_file = tmp_path / "broken.json"
    broken_file.write_text(json.dumps(broken))
    code, out = _prefect_cli(["work-pool", "create", f"gpu-broken-{suffix}", "--type", "docker",
                              "--base-job-template", str(broken_file)], api_url, monkeypatch, capfd)
    assert code != 0 and "gpu_count" in out, out

    async def read_back():
        async with get_client() as client:
            return {kind: await client.read_work_pool(f"gpu-{kind}-{suffix}") for kind in TEMPLATES}

    pools = asyncio.run(read_back())
    for kind, pool in pools.items():
        assert pool.type == kind
        assert pool.base_job_template == _load(kind)


def test_docker_template_requests_gpus_through_docker_py():
    from docker.types import HostConfig

    template = _load("docker")
    default = _render(template, {})["container_create_kwargs"]
    assert default["device_requests"] == [{"count": -1, "capabilities": [["gpu"]]}]  # every GPU
    host = HostConfig(version="1.47", **default)
    assert host["DeviceRequests"] == [
        {"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert host["ShmSize"] == 8 * 1024**3

    pinned = _render(template, {"gpu_count": 0, "gpu_device_ids": ["1", "3"], "shm_size": "2g"})
    host = HostConfig(version="1.47", **pinned["container_create_kwargs"])
    assert host["DeviceRequests"][0]["Count"] == 0 and host["DeviceRequests"][0]["DeviceIDs"] == ["1", "3"]
    assert host["ShmSize"] == 2 * 1024**3


def test_kubernetes_template_requests_gpus_and_tolerates_gpu_nodes():
    template = _load("kubernetes")
    pod = _render(template, {})["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}  # cpu/memory unset: dropped
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert "nodeSelector" not in pod and "runtimeClassName" not in pod  # unset variables vanish
    assert "envFrom" not in container
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts == {"dshm": "/dev/shm"} and volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}

    secret = [{"secretRef": {"name": "dp-store"}}]
    pod = _render(template, {"gpu_limit": 4, "node_selector": {"pool": "h100"}, "runtime_class_name": "nvidia",
                             "memory_limit": "64Gi", "env_from": secret})["job_manifest"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["envFrom"] == secret
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 4, "memory": "64Gi"}
    assert pod["nodeSelector"] == {"pool": "h100"} and pod["runtimeClassName"] == "nvidia"


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    else:
        yield path, obj


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_templates_keep_every_key_of_prefects_default(prefect_harness, kind):
    """Derived, not forked: every variable and job-configuration entry of the default template Prefect
    serves for this type (the installed worker's, else the server's collection metadata) is in ours,
    with the same value, except what REPLACED names."""
    from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

    default = asyncio.run(get_default_base_job_template_for_infrastructure_type(kind))
    assert default, f"Prefect knows no default template for {kind!r}"
    ours = _load(kind)
    missing_vars = set(default["variables"]["properties"]) - set(ours["variables"]["properties"]) - REPLACED[kind]
    assert not missing_vars, f"{TEMPLATES[kind].name} lacks default variables {sorted(missing_vars)}"
    for name, schema in default["variables"]["properties"].items():
        if name not in REPLACED[kind]:
            assert ours["variables"]["properties"][name].get("type") == schema.get("type"), name
    ours_raw = dict(_leaves(ours["job_configuration"]))
    ours_rendered = dict(_leaves(_render(ours, {})))
    default_rendered = dict(_leaves(_render(default, {})))
    for path, value in _leaves(default["job_configuration"]):
        if path[0] in REPLACED[kind] or ours_raw.get(path) == value:
            continue
        # A literal of the default may become a variable of ours whose default renders the same
        # (Prefect 3.8.8's Kubernetes `backoffLimit: 0` is prefect-kubernetes 0.8.0's `{{ backoff_limit }}`).
        literal = not (isinstance(value, str) and "{{" in value)
        assert literal and path in ours_rendered and ours_rendered[path] == default_rendered.get(path), (
            f"{TEMPLATES[kind].name}: job_configuration{list(path)} is {ours_raw.get(path)!r}, default {value!r}")


def test_real_workers_render_the_gpu_requests():
    """On a worker host (prefect-docker / prefect-kubernetes installed): the worker's own job
    configuration classes accept the templates and carry the GPU request."""
    docker_worker = pytest.importorskip("prefect_docker.worker", reason="prefect-docker is installed on Docker worker hosts only")
    k8s_worker = pytest.importorskip("prefect_kubernetes.worker", reason="prefect-kubernetes is installed on Kubernetes worker hosts only")

    async def render():
        d = await docker_worker.DockerWorkerJobConfiguration.from_template_and_values(_load("docker"), {}, client=object())
        k = await k8s_worker.KubernetesWorkerJobConfiguration.from_template_and_values(_load("kubernetes"), {}, client=object())
        return d, k

    d, k = asyncio.run(render())
    assert d.container_create_kwargs["device_requests"][0]["capabilities"] == [["gpu"]]
    assert k.job_manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
