"""Known secrets (S3 secret key, access key id, OpenAI-compatible API key) scanned for after a real run (issue 11, item 4).

A Prefect flow (under the real test Prefect server) runs the toy profile's whole data engine for real:
entity mining, image collection, box labeling and CoT distillation over the repo's fake OpenAI server
(both with the API key), composition, bench, filtering, contamination check, training data and the
data card, into an S3 store on the moto server. The secrets are random strings from ``fault_rng``, given only through the
environment (``AWS_ACCESS_KEY_ID``, ``DP_STORE_S3_SECRET_ACCESS_KEY``, ``OPENAI_API_KEY``). Then every
object in the bucket (raw bytes), the Prefect database files (sqlite + WAL/journal), the flow and
task run logs read back through the Prefect API, the captured stdout/stderr/logging and the local dirs
the run wrote (tmp dir, cache dir) are scanned for each secret in raw, base64 and URL-encoded form.
A positive control plants a secret in the bucket and must be found. Not covered here: training and
evaluation (they talk to no endpoint; their store access is the same client as above).
"""

from __future__ import annotations

import base64
import os
import re
import string
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from deepperception.config import DistillationStageConfig, LabelingStageConfig, ShardingConfig, profile
from deepperception.engine.shard_runner import ShardRunnerConfig
from deepperception.serving.endpoint import EndpointConfig
from tasks.engine import (build_bench_task, build_grpo_pool_task, build_sft_dataset_task, collect_images_task,
                          compose_task, distill_cot_task, filter_cot_task, label_boxes_task, mine_entities_task)
from tasks.products import contamination_task, data_card_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from fake_openai_server import FakeOpenAIServer  # noqa: E402


def _secret(rng, prefix: str, n: int = 32) -> str:
    return prefix + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    forms = {raw, urllib.parse.quote(secret, safe="").encode(), urllib.parse.quote_plus(secret).encode()}
    for shift in range(3):  # base64 of the secret at any alignment inside a longer string
        enc = base64.b64encode(b"\0" * shift + raw)[4 if shift else 0:]
        forms.add(enc[: len(enc) - 4])
        forms.add(base64.urlsafe_b64encode(b"\0" * shift + raw)[4 if shift else 0:][: len(enc) - 4])
    return sorted(forms)


class Scanner:
    def __init__(self, secrets: dict[str, str]) -> None:
        self.forms = {name: _forms(s) for name, s in secrets.items()}
        self.hits: list[str] = []
        self.files = 0
        self.bytes = 0

    def scan(self, where: str, data: bytes) -> int:
        self.files += 1
        self.bytes += len(data)
        found = [f"{where}: {name}" for name, forms in self.forms.items() if any(f in data for f in forms)]
        self.hits += found
        return len(found)

    def scan_dir(self, root: Path, label: str) -> None:
        for p in sorted(root.rglob("*")) if root.exists() else []:
            if p.is_file() and not p.is_symlink():
                try:
                    self.scan(f"{label}/{p.relative_to(root)}", p.read_bytes())
                except OSError:
                    pass


TEACHER_PROMPT = re.compile(r"The bounding box of (.+?) is (\(\d+,\d+\),\(\d+,\d+\))\. Give the reasoning")


def _reply(image, text, req):
    """The teacher's CoT when asked for one (its prompt names the box), else the labeler's box."""
    m = TEACHER_PROMPT.search(text)
    if m:
        name, box = m.groups()
        return (f"Planning: look for the {name}.\n\nVisual analysis:\n- the image is {image.size[0]}x{image.size[1]}."
                f"\n\nComparison: compare.\n\nConclusion: the {name} is at {box}.")
    return "<|object_ref_start|>it<|object_ref_end|><|box_start|>(100,120),(880,900)<|box_end|>"


def _bucket_objects(s3, bucket: str):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            yield obj["Key"], s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()


def _prefect_db_files() -> list[Path]:
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    url = PREFECT_API_DATABASE_CONNECTION_URL.value() or ""
    path = Path(url.split(":///", 1)[1]) if ":///" in url else None
    assert path and path.exists(), f"no sqlite Prefect database at {url!r}"
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(path.name))


def _api_logs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as client:
        logs = client.read_logs(limit=200)  # every log of this session's server, this run's included
        runs = client.read_flow_runs()
        params = [repr(r.parameters) for r in runs]
    return [f"{lg.level} {lg.name} {lg.message}" for lg in logs] + params


@pytest.mark.fault("secrets.scan")
def test_no_secret_in_store_db_logs_or_dirs(prefect_harness, moto_endpoint, tmp_path, monkeypatch, capfd, caplog,
                                            fault_rng, reliability):
    import boto3
    from prefect import flow

    secrets = {"AWS_ACCESS_KEY_ID": _secret(fault_rng, "AKIA", 16), "S3 secret": _secret(fault_rng, "s3sk/"),
               "AWS_SECRET_ACCESS_KEY": _secret(fault_rng, "awssk+"), "API key": _secret(fault_rng, "sk-")}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", secrets["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secrets["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.setenv("DP_STORE_S3_SECRET_ACCESS_KEY", secrets["S3 secret"])
    monkeypatch.setenv("DP_STORE_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("OPENAI_API_KEY", secrets["API key"])
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    bucket = f"dp-secrets-{fault_rng.randrange(16**10):010x}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/runs"
    cfg = profile("toy")

    with FakeOpenAIServer(_reply) as server:
        endpoint = dict(base_url=server.base_url, concurrency=1, max_retries=0, timeout_s=30)
        labeling = LabelingStageConfig(backend="openai", endpoint=EndpointConfig(model="toy-vl", **endpoint))
        teacher = cfg.distillation.model_copy(update=dict(
            backend="openai", endpoint=EndpointConfig(model="teacher-72b", **endpoint)))
        teacher = DistillationStageConfig.model_validate(teacher.model_dump())
        one = ShardRunnerConfig(kind="threads", max_workers=1)

        @flow(name="secrets-scan", log_prints=True)
        def engine():
            entities = mine_entities_task(cfg.data, uri)
            images = collect_images_task(cfg.data, cfg.collection, entities, uri, False,
                                         ShardingConfig(images_per_shard=4))
            print(f"labeling with {labeling}")  # a config printed in the flow log must not show the key
            labeled = label_boxes_task(labeling, images, uri, False, one)
            train = compose_task(cfg.compose_train, labeled, uri, False, cfg.sharding, one)
            bench_c = compose_task(cfg.compose_bench, labeled, uri, False, cfg.sharding, one)
            bench = build_bench_task(cfg.datasets, bench_c, uri)
            cot = distill_cot_task(teacher, train, entities, uri, False, one)
            kept = filter_cot_task(cfg.filtering, cot, uri)
            clean = contamination_task(cfg.contamination, bench, bench_c, labeled, train, uri)
            sft = build_sft_dataset_task(kept, train, uri, False, clean)
            pool = build_grpo_pool_task(cfg.datasets, train, uri, False, clean)
            return data_card_task({"images": images, "labeled": labeled, "composites": train, "cot": cot,
                                   "cot_filtered": kept, "sft_dataset": sft, "grpo_pool": pool, "bench": bench,
                                   "contamination": clean}, uri)

        with caplog.at_level("INFO"):
            state = engine(return_state=True)
        assert state.is_completed(), (state, server.problems)
        card = state.result()
    # the key was really used: every request carried it
    assert server.calls, "the labeler sent no request"
    assert any(TEACHER_PROMPT.search(c.text) for c in server.calls), "the teacher was never asked"
    assert {c.authorization for c in server.calls} == {f"Bearer {secrets['API key']}"}

    scanner = Scanner(secrets)
    places = 0
    for key, data in _bucket_objects(s3, bucket):
        scanner.scan(f"s3://{bucket}/{key}", data)
        places += 1
    assert places >= 5 and any(k.endswith("_manifest.json") for k, _ in _bucket_objects(s3, bucket)), card
    assert any(k.endswith("card.md") for k, _ in _bucket_objects(s3, bucket)), "no data card in the bucket"
    db = _prefect_db_files()
    assert any(str(state.state_details.flow_run_id).replace("-", "").encode() in p.read_bytes()
               or str(state.state_details.flow_run_id).encode() in p.read_bytes() for p in db), \
        f"the flow run is not in {db}: not the database the run wrote"
    for p in db:
        scanner.scan(f"prefect-db/{p.name}", p.read_bytes())
        places += 1
    # the run's logs reach the API in batches (when logging to the API is on): wait a little for them
    deadline = time.monotonic() + 3
    while True:
        api_logs = _api_logs(state.state_details.flow_run_id)
        if any("labeling with" in line for line in api_logs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    api_log_lines = sum(1 for line in api_logs if not line.startswith("{"))
    for i, line in enumerate(api_logs):
        scanner.scan(f"prefect-api-log#{i}", line.encode())
        places += 1
    out, err = capfd.readouterr()
    for name, text in (("stdout", out), ("stderr", err), ("logging", caplog.text)):
        scanner.scan(name, text.encode())
        places += 1
    n = scanner.files
    scanner.scan_dir(tmp_path, "tmp_path")
    scanner.scan_dir(Path(os.path.expanduser("~/.cache/deepperception")), "~/.cache/deepperception")
    places += scanner.files - n
    hits = list(scanner.hits)

    # positive control: a secret planted in the bucket (base64, inside a JSON) is found by the same scan
    planted = base64.b64encode(b"key=" + secrets[fault_rng.choice(sorted(secrets))].encode())
    s3.put_object(Bucket=bucket, Key="runs/_planted.json", Body=b'{"x": "' + planted + b'"}')
    control = Scanner(secrets)
    for key, data in _bucket_objects(s3, bucket):
        control.scan(key, data)
    s3.delete_object(Bucket=bucket, Key="runs/_planted.json")

    reliability.record(lost=len(hits), injected=places,
                       detail=f"{len(hits)} hits in {scanner.files} files / {scanner.bytes} bytes "
                              f"(bucket, Prefect db, {api_log_lines} API log lines + flow-run parameters, stdout/stderr/logging, "
                              f"dirs); control hits "
                              f"{len(control.hits)}; {len(server.calls)} requests carried the key")
    assert control.hits == [next(h for h in control.hits)] and control.hits[0].startswith("runs/_planted.json"), \
        f"the positive control was not found: {control.hits}"
    assert hits == [], f"secrets leaked: {hits}"
