"""The `evaluate` flow: a checkpoint directory x a KVG-Bench parquet file -> versioned predictions,
metrics and chart, plus Prefect table and Markdown artifacts; `@latest` references re-evaluate."""

import json

import pyarrow.parquet as pq
import pytest

from deepperception.config import EvalStageConfig
from deepperception.model.synthetic import cached_tiny_checkpoint, synthetic_bench
from deepperception.errors import ArtifactError
from deepperception.store import ArtifactRef, ArtifactStore, StoreSettings

pytestmark = pytest.mark.slow


def test_evaluate_flow_paths_then_latest(prefect_harness, tmp_path_factory, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.evaluate import evaluate

    ckpt = cached_tiny_checkpoint(tmp_path_factory.getbasetemp())
    bench = synthetic_bench(8)
    path = tmp_path / "kvg-bench.parquet"
    pq.write_table(bench, path)
    uri = str(tmp_path / "store")
    cfg = EvalStageConfig(max_new_tokens=6, batch_size=4, n_resamples=200)
    out = evaluate(checkpoint=str(ckpt), benches=[str(path)], config=cfg, label="tiny", store_uri=uri)
    store = ArtifactStore(StoreSettings(uri=uri))
    (bench_ref, eval_ref), = out.items()
    ev = ArtifactRef.parse(eval_ref)
    m = store.manifest(ev)
    assert {"predictions.parquet", "metrics.json", "outputs.jsonl", "chart.png", "strict.json", "cis.json"} <= {
        f.path for f in m.files}
    assert store.read_bytes(ev, "chart.png")[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads(store.read_bytes(ev, "metrics.json"))
    assert metrics["all"]["all"]["Num"] == 8  # official default category lists, as for the real bench
    assert store.read_table(ev, "predictions").num_rows == 8
    assert m.upstream["bench"] == bench_ref and m.upstream["checkpoint"].startswith("external-checkpoint@")

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["eval-tiny", "eval-tiny-summary"])))}
    assert keys == {"eval-tiny", "eval-tiny-summary"}

    # Nightly re-evaluation form: latest checkpoint x latest bench -> the same version, reused.
    again = evaluate(checkpoint="external-checkpoint@latest", benches=["bench@latest"], config=cfg,
                     label="tiny", store_uri=uri)
    assert again == out


def test_evaluate_flow_unknown_reference_is_named(prefect_harness, tmp_path):
    from deepperception.errors import ArtifactError
    from flows.evaluate import evaluate

    with pytest.raises(ArtifactError, match="grpo-checkpoint"):
        evaluate(checkpoint="grpo-checkpoint@latest", benches=["bench@latest"], store_uri=str(tmp_path / "s"))


def test_evaluate_flow_scores_a_published_step(prefect_harness, tmp_path_factory, tmp_path):
    # A training stage publishes intermediate checkpoints under checkpoints/step-N/ (the authors
    # evaluated step 800); `name@version#step=N` scores that step, as its own evaluation version.
    from deepperception.store.stage import run_stage
    from deepperception.training.checkpoints import step_prefix
    from flows.evaluate import evaluate

    ckpt = cached_tiny_checkpoint(tmp_path_factory.getbasetemp())
    uri = str(tmp_path / "store")
    store = ArtifactStore(StoreSettings(uri=uri))

    def produce(w):
        w.write_dir(ckpt)
        w.write_dir(ckpt, prefix=step_prefix(1))
        return {"checkpoints": [1]}

    ref, _ = run_stage(store, "sft-checkpoint", "sft", {"test": "steps"}, {}, produce)
    path = tmp_path / "kvg-bench.parquet"
    pq.write_table(synthetic_bench(4), path)
    cfg = EvalStageConfig(max_new_tokens=4, batch_size=4, n_resamples=200)
    final = evaluate(checkpoint=str(ref), benches=[str(path)], config=cfg, store_uri=uri)
    step = evaluate(checkpoint=f"{ref}#step=1", benches=[str(path)], config=cfg, store_uri=uri)
    (ev_final,), (ev_step,) = final.values(), step.values()
    assert ev_final != ev_step
    meta = store.manifest(ArtifactRef.parse(ev_step)).metadata
    assert meta["checkpoint"] == str(ref) and meta["checkpoint_step"] == 1 and meta["label"] == "sft-checkpoint@step1"
    assert store.manifest(ArtifactRef.parse(ev_final)).metadata["checkpoint_step"] is None
    with pytest.raises(ArtifactError, match=r"published steps: \[1\]"):
        evaluate(checkpoint=f"{ref}#step=7", benches=[str(path)], config=cfg, store_uri=uri)
