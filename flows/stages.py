"""One Prefect flow per stage, so any stage can be deployed, scheduled or rerun on its own.

Each flow takes its typed config plus the artifact references it reads, and returns the
reference it commits. A rerun with identical inputs, config and code finds the committed version
and returns at once; ``force=True`` recomputes (and so changes everything downstream).

References are ``name@version`` or ``name@latest`` strings in a deployment's form (what
``deepperception artifacts ls`` prints); each flow resolves and checks them first
(:func:`flows.params.resolve_refs`), so a reference that is not in the store fails the run
before any work, naming the parameter. Run names say what ran (:func:`flows.params.stage_run_name`).
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
from flows.params import RefParam, described, resolve_refs, stage_run_name
from tasks import engine, evaluation, products, training


def _stage(name: str, **run_name) -> dict:
    """The ``@flow`` arguments every stage flow shares."""
    return dict(name=name, on_completion=[record_stage_result], flow_run_name=stage_run_name(name, **run_name))


def _pool(params: dict) -> str | None:
    cfg = params.get("config")
    pool = getattr(cfg, "pool", None) if cfg is not None and not isinstance(cfg, dict) else (cfg or {}).get("pool")
    return pool or "train"


def _sft_target(params: dict) -> str | None:
    cfg = params.get("config")
    target = getattr(cfg, "target", None) if not isinstance(cfg, dict) else cfg.get("target")
    return target if target and target != "cot" else None


@flow(**_stage("mine-entities"))
@described(config="Where the entities come from: source, categories, counts, seed.")
def mine_entities(config: DataSourceConfig, store_uri: str | None = None, force: bool = False,
                  knowledge: KnowledgeStageConfig | None = None) -> ArtifactRef:
    """Mine the entities (fine-grained categories and their knowledge) the data engine builds on."""
    return engine.mine_entities_task(config, store_uri, force, knowledge)


@flow(**_stage("collect-images", config="config"))
@described(source="Where the entities came from (the mining stage's config).",
           config="How images are collected per entity.", entities="The entities artifact (name@version).")
def collect_images(source: DataSourceConfig, config: CollectionConfig, entities: RefParam,
                   store_uri: str | None = None, force: bool = False,
                   sharding: ShardingConfig | None = None) -> ArtifactRef:
    """Collect images of every mined entity."""
    r = resolve_refs(store_uri, entities=entities)
    return engine.collect_images_task(source, config, r["entities"], store_uri, force, sharding)


@flow(**_stage("label-boxes"))
@described(config="The box labeler: backend, endpoint, prompt, failure budget.",
           images="The collected images artifact (name@version).")
def label_boxes(config: LabelingStageConfig, images: RefParam,
                store_uri: str | None = None, force: bool = False,
                runner: ShardRunnerConfig | None = None) -> ArtifactRef:
    """Label a bounding box for the entity in every collected image."""
    r = resolve_refs(store_uri, images=images)
    return engine.label_boxes_task(config, r["images"], store_uri, force, runner)


@flow(**_stage("compose-images", extra=_pool))
@described(config="How composites are made: pool (train/test), layouts, tile sizes, counts.",
           labeled="The labeled images artifact (name@version).")
def compose_images(config: CompositionConfig, labeled: RefParam,
                   store_uri: str | None = None, force: bool = False, sharding: ShardingConfig | None = None,
                   runner: ShardRunnerConfig | None = None) -> ArtifactRef:
    """Compose multi-entity images from labeled ones (the training or the bench pool)."""
    r = resolve_refs(store_uri, labeled=labeled)
    return engine.compose_task(config, r["labeled"], store_uri, force, sharding, runner)


@flow(**_stage("build-bench"))
@described(config="Dataset building settings (bench and training rows).",
           composites="The bench composites artifact (name@version).")
def build_bench(config: DatasetsConfig, composites: RefParam,
                store_uri: str | None = None, force: bool = False) -> ArtifactRef:
    """Build the KVG bench (official parquet format) from the bench composites."""
    r = resolve_refs(store_uri, composites=composites)
    return engine.build_bench_task(config, r["composites"], store_uri, force)


@flow(**_stage("distill-cot"))
@described(config="The teacher: backend, endpoint, prompt, generation settings.",
           composites="The training composites artifact (name@version).",
           entities="The entities artifact (name@version): the knowledge the teacher is given.")
def distill_cot(config: DistillationStageConfig, composites: RefParam, entities: RefParam,
                store_uri: str | None = None, force: bool = False,
                runner: ShardRunnerConfig | None = None) -> ArtifactRef:
    """Distill chains of thought for the training composites from a teacher model."""
    r = resolve_refs(store_uri, composites=composites, entities=entities)
    return engine.distill_cot_task(config, r["composites"], r["entities"], store_uri, force, runner)


@flow(**_stage("filter-cot"))
@described(config="Which distilled chains of thought are kept.", cot="The distilled CoT artifact (name@version).")
def filter_cot(config: FilterConfig, cot: RefParam, store_uri: str | None = None,
               force: bool = False) -> ArtifactRef:
    """Keep the chains of thought that pass the filter."""
    r = resolve_refs(store_uri, cot=cot)
    return engine.filter_cot_task(config, r["cot"], store_uri, force)


@flow(**_stage("build-training-data"))
@described(config="Dataset building settings (GRPO pool size, splits).",
           kept_cot="The filtered CoT artifact (name@version).",
           composites="The training composites artifact (name@version).",
           contamination="The contamination check artifact (name@version); empty: no composites dropped.")
def build_training_data(config: DatasetsConfig, kept_cot: RefParam, composites: RefParam,
                        store_uri: str | None = None, force: bool = False,
                        contamination: RefParam | None = None) -> dict[str, ArtifactRef]:
    """Stage-1 SFT rows and the stage-2 GRPO candidate pool, both in the official formats
    (without the composites a contamination check with ``drop`` flagged)."""
    r = resolve_refs(store_uri, kept_cot=kept_cot, composites=composites, contamination=contamination)
    return {
        "sft_dataset": engine.build_sft_dataset_task(r["kept_cot"], r["composites"], store_uri, force,
                                                     r["contamination"]),
        "grpo_pool": engine.build_grpo_pool_task(config, r["composites"], store_uri, force, r["contamination"]),
    }


@flow(**_stage("check-contamination"))
@described(config="How overlap between training data and the bench is found and handled.",
           bench="The bench artifact (name@version).", bench_composites="The bench composites (name@version).",
           labeled="The labeled images artifact (name@version).",
           train_composites="The training composites artifact (name@version).")
def check_contamination(config: ContaminationConfig, bench: RefParam, bench_composites: RefParam,
                        labeled: RefParam, train_composites: RefParam, store_uri: str | None = None,
                        force: bool = False) -> ArtifactRef:
    """Check the training composites against the bench for shared images or entities."""
    r = resolve_refs(store_uri, bench=bench, bench_composites=bench_composites, labeled=labeled,
                     train_composites=train_composites)
    return products.contamination_task(config, r["bench"], r["bench_composites"], r["labeled"],
                                       r["train_composites"], store_uri, force)


@flow(**_stage("write-data-card", config=None))
@described(refs="The data artifacts the card describes: a mapping role -> name@version "
                "(images, labeled, composites, cot, cot_filtered, sft_dataset, grpo_pool, bench, contamination).")
def write_data_card(refs: dict[str, RefParam], store_uri: str | None = None, force: bool = False) -> ArtifactRef:
    """Write the data card (counts, figures, lineage) of the data engine's products."""
    r = resolve_refs(store_uri, refs=refs)
    return products.data_card_task(r["refs"], store_uri, force)


@flow(**_stage("export-datasets", config=None))
@described(sft_dataset="The SFT rows artifact (name@version).", grpo_pool="The GRPO pool artifact (name@version).")
def export_datasets(sft_dataset: RefParam, grpo_pool: RefParam, store_uri: str | None = None,
                    force: bool = False) -> ArtifactRef:
    """Export the training data in the formats other trainers read (ShareGPT, ...)."""
    r = resolve_refs(store_uri, sft_dataset=sft_dataset, grpo_pool=grpo_pool)
    return products.export_task(r["sft_dataset"], r["grpo_pool"], store_uri, force)


@flow(**_stage("build-base-model"))
@described(config="The base model: size, vocabulary, vision tower.",
           sft_dataset="The SFT rows artifact (name@version).", grpo_pool="The GRPO pool artifact (name@version).")
def build_base_model(config: BaseModelConfig, sft_dataset: RefParam, grpo_pool: RefParam,
                     store_uri: str | None = None, force: bool = False) -> ArtifactRef:
    """Build the base checkpoint training starts from."""
    r = resolve_refs(store_uri, sft_dataset=sft_dataset, grpo_pool=grpo_pool)
    return training.build_base_model_task(config, r["sft_dataset"], r["grpo_pool"], store_uri, force)


@flow(**_stage("train-sft", extra=_sft_target))
@described(config="SFT settings (steps, batch, learning rate, target cot or direct).",
           base="The checkpoint to train from (name@version, e.g. base-checkpoint@latest).",
           dataset="The SFT rows artifact (name@version, e.g. sft-dataset@latest).")
def train_sft(config: SFTStageConfig, base: RefParam, dataset: RefParam,
              store_uri: str | None = None, force: bool = False, launch: LaunchConfig | None = None) -> ArtifactRef:
    """Stage 1: supervised fine-tuning on the distilled chains of thought (or answers only)."""
    r = resolve_refs(store_uri, base=base, dataset=dataset)
    return training.train_sft_task(config, r["base"], r["dataset"], store_uri, force, launch)


@flow(**_stage("rl-filter"))
@described(config="RL filter settings: samples per question, reward, which questions are kept.",
           checkpoint="The SFT checkpoint that samples (name@version, e.g. sft-checkpoint@latest).",
           pool="The GRPO candidate pool artifact (name@version).")
def rl_filter(config: RLFilterConfig, checkpoint: RefParam, pool: RefParam,
              store_uri: str | None = None, force: bool = False,
              runner: ShardRunnerConfig | None = None) -> ArtifactRef:
    """Keep the GRPO questions the SFT checkpoint neither always nor never solves."""
    r = resolve_refs(store_uri, checkpoint=checkpoint, pool=pool)
    return training.rl_filter_task(config, r["checkpoint"], r["pool"], store_uri, force, runner)


@flow(**_stage("train-grpo"))
@described(config="GRPO settings (steps, generations, beta, reward).",
           checkpoint="The checkpoint to train from (name@version, e.g. sft-checkpoint@latest).",
           dataset="The filtered GRPO questions (name@version, e.g. grpo-dataset@latest).")
def train_grpo(config: GRPOStageConfig, checkpoint: RefParam, dataset: RefParam,
               store_uri: str | None = None, force: bool = False, launch: LaunchConfig | None = None) -> ArtifactRef:
    """Stage 2: GRPO on the filtered questions with the IoU-based reward."""
    r = resolve_refs(store_uri, checkpoint=checkpoint, dataset=dataset)
    return training.train_grpo_task(config, r["checkpoint"], r["dataset"], store_uri, force, launch)


@flow(**_stage("evaluate-checkpoint", label="label"))
@described(config="Evaluation settings (prompt mode, generation budget, batch).",
           label="The arm's name in the report and the run name (e.g. sft, grpo).",
           checkpoint="The checkpoint to evaluate (name@version, e.g. grpo-checkpoint@latest).",
           bench="The bench to evaluate on (name@version, e.g. bench@latest).",
           seen_categories="Categories counted as the seen domain (empty: from the bench's manifest).",
           all_categories="Every category of the bench (empty: from the bench's manifest).",
           checkpoint_step="A published intermediate step of the checkpoint to evaluate (empty: the final one).")
def evaluate_checkpoint(config: EvalStageConfig, label: str, checkpoint: RefParam, bench: RefParam,
                        seen_categories: list[str] | None = None, all_categories: list[str] | None = None,
                        store_uri: str | None = None, force: bool = False,
                        checkpoint_step: int | None = None) -> ArtifactRef:
    """Evaluate one checkpoint on one bench (KVG metrics, per category and domain)."""
    r = resolve_refs(store_uri, checkpoint=checkpoint, bench=bench)
    return evaluation.evaluate_task(config, label, r["checkpoint"], r["bench"], seen_categories, all_categories,
                                    store_uri, force, checkpoint_step)


@flow(**_stage("write-report", config=None))
@described(evaluations="The evaluations to report: a mapping arm key -> evaluation@version.",
           header="What the report's header says (profile, data versions, bootstrap settings).")
def write_report(evaluations: dict[str, RefParam], header: dict,
                 store_uri: str | None = None, force: bool = False) -> dict:
    """Write the report: arms side by side with paired-bootstrap differences, per bench."""
    r = resolve_refs(store_uri, evaluations=evaluations)
    return evaluation.report_task(r["evaluations"], header, store_uri, force)
