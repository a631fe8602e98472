"""A real S3 server (SeaweedFS) stopped mid-stage and restarted, and the same server made slow.

- ``edge.s3_restart``: the labeling stage runs on an S3 store; when the model server receives a
  random request, SeaweedFS is stopped (SIGKILL or SIGTERM). The stage's next store requests are
  retried (``DP_STORE_S3_MAX_ATTEMPTS``), then the stage fails with one clear line naming the
  endpoint, having committed nothing but the shard records written before the outage. The server
  comes back on the same ports and data; the rerun keeps those shards (only the others' photos
  are sent to the model again) and commits the rows of a clean run.
- ``edge.slow_store``: every chunk to and from SeaweedFS is delayed through a TCP proxy while a
  stage writes a version under a lease with a short TTL and a second run of the same version
  waits on that lease: the stage is computed once, the lease never expires under the slowness,
  and the version equals the one written to the fast server.
"""

from __future__ import annotations

import hashlib
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from deepperception.cli_errors import render_error
from deepperception.config import LabelingStageConfig, ShardingConfig, profile
from deepperception.engine.shard_runner import ShardRunnerConfig
from deepperception.serving.endpoint import EndpointConfig
from deepperception.store import ArtifactStore, StoreSettings
from deepperception.store.lease import read_lease
from deepperception.store.stage import run_stage
from tasks.engine import collect_images_task, label_boxes_task, mine_entities_task

from fault_proxy import SlowProxy
from fault_weed import Weed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from fake_openai_server import FakeOpenAIServer  # noqa: E402

OK = "<|object_ref_start|>it<|object_ref_end|><|box_start|>(100,120),(880,900)<|box_end|>"
PER_SHARD = 3
ONE = ShardRunnerConfig(kind="threads", max_workers=1)


def _bucket(weed: Weed) -> str:
    name = f"dp-{uuid.uuid4().hex[:10]}"
    weed.client().create_bucket(Bucket=name)
    return name


def _labeling(base_url: str) -> LabelingStageConfig:
    return LabelingStageConfig(backend="openai", endpoint=EndpointConfig(
        base_url=base_url, model="vl", concurrency=1, max_retries=0, timeout_s=30))


def _images(uri: str):
    cfg = profile("toy")
    entities = mine_entities_task.fn(cfg.data, uri)
    return collect_images_task.fn(cfg.data, cfg.collection, entities, uri, False,
                                  ShardingConfig(images_per_shard=PER_SHARD))


def _key(image, text) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()[:16] + "|" + text


@pytest.mark.fault("edge.s3_restart")
def test_s3_stopped_mid_stage_fails_clearly_and_the_rerun_after_restart_keeps_finished_shards(
        weed, tmp_path, fault_rng, reliability, monkeypatch):
    asked: Counter[str] = Counter()
    state = {"n": 0, "stop_at": None, "stopped_at": None}
    sig = fault_rng.choice([signal.SIGKILL, signal.SIGTERM])

    def reply(image, text, req):
        asked[_key(image, text)] += 1
        state["n"] += 1
        if state["n"] == state["stop_at"]:
            weed.stop(sig)  # the bucket goes away while this shard is being labeled
            state["stopped_at"] = time.monotonic()
        return OK

    with FakeOpenAIServer(reply) as server:
        clean_uri = str(tmp_path / "clean")
        clean = label_boxes_task.fn(_labeling(server.base_url), _images(clean_uri), clean_uri, False, ONE)
        n = state["n"]
        # the tasks open the store from the environment, as on a worker
        for var, value in (("DP_STORE_S3_ENDPOINT_URL", weed.endpoint), ("DP_STORE_S3_MAX_ATTEMPTS", "3"),
                           ("DP_STORE_S3_CONNECT_TIMEOUT_S", "1"), ("DP_STORE_CACHE_DIR", str(tmp_path / "cache"))):
            monkeypatch.setenv(var, value)
        uri = f"s3://{_bucket(weed)}/runs"
        store = ArtifactStore(StoreSettings(uri=uri))
        images = _images(uri)
        state["n"], asked_clean = 0, dict(asked)
        asked.clear()
        state["stop_at"] = fault_rng.randint(PER_SHARD + 1, n - PER_SHARD)  # inside a middle shard
        with pytest.raises(Exception) as info:
            label_boxes_task.fn(_labeling(server.base_url), images, uri, False, ONE)
        failed_s = time.monotonic() - state["stopped_at"]
        rendered, code = render_error(info.value)
        t0 = time.monotonic()
        weed.start()
        versions_after_outage = len(store.list("labeled-images"))
        asked.clear()
        ref = label_boxes_task.fn(_labeling(server.base_url), images, uri, False, ONE)
        recover_s = time.monotonic() - t0
        rerun_asked = sum(asked.values())
        got = store.read_table(ref).to_pylist()
        problems = store.verify(ref)
    clean_rows = {r["image_id"]: r for r in ArtifactStore(StoreSettings(uri=clean_uri)).read_table(clean).to_pylist()}
    ids = Counter(r["image_id"] for r in got)
    finished_before = (state["stop_at"] - 1) // PER_SHARD  # shards committed before the outage
    lost = len(set(clean_rows) - set(ids))
    duplicated = sum(c - 1 for c in ids.values())
    corrupted = sum(1 for r in got if r != clean_rows.get(r["image_id"])) + len(problems) + versions_after_outage
    reliability.record(lost=lost, duplicated=duplicated, corrupted=corrupted, recover_s=recover_s, injected=1,
                       detail=f"weed {sig.name} at model request {state['stop_at']} of {n}; the stage failed "
                              f"{failed_s:.1f} s later; the rerun asked for {rerun_asked} photos "
                              f"({finished_before} finished shard(s) kept)")
    assert len(asked_clean) == n
    assert code == 2 and rendered.startswith("error: ") and "\n" not in rendered, rendered
    assert weed.endpoint.split("://")[1] in rendered or "unreachable" in rendered, rendered
    assert failed_s < 60, f"the stage took {failed_s:.0f} s to give up on a dead store"
    assert versions_after_outage == 0, "a version was committed while the store was down"
    assert rerun_asked <= n - finished_before * PER_SHARD, \
        f"the rerun asked for {rerun_asked} photos: shards finished before the outage were redone"
    assert rerun_asked >= 1
    assert (lost, duplicated, corrupted) == (0, 0, 0)


ROWS = 240


def _produce_counted(calls: list):
    def produce(w):
        calls.append(threading.current_thread().name)
        for part in range(4):
            ids = list(range(part * ROWS // 4, (part + 1) * ROWS // 4))
            w.write_table(pa.table({"id": ids, "text": [f"row {i} " * 30 for i in ids]}), f"data-{part}")
        return {"n": ROWS}
    return produce


@pytest.mark.fault("edge.slow_store")
def test_a_slow_store_commits_the_fast_stores_version_once_and_keeps_its_lease(
        weed, tmp_path, fault_rng, reliability):
    fast = ArtifactStore(StoreSettings(uri=f"s3://{_bucket(weed)}/runs", s3_endpoint_url=weed.endpoint,
                                       cache_dir=str(tmp_path / "c1")))
    fast_calls: list = []
    fast_ref, _ = run_stage(fast, "t", "s", {"k": 1}, {}, _produce_counted(fast_calls), task=_produce_counted)
    ttl = 2.0  # renewed every ttl/3; each renewal is two slow requests
    lo = fault_rng.uniform(0.02, 0.05)
    with SlowProxy(weed.ports["s3"], fault_rng, (lo, lo * 2.5)) as proxy:
        settings = StoreSettings(uri=f"s3://{_bucket(weed)}/runs", s3_endpoint_url=proxy.endpoint,
                                 cache_dir=str(tmp_path / "c2"), lease_ttl_s=ttl, lease_poll_s=0.1)
        calls: list = []
        results: dict[str, object] = {}

        def run(name: str) -> None:
            try:
                results[name] = run_stage(ArtifactStore(settings), "t", "s", {"k": 1}, {}, _produce_counted(calls),
                                          task=_produce_counted)
            except Exception as exc:  # reported below
                results[name] = exc

        t0 = time.monotonic()
        first = threading.Thread(target=run, args=("first",), name="first")
        first.start()
        store = ArtifactStore(settings)
        while read_lease(store, fast_ref) is None and first.is_alive():  # same version id as on the fast server
            time.sleep(0.05)
        second = threading.Thread(target=run, args=("second",), name="second")  # the same version, concurrently
        second.start()
        first.join(120)
        second.join(120)
        took = time.monotonic() - t0
        chunks, delayed = proxy.chunks, proxy.delayed_s
    slow = ArtifactStore(StoreSettings(uri=settings.uri, s3_endpoint_url=weed.endpoint, cache_dir=str(tmp_path / "c3")))
    refs = [r[0] if isinstance(r, tuple) else r for r in (results.get("first"), results.get("second"))]
    ok = [r for r in refs if not isinstance(r, BaseException) and r is not None]
    want = {e.path: e.sha256 for e in fast.manifest(fast_ref).files}
    corrupted = sum(1 for r in ok if r != fast_ref)
    if ok:
        got = {e.path: e.sha256 for e in slow.manifest(ok[0]).files}
        corrupted += sum(1 for p in want if got.get(p) != want[p]) + len(slow.verify(ok[0]))
    rows = [i for p in range(4) for i in slow.read_table(ok[0], f"data-{p}").column("id").to_pylist()] if ok else []
    reliability.record(lost=len(set(range(ROWS)) - set(rows)) + (2 - len(ok)), duplicated=len(calls) - 1,
                       corrupted=corrupted, recover_s=took, injected=chunks,
                       detail=f"{chunks} chunks delayed {lo * 1000:.0f}-{lo * 2500:.0f} ms ({delayed:.1f} s in all); "
                              f"stage {took:.1f} s under a {ttl:.0f} s lease TTL; a concurrent second run waited")
    assert len(ok) == 2, results
    assert took > 1.5 * ttl, f"the slow store took only {took:.1f} s: the lease TTL was never at risk"
    assert len(calls) == 1, f"computed {len(calls)} times: a lease expired under the slow store ({calls})"
    assert corrupted == 0 and sorted(rows) == list(range(ROWS))
