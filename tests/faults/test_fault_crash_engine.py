"""A labeling stage SIGKILLed at ~90 % resumes from its finished shards: the rerun asks the model
only for the photos of the unfinished shards, and commits exactly the version an uninterrupted
run commits (same files, same bytes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from deepperception.config import LabelingStageConfig, ShardingConfig, profile
from deepperception.engine.shard_runner import ShardRunnerConfig
from deepperception.serving.endpoint import EndpointConfig
from deepperception.store import ArtifactStore, StoreSettings
from deepperception.store.shards import SHARDS
from tasks.engine import collect_images_task, label_boxes_task, mine_entities_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from fake_openai_server import FakeOpenAIServer  # noqa: E402

ROWS_PER_SHARD = 2


class SlowGrounder:
    """A model that answers every grounding request with one box after a delay (a busy server)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.asked: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, image, text, req):
        with self._lock:
            self.asked.append(text)
        time.sleep(self.delay_s)
        return "<|object_ref_start|>it<|object_ref_end|><|box_start|>(100,120),(880,900)<|box_end|>"


def _images(uri: str):
    cfg = profile("toy")
    entities = mine_entities_task.fn(cfg.data, uri)
    return collect_images_task.fn(cfg.data, cfg.collection, entities, uri, False,
                                  ShardingConfig(images_per_shard=ROWS_PER_SHARD))


def _labeling(base_url: str) -> LabelingStageConfig:
    return LabelingStageConfig(backend="openai", endpoint=EndpointConfig(
        base_url=base_url, model="slow-vl", concurrency=1, max_retries=0, timeout_s=30))


CHILD = textwrap.dedent("""
    import json, sys
    from deepperception.config import LabelingStageConfig
    from deepperception.engine.shard_runner import ShardRunnerConfig
    from deepperception.store import ArtifactRef
    from tasks.engine import label_boxes_task
    cfg = LabelingStageConfig.model_validate_json(sys.argv[1])
    label_boxes_task.fn(cfg, ArtifactRef.parse(sys.argv[2]), sys.argv[3], False,
                        ShardRunnerConfig(kind="threads", max_workers=1))
""")


def _records(root: Path) -> int:
    """Finished labeling shards of the (single) labeled-images version being built under ``root``."""
    return len(list(root.glob(f"labeled-images/*/{SHARDS}/label/*.json")))


def test_sigkilled_labeling_resumes_only_unfinished_shards_and_equals_an_uninterrupted_run(tmp_path, caplog):
    killed_uri, clean_uri = str(tmp_path / "killed"), str(tmp_path / "clean")
    images = _images(killed_uri)
    assert _images(clean_uri) == images  # deterministic: both stores hold the same version
    store = ArtifactStore(StoreSettings(uri=killed_uri))
    n_shards = len(store.table_files(images))
    assert n_shards >= 10

    slow = SlowGrounder(delay_s=0.06)
    with FakeOpenAIServer(slow) as server:
        cfg = _labeling(server.base_url)
        env = {**os.environ, "DP_SHARD_RUNNER": "threads", "PYTHONPATH": str(Path.cwd())}
        child = subprocess.Popen([sys.executable, "-c", CHILD, cfg.model_dump_json(), str(images), killed_uri],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        target = int(0.9 * n_shards)
        deadline = time.monotonic() + 120
        while _records(Path(killed_uri)) < target:
            assert child.poll() is None, child.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        done_before = _records(Path(killed_uri))
        assert target <= done_before < n_shards, "killed too late to test resuming"
        assert not list(Path(killed_uri).glob("labeled-images/*/_manifest.json"))

        asked_before = len(slow.asked)
        with caplog.at_level("INFO"):
            resumed = label_boxes_task.fn(cfg, images, killed_uri, False, ShardRunnerConfig(max_workers=1))
        asked_on_resume = len(slow.asked) - asked_before
        assert f"{done_before} of {n_shards} shard(s) already finished" in caplog.text
        assert asked_on_resume <= (n_shards - done_before) * ROWS_PER_SHARD

        clean = label_boxes_task.fn(cfg, images, clean_uri, False, ShardRunnerConfig(max_workers=2))

    assert resumed == clean
    clean_store = ArtifactStore(StoreSettings(uri=clean_uri))
    a, b = store.manifest(resumed), clean_store.manifest(clean)
    assert [(f.path, f.sha256, f.rows) for f in a.files] == [(f.path, f.sha256, f.rows) for f in b.files]
    assert store.read_table(resumed).equals(clean_store.read_table(clean))
    assert a.metadata["failures"] == {"failed": 0, "total": store.num_rows(images), "examples": []}
    assert store.verify(resumed) == []


def test_a_shard_that_failed_items_is_redone_keeping_its_good_rows(tmp_path):
    """Over the failure limit nothing is committed; the rerun redoes only the shards with failed
    items and asks again only for those items."""
    uri = str(tmp_path / "store")
    images = _images(uri)
    store = ArtifactStore(StoreSettings(uri=uri))
    down: set[str] = set()

    def flaky(image, text, req):
        if text in down:
            return 503
        return "(10,20),(500,600)"

    first_names = sorted({r["name"] for r in store.read_table(images).select(["name"]).to_pylist()})
    down.add(f"Find and give the bounding box of {first_names[0]}")
    with FakeOpenAIServer(flaky) as server:
        cfg = _labeling(server.base_url)
        from deepperception.errors import StageFailedError

        with pytest.raises(StageFailedError, match="nothing was committed"):
            label_boxes_task.fn(cfg, images, uri, False, ShardRunnerConfig(max_workers=2))
        calls_before = len(server.calls)
        down.clear()
        ref = label_boxes_task.fn(cfg, images, uri, False, ShardRunnerConfig(max_workers=2))
        retried = server.calls[calls_before:]
    assert {c.text for c in retried} == {f"Find and give the bounding box of {first_names[0]}"}
    table = store.read_table(ref)
    assert table.num_rows == store.num_rows(images) and all(e is None for e in table.column("label_error").to_pylist())
    assert json.loads(store.manifest(ref).model_dump_json())["metadata"]["failures"]["failed"] == 0
