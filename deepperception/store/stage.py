"""Run a stage body at most once per version: the skip-if-done rule every stage shares."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Callable

from pydantic import BaseModel

from deepperception.errors import AlreadyCommittedError, InputDataError
from deepperception.store.artifacts import ArtifactRef, ArtifactStore, VersionWriter
from deepperception.version import code_version

log = logging.getLogger(__name__)


def run_stage(
    store: ArtifactStore,
    name: str,
    stage: str,
    config: BaseModel | dict[str, Any] | None,
    upstream: dict[str, ArtifactRef],
    produce: Callable[[VersionWriter], dict[str, Any] | None],
    *,
    force: bool = False,
    code: tuple[str, ...] | None = None,
    task_module: str | None = None,
) -> tuple[ArtifactRef, bool]:
    """Produce artifact ``name`` unless the identical version is already committed.

    ``produce(writer)`` writes the data files and returns manifest metadata; the manifest is
    written only after it returns, and everything is removed if it raises. ``force`` salts the
    version id with the current time, giving a new version (downstream versions change too).
    ``code`` names the library modules the stage runs (their imports are followed) and
    ``task_module`` the thin task module calling it: only that code is in the version id, so
    editing the evaluator never invalidates a trained checkpoint. Returns ``(ref, reused)``.
    """
    salt = dt.datetime.now(dt.timezone.utc).isoformat() if force else ""
    version = code_version(code, (task_module,) if task_module else ()) if code else None
    writer = store.plan(name, stage, config, upstream, salt=salt, code=version)
    if writer.exists:
        log.info("stage %s: reusing %s (identical inputs, config and code)", stage, writer.ref)
        return writer.ref, True
    try:
        with writer:
            ref = _produce_and_commit(writer, stage, upstream, produce)
    except AlreadyCommittedError:
        log.info("stage %s: %s was committed by a concurrent run; using it", stage, writer.ref)
        return writer.ref, True
    log.info("stage %s: committed %s", stage, ref)
    return ref, False


def _produce_and_commit(writer: VersionWriter, stage: str, upstream: dict[str, ArtifactRef],
                        produce: Callable[[VersionWriter], dict[str, Any] | None]) -> ArtifactRef:
    try:
        metadata = produce(writer)
    except InputDataError as exc:
        # Name the stage, and the input artifact when there is only one candidate.
        if exc.stage is None or (exc.artifact is None and len(upstream) == 1):
            raise InputDataError(
                exc.message,
                stage=exc.stage or stage,
                artifact=exc.artifact or (str(next(iter(upstream.values()))) if len(upstream) == 1 else None),
                row=exc.row,
                field=exc.field,
            ) from exc
        raise
    return writer.commit(metadata)
