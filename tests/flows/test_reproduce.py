"""The whole DAG under Prefect's test harness at toy size: every stage commits a version with a
manifest, metrics are well-formed with lineage, reruns reuse, S3 works, bad input is named."""

import json

import pyarrow as pa
import pytest

from deepperception.config import profile
from deepperception.errors import ArtifactError, InputDataError
from deepperception.store import ArtifactRef, ArtifactStore, StoreSettings

pytestmark = pytest.mark.slow

EXPECTED = {
    "entities", "images", "labeled", "composites_train", "composites_bench", "bench", "cot", "cot_filtered",
    "sft_dataset", "grpo_pool", "base_checkpoint", "sft_checkpoint", "grpo_dataset", "grpo_checkpoint",
    "evaluation_base_baseline", "evaluation_base_r1", "evaluation_sft", "evaluation_grpo", "contamination",
    "data_card", "exports",
}
LABELS = ["base (baseline prompt)", "base (r1 prompt)", "sft", "grpo"]  # the default: no direct-SFT arm


def _check_run(store: ArtifactStore, result: dict) -> None:
    assert set(result["artifacts"]) == EXPECTED
    for key, text in result["artifacts"].items():
        ref = ArtifactRef.parse(text)
        m = store.manifest(ref)  # raises if the manifest is missing
        assert m.files and all(len(f.sha256) == 64 for f in m.files), key
        assert m.code_version and m.config_hash
        for up in m.upstream.values():
            assert store.exists(ArtifactRef.parse(up)), f"{key}: upstream {up} missing"
    bench = store.read_table(ArtifactRef.parse(result["artifacts"]["bench"]))
    assert bench.column_names == ["question_id", "question", "image", "answer", "category"]
    report = json.loads(store.read_bytes(ArtifactRef.parse(result["report"]), "report.json"))
    labels = [c["label"] for c in report["checkpoints"]]
    assert labels == LABELS
    for c in report["checkpoints"]:
        overall = c["metrics"]["all"]["all"]
        assert overall["Num"] == bench.num_rows
        assert 0.0 <= overall["Acc"] <= 1.0 and 0.0 <= overall["IoU"] <= 1.0
        assert {"all", "seen domain", "unseen domain"} <= set(c["metrics"])
        assert c["checkpoint"].startswith(f"{c['label'].split(' ')[0]}-checkpoint@")
        assert c["bench"] == result["artifacts"]["bench"] and c["evaluation"].startswith("evaluation@")
        assert c["cis"]["all"]["lo"] <= overall["Acc"] <= c["cis"]["all"]["hi"]
    card = ArtifactRef.parse(result["artifacts"]["data_card"])
    text = store.read_bytes(card, "card.md").decode()
    for fig in store.manifest(card).metadata["figures"]:
        assert f"figures/{fig}" in text and store.read_bytes(card, f"figures/{fig}").startswith(b"\x89PNG")
    exports = store.manifest(ArtifactRef.parse(result["artifacts"]["exports"])).metadata
    assert exports["sharegpt"] and sum(exports["sharegpt"].values()) == store.num_rows(
        ArtifactRef.parse(result["artifacts"]["sft_dataset"]))
    md = store.read_bytes(ArtifactRef.parse(result["report"]), "report.md").decode()
    for label in labels:
        assert f"{label} Acc\\@0.5" in md  # escaped: the Prefect UI auto-links name@host
    assert result["artifacts"]["grpo_checkpoint"] in md


def test_reproduce_cli_into_s3_bucket(prefect_harness, s3_store_uri, tmp_path, monkeypatch):
    """`deepperception reproduce --store s3://... --s3-endpoint URL`: the same flow, into a bucket."""
    from typer.testing import CliRunner

    from deepperception.cli import app

    uri, endpoint = s3_store_uri
    monkeypatch.setenv("DP_STORE_S3_ENDPOINT_URL", endpoint)  # restored after the test (the CLI sets it)
    monkeypatch.setenv("DP_STORE_CACHE_DIR", str(tmp_path / "cache"))
    res = CliRunner().invoke(app, ["reproduce", "--profile", "toy", "--store", uri, "--s3-endpoint", endpoint])
    assert res.exit_code == 0, res.output + repr(res.exception)
    report_uri = next(line.split(": ", 1)[1].strip() for line in res.output.splitlines()
                      if line.startswith("report (markdown):"))
    assert report_uri.startswith(f"{uri}/report/") and report_uri.endswith("/report.md")
    store = ArtifactStore(StoreSettings(uri=uri, s3_endpoint_url=endpoint, cache_dir=str(tmp_path / "cache")))
    report_ref = ArtifactRef.parse(next(line.split(": ", 1)[1].strip() for line in res.output.splitlines()
                                        if line.startswith("report artifact:")))
    report = json.loads(store.read_bytes(report_ref, "report.json"))
    assert [c["label"] for c in report["checkpoints"]] == LABELS
    # Walk the lineage from the report back to the entities: every upstream version is committed.
    seen, todo = set(), [report_ref]
    while todo:
        ref = todo.pop()
        if ref in seen:
            continue
        seen.add(ref)
        todo += [ArtifactRef.parse(u) for u in store.manifest(ref).upstream.values()]
    assert {r.name for r in seen} >= {"report", "evaluation", "grpo-checkpoint", "grpo-dataset", "sft-checkpoint",
                                      "base-checkpoint", "bench", "cot-filtered", "cot", "composites-train",
                                      "labeled-images", "images", "entities"}
    import boto3

    bucket = uri[len("s3://"):].split("/")[0]
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            .list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.endswith("_manifest.json") and "/grpo-checkpoint/" in k for k in keys)

    # The whole run, version by version: the run record the CLI wrote names what the flow returned.
    # (This is the suite's one full toy run through the CLI; reruns and what they recompute are
    # counted in test_partial_reruns.py on a run of its own.)
    from deepperception import plan

    done = plan.committed_run(profile("toy"), store)
    assert done is not None and done.result["report"] == str(report_ref)
    _check_run(store, done.result)
    # The data card is also a Prefect Markdown artifact (what the UI shows), figures inlined, and the
    # parent run's own progress bar counted every stage run it planned (toy: 17 + 4 evaluations).
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.reproduce import planned_stage_runs

    with get_client(sync_client=True) as client:
        cards = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["data-card"])))
        bars = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["progress-reproduce"])))
    assert cards and "data:image/png;base64," in max(cards, key=lambda a: a.created).data
    bar = max(bars, key=lambda a: a.created)  # this run's (the session's server holds other tests' runs)
    n = planned_stage_runs(profile("toy"))
    assert n == 21 and bar.data == 100.0 and f"{n}/{n} stage runs" in bar.description, (bar.data, bar.description)


def test_undecodable_image_is_rejected_by_name_and_the_rest_labeled(prefect_harness, tmp_path):
    from flows import stages

    uri = str(tmp_path / "store")
    cfg = profile("toy")
    store = ArtifactStore(StoreSettings(uri=uri))
    entities = stages.mine_entities(cfg.data, uri)
    images = stages.collect_images(cfg.data, cfg.collection, entities, uri)
    table = store.read_table(images)
    first_id = table.column("image_id")[0].as_py()
    broken = table.set_column(table.column_names.index("image"), "image",
                              pa.array([b"not a png"] + table.column("image").to_pylist()[1:], pa.binary()))
    with store.plan("images", "collect", {"hand-made": "broken"}, {}) as w:
        w.write_table(broken)
        bad_ref = w.commit()
    labeled = stages.label_boxes(cfg.labeling, bad_ref, uri)
    assert store.num_rows(labeled) == table.num_rows - 1
    rejected = store.read_table(labeled, "rejected").to_pylist()
    assert [(r["item_id"], r["reason"]) for r in rejected] == [(first_id, "corrupt_image")]
    assert store.manifest(labeled).metadata["rejected"] == {"corrupt_image": 1}

    # Nothing usable: the stage fails naming the input and the first photo, and commits nothing.
    all_bad = table.set_column(table.column_names.index("image"), "image",
                               pa.array([b"not a png"] * table.num_rows, pa.binary()))
    with store.plan("images", "collect", {"hand-made": "all broken"}, {}) as w:
        w.write_table(all_bad)
        worse = w.commit()
    with pytest.raises(InputDataError) as err:
        stages.label_boxes(cfg.labeling, worse, uri)
    text = str(err.value)
    assert "stage=label" in text and str(worse) in text and first_id in text and "corrupt_image" in text
    assert [m.ref for m in store.list("labeled-images")] == [labeled]


def test_corrupt_input_artifact_is_refused_by_name(prefect_harness, tmp_path):
    from flows import stages

    uri = str(tmp_path / "store")
    cfg = profile("toy")
    store = ArtifactStore(StoreSettings(uri=uri))
    entities = stages.mine_entities(cfg.data, uri)
    path = store.file_path(entities, "data.parquet")
    with open(path, "r+b") as f:
        f.seek(10)
        f.write(b"\xff\xff\xff\xff")
    with pytest.raises(ArtifactError, match=rf"{entities}.*data.parquet is corrupt"):
        stages.collect_images(cfg.data, cfg.collection, entities, uri)
    assert store.list("images") == []


def test_malformed_config_is_rejected_with_field_name(tmp_path):
    from deepperception.config import load_config

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rl_filter": {"n_samples": 2, "keep_max": 3}, "sft": {"learning_rat": 1}}))
    with pytest.raises(ValueError) as err:
        load_config("toy", str(bad))
    assert "bad.json" in str(err.value) and ("learning_rat" in str(err.value) or "keep_max" in str(err.value))
