"""Progress of long loops as Prefect progress artifacts (the bar on a run's Artifacts tab).

Importing this module installs :class:`PrefectProgressSink` as :mod:`deepperception.progress`'s
sink, so every ``progress(...)`` tracker the library opens inside a flow or task run shows up
on that run; outside a run (``task.fn`` in a script, a Ray worker, a launched training
subprocess) trackers stay no-ops. Prefect's own API is used as documented:
``create_progress_artifact`` once, in the thread that has the run context (so the artifact is
attached to the run), then ``update_progress_artifact(id, progress, description)``, which updates
in place (no versions). Updates may come from worker threads that lack the run's context
variables (the API URL of a test harness or an ephemeral server lives there), so each update
runs inside a copy of the context captured at start.
"""

from __future__ import annotations

import contextvars
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext, TaskRunContext

from deepperception import progress as _progress
from deepperception.progress import describe, percent


def progress_key(what: str) -> str:
    """Artifact key of a tracker: ``progress-`` + the slug Prefect keys allow (a-z, 0-9, dashes).

    >>> progress_key("evaluate base (r1 prompt)")
    'progress-evaluate-base-r1-prompt'
    """
    slug = "".join(c if c.isalnum() and c.isascii() else "-" for c in what.lower())
    return "progress-" + "-".join(p for p in slug.split("-") if p)


class _Handle:
    def __init__(self, artifact_id, context: contextvars.Context, what: str) -> None:
        self.artifact_id, self.context, self.what = artifact_id, context, what


class PrefectProgressSink:
    """Sink for :mod:`deepperception.progress` that writes Prefect progress artifacts."""

    def start(self, what: str, done: int, total: int, unit: str) -> Any:
        if TaskRunContext.get() is None and FlowRunContext.get() is None:
            return None  # not inside a run: nothing to attach a bar to
        artifact_id = create_progress_artifact(percent(done, total), key=progress_key(what),
                                               description=describe(what, done, total, unit), _sync=True)
        return _Handle(artifact_id, contextvars.copy_context(), what)

    def update(self, handle: _Handle, done: int, total: int, unit: str, final: bool) -> None:
        text = describe(handle.what, done, total, unit) + (" done" if final and done >= total else "")
        # The tracker never updates one handle concurrently, so entering its context is safe.
        handle.context.run(update_progress_artifact, handle.artifact_id, percent(done, total),
                           description=text, _sync=True)


SINK = PrefectProgressSink()


def install() -> None:
    """Make :data:`SINK` the process's progress sink (idempotent; done at import)."""
    if _progress.get_sink() is not SINK:
        _progress.set_sink(SINK)


install()
