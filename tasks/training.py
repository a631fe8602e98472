"""Thin Prefect tasks of the model stages: base checkpoint, CoT-SFT, RL filtering, GRPO.

Checkpoints are store artifacts (``files/`` of a version), so a GPU worker on another machine
reads the same bytes the CPU parent recorded, and every number downstream names them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.exceptions import MissingContextError

from deepperception.config import BaseModelConfig
from deepperception.store import ArtifactRef
from deepperception.store.stage import run_stage
from deepperception.training.checkpoints import step_prefix
from deepperception.training.grpo import GRPOStageConfig
from deepperception.training.launch import LaunchConfig, run_training
from deepperception.training.sft import SFTStageConfig
from tasks.common import (
    TASK_DEFAULTS,
    checkpoint_dir,
    open_store,
    read_input_table,
    register_external_checkpoint,
    run_logger,
)
from tasks.rl_filter import rl_filter_task  # noqa: F401  (the stage's task lives with the RL filter)

def _tokenizer_corpus(sft_table, grpo_table) -> list[str]:
    """Training-side text only (CoTs, questions, solutions): no bench answers leak in."""
    corpus: list[str] = []
    for raw in sft_table.column("messages").to_pylist():
        for msg in json.loads(raw):
            for part in msg["content"]:
                if part.get("type") == "text" and part.get("text"):
                    corpus.append(part["text"])
    corpus += grpo_table.column("problem").to_pylist() + grpo_table.column("solution").to_pylist()
    return corpus


@task(name="build-base-model", **TASK_DEFAULTS)
def build_base_model_task(
    config: BaseModelConfig, sft_dataset: ArtifactRef, grpo_pool: ArtifactRef,
    store_uri: str | None = None, force: bool = False,
) -> ArtifactRef:
    """The stage-0 checkpoint: a real directory recorded by reference, or the tiny Qwen2-VL."""
    store = open_store(store_uri)

    if config.checkpoint:
        return register_external_checkpoint(store, config.checkpoint, "base-checkpoint", "base-model",
                                            config.model_dump(mode="json"), force=force)

    from deepperception.model.tiny import build_tiny_qwen2vl

    def produce(w):
        corpus = _tokenizer_corpus(read_input_table(store, sft_dataset, "base-model"),
                                   read_input_table(store, grpo_pool, "base-model"))
        with tempfile.TemporaryDirectory(prefix="dp-base-") as tmp:
            out = build_tiny_qwen2vl(
                Path(tmp) / "ckpt", corpus, vocab_size=config.vocab_size, hidden=config.hidden,
                layers=config.layers, vision_dim=config.vision_dim, vision_depth=config.vision_depth,
                image_min_pixels=config.image_min_pixels,
                image_max_pixels=config.image_max_pixels, seed=config.seed,
                exact_vocab=True)  # a vocabulary the corpus cannot fill is refused, not silently smaller
            w.write_dir(out)
        return {"kind": "tiny-qwen2vl", "corpus_lines": len(corpus)}

    return run_stage(store, "base-checkpoint", "base-model", config,
                     {"sft_dataset": sft_dataset, "grpo_pool": grpo_pool}, produce, force=force)[0]


def training_work_dir(store, writer) -> Path:
    """Persistent directory of a training stage version's resume points and published steps
    (:mod:`deepperception.training.checkpoints`), keyed as :func:`tasks.evaluation.eval_work_dir`
    is: the store's identity (new for a new or wiped store), the artifact, its version. A rerun of
    the same version after a kill finds it and resumes; it is removed once the version commits."""
    return store.settings.local_cache() / "work" / store.identity / writer.name / writer.version


def _in_run() -> bool:
    from prefect.context import get_run_context

    try:
        get_run_context()
    except MissingContextError:
        return False
    return True


def _publish_monitors(stage: str, ref: ArtifactRef, ckpt: Path) -> dict | None:
    """The run's health table (``monitors.json`` of the checkpoint) as a Prefect table artifact,
    when running inside a Prefect run; returns the summary for the manifest."""
    p = ckpt / "monitors.json"
    if not p.is_file():
        return None
    data = json.loads(p.read_text())
    summary = data.get("summary")
    if _in_run() and data.get("rows"):
        flags = (summary or {}).get("flags")
        desc = f"{stage} health per logged step of {ref}" + (f"; flags: {', '.join(flags)}" if flags else
                                                             ("; no health flags" if summary else ""))
        create_table_artifact(data["rows"], key=f"{stage}-monitors", description=desc)
    return summary


def _train_and_write(store, w, stage: str, rows, init: Path, config, launch, logger) -> tuple[dict, Path]:
    """Train into the version's work dir, write the final checkpoint under ``files/`` and each
    published step under ``checkpoints/step-NNNNNN/``; return the manifest metadata."""
    work = training_work_dir(store, w)
    with tempfile.TemporaryDirectory(prefix=f"dp-{stage}-") as tmp:
        result = run_training(stage, rows, init, Path(tmp) / "ckpt", config, launch, work_dir=work)
        logger.info("train-%s: %s", stage, result.metrics)
        if result.metrics.get("resumed_from_step"):
            logger.warning("train-%s: resumed from step %s of a killed run", stage, result.metrics["resumed_from_step"])
        w.write_dir(result.checkpoint_dir)
        health = _publish_monitors(stage, w.ref, result.checkpoint_dir)
    for step, d in sorted(result.step_checkpoints.items()):
        w.write_dir(d, prefix=step_prefix(step))
    meta = {"train": result.metrics, "checkpoints": sorted(result.step_checkpoints)}
    if health is not None:
        meta["health"] = health
    return meta, work


def _run_training_stage(store, name: str, stage: str, config, upstream: dict, rows_ref: ArtifactRef,
                        init_ref: ArtifactRef, force: bool, launch) -> ArtifactRef:
    logger = run_logger()
    works: list[Path] = []

    def produce(w):
        meta, work = _train_and_write(store, w, stage, read_input_table(store, rows_ref, stage),
                                      checkpoint_dir(store, init_ref), config, launch, logger)
        works.append(work)
        return meta

    ref = run_stage(store, name, stage, config, upstream, produce, force=force)[0]
    for work in works:  # committed: resume points (optimizer states) are no longer needed
        shutil.rmtree(work, ignore_errors=True)
    return ref


@task(name="train-sft", **TASK_DEFAULTS)
def train_sft_task(
    config: SFTStageConfig, base: ArtifactRef, dataset: ArtifactRef,
    store_uri: str | None = None, force: bool = False, launch: LaunchConfig | None = None,
) -> ArtifactRef:
    """CoT-SFT; resumable after a kill (same version), intermediate steps published."""
    store = open_store(store_uri)
    return _run_training_stage(store, "sft-checkpoint", "sft", config, {"base": base, "dataset": dataset}, dataset,
                               base, force, launch)


@task(name="train-grpo", **TASK_DEFAULTS)
def train_grpo_task(
    config: GRPOStageConfig, checkpoint: ArtifactRef, dataset: ArtifactRef,
    store_uri: str | None = None, force: bool = False, launch: LaunchConfig | None = None,
) -> ArtifactRef:
    """GRPO with health monitors; resumable after a kill (same version), intermediate steps published."""
    store = open_store(store_uri)
    return _run_training_stage(store, "grpo-checkpoint", "grpo", config, {"init": checkpoint, "dataset": dataset},
                               dataset, checkpoint, force, launch)
