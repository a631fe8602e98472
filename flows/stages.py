"""One Prefect flow per stage, so any stage can be deployed, scheduled or rerun on its own.

Each flow takes its typed config plus the artifact references it reads, and returns the
reference it commits. A rerun with identical inputs, config and code finds the committed version
and returns at once; ``force=True`` recomputes (and so changes everything downstream).
"""

from __future__ import annotations

from prefect import flow

from deepperception.config import (
    BaseModelConfig,
    DataSourceConfig,
    DatasetsConfig,
    DistillationStageConfig,
    EvalStageConfig,
    KnowledgeStageConfig,
    LabelingStageConfig,
    RLFilterConfig,
    ShardingConfig,
)
from deepperception.engine.shard_runner import ShardRunnerConfig
from deepperception.engine.collection import CollectionConfig
from deepperception.engine.composition import CompositionConfig
from deepperception.engine.contamination import ContaminationConfig
from deepperception.engine.filtering import FilterConfig
from deepperception.store import ArtifactRef
from deepperception.training.grpo import GRPOStageConfig
from deepperception.training.launch import LaunchConfig
from deepperception.training.sft import SFTStageConfig
from flows.dispatch import record_stage_result
from tasks import engine, evaluation, products, training


@flow(name="mine-entities", on_completion=[record_stage_result])
def mine_entities(config: DataSourceConfig, store_uri: str | None = None, force: bool = False,
                  knowledge: KnowledgeStageConfig | None = None) -> ArtifactRef:
    return engine.mine_entities_task(config, store_uri, force, knowledge)


@flow(name="collect-images", on_completion=[record_stage_result])
def collect_images(source: DataSourceConfig, config: CollectionConfig, entities: ArtifactRef,
                   store_uri: str | None = None, force: bool = False,
                   sharding: ShardingConfig | None = None) -> ArtifactRef:
    return engine.collect_images_task(source, config, entities, store_uri, force, sharding)


@flow(name="label-boxes", on_completion=[record_stage_result])
def label_boxes(config: LabelingStageConfig, images: ArtifactRef,
                store_uri: str | None = None, force: bool = False,
                runner: ShardRunnerConfig | None = None) -> ArtifactRef:
    return engine.label_boxes_task(config, images, store_uri, force, runner)


@flow(name="compose-images", on_completion=[record_stage_result])
def compose_images(config: CompositionConfig, labeled: ArtifactRef,
                   store_uri: str | None = None, force: bool = False, sharding: ShardingConfig | None = None,
                   runner: ShardRunnerConfig | None = None) -> ArtifactRef:
    return engine.compose_task(config, labeled, store_uri, force, sharding, runner)


@flow(name="build-bench", on_completion=[record_stage_result])
def build_bench(config: DatasetsConfig, composites: ArtifactRef,
                store_uri: str | None = None, force: bool = False) -> ArtifactRef:
    return engine.build_bench_task(config, composites, store_uri, force)


@flow(name="distill-cot", on_completion=[record_stage_result])
def distill_cot(config: DistillationStageConfig, composites: ArtifactRef, entities: ArtifactRef,
                store_uri: str | None = None, force: bool = False,
                runner: ShardRunnerConfig | None = None) -> ArtifactRef:
    return engine.distill_cot_task(config, composites, entities, store_uri, force, runner)


@flow(name="filter-cot", on_completion=[record_stage_result])
def filter_cot(config: FilterConfig, cot: ArtifactRef, store_uri: str | None = None, force: bool = False) -> ArtifactRef:
    return engine.filter_cot_task(config, cot, store_uri, force)


@flow(name="build-training-data", on_completion=[record_stage_result])
def build_training_data(config: DatasetsConfig, kept_cot: ArtifactRef, composites: ArtifactRef,
                        store_uri: str | None = None, force: bool = False,
                        contamination: ArtifactRef | None = None) -> dict[str, ArtifactRef]:
    """Stage-1 SFT rows and the stage-2 GRPO candidate pool, both in the official formats
    (without the composites a contamination check with ``drop`` flagged)."""
    return {
        "sft_dataset": engine.build_sft_dataset_task(kept_cot, composites, store_uri, force, contamination),
        "grpo_pool": engine.build_grpo_pool_task(config, composites, store_uri, force, contamination),
    }


@flow(name="check-contamination", on_completion=[record_stage_result])
def check_contamination(config: ContaminationConfig, bench: ArtifactRef, bench_composites: ArtifactRef,
                        labeled: ArtifactRef, train_composites: ArtifactRef, store_uri: str | None = None,
                        force: bool = False) -> ArtifactRef:
    return products.contamination_task(config, bench, bench_composites, labeled, train_composites, store_uri, force)


@flow(name="write-data-card", on_completion=[record_stage_result])
def write_data_card(refs: dict[str, ArtifactRef], store_uri: str | None = None, force: bool = False) -> ArtifactRef:
    return products.data_card_task(refs, store_uri, force)


@flow(name="export-datasets", on_completion=[record_stage_result])
def export_datasets(sft_dataset: ArtifactRef, grpo_pool: ArtifactRef, store_uri: str | None = None,
                    force: bool = False) -> ArtifactRef:
    return products.export_task(sft_dataset, grpo_pool, store_uri, force)


@flow(name="build-base-model", on_completion=[record_stage_result])
def build_base_model(config: BaseModelConfig, sft_dataset: ArtifactRef, grpo_pool: ArtifactRef,
                     store_uri: str | None = None, force: bool = False) -> ArtifactRef:
    return training.build_base_model_task(config, sft_dataset, grpo_pool, store_uri, force)


@flow(name="train-sft", on_completion=[record_stage_result])
def train_sft(config: SFTStageConfig, base: ArtifactRef, dataset: ArtifactRef,
              store_uri: str | None = None, force: bool = False, launch: LaunchConfig | None = None) -> ArtifactRef:
    return training.train_sft_task(config, base, dataset, store_uri, force, launch)


@flow(name="rl-filter", on_completion=[record_stage_result])
def rl_filter(config: RLFilterConfig, checkpoint: ArtifactRef, pool: ArtifactRef,
              store_uri: str | None = None, force: bool = False,
              runner: ShardRunnerConfig | None = None) -> ArtifactRef:
    return training.rl_filter_task(config, checkpoint, pool, store_uri, force, runner)


@flow(name="train-grpo", on_completion=[record_stage_result])
def train_grpo(config: GRPOStageConfig, checkpoint: ArtifactRef, dataset: ArtifactRef,
               store_uri: str | None = None, force: bool = False, launch: LaunchConfig | None = None) -> ArtifactRef:
    return training.train_grpo_task(config, checkpoint, dataset, store_uri, force, launch)


@flow(name="evaluate-checkpoint", on_completion=[record_stage_result])
def evaluate_checkpoint(config: EvalStageConfig, label: str, checkpoint: ArtifactRef, bench: ArtifactRef,
                        seen_categories: list[str] | None = None, all_categories: list[str] | None = None,
                        store_uri: str | None = None, force: bool = False,
                        checkpoint_step: int | None = None) -> ArtifactRef:
    return evaluation.evaluate_task(config, label, checkpoint, bench, seen_categories, all_categories,
                                    store_uri, force, checkpoint_step)


@flow(name="write-report", on_completion=[record_stage_result])
def write_report(evaluations: dict[str, ArtifactRef], header: dict,
                 store_uri: str | None = None, force: bool = False) -> dict:
    return evaluation.report_task(evaluations, header, store_uri, force)
