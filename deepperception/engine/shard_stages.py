"""One shard of each long data-engine stage, as a picklable function of a :class:`ShardJob`.

These run wherever the shard runner puts them (a thread here, a Ray worker elsewhere): each opens
the store from the job, reads only its own input part, runs the stage's library function, and
commits its output as a shard record. Nothing here knows about Prefect.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pyarrow as pa

from deepperception.engine import backends, composition, distillation, failures, labeling
from deepperception.engine.sharding import ShardJob
from deepperception.store import ArtifactRef, ArtifactStore

log = logging.getLogger(__name__)


def previous_rows(store: ArtifactStore, job: ShardJob, part: int) -> pa.Table | None:
    """Good rows to keep: this shard's own earlier record (it had failed items), or the same part
    of the partial version this one retries (``spec["previous"]``; same input part, same items)."""
    if job.redo:
        record = store.completed_shards(job.out_ref, job.unit).get(job.index)
        if record is not None:
            return store.read_shard_table(job.out_ref, record)
    prev = job.spec.get("previous")
    if not prev:
        return None
    prev_ref = ArtifactRef.parse(prev)
    files = store.table_files(prev_ref)
    if len(files) == 1 and files[0].path == "data.parquet":  # an unsharded version: all of it
        return store.read_table(prev_ref)
    return store.read_part(prev_ref, part) if part < len(files) else None


def _release_arrow_memory() -> None:
    """Hand the Arrow allocator's cached free memory back after a shard: otherwise a worker's RSS
    keeps the high-water mark of every shard it ran (measured: most of the growth left at 10x the
    photos, benchmarks/RESULTS.md)."""
    pa.default_memory_pool().release_unused()


def _failure_meta(table: pa.Table, id_column: str, error_column: str) -> dict[str, Any]:
    """The shard's ``failures`` entry and how many of them were never attempted (budget spent)."""
    s = failures.summarize_table(table, id_column, error_column)
    return {"failures": s.to_metadata(), "not_attempted": s.skipped}


def label_shard(job: ShardJob) -> Any:
    """Label part ``spec["part"]`` of the images table (spec: images, part, labeling, previous)."""
    from deepperception.config import LabelingStageConfig
    from deepperception.engine.backends import make_labeler

    store = job.open_store()
    cfg = LabelingStageConfig.model_validate(job.spec["labeling"])
    part = job.spec["part"]
    images = store.read_part(ArtifactRef.parse(job.spec["images"]), part)
    labeler = make_labeler(cfg)
    try:
        result = labeling.label_table(images, labeler, cfg.options, previous=previous_rows(store, job, part),
                                      max_failure_rate=cfg.max_failure_rate)
    finally:
        backends.close(labeler)
    meta = {**_failure_meta(result.data, "image_id", "label_error"), **result.stats, "rows_in": images.num_rows,
            "rejected_examples": [f"{r['item_id']}: {r['reason']} ({r['detail']})"
                                  for r in result.rejected.slice(0, 3).to_pylist()]}
    record = store.commit_shard(job.out_ref, job.unit, job.index,
                                {"data": result.data, "rejected": result.rejected}, meta, replace=job.redo)
    _release_arrow_memory()
    return record


def plan_to_json(plan: composition.CompositePlan) -> dict:
    from dataclasses import asdict

    return asdict(plan)


def plan_from_json(d: dict) -> composition.CompositePlan:
    picks = tuple(composition.TilePick(**{**p, "box": tuple(p["box"])}) for p in d["picks"])
    return composition.CompositePlan(**{**d, "picks": picks})


def compose_shard(job: ShardJob) -> Any:
    """Render a block of planned composites (spec: labeled, composition, plans)."""
    store = job.open_store()
    cfg = composition.CompositionConfig.model_validate(job.spec["composition"])
    plans = [plan_from_json(p) for p in job.spec["plans"]]
    labeled = ArtifactRef.parse(job.spec["labeled"])
    wanted = {p.image_id for plan in plans for p in plan.picks if not p.image_uri}
    inline: dict[str, bytes] = {}
    parts = sorted({p.part for plan in plans for p in plan.picks if not p.image_uri})
    if wanted:
        for batch in store.iter_batches(labeled, columns=["image_id", "image"], parts=parts):
            for iid, img in zip(batch.column("image_id").to_pylist(), batch.column("image").to_pylist()):
                if iid in wanted:
                    inline[iid] = img
    rows = [composition.render_composite(plan, composition.load_tiles(plan, inline), cfg) for plan in plans]
    table = pa.Table.from_pylist(rows, schema=composition.COMPOSITES_SCHEMA)
    meta = {"layouts": dict(Counter(table.column("layout").to_pylist())), "composites": table.num_rows}
    record = store.commit_shard(job.out_ref, job.unit, job.index, {"data": table}, meta, replace=job.redo)
    _release_arrow_memory()
    return record


def distill_shard(job: ShardJob) -> Any:
    """CoTs for the composites of part ``spec["part"]`` (spec: composites, part, entities, distillation, previous)."""
    from deepperception.config import DistillationStageConfig
    from deepperception.engine.backends import make_teacher

    store = job.open_store()
    cfg = DistillationStageConfig.model_validate(job.spec["distillation"])
    part = job.spec["part"]
    comps = store.read_part(ArtifactRef.parse(job.spec["composites"]), part)
    teacher = make_teacher(cfg, store.read_table(ArtifactRef.parse(job.spec["entities"])))
    try:
        table = distillation.distill(comps, teacher, cfg.options, previous=previous_rows(store, job, part),
                                     max_failure_rate=cfg.max_failure_rate)
    finally:
        backends.close(teacher)
    meta: dict[str, Any] = {**_failure_meta(table, "question_id", "error"),
                            "error_reasons": dict(Counter(r for r in table.column("error_reason").to_pylist() if r))}
    usage = getattr(teacher, "usage", None)
    if usage is not None and hasattr(usage, "to_metadata"):
        meta["usage"] = usage.to_metadata()
    record = store.commit_shard(job.out_ref, job.unit, job.index, {"data": table}, meta, replace=job.redo)
    _release_arrow_memory()
    return record
