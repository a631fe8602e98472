"""What the parent run of a reproduction shows in the Prefect UI: the report, the metrics, and
every artifact version the run produced, each with where it is in the store.

``reproduce`` calls :func:`publish_run_artifacts` once, at its end, from its own flow body, so
the artifacts belong to the parent run (its Artifacts tab) rather than to a stage's subflow:

* ``run-report`` (Markdown): the committed ``report.md``, as written (it is escaped for the UI by
  :mod:`deepperception.report`);
* ``run-metrics`` (table): arm x bench with Acc@0.5, its 95% CI, IoU, seen/unseen Acc
  (:func:`deepperception.report.metrics_table` of ``report.json``);
* ``run-artifact-versions`` (Markdown): one row per version with its store location, whether this
  run committed it or reused it, and a link to the flow run that committed it.

Everything is read back from the store (the report's committed files, every version's
manifest), never recomputed: what the UI shows is what the store holds.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from uuid import UUID

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext

from deepperception.markdown import md_text
from deepperception.report import VersionRow, metrics_table, versions_markdown
from deepperception.store import ArtifactRef, ArtifactStore
from tasks.common import open_store, run_logger

REPORT_KEY, METRICS_KEY, VERSIONS_KEY = "run-report", "run-metrics", "run-artifact-versions"


def _parse_time(text: str) -> dt.datetime | None:
    """An ISO timestamp as an aware datetime (naive ones are UTC).

    >>> _parse_time("2026-01-01T00:00:00.5+00:00").isoformat()
    '2026-01-01T00:00:00.500000+00:00'
    >>> _parse_time("not a time") is None
    True
    """
    try:
        t = dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _run_started() -> dt.datetime | None:
    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx else None
    start = run and (run.start_time or run.expected_start_time)
    return start if start is None or start.tzinfo else start.replace(tzinfo=dt.timezone.utc)


def _flow_runs(ids: set[str]) -> dict[str, tuple[str, str | None]]:
    """``{flow run id: (name, UI link)}`` for the runs that committed versions (one API read each;
    a run deleted since, or an API that cannot be reached, leaves the id unnamed)."""
    from prefect.client.orchestration import get_client
    from prefect.utilities.urls import url_for

    out: dict[str, tuple[str, str | None]] = {}
    log = run_logger()
    with get_client(sync_client=True) as client:
        for fid in sorted(ids):
            try:
                run = client.read_flow_run(UUID(fid))
            except Exception as exc:  # noqa: BLE001 - an index row without a link is still useful
                log.warning("flow run %s that committed a version could not be read: %s", fid, exc)
                continue
            out[fid] = (run.name, url_for("flow-run", obj_id=fid) or None)
    return out


def version_rows(store: ArtifactStore, refs: dict[str, str], since: dt.datetime | None = None) -> list[VersionRow]:
    """One :class:`VersionRow` per ``role -> name@version`` from each version's manifest; ``new``
    when it was committed at or after ``since`` (the parent run's start), else reused."""
    manifests = {role: store.manifest(ArtifactRef.parse(text)) for role, text in refs.items()}
    runs = _flow_runs({m.flow_run_id for m in manifests.values() if m.flow_run_id})
    rows = []
    for role, m in manifests.items():
        created = _parse_time(m.created_at)
        name, url = runs.get(m.flow_run_id or "", (None, None))
        rows.append(VersionRow(
            role=role, ref=str(m.ref), stage=m.stage, created_at=m.created_at, location=store.location(m.ref),
            new=None if since is None or created is None else created >= since,
            committed_by=name or (m.flow_run_id[:8] if m.flow_run_id else None), committed_by_url=url))
    return rows


def store_uri_of(result: dict[str, Any]) -> str | None:
    """The store a ``reproduce`` result lives in, from its ``report_markdown`` location (what
    :meth:`ArtifactStore.location` wrote: ``<store>/<name>/<version>/...``), or None.

    >>> store_uri_of({"report": "report@ab12", "report_markdown": "s3://b/runs/report/ab12/_attempts/x/report.md"})
    's3://b/runs'
    >>> store_uri_of({"report": "report@ab12"}) is None
    True
    """
    ref, where = result.get("report"), result.get("report_markdown")
    if not ref or not where:
        return None
    ref = ArtifactRef.parse(ref)
    root, sep, _ = str(where).partition(f"/{ref.name}/{ref.version}/")
    return root if sep else None


def publish_run_artifacts(result: dict[str, Any], store_uri: str | None = None) -> dict[str, UUID]:
    """Create the parent run's ``run-report``, ``run-metrics`` and ``run-artifact-versions``
    artifacts from ``reproduce``'s result (its ``report`` ref and ``artifacts`` mapping), reading
    the store at ``store_uri`` (None: the store the result's report lives in, endpoint and
    credentials from the environment as for the stages). Returns the artifact ids by key. Call it
    from the parent flow's body (not from a task) so the artifacts are the parent run's."""
    store = open_store(store_uri or store_uri_of(result))
    report_ref = ArtifactRef.parse(result["report"])
    markdown = store.read_bytes(report_ref, "report.md").decode()
    report = json.loads(store.read_bytes(report_ref, "report.json"))
    profile = (report.get("header") or {}).get("profile")
    what = f"profile {profile}" if profile else "this run"
    # Descriptions are Markdown in the UI too (Acc@0.5 would become a mail link).
    ids = {
        REPORT_KEY: create_markdown_artifact(markdown, key=REPORT_KEY,
                                             description=md_text(f"Reproduction report ({what}), {report_ref}")),
        METRICS_KEY: create_table_artifact(
            metrics_table(report), key=METRICS_KEY,
            description=md_text(f"Acc@0.5 with its 95% CI, IoU per arm and bench ({what}), {report_ref}")),
    }
    refs = {"report": str(report_ref), **result.get("artifacts", {})}
    rows = version_rows(store, refs, since=_run_started())
    ids[VERSIONS_KEY] = create_markdown_artifact(
        versions_markdown(rows, store.uri), key=VERSIONS_KEY,
        description=md_text(f"{len(rows)} artifact versions ({sum(1 for r in rows if r.new)} new) in {store.uri}"))
    return ids
