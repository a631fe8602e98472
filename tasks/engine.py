"""Thin Prefect tasks of the data engine: read input artifacts, call the library, commit output.

Each task takes and returns artifact references only; the heavy lifting is in
``deepperception.domain``, ``deepperception.sources`` and ``deepperception.engine``.

Tables stream: every output is written in bounded Parquet parts and every input read part by
part, so a stage's memory does not grow with its input. The long stages (labeling, composition,
distillation) run shard by shard through :func:`tasks.sharding.map_shards` (threads or Ray); each
finished shard is committed on its own, so a stage killed half way, rerun, computes only the
shards it had not finished, and the version it commits equals an uninterrupted run's.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
from prefect import task

from deepperception.config import (
    DataSourceConfig,
    DatasetsConfig,
    DistillationStageConfig,
    KnowledgeStageConfig,
    LabelingStageConfig,
    ShardingConfig,
)
from deepperception.domain.entity import entities_to_table
from deepperception.domain.synthetic import mine_entities
from deepperception.engine import collection, composition, datasets, failures, filtering, shard_stages
from deepperception.engine.collection import CollectionConfig
from deepperception.engine.common import REJECTED_SCHEMA, merge_counts
from deepperception.engine.composition import CompositionConfig
from deepperception.engine.filtering import FilterConfig
from deepperception.engine.shard_runner import ShardRunnerConfig
from deepperception.errors import InputDataError
from deepperception.store import ArtifactRef
from deepperception.store.stage import run_stage
from tasks.common import TASK_DEFAULTS, open_store, read_input_table, require_input_rows, run_logger
from tasks.sharding import run_stage_shards

DEFAULT_SHARDING = ShardingConfig()


def _commit_table(writer, table: pa.Table, **meta) -> dict:
    failures.require_rows(table, stage=writer.stage, artifact=writer.name)
    writer.write_table(table)
    return {"rows": table.num_rows, **meta}


def _endpoint_hint(backend: str, endpoint) -> str:
    return f" (backend {backend}, endpoint {endpoint.base_url}, model {endpoint.model}: is the server up?)"


def _sum_failures(records: list) -> failures.FailureSummary:
    """The stage's failures over all shards (examples: the first few, in shard order)."""
    failed = total = 0
    examples: list[str] = []
    for r in records:
        f = (r.metadata or {}).get("failures") or {}
        failed += int(f.get("failed", 0))
        total += int(f.get("total", 0))
        examples += [e for e in f.get("examples", []) if len(examples) < failures.N_EXAMPLES]
    return failures.FailureSummary(failed=failed, total=total, examples=examples[:failures.N_EXAMPLES])


def _check_failures(writer, logger, summary: failures.FailureSummary, max_failure_rate: float, hint: str = "",
                    not_attempted: int = 0) -> dict:
    """Fail the stage (commit nothing) past the limit; else the manifest's ``failures`` entry,
    which makes a version with failed items partial, so a rerun retries them."""
    if not_attempted:
        summary = failures.FailureSummary(summary.failed, summary.total, summary.examples, skipped=not_attempted)
    failures.enforce_failure_limit(summary, stage=writer.stage, artifact=writer.name,
                                   max_failure_rate=max_failure_rate, hint=hint)
    if summary.failed:
        logger.warning("%s: %d of %d items of %s failed (within max_failure_rate %.1f%%); committed as a partial "
                       "version, a rerun retries them. First errors: %s", writer.stage, summary.failed, summary.total,
                       writer.name, 100 * max_failure_rate, "; ".join(summary.examples))
    return summary.to_metadata()


def _write_stream(writer, name: str, batches: Iterable[pa.Table | pa.RecordBatch], schema: pa.Schema,
                  max_rows: int | None = None, max_bytes: int | None = None) -> int:
    with writer.table_writer(name, schema=schema, max_rows=max_rows, max_bytes=max_bytes) as tw:
        for b in batches:
            if b.num_rows:
                tw.write(b)
    return tw.rows


@task(name="mine-entities", **TASK_DEFAULTS)
def mine_entities_task(config: DataSourceConfig, store_uri: str | None = None, force: bool = False,
                       knowledge: KnowledgeStageConfig | None = None) -> ArtifactRef:
    """Entities with knowledge cards: the synthetic domain's own, or for real datasets (by source)
    cards an LLM writes (``knowledge.backend="openai"``), cached per entity."""
    from deepperception.sources.collect import source_entities

    store = open_store(store_uri)
    logger = run_logger()
    know = knowledge or KnowledgeStageConfig()

    def produce(w):
        meta: dict[str, Any] = {}
        if config.kind == "synthetic":
            entities = mine_entities(config.synthetic)
        else:
            entities = [e for spec in config.source_specs() for e in source_entities(spec)]
            if know.backend == "openai":
                entities, meta = _knowledge_cards(store, w, logger, entities, know)
        table = entities_to_table(entities)
        return _commit_table(w, table, per_category=dict(Counter(e.category for e in entities)), **meta)

    cfg: dict[str, Any] = {"data": config.model_dump(mode="json")}
    if config.kind != "synthetic" and know.backend != "none":
        from deepperception.engine.knowledge import knowledge_prompt_hash

        cfg["knowledge"] = {**know.model_dump(mode="json"), "prompt_hash": knowledge_prompt_hash()}
    return run_stage(store, "entities", "mine", cfg, {}, produce, force=force)[0]


def _knowledge_cards(store, w, logger, entities: list, know: KnowledgeStageConfig) -> tuple[list, dict]:
    """Cards for ``entities`` from the knowledge endpoint (cached per model, prompt and entity)."""
    from deepperception.engine.backends import make_client
    from deepperception.engine.knowledge import DirCardCache, generate_cards, knowledge_prompt_hash

    cache = DirCardCache(store.settings.local_cache() / "knowledge-cards") if know.cache else None
    cards: dict[str, str] = {}
    errors: list[str] = []
    reasons: Counter = Counter()
    cached = 0
    with make_client(know.endpoint) as client:
        for out in generate_cards(entities, client, cache):
            if out.card:
                cards[out.entity_id] = out.card
                cached += int(out.cached)
            else:
                reasons[out.reason or "item_failed"] += 1
                errors.append(f"{out.entity_id}: {out.error}")
        usage = client.meter.to_metadata()
    summary = failures.FailureSummary(failed=len(errors), total=len(entities), examples=errors[:failures.N_EXAMPLES])
    failures.enforce_failure_limit(summary, stage="mine", artifact="entities", max_failure_rate=know.max_failure_rate,
                                   hint=_endpoint_hint("openai", know.endpoint))
    if errors:
        logger.warning("mine: %d of %d entities got no knowledge card: %s", len(errors), len(entities),
                       "; ".join(errors[:3]))
    out = [e.model_copy(update={"knowledge_card": cards.get(e.entity_id, "")}) for e in entities]
    return out, {"knowledge": {"model": know.endpoint.model, "backend": "openai", "prompt_hash": knowledge_prompt_hash(),
                               "usage": usage, "cached": cached, "failed": dict(reasons)}}


@task(name="collect-images", **TASK_DEFAULTS)
def collect_images_task(
    source: DataSourceConfig, config: CollectionConfig, entities: ArtifactRef,
    store_uri: str | None = None, force: bool = False, sharding: ShardingConfig | None = None,
) -> ArtifactRef:
    """Single-entity photos: rendered (synthetic) or read from datasets in their own layouts. Real
    photos are referenced by URI, never copied; each part of the table is one labeling shard."""
    from deepperception.sources.collect import collect_batches

    store = open_store(store_uri)
    shards = sharding or DEFAULT_SHARDING

    def produce(w):
        drops: list[dict] = []
        pools: Counter = Counter()

        def batches():
            if source.kind == "synthetic":
                table = collection.collect_images(read_input_table(store, entities, "collect"), config)
                yield from table.to_batches(max_chunksize=1024)
                return
            for spec in source.source_specs():
                yield from collect_batches(spec, on_drop=drops.append)

        def counted():
            for b in batches():
                pools.update(b.column("pool").to_pylist())
                yield b

        rows = _write_stream(w, "data", counted(), collection.IMAGES_SCHEMA, max_rows=shards.images_per_shard)
        failures.require_rows(pa.table({"n": [0] * rows}), stage=w.stage, artifact=w.name)
        rejected = [{"item_id": d["item_id"], "stage": "collect", "reason": d["reason"],
                     "detail": f"{d.get('uri') or ''} {d['detail']}".strip()} for d in drops]
        w.write_table(pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA), "rejected")
        return {"rows": rows, "pools": dict(pools), "rejected": dict(Counter(d["reason"] for d in drops))}

    stage_cfg = {"source": source.model_dump(mode="json"), "collection": config.model_dump(mode="json"),
                 "images_per_shard": shards.images_per_shard}
    return run_stage(store, "images", "collect", stage_cfg, {"entities": entities}, produce, force=force)[0]


@task(name="label-boxes", **TASK_DEFAULTS)
def label_boxes_task(
    config: LabelingStageConfig, images: ArtifactRef, store_uri: str | None = None, force: bool = False,
    runner: ShardRunnerConfig | None = None,
) -> ArtifactRef:
    """A box for every photo, one shard per part of the images table."""
    store = open_store(store_uri)
    logger = run_logger()

    def produce(w):
        require_input_rows(store, images, "label")
        n = len(store.table_files(images))
        spec = {"images": str(images), "labeling": config.model_dump(mode="json"),
                "previous": str(w.previous) if w.previous else None}
        records = run_stage_shards(store, w, logger, "label", n, lambda i: {**spec, "part": i},
                              shard_stages.label_shard, runner)
        hint = _endpoint_hint(config.backend, config.endpoint) if config.backend == "openai" else ""
        if sum(r.rows("data") for r in records) == 0 and any(r.rows("rejected") for r in records):
            first = next(e for r in records for e in r.metadata.get("rejected_examples", []))
            raise InputDataError(f"no photo of {images} could be used ({_merge(records, 'rejected')}); first: {first}",
                                 stage="label", artifact=str(images), row=first.split(":", 1)[0], field="image")
        summary = _sum_failures(records)
        found = _check_failures(w, logger, summary, config.max_failure_rate, hint,
                                not_attempted=sum(int(r.metadata.get("not_attempted", 0)) for r in records))
        labeled = sum(r.rows("data") for r in records)
        failures.require_rows(pa.table({"n": [0] * labeled}), stage=w.stage, artifact=w.name)
        w.adopt_shards(records)
        stats = {k: _merge(records, k) for k in ("agreement", "box_source", "rejected", "usage",
                                                 "fallback_to_dataset_box")}
        agree = stats["agreement"] or {}
        if agree.get("compared"):
            logger.info("label: %d model boxes agree with the dataset's (IoU >= %.2f) for %.1f%% of %d photos",
                        agree["agreeing"], config.options.agreement_iou,
                        100 * agree["agreeing"] / agree["compared"], agree["compared"])
        return {"rows": labeled, "failures": found, "shards": len(records), **stats,
                "labeler": {"backend": config.backend, "model": config.endpoint.model if config.backend == "openai"
                            else "oracle", "prompt": "Find and give the bounding box of {E}"}}

    return run_stage(store, "labeled-images", "label", config, {"images": images}, produce, force=force)[0]


def _merge(records: list, key: str) -> Any:
    out = None
    for r in records:
        out = merge_counts(out, (r.metadata or {}).get(key))
    if key == "agreement" and out:
        out["threshold"] = (records[0].metadata.get("agreement") or {}).get("threshold")
    return out


@task(name="compose-images", **TASK_DEFAULTS)
def compose_task(
    config: CompositionConfig, labeled: ArtifactRef, store_uri: str | None = None, force: bool = False,
    sharding: ShardingConfig | None = None, runner: ShardRunnerConfig | None = None,
) -> ArtifactRef:
    """Multi-entity composites: planned from the labeled metadata (streamed, no pixels), then
    rendered shard by shard."""
    store = open_store(store_uri)
    logger = run_logger()
    shards = sharding or DEFAULT_SHARDING

    def produce(w):
        require_input_rows(store, labeled, "compose")
        names = _columns(store, labeled)
        wanted = [c for c in composition.PLAN_COLUMNS + ["image_uri", "crop_bottom"] if c in names]
        plans = composition.plan_composites(
            ((part, b) for part in range(len(store.table_files(labeled)))
             for b in store.iter_batches(labeled, columns=wanted, parts=[part])), config)
        block = shards.composites_per_shard
        chunks = [plans[i:i + block] for i in range(0, len(plans), block)]
        failures.require_rows(pa.table({"n": [0] * len(plans)}), stage=w.stage, artifact=w.name)
        spec = {"labeled": str(labeled), "composition": config.model_dump(mode="json")}
        records = run_stage_shards(store, w, logger, "compose", len(chunks),
                              lambda i: {**spec, "plans": [shard_stages.plan_to_json(p) for p in chunks[i]]},
                              shard_stages.compose_shard, runner)
        w.adopt_shards(records)
        return {"rows": sum(r.rows() for r in records), "layouts": _merge(records, "layouts"), "shards": len(records)}

    stage_cfg = {**config.model_dump(mode="json"), "composites_per_shard": shards.composites_per_shard}
    return run_stage(store, f"composites-{config.pool}", "compose", stage_cfg, {"labeled": labeled}, produce,
                     force=force)[0]


def _columns(store, ref: ArtifactRef, table: str = "data") -> list[str]:
    import pyarrow.parquet as pq

    entry = store.table_files(ref, table)[0]
    with store.fs.open_input_file(store._path(ref.name, ref.version, entry.location)) as f:
        return pq.ParquetFile(f).schema_arrow.names


@task(name="build-bench", **TASK_DEFAULTS)
def build_bench_task(
    config: DatasetsConfig, composites: ArtifactRef, store_uri: str | None = None, force: bool = False
) -> ArtifactRef:
    """The held-out bench in the official KVG-Bench parquet schema."""
    store = open_store(store_uri)

    def produce(w):
        require_input_rows(store, composites, "build-bench")
        counters: dict[str, int] = {}
        split_of: dict[str, str] = {}

        def batches():
            for b in store.iter_batches(composites, batch_size=256):
                t = pa.Table.from_batches([b])
                for c, s in zip(t.column("category").to_pylist(), t.column("split").to_pylist()):
                    split_of.setdefault(c, s)
                yield datasets.build_bench(t, config.bench_questions_per_composite, config.seed, counters=counters)

        rows = _write_stream(w, "data", batches(), datasets.BENCH_SCHEMA)
        failures.require_rows(pa.table({"n": [0] * rows}), stage=w.stage, artifact=w.name)
        # Which categories are seen (trained on) travels with the bench, so a later standalone
        # evaluation scores seen/unseen exactly as the reproduction did.
        seen = [c for c, s in split_of.items() if s == "seen"]  # first-appearance (= config) order
        unseen = [c for c, s in split_of.items() if s != "seen"]
        return {"rows": rows, "per_category": dict(counters), "seen_categories": seen,
                "all_categories": seen + unseen}

    return run_stage(store, "bench", "build-bench", config, {"composites": composites}, produce, force=force)[0]


@task(name="distill-cot", **TASK_DEFAULTS)
def distill_cot_task(
    config: DistillationStageConfig, composites: ArtifactRef, entities: ArtifactRef,
    store_uri: str | None = None, force: bool = False, runner: ShardRunnerConfig | None = None,
) -> ArtifactRef:
    """Knowledge-guided CoTs, one shard per part of the composites table."""
    store = open_store(store_uri)
    logger = run_logger()

    def produce(w):
        require_input_rows(store, composites, "distill")
        require_input_rows(store, entities, "distill")
        spec = {"composites": str(composites), "entities": str(entities),
                "distillation": config.model_dump(mode="json"), "previous": str(w.previous) if w.previous else None}
        records = run_stage_shards(store, w, logger, "distill", len(store.table_files(composites)),
                              lambda i: {**spec, "part": i}, shard_stages.distill_shard, runner)
        hint = _endpoint_hint(config.backend, config.endpoint) if config.backend == "openai" else ""
        found = _check_failures(w, logger, _sum_failures(records), config.max_failure_rate, hint,
                                not_attempted=sum(int(r.metadata.get("not_attempted", 0)) for r in records))
        w.adopt_shards(records)
        from deepperception.prompts import TEACHER_PROMPT_TEMPLATE
        from deepperception.version import short_hash

        return {"rows": sum(r.rows() for r in records), "failures": found, "shards": len(records),
                "error_reasons": _merge(records, "error_reasons"), "usage": _merge(records, "usage"),
                "teacher": {"backend": config.backend,
                            "model": config.endpoint.model if config.backend == "openai" else "template",
                            "prompt_hash": short_hash(TEACHER_PROMPT_TEMPLATE, 12)}}

    return run_stage(store, "cot", "distill", config, {"composites": composites, "entities": entities},
                     produce, force=force)[0]


@task(name="filter-cot", **TASK_DEFAULTS)
def filter_cot_task(config: FilterConfig, cot: ArtifactRef, store_uri: str | None = None, force: bool = False) -> ArtifactRef:
    store = open_store(store_uri)

    def produce(w):
        require_input_rows(store, cot, "filter")
        f = filtering.CotFilter(config)
        reasons: Counter = Counter()
        with w.table_writer("data") as kept_w, w.table_writer("rejected") as rej_w:
            for b in store.iter_batches(cot, batch_size=1024):
                kept, rejected = f.apply(b)
                kept_w.write(kept)
                rej_w.write(rejected)
                reasons.update(rejected.column("reason").to_pylist())
        failures.require_rows(pa.table({"n": [0] * kept_w.rows}), stage=w.stage, artifact=w.name)
        return {"kept": kept_w.rows, "rejected": rej_w.rows, "reasons": dict(reasons)}

    return run_stage(store, "cot-filtered", "filter", config, {"cot": cot}, produce, force=force)[0]


@task(name="build-sft-dataset", **TASK_DEFAULTS)
def build_sft_dataset_task(
    kept: ArtifactRef, composites: ArtifactRef, store_uri: str | None = None, force: bool = False,
    contamination: ArtifactRef | None = None,
) -> ArtifactRef:
    """Stage-1 rows: chat messages + images (the official CoT-SFT format)."""
    from tasks.products import excluded_composites

    store = open_store(store_uri)

    def produce(w):
        require_input_rows(store, kept, "build-sft")
        require_input_rows(store, composites, "build-sft")
        comp = store.dataset(composites)
        excluded = pa.array(sorted(excluded_composites(store, contamination)), pa.string())

        def batches():
            for b in store.iter_batches(kept, columns=["question_id", "composite_id", "target_entity", "response"],
                                        batch_size=256):
                if len(excluded):
                    b = b.filter(pc.invert(pc.is_in(b.column("composite_id"), value_set=excluded)))
                ids = pa.array(sorted(set(b.column("composite_id").to_pylist())))
                found = comp.to_table(columns=["composite_id", "image"], filter=pc.field("composite_id").isin(ids))
                image_of = dict(zip(found.column("composite_id").to_pylist(), found.column("image").to_pylist()))
                yield datasets.build_sft_rows(pa.Table.from_batches([b]), image_of)

        rows = _write_stream(w, "data", batches(), datasets.SFT_SCHEMA)
        failures.require_rows(pa.table({"n": [0] * rows}), stage=w.stage, artifact=w.name)
        return {"rows": rows}

    upstream = {"cot": kept, "composites": composites, **({"contamination": contamination} if contamination else {})}
    return run_stage(store, "sft-dataset", "build-sft", {}, upstream,
                     produce, force=force)[0]


@task(name="build-grpo-pool", **TASK_DEFAULTS)
def build_grpo_pool_task(
    config: DatasetsConfig, composites: ArtifactRef, store_uri: str | None = None, force: bool = False,
    contamination: ArtifactRef | None = None,
) -> ArtifactRef:
    """Stage-2 candidates in the official GRPO format: image, problem, solution."""
    from tasks.products import excluded_composites

    store = open_store(store_uri)

    def produce(w):
        require_input_rows(store, composites, "build-grpo")
        excluded = pa.array(sorted(excluded_composites(store, contamination)), pa.string())
        clean = (b.filter(pc.invert(pc.is_in(b.column("composite_id"), value_set=excluded))) if len(excluded) else b
                 for b in store.iter_batches(composites, batch_size=256))
        batches = (datasets.build_grpo_rows(pa.Table.from_batches([b]), config.grpo_targets_per_composite,
                                            config.seed) for b in clean)
        rows = _write_stream(w, "data", batches, datasets.GRPO_SCHEMA)
        failures.require_rows(pa.table({"n": [0] * rows}), stage=w.stage, artifact=w.name)
        return {"rows": rows}

    upstream = {"composites": composites, **({"contamination": contamination} if contamination else {})}
    return run_stage(store, "grpo-pool", "build-grpo", config, upstream, produce, force=force)[0]


@task(name="import-bench", **TASK_DEFAULTS)
def import_bench_task(path: str, store_uri: str | None = None) -> ArtifactRef:
    """Copy a KVG-Bench parquet file (e.g. the official kvg-bench.parquet) into the store as a
    versioned ``bench`` artifact, keyed by its content hash, after checking its schema."""
    import hashlib

    from deepperception.eval.io import read_bench

    store = open_store(store_uri)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)

    def produce(w):
        table = read_bench(path)  # schema-checked; only read when this version is new
        return _commit_table(w, table, source=path, per_category=dict(Counter(table.column("category").to_pylist())))

    return run_stage(store, "bench", "import-bench", {"sha256": digest.hexdigest()}, {}, produce)[0]
