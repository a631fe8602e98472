"""FGVR end to end: synthetic bench -> ``eval fgvr-run`` (tiny checkpoint, resumable) -> metrics;
``eval fgvr-score`` on hand-written outputs with exact accuracies."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from deepperception.cli import app
from deepperception.eval.fgvr import HOWS, LETTERS


@pytest.fixture(scope="module")
def fgvr_bench() -> pa.Table:
    """Six questions, two from each of three categories, 64x64 images, 4 options."""
    from deepperception.domain import SyntheticDomainConfig, entities_to_table, mine_entities
    from deepperception.engine.collection import CollectionConfig, collect_images
    from deepperception.engine.datasets import build_fgvr_bench

    ents = entities_to_table(mine_entities(SyntheticDomainConfig(entities_per_category=4, seed=0)))
    images = collect_images(ents, CollectionConfig(images_per_entity=1, image_size=64, test_fraction=1.0, seed=0))
    bench = build_fgvr_bench(images, n_options=4, pool="test", seed=0)
    cats = list(dict.fromkeys(bench.column("category").to_pylist()))[:3]
    keep = [i for c in cats for i in [j for j, x in enumerate(bench.column("category").to_pylist()) if x == c][:2]]
    return bench.take(keep)


def _write(bench: pa.Table, path):
    pq.write_table(bench, path)
    return path


def test_fgvr_run_scores_and_resumes(fgvr_bench, tmp_path_factory, tmp_path):
    from deepperception.model.synthetic import cached_tiny_checkpoint

    ckpt = cached_tiny_checkpoint(tmp_path_factory.getbasetemp())
    bench = _write(fgvr_bench, tmp_path / "fgvr.parquet")
    out = tmp_path / "run"
    args = ["eval", "fgvr-run", "--bench", str(bench), "--model", str(ckpt), "--out", str(out),
            "--batch-size", "4", "--max-new-tokens", "6", "--resamples", "200"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    qids = fgvr_bench.column("question_id").to_pylist()
    lines = (out / "outputs.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["question_id"] for r in recs] == qids
    assert {r["prompt_mode"] for r in recs} == {"fgvr"}
    assert [r["gt_answer"] for r in recs] == fgvr_bench.column("answer").to_pylist()
    assert all(r["gt_bbox"] == [] and 1 <= r["n_output_tokens"] <= 6 for r in recs)
    assert json.loads((out / "run.json").read_text())["prompt_mode"] == "fgvr"

    metrics = json.loads((out / "metrics.json").read_text())
    cats = list(dict.fromkeys(fgvr_bench.column("category").to_pylist()))
    assert metrics["num_questions"] == 6 and metrics["num_missing"] == 0
    assert list(metrics["groups"]) == ["all", *cats]
    assert metrics["groups"]["all"]["Num"] == 6 and all(metrics["groups"][c]["Num"] == 2 for c in cats)
    assert sum(metrics["groups"]["all"]["how"].values()) == 6 and list(metrics["groups"]["all"]["how"]) == list(HOWS)
    ci = metrics["groups"]["all"]["ci"]
    assert ci["lo"] <= metrics["groups"]["all"]["Acc"] <= ci["hi"] and ci["confidence"] == 0.95
    pred = pq.read_table(out / "predictions.parquet")
    assert pred.column("question_id").to_pylist() == qids
    assert sum(pred.column("correct").to_pylist()) == round(6 * metrics["groups"]["all"]["Acc"])

    # Simulate a kill: keep three answers, cut the fourth mid-line, drop the rest.
    (out / "outputs.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    (out / "metrics.json").unlink()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert (out / "outputs.jsonl").read_text().splitlines() == lines
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert json.loads((out / "run.json").read_text())["resumed_from"] == 3

    # fgvr-score on the same outputs gives the same metrics
    scored = tmp_path / "scored"
    res = CliRunner().invoke(app, ["eval", "fgvr-score", "--bench", str(bench), "--outputs",
                                   str(out / "outputs.jsonl"), "--out", str(scored), "--resamples", "200"])
    assert res.exit_code == 0, res.output
    assert json.loads((scored / "metrics.json").read_text()) == metrics


def test_fgvr_score_hand_written_outputs(fgvr_bench, tmp_path):
    rows = fgvr_bench.drop_columns(["image"]).to_pylist()
    cats = list(dict.fromkeys(r["category"] for r in rows))  # rows: c0, c0, c1, c1, c2, c2

    def wrong(r):
        return LETTERS[(LETTERS.index(r["answer"]) + 1) % 4]

    def text_of(r):
        return r["options"][LETTERS.index(r["answer"])]

    outputs = [
        (rows[0], f"<think>hmm</think><answer>{rows[0]['answer']}</answer>"),       # letter, right
        (rows[1], f"<answer>({wrong(rows[1])})</answer>"),                          # letter, wrong
        (rows[2], f"<think>x</think><answer>It is the {text_of(rows[2])}.</answer>"),  # option text, right
        (rows[3], "<answer>no idea at all</answer>"),                               # unrecognized
        (rows[4], f"<think>{rows[4]['answer']}</think>"),                           # no answer tag
        # rows[5]: no output at all
    ]
    path = tmp_path / "outputs.jsonl"
    path.write_text("".join(json.dumps({"question_id": r["question_id"], "output": t}) + "\n" for r, t in outputs))
    bench = _write(fgvr_bench, tmp_path / "fgvr.parquet")
    res = CliRunner().invoke(app, ["eval", "fgvr-score", "--bench", str(bench), "--outputs", str(path),
                                   "--out", str(tmp_path / "s"), "--resamples", "100"])
    assert res.exit_code == 0, res.output
    assert "1 question(s) had no output" in res.output
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())
    g = m["groups"]
    assert m["num_missing"] == 1 and m["num_questions"] == 6
    assert g["all"]["Acc"] == pytest.approx(2 / 6) and g["all"]["parse_rate"] == pytest.approx(3 / 6)
    assert [g[c]["Acc"] for c in cats] == [0.5, 0.5, 0.0]
    assert g["all"]["official_Acc"] == pytest.approx(1 / 6)  # official rule misses "(B)" and option text
    assert g["all"]["how"] == {"letter": 2, "option_text": 1, "ambiguous": 0, "unrecognized": 1,
                               "no_answer_tag": 1, "no_output": 1}
    assert g[cats[1]]["how"]["option_text"] == 1 and g[cats[1]]["how"]["unrecognized"] == 1
    pred = pq.read_table(tmp_path / "s" / "predictions.parquet").to_pylist()
    assert [p["correct"] for p in pred] == [True, False, True, False, False, False]
    assert [p["choice"] for p in pred] == [rows[0]["answer"], wrong(rows[1]), rows[2]["answer"], None, None, None]


def test_fgvr_score_rejects_bad_bench(fgvr_bench, tmp_path):
    out = tmp_path / "outputs.jsonl"
    out.write_text("")
    t = fgvr_bench.set_column(fgvr_bench.schema.get_field_index("answer"), "answer",
                              pa.array(["A", "B", "E", "A", "B", "C"]))
    res = CliRunner().invoke(app, ["eval", "fgvr-score", "--bench", str(_write(t, tmp_path / "b.parquet")),
                                   "--outputs", str(out), "--out", str(tmp_path / "s")])
    assert res.exit_code == 2
    assert "row=2 field=answer" in res.output
    # a KVG-Bench (no options column) is refused with the column named
    kvg = fgvr_bench.drop_columns(["options"])
    res = CliRunner().invoke(app, ["eval", "fgvr-score", "--bench", str(_write(kvg, tmp_path / "k.parquet")),
                                   "--outputs", str(out), "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "field=options" in res.output
