"""The evaluation stage's work, without Prefect: generate answers for a bench (resumable), score
them, write the evaluation version's files, and say what the UI should show.

Why here and not in the task: the task (``tasks/evaluation.py``) only reads its inputs, calls
:func:`evaluate_into`, commits, and turns the returned :class:`EvaluationOutcome` into Prefect
artifacts; everything that decides what an evaluation holds lives in the library and is tested
without a Prefect server (``tests/eval/test_eval_stage.py``).

The files of an evaluation version (``EVALUATION_FILES``): ``predictions`` (table, one row per
question: parsed box, IoU, correct under each rule), ``outputs.jsonl`` (the generations, bench
order), ``metrics.json`` (the official evaluator's format: no indent, official group order),
``strict.json``, ``cis.json`` (bootstrap CIs), ``run.json`` (the inference run's record, when the
backend wrote one) and ``chart.png`` (Acc@0.5 per group with CIs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from deepperception.eval.publish import bar_chart_png, markdown_summary

EVALUATION_FILES = ("predictions", "outputs.jsonl", "metrics.json", "strict.json", "cis.json", "run.json", "chart.png")


class VersionSink(Protocol):
    """Where an evaluation's files go (a :class:`~deepperception.store.artifacts.VersionWriter`)."""

    def write_table(self, table: Any, name: str) -> Any: ...

    def write_bytes(self, name: str, data: bytes) -> Any: ...

    def write_json(self, name: str, obj: Any) -> Any: ...


@dataclass(frozen=True)
class EvaluationOutcome:
    """What an evaluation produced besides its files: the manifest metadata, and the views the
    orchestration layer publishes (a metrics table, a Markdown summary with the chart)."""

    metadata: dict[str, Any]
    table_rows: list[dict[str, Any]]
    summary_markdown: str
    overall: dict[str, Any] = field(default_factory=dict)
    """``metrics["all"]["all"]``: Acc, IoU and Num over every question (for the run log)."""


def metrics_rows(metrics: dict, cis: dict | None = None) -> list[dict]:
    """Official metrics.json -> one table row per group (for the Prefect UI).

    >>> metrics_rows({"all": {"all": {"Acc": 0.51234, "IoU": 0.4, "Num": 96}}},
    ...              {"all": {"official": {"lo": 0.4, "hi": 0.6}}})
    [{'group': 'all', 'Acc': 0.5123, 'IoU': 0.4, 'Num': 96, 'Acc 95% CI': '[0.4000, 0.6000]'}]
    """
    rows = []
    for group, value in metrics.items():
        cell = value.get("all", value)
        row = {"group": group, "Acc": round(cell["Acc"], 4), "IoU": round(cell["IoU"], 4), "Num": cell["Num"]}
        ci = (cis or {}).get(group, {}).get("official")
        if ci:
            row["Acc 95% CI"] = f"[{ci['lo']:.4f}, {ci['hi']:.4f}]"
        rows.append(row)
    return rows


def evaluate_into(
    sink: VersionSink, bench_table: Any, ckpt_dir: str | Path, work_dir: str | Path, config: Any, *,
    label: str, checkpoint: str, bench: str, seen_categories: Sequence[str], all_categories: Sequence[str],
    lineage: dict[str, str], checkpoint_step: int | None = None,
) -> EvaluationOutcome:
    """Evaluate the checkpoint in ``ckpt_dir`` on ``bench_table`` and write the version's files
    into ``sink``.

    ``config`` is an :class:`~deepperception.config.EvalStageConfig` (backend, batching, prompt
    mode, decoding budget, bootstrap). ``work_dir`` is the caller's scratch space for the
    resumable generation (another run's outputs found there are discarded, with a warning).
    ``checkpoint``/``bench`` are the refs (as strings) recorded in the metadata; ``lineage``
    (evaluation ref, config hash, code version, ...) goes into the Markdown summary.
    Determinism (threads, kernels) is applied before the model loads.
    """
    from deepperception.determinism import apply_determinism
    from deepperception.eval.inference import run_inference
    from deepperception.eval.io import read_outputs
    from deepperception.eval.scoring import score

    work = Path(work_dir)
    apply_determinism(config.determinism)  # threads/kernels fixed before the model loads
    outputs_path = run_inference(
        bench_table, ckpt_dir, work, backend=config.backend, batch_size=config.batch_size,
        prompt_mode=config.prompt_mode, max_new_tokens=config.max_new_tokens, device=config.device,
        stale="recreate", progress_name=f"evaluate {label}")
    result = score(bench_table, read_outputs(outputs_path), list(seen_categories), list(all_categories),
                   empty_groups="omit", n_resamples=config.n_resamples, seed=config.seed, artifact=bench)
    sink.write_table(result.predictions_table(), "predictions")
    sink.write_bytes("outputs.jsonl", outputs_path.read_bytes())
    sink.write_bytes("metrics.json", json.dumps(result.metrics).encode())  # official format: no indent
    sink.write_json("strict.json", result.strict)
    sink.write_json("cis.json", result.cis)
    run_json = work / "run.json"
    if run_json.is_file():
        sink.write_bytes("run.json", run_json.read_bytes())
    chart = bar_chart_png(result.metrics, result.cis, title=f"{label}: KVG Acc@0.5 per group")
    sink.write_bytes("chart.png", chart)
    metadata = {"label": label, "checkpoint": checkpoint, "checkpoint_step": checkpoint_step, "bench": bench,
                "metrics": result.metrics, "strict": result.strict, "cis": result.cis, "summary": result.summary()}
    return EvaluationOutcome(
        metadata=metadata, table_rows=metrics_rows(result.metrics, result.cis),
        summary_markdown=markdown_summary(result.metrics, result.cis, result.strict, lineage, chart),
        overall=result.metrics["all"]["all"])
