"""The evaluation stage's work as a library call, without Prefect: the files of an evaluation
version, its metadata and the UI views, equal to running the pieces (inference, scoring) by hand."""

from __future__ import annotations

import json

import pytest

from deepperception.config import EvalStageConfig
from deepperception.eval.stage import EVALUATION_FILES, evaluate_into, metrics_rows

MAX_NEW = 4


class DictSink:
    """A version writer that keeps the files in memory."""

    def __init__(self) -> None:
        self.files: dict[str, object] = {}

    def write_table(self, table, name):
        self.files[name] = table

    def write_bytes(self, name, data):
        self.files[name] = bytes(data)

    def write_json(self, name, obj):
        self.files[name] = json.loads(json.dumps(obj))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from deepperception.model.synthetic import cached_tiny_checkpoint

    return cached_tiny_checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def bench():
    from deepperception.model.synthetic import synthetic_bench

    return synthetic_bench(4, seed=5)


def test_an_evaluation_without_prefect_writes_every_file_and_matches_the_pieces(tiny, bench, tmp_path):
    from deepperception.eval.groups import DEFAULT_ALL, DEFAULT_SEEN
    from deepperception.eval.inference import run_inference
    from deepperception.eval.io import read_outputs
    from deepperception.eval.scoring import score

    cfg = EvalStageConfig(max_new_tokens=MAX_NEW, batch_size=4, n_resamples=100)
    sink = DictSink()
    lineage = {"checkpoint": "sft-checkpoint@c1", "bench": "bench@b1", "evaluation": "evaluation@e1"}
    out = evaluate_into(sink, bench, tiny, tmp_path / "work", cfg, label="sft", checkpoint="sft-checkpoint@c1",
                        bench="bench@b1", seen_categories=DEFAULT_SEEN, all_categories=DEFAULT_ALL, lineage=lineage)

    assert set(sink.files) == set(EVALUATION_FILES)
    # The same generations and scores as calling inference and the scorer directly.
    by_hand = run_inference(bench, tiny, tmp_path / "by-hand", batch_size=4, max_new_tokens=MAX_NEW)
    assert sink.files["outputs.jsonl"] == by_hand.read_bytes()
    want = score(bench, read_outputs(by_hand), DEFAULT_SEEN, DEFAULT_ALL, empty_groups="omit", n_resamples=100,
                 seed=0, artifact="bench@b1")
    assert sink.files["metrics.json"] == json.dumps(want.metrics).encode()  # the official format: no indent
    assert sink.files["cis.json"] == json.loads(json.dumps(want.cis))
    assert sink.files["predictions"].equals(want.predictions_table())
    assert sink.files["chart.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(sink.files["run.json"])["status"] == "complete"

    assert out.metadata == {"label": "sft", "checkpoint": "sft-checkpoint@c1", "checkpoint_step": None,
                            "bench": "bench@b1", "metrics": want.metrics, "strict": want.strict, "cis": want.cis,
                            "summary": want.summary()}
    assert out.overall == want.metrics["all"]["all"] and out.overall["Num"] == bench.num_rows
    assert out.table_rows == metrics_rows(want.metrics, want.cis)
    assert "evaluation@e1" in out.summary_markdown and "data:image/png;base64," in out.summary_markdown
