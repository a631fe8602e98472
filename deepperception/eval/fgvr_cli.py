"""``deepperception eval fgvr-run`` / ``fgvr-score``: FGVR multiple-choice evaluation end to end.

``fgvr-run`` generates answers for an FGVR bench (format: :mod:`deepperception.eval.fgvr`) with
the resumable :func:`~deepperception.eval.inference.run_inference` under prompt mode ``fgvr``
(the official classification template), then scores them; ``fgvr-score`` scores an existing
``outputs.jsonl``. Output directory: ``outputs.jsonl`` and ``run.json`` (``fgvr-run`` only, see
:mod:`deepperception.eval.inference`), ``metrics.json`` and ``predictions.parquet``
(:func:`~deepperception.eval.fgvr.write_fgvr_report`).

Importing this module registers both commands on ``eval_app`` (``deepperception.cli`` does).
Torch/transformers are imported only inside ``fgvr-run``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from deepperception.eval.bootstrap import DEFAULT_RESAMPLES
from deepperception.eval.cli import eval_app
from deepperception.eval.fgvr import (
    SCORING_COLUMNS,
    FgvrResult,
    check_fgvr_items,
    format_fgvr_table,
    read_fgvr_bench,
    score_fgvr,
    write_fgvr_report,
)


def _score_and_write(items, outputs: Path, out: Path, *, resamples: int, seed: int, artifact: str) -> FgvrResult:
    from deepperception.eval.io import read_outputs

    result = score_fgvr(items, read_outputs(outputs), n_resamples=resamples, seed=seed, artifact=artifact)
    write_fgvr_report(result, out)
    return result


def _echo(result: FgvrResult, out: Path) -> None:
    typer.echo(format_fgvr_table(result))
    if result.num_missing:
        typer.echo(f"{result.num_missing} question(s) had no output and were scored as wrong.")
    typer.echo(f"wrote {out}/metrics.json and {out}/predictions.parquet")


@eval_app.command("fgvr-run")
def fgvr_run_cmd(
    bench: Path = typer.Option(..., "--bench", help="FGVR bench parquet (see deepperception.eval.fgvr)."),
    model: Path = typer.Option(..., "--model", help="Checkpoint directory."),
    out: Path = typer.Option(..., "--out", help="Output directory: outputs.jsonl, run.json, metrics.json, predictions.parquet."),
    backend: str = typer.Option("hf", "--backend", help="hf (batched transformers) or vllm (gpu extra)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    max_new_tokens: int = typer.Option(1500, "--max-new-tokens", min=1, help="Same budget as KVG (official: 1500)."),
    device: str = typer.Option("cpu", "--device"),
    resamples: int = typer.Option(DEFAULT_RESAMPLES, "--resamples", help="Bootstrap resamples for CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """Resumable batched inference with the official classification prompt, then FGVR scoring.
    Kill it and run it again: only the missing questions are generated."""
    from deepperception.eval.inference import run_inference

    # Errors are rendered by the CLI's one handler (deepperception.cli_errors).
    table = read_fgvr_bench(bench)
    check_fgvr_items(table.select(["question_id", "question", *SCORING_COLUMNS[1:]]), artifact=str(bench))
    outputs_path = run_inference(table, model, out, backend=backend, batch_size=batch_size,  # type: ignore[arg-type]
                                 prompt_mode="fgvr", max_new_tokens=max_new_tokens, device=device)
    result = _score_and_write(table.drop_columns(["image"]), outputs_path, out, resamples=resamples,
                              seed=seed, artifact=str(bench))
    typer.echo(f"outputs: {outputs_path}")
    _echo(result, out)


@eval_app.command("fgvr-score")
def fgvr_score_cmd(
    bench: Path = typer.Option(..., "--bench", help="FGVR bench parquet (see deepperception.eval.fgvr)."),
    outputs: Path = typer.Option(..., "--outputs", help='OUTPUTS.jsonl: {"question_id", "output" (or "answer")} per line.'),
    out: Path = typer.Option(..., "--out", help="Directory for metrics.json and predictions.parquet."),
    resamples: int = typer.Option(DEFAULT_RESAMPLES, "--resamples", help="Bootstrap resamples for CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """Score OUTPUTS against an FGVR bench: accuracy per category and overall, 95% bootstrap CIs,
    parse-method counts. Questions without output count as wrong."""
    items = read_fgvr_bench(bench, columns=["question_id", "question", *SCORING_COLUMNS[1:]])
    result = _score_and_write(items, outputs, out, resamples=resamples, seed=seed, artifact=str(bench))
    _echo(result, out)
