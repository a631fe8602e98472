"""``deepperception eval run`` end to end: tiny checkpoint, small bench, resumable, scored."""

import json

import pyarrow.parquet as pq
from typer.testing import CliRunner

from deepperception.cli import app
from deepperception.model.synthetic import cached_tiny_checkpoint, synthetic_bench


def test_eval_run_generates_scores_and_resumes(tmp_path_factory, tmp_path):
    ckpt = cached_tiny_checkpoint(tmp_path_factory.getbasetemp())
    bench = synthetic_bench(6)
    cats = sorted(set(bench.column("category").to_pylist()))
    path = tmp_path / "bench.parquet"
    pq.write_table(bench, path)
    out = tmp_path / "run"
    args = ["eval", "run", "--bench", str(path), "--model", str(ckpt), "--out", str(out),
            "--batch-size", "4", "--max-new-tokens", "6", "--seen-categories", cats[0],
            "--all-categories", ",".join(cats)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    lines = (out / "outputs.jsonl").read_text().splitlines()
    assert [json.loads(l)["question_id"] for l in lines] == bench.column("question_id").to_pylist()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["all"]["all"]["Num"] == 6 and list(metrics)[:3] == ["all", "seen domain", "unseen domain"]
    assert pq.read_table(out / "predictions.parquet").num_rows == 6
    run = json.loads((out / "run.json").read_text())
    assert run["prompt_mode"] == "r1"

    # Simulate a kill: drop the last two answers and cut the one before mid-line.
    (out / "outputs.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert (out / "outputs.jsonl").read_text().splitlines() == lines
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_eval_run_reports_bad_bench_cleanly(tmp_path):
    bad = tmp_path / "bench.parquet"
    bad.write_bytes(b"not parquet")
    res = CliRunner().invoke(app, ["eval", "run", "--bench", str(bad), "--model", str(tmp_path), "--out",
                                   str(tmp_path / "o")])
    assert res.exit_code != 0
    assert "bench.parquet" in (res.output + str(res.exception))
