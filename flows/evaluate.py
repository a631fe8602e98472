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
from deepperception.errors import ArtifactError, ConfigError
from deepperception.store import ArtifactRef
from flows.params import ParameterError, described, stage_run_name
from tasks.common import TASK_DEFAULTS, open_store, register_external_checkpoint, resolve_checkpoint_ref
from tasks.evaluation import evaluate_task, resolve_bench_task


@task(name="resolve-checkpoint", **TASK_DEFAULTS)
def resolve_checkpoint_task(checkpoint: str, store_uri: str | None = None) -> tuple[ArtifactRef, int | None]:
    """``(committed ref, published step or None)``."""
    store = open_store(store_uri)
    if "@" in checkpoint and not Path(checkpoint).exists():
        return resolve_checkpoint_ref(store, checkpoint)
    return register_external_checkpoint(store, checkpoint, "external-checkpoint", "register"), None


def _evaluate_run_name(params: dict) -> str | None:
    return params.get("label") or params.get("checkpoint")


def _parameter(param: str, text: str, resolve):
    """``resolve()``, or a :class:`ParameterError` naming the parameter and what it was given (a bad
    bench file's :class:`InputDataError` passes unchanged: it names the file, row and field)."""
    try:
        return resolve()
    except (ArtifactError, ConfigError) as exc:  # no such ref, bad ref text, a directory without config.json
        raise ParameterError(f"parameter {param!r} ({text!r}): {exc}") from exc


@flow(name="evaluate", log_prints=True, flow_run_name=stage_run_name("evaluate", config=None, extra=_evaluate_run_name))
@described(
    checkpoint="The checkpoint: name@version, name@latest (e.g. grpo-checkpoint@latest), a published step "
               "(grpo-checkpoint@latest#step=800) or a checkpoint directory on the worker.",
    benches="The benches: name@version / name@latest (e.g. bench@latest), KVG-Bench parquet files on the "
            "worker or s3:// objects.",
    config="Evaluation settings (empty: the defaults).",
    label="The arm's name in the evaluation and the run name (empty: the checkpoint's name).",
    seen_categories="Categories counted as the seen domain (empty: from the bench's manifest or KVG-Bench's).",
    all_categories="Every category of the bench (empty: from the bench's manifest or KVG-Bench's).",
)
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
    records (benches this pipeline built) or the official KVG-Bench lists. The checkpoint and
    every bench are resolved before anything is evaluated."""
    cfg = config or EvalStageConfig()
    logger = get_run_logger()
    if not benches:
        raise ParameterError("parameter 'benches': give at least one bench (e.g. bench@latest)")
    ckpt, step = _parameter("checkpoint", checkpoint, lambda: resolve_checkpoint_task(checkpoint, store_uri))
    resolved = [_parameter(f"benches[{i}]", b, lambda b=b: resolve_bench_task(b, store_uri))
                for i, b in enumerate(benches)]
    out: dict[str, str] = {}
    for bench in resolved:
        name = label or (ckpt.name if step is None else f"{ckpt.name}@step{step}")
        ev = evaluate_task(cfg, name, ckpt, bench, seen_categories, all_categories, store_uri, force, step)
        logger.info("%s on %s -> %s", ckpt, bench, ev)
        out[str(bench)] = str(ev)
    return out
