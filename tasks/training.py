"""Thin Prefect tasks of the model stages: base checkpoint, CoT-SFT, RL filtering, GRPO.

Checkpoints are store artifacts (``files/`` of a version), so a GPU worker on another machine
reads the same bytes the CPU parent recorded, and every number downstream names them.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefect import task

from deepperception.config import BaseModelConfig
from deepperception.store import ArtifactRef
from deepperception.store.stage import run_stage
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
                layers=config.layers, image_min_pixels=config.image_min_pixels,
                image_max_pixels=config.image_max_pixels, seed=config.seed)
            w.write_dir(out)
        return {"kind": "tiny-qwen2vl", "corpus_lines": len(corpus)}

    return run_stage(store, "base-checkpoint", "base-model", config,
                     {"sft_dataset": sft_dataset, "grpo_pool": grpo_pool}, produce, force=force,
                     code=("deepperception.model.tiny",), task_module=__name__)[0]


@task(name="train-sft", **TASK_DEFAULTS)
def train_sft_task(
    config: SFTStageConfig, base: ArtifactRef, dataset: ArtifactRef,
    store_uri: str | None = None, force: bool = False, launch: LaunchConfig | None = None,
) -> ArtifactRef:
    store = open_store(store_uri)
    logger = run_logger()

    def produce(w):
        with tempfile.TemporaryDirectory(prefix="dp-sft-") as tmp:
            result = run_training("sft", read_input_table(store, dataset, "sft"), checkpoint_dir(store, base), Path(tmp) / "ckpt",
                                  config, launch)
            logger.info("train-sft: %s", result.metrics)
            w.write_dir(result.checkpoint_dir)
        return {"train": result.metrics}

    return run_stage(store, "sft-checkpoint", "sft", config, {"base": base, "dataset": dataset}, produce,
                     force=force,
                     code=("deepperception.training.sft", "deepperception.training.launch"), task_module=__name__)[0]


@task(name="train-grpo", **TASK_DEFAULTS)
def train_grpo_task(
    config: GRPOStageConfig, checkpoint: ArtifactRef, dataset: ArtifactRef,
    store_uri: str | None = None, force: bool = False, launch: LaunchConfig | None = None,
) -> ArtifactRef:
    store = open_store(store_uri)
    logger = run_logger()

    def produce(w):
        with tempfile.TemporaryDirectory(prefix="dp-grpo-") as tmp:
            result = run_training("grpo", read_input_table(store, dataset, "grpo"), checkpoint_dir(store, checkpoint),
                                  Path(tmp) / "ckpt", config, launch)
            logger.info("train-grpo: %s", result.metrics)
            w.write_dir(result.checkpoint_dir)
        return {"train": result.metrics}

    return run_stage(store, "grpo-checkpoint", "grpo", config, {"init": checkpoint, "dataset": dataset},
                     produce, force=force,
                     code=("deepperception.training.grpo", "deepperception.training.launch"), task_module=__name__)[0]
