"""Run a stage body at most once per version: the skip-if-done rule every stage shares.

Versions a stage produces form a short *retry chain*: the planned version ``v0`` and, when a
version is *partial* (its metadata says ``failures.failed > 0``), attempt versions salted
``retry-1``, ``retry-2``, ... A rerun walks the chain, reuses the first complete version, and
otherwise computes the first missing one, handing the stage the latest partial version as
``writer.previous`` so it can keep that version's good rows and retry only the failed items.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import BaseModel

from deepperception.errors import AlreadyCommittedError, ArtifactError, InputDataError
from deepperception.store.artifacts import ArtifactStore, Manifest, VersionWriter
from deepperception.store.lease import Lease, NoLease, read_lease, wait_while_leased
from deepperception.store.refs import ArtifactRef
from deepperception.code_scope import CodeScope, code_scope, function_root, task_root_on_stack
from deepperception.version import stage_code_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageEvent:
    """What :func:`run_stage` tells its listeners as a stage starts, runs its body and ends."""

    phase: Literal["start", "produce", "produced", "end"]
    """``start``/``end`` around the whole stage (reuse included); ``produce``/``produced`` around the
    body alone, when it runs (planning, claiming and committing are the store's, not the stage's)."""
    stage: str
    name: str
    upstream: dict[str, ArtifactRef]
    scope: CodeScope | None
    """The code hashed into the version (None for a stage outside this repository's tasks)."""
    ref: ArtifactRef | None = None
    """The version used (``end`` only, None when the stage failed)."""
    reused: bool | None = None
    """``end``: True when a committed version was reused, False when the body ran (None: it failed)."""


_listeners: list[Callable[[StageEvent], None]] = []


def add_stage_listener(fn: Callable[[StageEvent], None]) -> None:
    """Call ``fn(event)`` at every stage start and end in this process (tests count executed stages
    and switch coverage contexts with it). A listener's error is logged, never fails the stage."""
    _listeners.append(fn)


def remove_stage_listener(fn: Callable[[StageEvent], None]) -> None:
    if fn in _listeners:
        _listeners.remove(fn)


def _notify(event: StageEvent) -> None:
    for fn in list(_listeners):
        try:
            fn(event)
        except Exception:  # noqa: BLE001 - an observer must not fail a stage
            log.exception("stage listener %r failed on %s %s", fn, event.phase, event.stage)


def stage_roots(produce: Callable, task: Callable | str | None = None) -> tuple[str, ...]:
    """Scope roots of a stage: the top-level function ``produce`` is defined in (the task function,
    for the usual closure), the innermost Prefect task function running (when ``produce`` comes
    from a shared helper) and ``task`` when given (a function, a Prefect task or ``"pkg.mod:name"``)."""
    roots = [function_root(produce), task_root_on_stack(2)]
    if task is not None:
        roots.append(task if isinstance(task, str) else function_root(task))
    return tuple(sorted({r for r in roots if r}))


def retry_salt(base: str, attempt: int) -> str:
    """Salt of the ``attempt``-th version of a retry chain (0: the planned version itself).

    >>> retry_salt("", 0), retry_salt("", 2), retry_salt("2026-01-01T00:00:00", 1)
    ('', 'retry-2', '2026-01-01T00:00:00+retry-1')
    """
    if attempt == 0:
        return base
    return f"{base}+retry-{attempt}" if base else f"retry-{attempt}"


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
    task: Callable | str | None = None,
) -> tuple[ArtifactRef, bool]:
    """Produce artifact ``name`` unless the identical, complete version is already committed.

    ``produce(writer)`` writes the data files and returns manifest metadata; the manifest is
    written only after it returns, and everything is removed if it raises. ``force`` salts the
    version id with the current time, giving a new version (downstream versions change too).
    The code in the version id is derived from ``produce``: every symbol of this repository its
    task function reaches (:mod:`deepperception.code_scope`; ``task`` adds a root when ``produce``
    is defined elsewhere), so editing code the stage runs gives a new version and editing the
    evaluator never invalidates a trained checkpoint. ``code``/``task_module`` (hand-listed
    modules, the older form) are hashed in addition when given. Returns ``(ref, reused)``.
    Listeners (:func:`add_stage_listener`) hear a ``start`` and an ``end`` :class:`StageEvent`.

    A reused version is checked first (manifest parses, every file present with its recorded
    size, files up to ``StoreSettings.reuse_rehash_max_bytes`` re-hashed). A corrupt one is refused with an error naming the file, unless
    ``store.settings.repair`` is on: then it is moved to the store's ``_quarantine/`` (kept for
    inspection, not deleted) and recomputed under the same version id. A partial version
    (metadata ``failures.failed > 0``) is never reused: see the module docstring.
    """
    base_salt = dt.datetime.now(dt.timezone.utc).isoformat() if force else ""
    roots = stage_roots(produce, task)
    version = stage_code_version(roots, code, (task_module,) if task_module else ())
    scope = code_scope(roots) if roots else None
    _notify(StageEvent("start", stage, name, dict(upstream), scope))
    ref: ArtifactRef | None = None
    reused: bool | None = None
    try:
        ref, reused = _run(store, name, stage, config, upstream, produce, base_salt, version)
    finally:
        _notify(StageEvent("end", stage, name, dict(upstream), scope, ref, reused))
    return ref, reused


def _run(store: ArtifactStore, name: str, stage: str, config, upstream: dict[str, ArtifactRef],
         produce: Callable[[VersionWriter], dict[str, Any] | None], base_salt: str,
         version: str | None) -> tuple[ArtifactRef, bool]:
    previous: ArtifactRef | None = None
    for attempt in itertools.count():
        writer = store.plan(name, stage, config, upstream, salt=retry_salt(base_salt, attempt), code=version)
        manifest, lease = _claim(store, writer.ref, stage)
        if manifest is None:
            writer.previous = previous
            with lease:
                return _compute(writer, stage, upstream, produce)
        if not manifest.is_partial:
            log.info("stage %s: reusing %s (identical inputs, config and code)", stage, writer.ref)
            return writer.ref, True
        f = manifest.failures
        log.info("stage %s: %s is partial (%s of %s items failed); retrying them in the next version",
                 stage, writer.ref, f.get("failed"), f.get("total"))
        previous = writer.ref
    raise AssertionError("unreachable")  # pragma: no cover


def _claim(store: ArtifactStore, ref: ArtifactRef, stage: str) -> tuple[Manifest | None, Lease | NoLease]:
    """Either ``ref``'s intact committed manifest (reuse it) or a held lease to compute it.

    While another live run holds the lease, wait for it to commit (or give up and die).
    """
    while True:
        manifest = _intact_manifest(store, ref, stage)
        if manifest is not None:
            return manifest, NoLease()
        if not store.settings.lease:
            return None, NoLease()
        lease = Lease.acquire(store, ref)
        if lease is None:
            held = read_lease(store, ref)
            log.info("stage %s: %s is being computed by %s; waiting for it", stage, ref, held.owner if held else "?")
            wait_while_leased(store, ref)
            continue
        if store.exists(ref):  # committed between our check and our lease
            lease.release()
            continue
        return None, lease


def _intact_manifest(store: ArtifactStore, ref: ArtifactRef, stage: str) -> Manifest | None:
    """The committed manifest of ``ref`` if it is intact, ``None`` if there is none (any more)."""
    if not store.exists(ref):
        return None
    try:
        problems = store.verify(ref, deep=False, rehash_up_to=store.settings.reuse_rehash_max_bytes)
    except ArtifactError:
        if store.exists(ref):
            raise
        return None  # quarantined by a concurrent repair meanwhile
    if not problems:
        return store.manifest(ref)
    if not store.settings.repair:
        raise ArtifactError(
            f"stage {stage}: committed artifact {ref} is corrupt: {'; '.join(problems)}. "
            f"Rerun with repair (reproduce --repair, or DP_STORE_REPAIR=1) to move it aside and recompute it"
        )
    where = store.quarantine(ref)
    log.warning("stage %s: %s was corrupt (%s); moved to %s, recomputing it", stage, ref, "; ".join(problems), where)
    return None


def _compute(writer: VersionWriter, stage: str, upstream: dict[str, ArtifactRef],
             produce: Callable[[VersionWriter], dict[str, Any] | None]) -> tuple[ArtifactRef, bool]:
    if writer.previous is not None:
        log.info("stage %s: computing %s, repairing the failed items of %s", stage, writer.ref, writer.previous)
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
        _notify(StageEvent("produce", stage, writer.name, dict(upstream), None, writer.ref))
        try:
            metadata = produce(writer)
        finally:
            _notify(StageEvent("produced", stage, writer.name, dict(upstream), None, writer.ref))
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
