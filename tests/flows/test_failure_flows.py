"""Evaluation's work directory belongs to the run it holds, not to a store URI string.

It used to be ``<cache>/work/<hash of the literal store URI>/<version>``: after ``rm -rf
.dp-store`` and a rerun, or with the same relative store URI in a second directory, the same
deterministic version met the old run's ``run.json`` (another checkpoint path / file identity)
and the evaluation failed with ``ConfigError: ... holds outputs of a different run`` until the
cache was deleted by hand.
"""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from deepperception.config import EvalStageConfig
from deepperception.model.synthetic import cached_tiny_checkpoint, synthetic_bench
from deepperception.store import ArtifactRef, ArtifactStore
from deepperception.store.stage import run_stage

pytestmark = pytest.mark.slow

CFG = EvalStageConfig(max_new_tokens=4, batch_size=8, n_resamples=100)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return cached_tiny_checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def bench_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "kvg-bench.parquet"
    pq.write_table(synthetic_bench(6), path)
    return str(path)


def _store_checkpoint(uri: str, ckpt) -> ArtifactRef:
    """The checkpoint copied into the store as a stage output, as SFT/GRPO commit theirs: a
    rebuilt store holds new files (new paths and mtimes) under the same deterministic version."""
    def produce(w):
        w.write_dir(ckpt)
        return {"kind": "copy"}
    return run_stage(ArtifactStore.from_uri(uri), "sft-checkpoint", "sft", {"source": "tiny"}, {}, produce)[0]


def _evaluate(uri: str, ckpt: ArtifactRef, bench_path: str) -> tuple[str, bytes]:
    from flows.evaluate import evaluate

    (_, ev), = evaluate(checkpoint=str(ckpt), benches=[bench_path], config=CFG, label="sft", store_uri=uri).items()
    return ev, ArtifactStore.from_uri(uri).read_bytes(ArtifactRef.parse(ev), "outputs.jsonl")


def test_wiped_store_is_evaluated_again(prefect_harness, tmp_path, tiny, bench_path):
    uri = str(tmp_path / "store")
    ckpt = _store_checkpoint(uri, tiny)
    ev, outputs = _evaluate(uri, ckpt, bench_path)
    shutil.rmtree(tmp_path / "store")
    assert _store_checkpoint(uri, tiny) == ckpt  # same version, new bytes on disk
    again, outputs_again = _evaluate(uri, ckpt, bench_path)
    assert again == ev and outputs_again == outputs


def test_two_stores_with_the_same_relative_uri_share_a_cache(prefect_harness, tmp_path, monkeypatch, tiny, bench_path):
    results = []
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
        monkeypatch.chdir(tmp_path / d)
        ckpt = _store_checkpoint(".dp-store", tiny)
        results.append(_evaluate(".dp-store", ckpt, bench_path))
    (ev1, out1), (ev2, out2) = results
    assert ev1 == ev2 and out1 == out2  # the same deterministic version and answers, in two stores


def test_stale_work_dir_is_recreated(prefect_harness, tmp_path, tiny, bench_path):
    uri = str(tmp_path / "store")
    store = ArtifactStore.from_uri(uri)
    ckpt = _store_checkpoint(uri, tiny)
    ev, outputs = _evaluate(uri, ckpt, bench_path)
    work, = (store.settings.local_cache() / "work" / store.identity / "evaluation").glob(f"{ArtifactRef.parse(ev).version}-*")
    run = json.loads((work / "run.json").read_text())
    # Scratch space left by another run: other checkpoint identity, other answers.
    (work / "run.json").write_text(json.dumps({**run, "checkpoint_identity": {"model.safetensors": "other"}}))
    (work / "outputs.jsonl").write_text("".join(json.dumps({"question_id": f"other/{i}", "output": "x"}) + "\n"
                                                for i in range(3)))
    shutil.rmtree(tmp_path / "store" / "evaluation")  # so the evaluation is computed again
    again, outputs_again = _evaluate(uri, ckpt, bench_path)
    assert again == ev and outputs_again == outputs
    assert json.loads((work / "run.json").read_text())["checkpoint_identity"] == run["checkpoint_identity"]


def test_reproduce_with_a_dead_labeler_stops_at_labeling_and_commits_nothing_downstream(prefect_harness, tmp_path):
    """The issue's scenario end to end: `reproduce` with the openai labeler and nothing listening."""
    import socket
    import sys
    from pathlib import Path

    from deepperception.config import load_profile
    from deepperception.errors import StageFailedError
    from flows import stages
    from flows.reproduce import reproduce

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
    from fake_openai_server import FakeOpenAIServer

    with socket.socket() as s:  # a real dead endpoint: a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = {"labeling": {"backend": "openai", "endpoint": {
        "base_url": f"http://127.0.0.1:{port}/v1", "model": "vl", "timeout_s": 10, "max_retries": 0, "concurrency": 4}}}
    cfg = load_profile("toy", overrides)
    uri = str(tmp_path / "store")
    with pytest.raises(StageFailedError, match=rf"stage label: \d+ of \d+ items of labeled-images failed \(more than "
                                               rf"max_failure_rate 5.0% allows; \d+ more not attempted\).*"
                                               rf"ConnectError talking to vl at http://127.0.0.1:{port}/v1"):
        reproduce(profile="toy", overrides=overrides, store_uri=uri, dispatch="inline")
    store = ArtifactStore.from_uri(uri)
    assert sorted(m.name for m in store.list()) == ["entities", "images"]  # no labeled, composites, cot, bench...

    # The labeler is back (a box for everything it is asked): the same stage, same config, succeeds.
    images = store.latest("images")
    with FakeOpenAIServer(lambda image, text, req: "(100,100),(900,900)", port=port):
        labeled = stages.label_boxes(cfg.labeling, images, uri)
    m = store.manifest(labeled)
    assert m.metadata["failures"]["failed"] == 0 and m.metadata["rows"] == store.read_table(images).num_rows
