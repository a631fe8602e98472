"""``deepperception eval run``: generate answers for a bench with a checkpoint, then score them.

Kept apart from ``cli.py`` (scoring only) so that scoring never imports torch/transformers.
"""

from __future__ import annotations

from pathlib import Path

import typer

from deepperception.eval.cli import _split, eval_app, format_score_table
from deepperception.eval.groups import DEFAULT_ALL, DEFAULT_SEEN


@eval_app.command("run")
def run_cmd(
    bench: Path = typer.Option(..., "--bench", help="KVG-Bench parquet (official schema)."),
    model: Path = typer.Option(..., "--model", help="Checkpoint directory (e.g. Qwen2-VL-7B-Instruct or ours)."),
    out: Path = typer.Option(..., "--out", help="Output directory: outputs.jsonl, run.json and the scoring files."),
    backend: str = typer.Option("hf", "--backend", help="hf (batched transformers) or vllm (gpu extra)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    prompt: str = typer.Option("r1", "--prompt", help="r1 (official DeepPerception), baseline (raw question), cot."),
    baseline: bool = typer.Option(False, "--baseline", help="Shortcut for --prompt baseline (how base Qwen2-VL is scored)."),
    cot: bool = typer.Option(False, "--cot", help="Shortcut for --prompt cot (zero-shot 'Let's think step by step')."),
    max_new_tokens: int = typer.Option(1500, "--max-new-tokens", min=1, help="Official: 1500."),
    device: str = typer.Option("cpu", "--device"),
    seen_categories: str = typer.Option(",".join(DEFAULT_SEEN), "--seen-categories"),
    all_categories: str = typer.Option(",".join(DEFAULT_ALL), "--all-categories"),
    empty_groups: str = typer.Option("error", "--empty-groups", help="error (official) or omit."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """Resumable batched inference + official-parity scoring. Kill it and run it again: only the
    missing questions are generated, and the final files equal an uninterrupted run's."""
    from deepperception.eval.inference import run_inference
    from deepperception.eval.io import read_bench, read_outputs, write_report
    from deepperception.eval.scoring import score

    if baseline and cot:
        raise typer.BadParameter("--baseline and --cot are exclusive")
    mode = "baseline" if baseline else "cot" if cot else prompt
    # Errors are rendered by the CLI's one handler (deepperception.cli_errors).
    table = read_bench(bench)
    outputs_path = run_inference(table, model, out, backend=backend, batch_size=batch_size,  # type: ignore[arg-type]
                                 prompt_mode=mode, max_new_tokens=max_new_tokens, device=device)  # type: ignore[arg-type]
    result = score(table, read_outputs(outputs_path), seen_categories=_split(seen_categories),
                   all_categories=_split(all_categories), empty_groups=empty_groups,  # type: ignore[arg-type]
                   seed=seed, artifact=str(bench))
    write_report(result, out)
    typer.echo(format_score_table(result))
    typer.echo(f"wrote {outputs_path} and {out}/metrics.json (official format)")

