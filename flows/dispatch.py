"""Send a stage to another work pool (GPU workers) and get its artifact reference back.

``run_deployment`` returns the child's ``FlowRun``, not its result, and a failed child does not
fail the parent (PrefectHQ/prefect#11435). So every stage flow records what it committed under
``<store>/_runs/<flow run id>.json`` when it completes (``record_stage_result``, an on-completion
hook), and the parent reads that record after checking the child's final state.
"""

from __future__ import annotations

import json
from typing import Any

from deepperception.errors import PipelineError
from deepperception.store import ArtifactRef
from deepperception.version import short_hash
from tasks.common import open_store

RUNS_DIR = "_runs"


def _record_path(store, flow_run_id: str) -> str:
    return f"{store.root}/{RUNS_DIR}/{flow_run_id}.json"


def record_stage_result(flow, flow_run, state) -> None:
    """Prefect on-completion hook of every stage flow: write ``{flow run id -> result refs}``."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, ArtifactRef):
        refs: Any = str(result)
    elif isinstance(result, dict) and all(isinstance(v, ArtifactRef) for v in result.values()):
        refs = {k: str(v) for k, v in result.items()}
    else:
        return
    store = open_store(flow_run.parameters.get("store_uri"))
    store.fs.create_dir(f"{store.root}/{RUNS_DIR}", recursive=True)
    with store.fs.open_output_stream(_record_path(store, str(flow_run.id))) as f:
        f.write(json.dumps({"flow": flow.name, "flow_run_id": str(flow_run.id), "result": refs}).encode())


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def run_stage_deployment(deployment: str, parameters: dict[str, Any], store_uri: str | None = None,
                         timeout: float | None = None) -> ArtifactRef:
    """Run ``flow-name/deployment-name`` on its pool, wait, and return the reference it committed.

    The idempotency key is derived from the parent flow run, the deployment and its parameters:
    a retried parent re-attaches to its child run instead of starting a second training job, while
    a new parent run (a rerun after a failure, or a forced stage) starts a new child.
    """
    from prefect.context import FlowRunContext
    from prefect.deployments import run_deployment

    params = {**_jsonable(parameters), "store_uri": store_uri}
    ctx = FlowRunContext.get()
    parent = str(ctx.flow_run.id) if ctx and ctx.flow_run else "no-parent"
    key = f"{deployment}:{parent}:{short_hash(params, 24)}"
    flow_run = run_deployment(name=deployment, parameters=params, timeout=timeout, idempotency_key=key,
                              poll_interval=2)
    state = flow_run.state
    if state is None or not state.is_completed():
        raise PipelineError(
            f"deployment {deployment} run {flow_run.id} ended in state "
            f"{state.type.value if state else 'unknown'}: {state.message if state else ''}".strip())
    store = open_store(store_uri)
    record = _wait_for_record(store, str(flow_run.id))
    if record is None:
        raise PipelineError(f"deployment {deployment} run {flow_run.id} completed but recorded no result in "
                            f"{store.uri}/{RUNS_DIR} within {RECORD_WAIT_S:.0f} s: does the worker use the same store?")
    return ArtifactRef.parse(record["result"])


RECORD_WAIT_S = 120.0
"""How long the parent waits for a completed child's record. Prefect runs on-completion hooks
*after* the run is marked Completed, so a parent polling the state can see Completed a moment
before the hook has written the record (seen with four evaluations dispatched in a row)."""


def _wait_for_record(store, flow_run_id: str, wait_s: float | None = None) -> dict | None:
    import time

    deadline = time.monotonic() + (RECORD_WAIT_S if wait_s is None else wait_s)
    while True:
        try:
            with store.fs.open_input_stream(_record_path(store, flow_run_id)) as f:
                return json.loads(f.read())
        except (FileNotFoundError, OSError, json.JSONDecodeError):
            # absent, or caught mid-write: the hook writes it once, so wait and read again
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)
