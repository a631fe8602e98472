"""Whole-run reuse: answer an unchanged ``reproduce`` from a record instead of rerunning the flow.

Why: a rerun whose every stage is already committed does no work, yet going through Prefect
costs ~20 subflow runs of API round trips plus importing torch/transformers and starting a
server: 30-60 s on a loaded 2-core machine for a run that computes nothing. Stage versions are
deterministic functions of (config, code, upstream versions), and the upstream versions are
themselves functions of the same two inputs, so the whole run's outcome is a function of the
resolved config and the source tree. After a successful run the CLI writes a *run record*
``<store>/_reproductions/<run key>.json`` naming every artifact version the run returned; a
later run with the same key checks those versions exactly as ``run_stage`` checks a version it
would reuse (manifest parses, files present with their sizes, small files re-hashed, not
partial) and, if all pass, prints the same result without importing Prefect.

The run key hashes the fully resolved config (``ReproductionConfig``, profile name included),
the code version of the *whole* source tree (``code_version()``: any edit anywhere falls back
to the flow, which still reuses each unaffected stage and then writes a new record) and the
store URI. It is only used when nothing outside those inputs can change a stage's version
(:func:`ineligible_reason`): real dataset folders, an external base checkpoint and extra benches
are identified by their content at run time, so a config naming one always runs the flow.
A missing, unreadable, foreign or failing record means "run the flow", never an error.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

from deepperception.store import ArtifactRef, ArtifactStore
from deepperception.version import code_version, short_hash

log = logging.getLogger(__name__)

RECORDS_DIR = "_reproductions"
RECORD_FORMAT = 1


@dataclass(frozen=True)
class CommittedRun:
    """A reproduction whose every returned version is committed and intact."""

    key: str
    result: dict[str, Any]
    record: dict[str, Any]


def ineligible_reason(cfg) -> str | None:
    """Why a run of ``cfg`` cannot be answered from a record (``None``: it can).

    Inputs read from outside the store and the source tree are identified by their content only
    when the flow runs, so their runs always go through the flow.
    """
    if cfg.data.kind != "synthetic":
        return f"data.kind={cfg.data.kind} reads dataset files"
    if cfg.base_model.checkpoint:
        return "base_model.checkpoint names an external checkpoint"
    if cfg.comparison.extra_benches:
        return "comparison.extra_benches are imported by content"
    return None


def run_key(cfg, store_uri: str) -> str:
    """Hash of everything a whole run's outcome depends on: resolved config, source, store.

    >>> from deepperception.config import ReproductionConfig
    >>> a = run_key(ReproductionConfig(), "/s")
    >>> a == run_key(ReproductionConfig(), "/s"), a == run_key(ReproductionConfig(), "/t"), len(a)
    (True, False, 24)
    """
    return short_hash({"format": RECORD_FORMAT, "config": cfg.model_dump(mode="json"), "code": code_version(),
                       "store": store_uri}, 24)


def _record_path(store: ArtifactStore, key: str) -> str:
    return f"{store.root}/{RECORDS_DIR}/{key}.json"


def result_refs(result: dict[str, Any]) -> list[str]:
    """Every artifact reference a ``reproduce`` result names (the report and ``artifacts``).

    >>> result_refs({"report": "report@1", "artifacts": {"a": "x@2", "b": "report@1"}})
    ['report@1', 'x@2']
    """
    refs = [result["report"], *result.get("artifacts", {}).values()]
    return list(dict.fromkeys(str(r) for r in refs))


def write_record(store: ArtifactStore, cfg, result: dict[str, Any]) -> str | None:
    """Record a successful run's result under its run key; returns the key (None: not eligible).

    Best effort: a store that refuses the write only costs the next rerun its shortcut.
    """
    if ineligible_reason(cfg) is not None:
        return None
    key = run_key(cfg, store.uri)
    try:
        body = {"format": RECORD_FORMAT, "key": key, "profile": cfg.profile, "code_version": code_version(),
                "store": store.uri, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                "report": str(result["report"]),
                "artifacts": {k: str(v) for k, v in result.get("artifacts", {}).items()}}
        [ArtifactRef.parse(r) for r in result_refs(body)]  # only references: a record is read back as refs
        store.fs.create_dir(f"{store.root}/{RECORDS_DIR}", recursive=True)
        with store.fs.open_output_stream(_record_path(store, key)) as f:
            f.write(json.dumps(body, indent=1).encode())
    except Exception as exc:  # noqa: BLE001 - after a successful run, losing the shortcut is all it may cost
        log.warning("no run record written for %s: %s", key, exc)
        return None
    return key


def _read_record(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    try:
        with store.fs.open_input_stream(_record_path(store, key)) as f:
            record = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or record.get("key") != key:
        return None
    return record


def record_problems(store: ArtifactStore, record: dict[str, Any]) -> list[str]:
    """What stops the record's versions from being reused (empty: all committed, intact, complete),
    by the same check ``run_stage`` applies to a version it would reuse."""
    problems = []
    try:
        refs = [ArtifactRef.parse(r) for r in result_refs(record)]
    except Exception as exc:  # noqa: BLE001 - a malformed record is just not usable
        return [f"record: {exc}"]
    for ref in refs:
        if not store.exists(ref):
            problems.append(f"{ref}: not committed")
            continue
        try:
            bad = store.verify(ref, deep=False, rehash_up_to=store.settings.reuse_rehash_max_bytes)
            if not bad and store.manifest(ref).is_partial:
                bad = ["partial (failed items are retried by the flow)"]
        except Exception as exc:  # noqa: BLE001 - anything unreadable: let the flow decide
            bad = [str(exc)]
        problems += [f"{ref}: {b}" for b in bad]
    return problems


def committed_run(cfg, store: ArtifactStore) -> CommittedRun | None:
    """The result of an identical earlier run if every version it returned is still reusable,
    else None (then run the flow). Logs why a record was not used."""
    why = ineligible_reason(cfg)
    if why is not None:
        log.info("no run-record shortcut: %s", why)
        return None
    key = run_key(cfg, store.uri)
    record = _read_record(store, key)
    if record is None:
        return None
    problems = record_problems(store, record)
    if problems:
        log.info("run record %s not used: %s", key, "; ".join(problems[:3]))
        return None
    report = ArtifactRef.parse(record["report"])
    try:
        where = {f: store.location(report, f"report.{f}") for f in ("md", "json")}
    except Exception as exc:  # noqa: BLE001 - not a report this code writes: let the flow decide
        log.info("run record %s not used: %s", key, exc)
        return None
    result = {"report": record["report"], "report_markdown": where["md"], "report_json": where["json"],
              "artifacts": dict(record["artifacts"])}
    return CommittedRun(key=key, result=result, record=record)
