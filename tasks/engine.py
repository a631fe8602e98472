"""Thin Prefect tasks of the data engine: read input artifacts, call the library, commit output.

Each task takes and returns artifact references only; the heavy lifting is in
``deepperception.domain`` and ``deepperception.engine``.
"""

from __future__ import annotations

import os
from collections import Counter

import pyarrow as pa
from prefect import task

from deepperception.config import (
    DataSourceConfig,
    DatasetsConfig,
    DistillationStageConfig,
    LabelingStageConfig,
)
from deepperception.domain.entity import entities_to_table
from deepperception.domain.synthetic import mine_entities
from deepperception.engine import collection, composition, datasets, distillation, failures, filtering, labeling
from deepperception.engine.collection import CollectionConfig
from deepperception.engine.composition import CompositionConfig
from deepperception.engine.filtering import FilterConfig
from deepperception.store import ArtifactRef
from deepperception.store.stage import run_stage
from tasks.common import TASK_DEFAULTS, open_store, read_input_table, run_logger


def _commit_table(writer, table: pa.Table, **meta) -> dict:
    failures.require_rows(table, stage=writer.stage, artifact=writer.name)
    writer.write_table(table)
    return {"rows": table.num_rows, **meta}


def _previous_attempt(store, writer, logger, id_column: str, error_column: str) -> pa.Table | None:
    """The table of the latest partial attempt at this version (the store hands it over as
    ``writer.previous``), whose good rows the stage keeps while it retries the failed ones."""
    prev = writer.previous
    if prev is None:
        return None
    table = store.read_table(prev)
    s = failures.summarize_table(table, id_column, error_column)
    logger.info("%s: %s had %d of %d items failed; keeping the %d good ones and retrying the rest",
                writer.stage, prev, s.failed, s.total, s.good)
    return table


def _check_failures(writer, logger, table: pa.Table, id_column: str, error_column: str, max_failure_rate: float,
                    hint: str = "") -> dict:
    """Fail the stage (commit nothing) past the limit; else the manifest's ``failures`` entry,
    which makes a version with failed items partial, so a rerun retries them."""
    s = failures.summarize_table(table, id_column, error_column)
    failures.enforce_failure_limit(s, stage=writer.stage, artifact=writer.name, max_failure_rate=max_failure_rate,
                                   hint=hint)
    if s.failed:
        logger.warning("%s: %d of %d items of %s failed (within max_failure_rate %.1f%%); committed as a partial "
                       "version, a rerun retries them. First errors: %s", writer.stage, s.failed, s.total,
                       writer.name, 100 * max_failure_rate, "; ".join(s.examples))
    return s.to_metadata()


def _endpoint_hint(backend: str, endpoint) -> str:
    return f" (backend {backend}, endpoint {endpoint.base_url}, model {endpoint.model}: is the server up?)"


@task(name="mine-entities", **TASK_DEFAULTS)
def mine_entities_task(config: DataSourceConfig, store_uri: str | None = None, force: bool = False) -> ArtifactRef:
    """Entities with knowledge cards (synthetic), or the entity names of real image folders."""
    store = open_store(store_uri)

    def produce(w):
        if config.kind == "synthetic":
            entities = mine_entities(config.synthetic)
        else:
            entities = [e for src in config.folders
                        for e in collection.folder_entities(src.root, src.category, src.split)]
        table = entities_to_table(entities)
        return _commit_table(w, table, per_category=dict(Counter(e.category for e in entities)))

    return run_stage(store, "entities", "mine", config, {}, produce, force=force,
                     code=("deepperception.domain.synthetic", "deepperception.domain.entity", "deepperception.engine.collection"), task_module=__name__)[0]


@task(name="collect-images", **TASK_DEFAULTS)
def collect_images_task(
    source: DataSourceConfig, config: CollectionConfig, entities: ArtifactRef,
    store_uri: str | None = None, force: bool = False,
) -> ArtifactRef:
    store = open_store(store_uri)

    def produce(w):
        if source.kind == "synthetic":
            table = collection.collect_images(read_input_table(store, entities, "collect"), config)
        else:
            parts = [
                collection.collect_from_image_folder(
                    f.root, f.category, f.split, test_fraction=config.test_fraction, seed=config.seed,
                    max_images_per_entity=f.max_images_per_entity)
                for f in source.folders
            ]
            table = pa.concat_tables(parts)
        pools = Counter(table.column("pool").to_pylist())
        return _commit_table(w, table, pools=dict(pools))

    stage_cfg = {"source": source.model_dump(mode="json"), "collection": config.model_dump(mode="json")}
    return run_stage(store, "images", "collect", stage_cfg, {"entities": entities}, produce, force=force,
                     code=("deepperception.engine.collection",), task_module=__name__)[0]


def make_labeler(config: LabelingStageConfig) -> labeling.BoxLabeler:
    if config.backend == "oracle":
        return labeling.OracleLabeler()
    ep = config.endpoint
    return labeling.OpenAIGroundingLabeler(
        base_url=ep.base_url, model=ep.model, api_key=os.environ.get(ep.api_key_env, "EMPTY"),
        timeout=ep.timeout_s, max_retries=ep.max_retries, concurrency=ep.concurrency, box_format=config.box_format)


@task(name="label-boxes", **TASK_DEFAULTS)
def label_boxes_task(
    config: LabelingStageConfig, images: ArtifactRef, store_uri: str | None = None, force: bool = False
) -> ArtifactRef:
    store = open_store(store_uri)
    logger = run_logger()

    def produce(w):
        previous = _previous_attempt(store, w, logger, "image_id", "label_error")
        table = labeling.label_images(read_input_table(store, images, "label"), make_labeler(config), config.options,
                                      previous=previous, max_failure_rate=config.max_failure_rate)
        hint = _endpoint_hint(config.backend, config.endpoint) if config.backend == "openai" else ""
        found = _check_failures(w, logger, table, "image_id", "label_error", config.max_failure_rate, hint)
        return _commit_table(w, table, failures=found)

    return run_stage(store, "labeled-images", "label", config, {"images": images}, produce, force=force,
                     code=("deepperception.engine.labeling",), task_module=__name__)[0]


@task(name="compose-images", **TASK_DEFAULTS)
def compose_task(
    config: CompositionConfig, labeled: ArtifactRef, store_uri: str | None = None, force: bool = False
) -> ArtifactRef:
    store = open_store(store_uri)

    def produce(w):
        table = composition.compose(read_input_table(store, labeled, "compose"), config)
        return _commit_table(w, table, layouts=dict(Counter(table.column("layout").to_pylist())))

    return run_stage(store, f"composites-{config.pool}", "compose", config, {"labeled": labeled}, produce,
                     force=force,
                     code=("deepperception.engine.composition",), task_module=__name__)[0]


@task(name="build-bench", **TASK_DEFAULTS)
def build_bench_task(
    config: DatasetsConfig, composites: ArtifactRef, store_uri: str | None = None, force: bool = False
) -> ArtifactRef:
    """The held-out bench in the official KVG-Bench parquet schema."""
    store = open_store(store_uri)

    def produce(w):
        comp = read_input_table(store, composites, "build-bench")
        table = datasets.build_bench(comp, config.bench_questions_per_composite, config.seed)
        # Which categories are seen (trained on) travels with the bench, so a later standalone
        # evaluation scores seen/unseen exactly as the reproduction did.
        split_of = dict(zip(comp.column("category").to_pylist(), comp.column("split").to_pylist()))
        seen = [c for c, s in split_of.items() if s == "seen"]  # first-appearance (= config) order
        unseen = [c for c, s in split_of.items() if s != "seen"]
        return _commit_table(w, table, per_category=dict(Counter(table.column("category").to_pylist())),
                             seen_categories=seen, all_categories=seen + unseen)

    return run_stage(store, "bench", "build-bench", config, {"composites": composites}, produce, force=force,
                     code=("deepperception.engine.datasets",), task_module=__name__)[0]


def make_teacher(config: DistillationStageConfig, entities_table: pa.Table) -> distillation.Teacher:
    if config.backend == "template":
        return distillation.TemplateTeacher(entities_table)
    ep = config.endpoint
    return distillation.OpenAITeacher(
        base_url=ep.base_url, model=ep.model, api_key=os.environ.get(ep.api_key_env, "EMPTY"),
        timeout=ep.timeout_s, max_retries=ep.max_retries, concurrency=ep.concurrency,
        temperature=config.temperature, max_tokens=config.max_tokens)


@task(name="distill-cot", **TASK_DEFAULTS)
def distill_cot_task(
    config: DistillationStageConfig, composites: ArtifactRef, entities: ArtifactRef,
    store_uri: str | None = None, force: bool = False,
) -> ArtifactRef:
    store = open_store(store_uri)
    logger = run_logger()

    def produce(w):
        previous = _previous_attempt(store, w, logger, "question_id", "error")
        comps = read_input_table(store, composites, "distill")
        teacher = make_teacher(config, read_input_table(store, entities, "distill"))
        table = distillation.distill(comps, teacher, config.options, previous=previous,
                                     max_failure_rate=config.max_failure_rate)
        hint = _endpoint_hint(config.backend, config.endpoint) if config.backend == "openai" else ""
        found = _check_failures(w, logger, table, "question_id", "error", config.max_failure_rate, hint)
        return _commit_table(w, table, failures=found)

    return run_stage(store, "cot", "distill", config, {"composites": composites, "entities": entities},
                     produce, force=force,
                     code=("deepperception.engine.distillation",), task_module=__name__)[0]


@task(name="filter-cot", **TASK_DEFAULTS)
def filter_cot_task(config: FilterConfig, cot: ArtifactRef, store_uri: str | None = None, force: bool = False) -> ArtifactRef:
    store = open_store(store_uri)

    def produce(w):
        kept, rejected = filtering.filter_cot(read_input_table(store, cot, "filter"), config)
        failures.require_rows(kept, stage=w.stage, artifact=w.name)  # rejected may be empty, kept may not
        w.write_table(kept, "data")
        w.write_table(rejected, "rejected")
        reasons = Counter(rejected.column("reason").to_pylist()) if rejected.num_rows else {}
        return {"kept": kept.num_rows, "rejected": rejected.num_rows, "reasons": dict(reasons)}

    return run_stage(store, "cot-filtered", "filter", config, {"cot": cot}, produce, force=force,
                     code=("deepperception.engine.filtering",), task_module=__name__)[0]


@task(name="build-sft-dataset", **TASK_DEFAULTS)
def build_sft_dataset_task(
    kept: ArtifactRef, composites: ArtifactRef, store_uri: str | None = None, force: bool = False
) -> ArtifactRef:
    """Stage-1 rows: chat messages + images (the official CoT-SFT format)."""
    store = open_store(store_uri)

    def produce(w):
        return _commit_table(w, datasets.build_sft_rows(read_input_table(store, kept, "build-sft"),
                                                        read_input_table(store, composites, "build-sft")))

    return run_stage(store, "sft-dataset", "build-sft", {}, {"cot": kept, "composites": composites},
                     produce, force=force,
                     code=("deepperception.engine.datasets",), task_module=__name__)[0]


@task(name="build-grpo-pool", **TASK_DEFAULTS)
def build_grpo_pool_task(
    config: DatasetsConfig, composites: ArtifactRef, store_uri: str | None = None, force: bool = False
) -> ArtifactRef:
    """Stage-2 candidates in the official GRPO format: image, problem, solution."""
    store = open_store(store_uri)

    def produce(w):
        table = datasets.build_grpo_rows(read_input_table(store, composites, "build-grpo"),
                                         config.grpo_targets_per_composite, config.seed)
        return _commit_table(w, table)

    return run_stage(store, "grpo-pool", "build-grpo", config, {"composites": composites}, produce, force=force,
                     code=("deepperception.engine.datasets",), task_module=__name__)[0]


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

    return run_stage(store, "bench", "import-bench", {"sha256": digest.hexdigest()}, {}, produce,
                     code=("deepperception.eval.io",), task_module=__name__)[0]
