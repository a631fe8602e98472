"""Thin Prefect tasks of evaluation: bring a bench in, run a checkpoint on a bench, score it,
write the report. The evaluation's work (inference, scoring, its files, chart and summary) is
:func:`deepperception.eval.stage.evaluate_into`; the task reads inputs, calls it, commits, and
publishes the Prefect table and Markdown artifacts it returns."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from deepperception.config import EvalStageConfig
from deepperception.comparison import COMPOSED_BENCH
from deepperception.errors import InputDataError
from deepperception.report import EvalSummary, paired_differences, render_json, render_markdown
from deepperception.store import ArtifactRef
from deepperception.store.stage import run_stage
from deepperception.version import code_version, short_hash
from tasks.common import TASK_DEFAULTS, checkpoint_dir, open_store, read_input_table, resolve_ref, run_logger


def _in_run() -> bool:
    """Inside a Prefect flow or task run. Outside one (``evaluate_task.fn`` from a script, a test, a
    child process resuming a killed evaluation) the table and Markdown artifacts are not created:
    Prefect would start an ephemeral API server just for them (tens of seconds) and deprecates
    artifacts outside runs; the version's files hold the same metrics, chart and summary."""
    from prefect.context import get_run_context
    from prefect.exceptions import MissingContextError

    try:
        get_run_context()
    except MissingContextError:
        return False
    return True


def _artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only.

    >>> _artifact_key("eval GRPO_ckpt@1")
    'eval-grpo-ckpt-1'
    """
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


@task(name="resolve-bench", **TASK_DEFAULTS)
def resolve_bench_task(source: str, store_uri: str | None = None) -> ArtifactRef:
    """A bench given as ``name@version`` / ``name@latest``, a local KVG-Bench Parquet file or an
    ``s3://`` object -> a committed ``bench`` artifact. Files go through the ``import-bench`` stage
    (versioned by content hash, schema checked); errors name ``source``."""
    from deepperception.eval.bench_source import for_source, local_bench_file, source_kind
    from tasks.engine import import_bench_task

    store = open_store(store_uri)
    if source_kind(source) == "ref":
        return resolve_ref(store, source)
    path = local_bench_file(source, store.settings)
    try:
        return import_bench_task(str(path), store_uri)
    except InputDataError as e:
        raise for_source(e, source) from e


def eval_work_dir(store, writer, checkpoint: ArtifactRef, bench: ArtifactRef) -> Path:
    """Where the evaluation of ``writer``'s version generates (resumable across kills).

    Keyed by what it holds, never by the store's URI string: a relative URI names a different
    store in another directory, and a wiped and rebuilt store has new checkpoint files under the
    same deterministic versions. The store's identity (new for a new or wiped store), the
    version, and its inputs (checkpoint, bench, config hash, code) are the key.
    """
    inputs = short_hash({"checkpoint": str(checkpoint), "bench": str(bench), "config": writer.config_hash,
                         "code": writer.code_version}, 12)
    return store.settings.local_cache() / "work" / store.identity / writer.name / f"{writer.version}-{inputs}"


@task(name="evaluate-checkpoint", **TASK_DEFAULTS)
def evaluate_task(
    config: EvalStageConfig, label: str, checkpoint: ArtifactRef, bench: ArtifactRef,
    seen_categories: list[str] | None = None, all_categories: list[str] | None = None,
    store_uri: str | None = None, force: bool = False, checkpoint_step: int | None = None,
) -> ArtifactRef:
    """Generate answers for every bench question (resumable), score them with the official-parity
    scorer plus strict scoring and bootstrap CIs, and commit outputs + predictions + metrics.

    Category lists default to the ones the bench's manifest records (benches we build), else to
    the official KVG-Bench lists (an imported kvg-bench.parquet). ``checkpoint_step`` scores one of
    the intermediate checkpoints the training stage published (``name@version#step=N``) instead
    of its final one; it is part of the evaluation's version."""
    from deepperception.eval.groups import DEFAULT_ALL, DEFAULT_SEEN
    from deepperception.eval.stage import evaluate_into

    store = open_store(store_uri)
    logger = run_logger()
    bench_meta = store.manifest(bench).metadata
    seen_categories = list(seen_categories or bench_meta.get("seen_categories") or DEFAULT_SEEN)
    all_categories = list(all_categories or bench_meta.get("all_categories") or DEFAULT_ALL)
    stage_cfg = {**config.model_dump(mode="json"), "label": label,
                 "seen_categories": seen_categories, "all_categories": all_categories}
    if checkpoint_step is not None:
        stage_cfg["checkpoint_step"] = checkpoint_step

    def produce(w):
        lineage = {"checkpoint": str(checkpoint), "bench": str(bench), "evaluation": str(w.ref),
                   "config hash": w.config_hash, "code version": w.code_version}
        # The work dir is our scratch space: outputs of another run found there are discarded
        # (and logged), never an error the user has to clean up by hand.
        out = evaluate_into(w, read_input_table(store, bench, "evaluate"),
                            checkpoint_dir(store, checkpoint, checkpoint_step), eval_work_dir(store, w, checkpoint, bench),
                            config, label=label, checkpoint=str(checkpoint), bench=str(bench),
                            seen_categories=seen_categories, all_categories=all_categories, lineage=lineage,
                            checkpoint_step=checkpoint_step)
        logger.info("evaluate %s: Acc %.4f IoU %.4f on %d questions", label, out.overall["Acc"], out.overall["IoU"],
                    out.overall["Num"])
        # One key per arm: Prefect keeps every bench's table in that key's history (the
        # description names the bench).
        if _in_run():
            key = _artifact_key(f"eval-{label}")
            create_table_artifact(out.table_rows, key=key,
                                  description=f"KVG metrics of {label} ({checkpoint}) on {bench}")
            create_markdown_artifact(out.summary_markdown, key=f"{key}-summary",
                                     description=f"KVG evaluation of {label} with chart and CIs")
        return out.metadata

    return run_stage(store, "evaluation", "evaluate", stage_cfg, {"checkpoint": checkpoint, "bench": bench},
                     produce, force=force)[0]


def _summary(store, key: str, ref: ArtifactRef, bench_names: dict[str, str]) -> EvalSummary:
    """One evaluation for the report; metrics from its metrics.json (the official group order,
    which the manifest's sorted JSON loses)."""
    m = store.manifest(ref)
    meta = m.metadata
    label = meta.get("label") or key
    cis = {g: {"lo": v["official"]["lo"], "hi": v["official"]["hi"]} for g, v in meta.get("cis", {}).items()}
    ckpt = ArtifactRef.parse(meta["checkpoint"])
    ckpt_manifest = store.manifest(ckpt)
    ckpt_meta = ckpt_manifest.metadata
    notes = []
    for role, up in ckpt_manifest.upstream.items():
        stats = store.manifest(ArtifactRef.parse(up)).metadata.get("stats") or {}
        if stats.get("policy_applied"):
            notes.append(f"trained on {up} ({role}): rl-filter kept {stats.get('n_kept')} of {stats.get('n_in')} "
                         f"items, policy `{stats['policy_applied']}`")
            if stats.get("zero_advantage"):
                from deepperception.training.rl_filter import describe_zero_advantage

                notes.append(describe_zero_advantage(stats))
    return EvalSummary(
        label=label, checkpoint=meta["checkpoint"] + (f"#step={meta['checkpoint_step']}"
                                                       if meta.get("checkpoint_step") is not None else "")
        + (f" (external: {ckpt_meta['external_path']})" if ckpt_meta.get("external_path") else ""),
        bench=meta["bench"], bench_name=bench_names.get(meta["bench"], meta["bench"]), evaluation=str(ref), config_hash=m.config_hash, code_version=m.code_version,
        metrics=json.loads(store.read_bytes(ref, "metrics.json")), strict={g: v for g, v in meta.get("strict", {}).items()}, cis=cis,
        extra={"notes": notes, "train": ckpt_meta.get("train", {})},
    )


def bench_names(header: dict) -> dict[str, str]:
    """``{bench ref: name}`` from the report header: ``bench`` is the composed one,
    ``extra benches`` maps names to refs.

    >>> bench_names({"bench": "bench@1", "extra benches": {"kvg-bench": "bench@2"}})
    {'bench@1': 'composed', 'bench@2': 'kvg-bench'}
    """
    names = {str(header["bench"]): COMPOSED_BENCH} if header.get("bench") else {}
    names.update({str(ref): name for name, ref in (header.get("extra benches") or {}).items()})
    return names


@task(name="write-report", **TASK_DEFAULTS)
def report_task(
    evaluations: dict[str, ArtifactRef], header: dict, store_uri: str | None = None, force: bool = False
) -> dict:
    """Markdown + JSON report over all evaluations, each number with its lineage: per bench the
    arms side by side and the paired-bootstrap differences between them (from each evaluation's
    ``predictions`` table).

    ``header`` is part of the report's version; besides the facts it shows it may carry
    ``extra benches`` (``{name: bench ref}``) and ``paired bootstrap`` (``{"n_resamples", "seed"}``).
    Its upstream is every evaluation (whose versions fix the checkpoints and benches read)."""
    store = open_store(store_uri)
    names = bench_names(header)
    summaries = [_summary(store, key, ref, names) for key, ref in evaluations.items()]
    boot = header.get("paired bootstrap") or {}
    head = {**header, "code version": code_version(), "store": store.uri}

    def produce(w):
        predictions = {str(ref): store.read_table(ref, "predictions",
                                                  columns=["question_id", "category", "domain", "correct"]).to_pandas()
                       for ref in evaluations.values()}
        diffs = paired_differences(summaries, predictions, n_resamples=int(boot.get("n_resamples", 2000)),
                                   seed=int(boot.get("seed", 0)))
        w.write_bytes("report.md", render_markdown(summaries, head, diffs).encode())
        w.write_json("report.json", render_json(summaries, head, diffs))
        return {"checkpoints": [s.label for s in summaries], "differences": len(diffs)}

    ref, _ = run_stage(store, "report", "report", {"header": header}, dict(evaluations), produce, force=force)
    markdown = store.read_bytes(ref, "report.md").decode()
    create_markdown_artifact(markdown, key="reproduction-report", description=f"report {ref}")
    return {"report": str(ref), "report_markdown": store.location(ref, "report.md"),
            "report_json": store.location(ref, "report.json"), "markdown": markdown}
