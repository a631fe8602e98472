"""Resuming inference into a directory that holds another run's outputs: an error for a user's
``--out`` directory, a logged fresh start for the pipeline's own scratch space."""

from __future__ import annotations

import json
import logging

import pytest

from deepperception.errors import ConfigError, InputDataError
from deepperception.eval.inference import run_inference
from deepperception.model.synthetic import cached_tiny_checkpoint, synthetic_bench

MAX_NEW = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return cached_tiny_checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def bench():
    return synthetic_bench(4, seed=3)


@pytest.fixture(scope="module")
def reference(tiny, bench, tmp_path_factory):
    return run_inference(bench, tiny, tmp_path_factory.mktemp("ref"), max_new_tokens=MAX_NEW).read_bytes()


def _stale(out, bench, field="checkpoint_identity"):
    """``out`` as another run left it: its run.json differs in ``field``, its outputs are not ours."""
    run = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**run, field: {"model.safetensors": "size=1;mtime_ns=1"}}))
    (out / "outputs.jsonl").write_text(json.dumps({"question_id": bench.column("question_id")[0].as_py(),
                                                   "output": "from another run"}) + "\n")


def test_stale_scratch_dir_is_recreated_and_logged(tiny, bench, reference, tmp_path, caplog):
    run_inference(bench, tiny, tmp_path, max_new_tokens=MAX_NEW)
    _stale(tmp_path, bench)
    with caplog.at_level(logging.WARNING, logger="deepperception.eval.inference"):
        out = run_inference(bench, tiny, tmp_path, max_new_tokens=MAX_NEW, stale="recreate")
    assert out.read_bytes() == reference  # nothing of the other run survived
    assert "holds outputs of a different run (differs in ['checkpoint_identity'])" in caplog.text
    assert json.loads((tmp_path / "run.json").read_text())["resumed_from"] == 0


def test_stale_user_dir_is_still_an_error(tiny, bench, tmp_path):
    run_inference(bench, tiny, tmp_path, max_new_tokens=MAX_NEW)
    _stale(tmp_path, bench)
    before = (tmp_path / "outputs.jsonl").read_bytes()
    with pytest.raises(ConfigError, match=r"holds outputs of a different run \(differs in \['checkpoint_identity'\]\)"):
        run_inference(bench, tiny, tmp_path, max_new_tokens=MAX_NEW)
    assert (tmp_path / "outputs.jsonl").read_bytes() == before  # the user's file is left alone


def test_scratch_dir_with_foreign_or_corrupt_outputs_is_recreated(tiny, bench, reference, tmp_path):
    run_inference(bench, tiny, tmp_path, max_new_tokens=MAX_NEW)
    (tmp_path / "outputs.jsonl").write_text('{"question_id": "not/in/bench", "output": "x"}\n')
    assert run_inference(bench, tiny, tmp_path, max_new_tokens=MAX_NEW, stale="recreate").read_bytes() == reference
    (tmp_path / "outputs.jsonl").write_text('garbage\n{"question_id": "a"}\n')
    assert run_inference(bench, tiny, tmp_path, max_new_tokens=MAX_NEW, stale="recreate").read_bytes() == reference
    (tmp_path / "outputs.jsonl").write_text('garbage\n{"question_id": "a"}\n')
    with pytest.raises(InputDataError, match="corrupt line 1"):
        run_inference(bench, tiny, tmp_path, max_new_tokens=MAX_NEW)


def test_unknown_stale_policy_is_refused(tiny, bench, tmp_path):
    with pytest.raises(ConfigError, match="stale must be"):
        run_inference(bench, tiny, tmp_path, stale="ignore")
