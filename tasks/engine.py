"""Thin Prefect tasks of the data engine: read input artifacts, call the library, commit output.

Each task takes and returns artifact references only; the heavy lifting is in
``deepperception.domain`` and ``deepperception.engine``.
"""

from __future__ import annotations

import os
from collections import Counter

import pyarrow as pa
from prefect import get_run_logger, task

from deepperception.config import (
    DataSourceConfig,
    DatasetsConfig,
    DistillationStageConfig,
    LabelingStageConfig,
)
from deepperception.domain.entity import entities_to_table
from deepperception.domain.synthetic import mine_entities
from deepperception.engine import collection, composition, datasets, distillation, filtering, labeling
from deepperception.engine.collection import CollectionConfig
from deepperception.engine.composition import CompositionConfig
from deepperception.engine.filtering import FilterConfig
from deepperception.store import ArtifactRef
from deepperception.store.stage import run_stage
from tasks.common import TASK_DEFAULTS, open_store


def _commit_table(writer, table: pa.Table, **meta) -> dict:
    writer.write_table(table)
    return {"rows": table.num_rows, **meta}


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
            table = collection.collect_images(store.read_table(entities), config)
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
    logger = get_run_logger()

    def produce(w):
        table = labeling.label_images(store.read_table(images), make_labeler(config), config.options)
        failed = sum(1 for e in table.column("label_error").to_pylist() if e)
        if failed:
            logger.warning("label-boxes: %d of %d images got no box (see label_error)", failed, table.num_rows)
        return _commit_table(w, table, failed=failed)

    return run_stage(store, "labeled-images", "label", config, {"images": images}, produce, force=force,
                     code=("deepperception.engine.labeling",), task_module=__name__)[0]


@task(name="compose-images", **TASK_DEFAULTS)
def compose_task(
    config: CompositionConfig, labeled: ArtifactRef, store_uri: str | None = None, force: bool = False
) -> ArtifactRef:
    store = open_store(store_uri)

    def produce(w):
        table = composition.compose(store.read_table(labeled), config)
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
        comp = store.read_table(composites)
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

    def produce(w):
        teacher = make_teacher(config, store.read_table(entities))
        table = distillation.distill(store.read_table(composites), teacher, config.options)
        failed = sum(1 for e in table.column("error").to_pylist() if e)
        return _commit_table(w, table, failed=failed)

    return run_stage(store, "cot", "distill", config, {"composites": composites, "entities": entities},
                     produce, force=force,
                     code=("deepperception.engine.distillation",), task_module=__name__)[0]


@task(name="filter-cot", **TASK_DEFAULTS)
def filter_cot_task(config: FilterConfig, cot: ArtifactRef, store_uri: str | None = None, force: bool = False) -> ArtifactRef:
    store = open_store(store_uri)

    def produce(w):
        kept, rejected = filtering.filter_cot(store.read_table(cot), config)
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
        return _commit_table(w, datasets.build_sft_rows(store.read_table(kept), store.read_table(composites)))

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
        table = datasets.build_grpo_rows(store.read_table(composites), config.grpo_targets_per_composite, config.seed)
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
