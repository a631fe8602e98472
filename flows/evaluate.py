"""Evaluate one checkpoint on one or more benches: the flow behind ad-hoc evaluation, the
nightly re-evaluation and "a new checkpoint was published" triggers.

Checkpoints and benches are given as ``name@version``, ``name@latest`` or a local path; a
checkpoint may name one of its published intermediate steps, ``grpo-checkpoint@latest#step=800``
(a checkpoint directory / a KVG-Bench parquet file, recorded in the store before use); a bench
may also be an ``s3://`` object (fetched with the store's endpoint settings, then imported).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from deepperception.config import EvalStageConfig
from deepperception.store import ArtifactRef
from tasks.common import TASK_DEFAULTS, open_store, register_external_checkpoint, resolve_checkpoint_ref
from tasks.evaluation import evaluate_task, resolve_bench_task


@task(name="resolve-checkpoint", **TASK_DEFAULTS)
def resolve_checkpoint_task(checkpoint: str, store_uri: str | None = None) -> tuple[ArtifactRef, int | None]:
    """``(committed ref, published step or None)``."""
    store = open_store(store_uri)
    if "@" in checkpoint and not Path(checkpoint).exists():
        return resolve_checkpoint_ref(store, checkpoint)
    return register_external_checkpoint(store, checkpoint, "external-checkpoint", "register"), None


@flow(name="evaluate", log_prints=True)
def evaluate(
    checkpoint: str,
    benches: list[str],
    config: EvalStageConfig | None = None,
    label: str | None = None,
    seen_categories: list[str] | None = None,
    all_categories: list[str] | None = None,
    store_uri: str | None = None,
    force: bool = False,
) -> dict[str, str]:
    """Returns ``{bench ref: evaluation ref}``. Category lists default to what the bench's manifest
    records (benches this pipeline built) or the official KVG-Bench lists."""
    cfg = config or EvalStageConfig()
    logger = get_run_logger()
    ckpt, step = resolve_checkpoint_task(checkpoint, store_uri)
    out: dict[str, str] = {}
    for b in benches:
        bench = resolve_bench_task(b, store_uri)
        name = label or (ckpt.name if step is None else f"{ckpt.name}@step{step}")
        ev = evaluate_task(cfg, name, ckpt, bench, seen_categories, all_categories, store_uri, force, step)
        logger.info("%s on %s -> %s", ckpt, bench, ev)
        out[str(bench)] = str(ev)
    return out
