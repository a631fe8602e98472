"""The `evaluate` flow: a checkpoint directory x a KVG-Bench parquet file -> versioned predictions,
metrics and chart, plus Prefect table and Markdown artifacts; `@latest` references re-evaluate."""

import json

import pyarrow.parquet as pq
import pytest

from deepperception.config import EvalStageConfig
from deepperception.model.synthetic import cached_tiny_checkpoint, synthetic_bench
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
