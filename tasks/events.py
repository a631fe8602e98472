"""Every committed version becomes a Prefect event, so a deployment trigger can react to it.

``deepperception.store.events`` announces commits without knowing about Prefect; this module
(imported by ``tasks.common``, hence by every task) registers the listener that emits
``deepperception.artifact.committed`` with ``prefect.events.emit_event``. prefect.yaml's
``evaluate-on-publish`` deployment has a trigger on that event for checkpoints.

The event's resource carries the artifact's name, ``name@version`` reference and store URI
(labels a trigger can match and template into parameters) and
``deepperception.standalone``: ``"true"`` when the committing run is not part of a larger run
(no parent: a stage deployment started from the UI or the CLI), ``"false"`` inside a
reproduction, which evaluates its own checkpoints; the trigger matches ``"true"`` only, so a
full reproduction does not evaluate each checkpoint twice.

Events are emitted only inside a Prefect flow or task run: outside one (a script using the
store) there is no API to send them to, and Prefect would start a temporary server for it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect.context import FlowRunContext, TaskRunContext
from prefect.events import emit_event

from deepperception.store.events import Commit, add_commit_listener

EVENT = "deepperception.artifact.committed"
log = logging.getLogger(__name__)


def store_location(uri: str) -> str:
    """The store URI as another process on this machine can open it (local paths made absolute).

    >>> store_location("s3://bucket/runs")
    's3://bucket/runs'
    >>> store_location("/tmp/x/../store")
    '/tmp/store'
    """
    return uri if "://" in uri else str(Path(uri).expanduser().resolve())


def _run_context() -> tuple[str | None, bool] | None:
    """``(flow run id, has a parent run)`` of the current Prefect run, or None outside runs."""
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        run = flow_ctx.flow_run
        return str(run.id), run.parent_task_run_id is not None
    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        return str(task_ctx.task_run.flow_run_id), True  # a task run without its flow's context: assume nested
    return None


def commit_event(commit: Commit, flow_run_id: str | None, nested: bool) -> dict:
    """The keyword arguments of ``emit_event`` for ``commit`` (a pure function, tested)."""
    ref = commit.ref
    manifest = commit.manifest
    uri = store_location(commit.store_uri)
    resource = {
        "prefect.resource.id": f"deepperception.artifact.{ref.name}.{ref.version}",
        "prefect.resource.name": str(ref),
        "deepperception.artifact.name": ref.name,
        "deepperception.artifact.version": ref.version,
        "deepperception.artifact.ref": str(ref),
        "deepperception.store": uri,
        "deepperception.standalone": "false" if nested else "true",
    }
    payload = {
        "stage": getattr(manifest, "stage", None),
        "config_hash": getattr(manifest, "config_hash", None),
        "code_version": getattr(manifest, "code_version", None),
        "upstream": dict(getattr(manifest, "upstream", None) or {}),
        "created_at": getattr(manifest, "created_at", None),
        "flow_run_id": flow_run_id,
    }
    return {"event": EVENT, "resource": resource, "payload": payload}


def emit_commit_event(commit: Commit) -> None:
    """The commit listener: emit the event when inside a Prefect run (see the module docstring)."""
    ctx = _run_context()
    if ctx is None:
        return
    emit_event(**commit_event(commit, *ctx))


add_commit_listener(emit_commit_event)
