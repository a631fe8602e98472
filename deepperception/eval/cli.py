"""``deepperception eval ...``: score a run, compare two runs.

``eval_app`` is a standalone :class:`typer.Typer`; the main CLI mounts it with
``app.add_typer(eval_app, name="eval")``. Generation (``eval run``) is added there by the
inference module, not here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from deepperception.cli_errors import ErrorHandlingGroup
from deepperception.eval.bootstrap import DEFAULT_RESAMPLES, paired_bootstrap
from deepperception.eval.groups import DEFAULT_ALL, DEFAULT_SEEN
from deepperception.eval.io import read_bench_for_scoring, read_outputs, read_run, write_report
from deepperception.eval.scoring import ScoreResult, score

# ErrorHandlingGroup: errors print `error: ...` (exit 2) the same way whether this sub-app runs
# under the main CLI or on its own (tests invoke it directly).
eval_app = typer.Typer(cls=ErrorHandlingGroup, no_args_is_help=True,
                       help="KVG-Bench scoring (official parity + strict + CIs) and run comparison.")


def _split(csv: str) -> list[str]:
    return [c.strip() for c in csv.split(",") if c.strip()]


def _pct(x: float) -> str:
    return f"{100 * x:6.2f}"


def format_score_table(result: ScoreResult) -> str:
    """Human-readable per-group table (percentages; metrics.json itself keeps fractions)."""
    head = f"{'group':<15}{'N':>6}{'Acc':>8}  {'95% CI':<15}{'IoU':>8}{'strict':>8}{'parsed':>8}{'outside':>8}"
    lines = [head, "-" * len(head)]
    for g, m in result.metrics.items():
        a = m["all"]
        ci = result.cis[g]["official"]
        s = result.strict[g]
        lines.append(f"{g:<15}{a['Num']:>6}{_pct(a['Acc']):>8}  [{_pct(ci['lo'])},{_pct(ci['hi'])}]"
                     f"{_pct(a['IoU']):>8}{_pct(s['Acc']):>8}{_pct(s['parse_rate']):>8}{s['official_hits_outside_answer']:>8}")
    lines.append("Acc/IoU/strict/parsed in %; outside = official hits taken from outside <answer>.")
    return "\n".join(lines)


@eval_app.command("score")
def score_cmd(
    bench: Path = typer.Option(..., "--bench", help="KVG-Bench parquet (official schema)."),
    outputs: Path = typer.Option(..., "--outputs", help='OUTPUTS.jsonl: {"question_id", "answer"} per line.'),
    out: Path = typer.Option(..., "--out", help="Directory for metrics.json, predictions.parquet, ..."),
    seen_categories: str = typer.Option(",".join(DEFAULT_SEEN), "--seen-categories", help="Comma-separated."),
    all_categories: str = typer.Option(",".join(DEFAULT_ALL), "--all-categories", help="Comma-separated, report order."),
    missing: str = typer.Option("official", "--missing", help="official: score missing outputs as empty; error: refuse."),
    empty_groups: str = typer.Option("error", "--empty-groups", help="error (official: cannot score) or omit."),
    resamples: int = typer.Option(DEFAULT_RESAMPLES, "--resamples", help="Bootstrap resamples for CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """Score OUTPUTS against BENCH exactly like the official evaluate.py, plus strict scoring and CIs."""
    result = score(
        read_bench_for_scoring(bench), read_outputs(outputs),
        seen_categories=_split(seen_categories), all_categories=_split(all_categories),
        missing=missing, empty_groups=empty_groups, n_resamples=resamples, seed=seed,  # type: ignore[arg-type]
        artifact=str(bench),
    )
    write_report(result, out)
    typer.echo(format_score_table(result))
    if result.num_missing:
        typer.echo(f"{result.num_missing} question(s) had no output and were scored as empty answers.")
    typer.echo(f"wrote {out}/metrics.json (official format) and predictions/strict/cis/report")


@eval_app.command("compare")
def compare_cmd(
    run_a: Path = typer.Argument(..., help="Score output directory of run A."),
    run_b: Path = typer.Argument(..., help="Score output directory of run B."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the comparison as JSON here."),
    column: str = typer.Option("correct", "--metric", help="correct (official) or strict_correct."),
    resamples: int = typer.Option(DEFAULT_RESAMPLES, "--resamples"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Paired bootstrap of A - B accuracy per group over the same questions."""
    a, b = read_run(run_a), read_run(run_b)
    res = paired_bootstrap(a.predictions, b.predictions, column=column, category_order=a.category_order,
                           n_resamples=resamples, seed=seed)
    head = f"{'group':<15}{'N':>6}{'A':>8}{'B':>8}{'A-B':>8}  {'95% CI':<17}{'p':>7}"
    typer.echo(f"A = {run_a}\nB = {run_b}\nmetric = {column} (in %)")
    typer.echo(head + "\n" + "-" * len(head))
    for g, r in res.items():
        if r.n == 0:
            continue
        typer.echo(f"{g:<15}{r.n:>6}{_pct(r.a):>8}{_pct(r.b):>8}{100 * r.delta:>+8.2f}  "
                   f"[{100 * r.lo:+6.2f},{100 * r.hi:+6.2f}]{r.p_value:>7.3f}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"run_a": str(run_a), "run_b": str(run_b), "metric": column,
                                   "groups": {g: r.to_dict() for g, r in res.items()}}, indent=2))
        typer.echo(f"wrote {out}")
