"""Data-engine stages SIGKILLed at a random point (``fault_rng``), then rerun (issue 11, item 1).

Each test runs the stage in a child process (``fault_engine_children.py``, shard runner threads,
one worker) that dies by SIGKILL after a random number k of its n shards (1 <= k < n), mid-shard
for the model stages (killed while the fake OpenAI server holds the next request). The rerun, in
this process, must reuse the k finished shards (their items are not sent to the model again, a
spy on ``commit_shard`` sees only the unfinished shards committed) and commit the very version an
uninterrupted run commits in a second store: same ref, same files and bytes, same rows by id.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from deepperception.config import DistillationStageConfig, LabelingStageConfig, ShardingConfig, profile
from deepperception.engine.composition import CompositionConfig
from deepperception.engine.distillation import DistillConfig
from deepperception.engine.shard_runner import ShardRunnerConfig
from deepperception.serving.endpoint import EndpointConfig
from deepperception.store import ArtifactStore, StoreSettings
from deepperception.store.artifacts import ArtifactStore as _Store
from deepperception.store.shards import SHARDS
from tasks.engine import collect_images_task, compose_task, distill_cot_task, label_boxes_task, mine_entities_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from fake_openai_server import FakeOpenAIServer  # noqa: E402

ROWS_PER_SHARD = 2
CHILD = Path(__file__).resolve().parent / "fault_engine_children.py"
ONE = ShardRunnerConfig(kind="threads", max_workers=1)
PROMPT_RE = re.compile(r"The bounding box of (.+?) is (\(\d+,\d+\),\(\d+,\d+\))\. Give the reasoning")


def _inputs(uri: str):
    cfg = profile("toy")
    entities = mine_entities_task.fn(cfg.data, uri)
    images = collect_images_task.fn(cfg.data, cfg.collection, entities, uri, False,
                                    ShardingConfig(images_per_shard=ROWS_PER_SHARD))
    return entities, images


def _images(uri: str):
    return _inputs(uri)[1]


def _labeling(base_url: str) -> LabelingStageConfig:
    return LabelingStageConfig(backend="openai", endpoint=EndpointConfig(
        base_url=base_url, model="slow-vl", concurrency=1, max_retries=0, timeout_s=30))


def _records(root: Path, name: str, unit: str) -> int:
    """Finished shards of the (single) ``name`` version being built under ``root``."""
    return len(list(root.glob(f"{name}/*/{SHARDS}/{unit}/*.json")))


def _spawn(stage: str, args: dict, kill_after: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "DP_SHARD_RUNNER": "threads", "PYTHONPATH": str(Path.cwd()), "OMP_NUM_THREADS": "1"}
    if kill_after:
        env["DP_FAULT_KILL_AFTER_SHARDS"] = str(kill_after)
    return subprocess.Popen([sys.executable, str(CHILD), stage, json.dumps(args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_killed(child: subprocess.Popen) -> None:
    out, _ = child.communicate(timeout=180)
    assert child.returncode == -signal.SIGKILL, f"the child was not SIGKILLed (rc {child.returncode}): {out.decode()[-2000:]}"


class Watch:
    """The model behind the fake server: answers, notes which shard each request belongs to
    (the number of shard records committed when it arrives: shards run one after another) and,
    in the killed run, SIGKILLs the child when the (m+1)-th request past the k-th shard arrives."""

    def __init__(self, reply) -> None:
        self.reply, self.phase, self.root, self.name, self.unit = reply, "", None, "", ""
        self.calls: list[tuple[str, int, str]] = []
        self.pid: int | None = None
        self.k = self.m = 0
        self._extra = 0
        self._lock = threading.Lock()

    def __call__(self, image, text, req):
        key = text + "|" + hashlib.sha256(image.tobytes()).hexdigest()[:16]
        with self._lock:
            shard = _records(self.root, self.name, self.unit)
            self.calls.append((self.phase, shard, key))
            if self.phase == "killed" and shard >= self.k:
                self._extra += 1
                if (self._extra > self.m or shard > self.k) and self.pid:
                    os.kill(self.pid, signal.SIGKILL)
                    return 503
        return self.reply(image, text)

    def keys(self, phase: str, pred=lambda shard: True) -> list[str]:
        return [k for p, s, k in self.calls if p == phase and pred(s)]


def _spy_commits(monkeypatch) -> list[int]:
    committed: list[int] = []
    original = _Store.commit_shard

    def spy(self, ref, unit, index, *a, **kw):
        committed.append(index)
        return original(self, ref, unit, index, *a, **kw)

    monkeypatch.setattr(_Store, "commit_shard", spy)
    return committed


def _compare(store: ArtifactStore, resumed, clean_store: ArtifactStore, clean, id_col: str) -> tuple[int, int, int]:
    """(lost, duplicated, corrupted) of the resumed version against the uninterrupted one."""
    got = store.read_table(resumed).to_pylist()
    want = {r[id_col]: r for r in clean_store.read_table(clean).to_pylist()}
    ids = Counter(r[id_col] for r in got)
    lost = len(set(want) - set(ids))
    duplicated = sum(c - 1 for c in ids.values())
    corrupted = sum(1 for r in got if r[id_col] not in want or r != want[r[id_col]])
    a = {f.path: (f.sha256, f.rows) for f in store.manifest(resumed).files}
    b = {f.path: (f.sha256, f.rows) for f in clean_store.manifest(clean).files}
    corrupted += sum(1 for p in set(a) | set(b) if a.get(p) != b.get(p)) + len(store.verify(resumed))
    corrupted += int(resumed != clean)
    return lost, duplicated, corrupted


def _label_reply(image, text):
    return "<|object_ref_start|>it<|object_ref_end|><|box_start|>(100,120),(880,900)<|box_end|>"


def _teacher_reply(image, text):
    m = PROMPT_RE.search(text)
    if not m:
        return 400
    name, box = m.groups()
    return (f"Planning: look for the {name}.\n\nVisual analysis:\n- the image is {image.size[0]}x{image.size[1]}.\n\n"
            f"Comparison: compare.\n\nConclusion: the {name} is at {box}.")


def _model_stage_crash(tmp_path, caplog, monkeypatch, fault_rng, reliability, *, stage, name, unit, id_col, reply,
                       prepare, run, child_args):
    """The shared body of the labeling and distillation scenarios (see the module doc)."""
    killed_uri, clean_uri = str(tmp_path / "killed"), str(tmp_path / "clean")
    inputs = prepare(killed_uri)
    shutil.copytree(killed_uri, clean_uri)
    store, clean_store = ArtifactStore(StoreSettings(uri=killed_uri)), ArtifactStore(StoreSettings(uri=clean_uri))
    watch = Watch(reply)
    with FakeOpenAIServer(watch) as server:
        watch.phase, watch.root, watch.name, watch.unit = "clean", Path(clean_uri), name, unit
        clean = run(server.base_url, inputs, clean_uri)
        n = int(clean_store.manifest(clean).metadata["shards"])
        assert n >= 3, f"only {n} shards: too few to kill in the middle"
        per_shard = Counter(s for _, s, _ in watch.calls)
        watch.k = fault_rng.randint(1, n - 1)
        watch.m = fault_rng.randint(0, max(0, per_shard[watch.k] - 1))
        watch.phase, watch.root = "killed", Path(killed_uri)
        child = _spawn(stage, child_args(server.base_url, inputs, killed_uri))
        watch.pid = child.pid
        _wait_killed(child)
        done_before = _records(Path(killed_uri), name, unit)
        assert not list(Path(killed_uri).glob(f"{name}/*/_manifest.json")), "the killed run committed a version"

        watch.phase = "resume"
        committed = _spy_commits(monkeypatch)
        t0 = time.monotonic()
        with caplog.at_level("INFO"):
            resumed = run(server.base_url, inputs, killed_uri)
        recover_s = time.monotonic() - t0
    assert server.problems == []
    lost, duplicated, corrupted = _compare(store, resumed, clean_store, clean, id_col)
    finished = set(watch.keys("killed", lambda s: s < done_before))
    asked_again = [k for k in watch.keys("resume") if k in finished]
    expected_redo = Counter(watch.keys("clean", lambda s: s >= done_before))
    redone = Counter(watch.keys("resume"))
    reliability.record(
        lost=lost, duplicated=duplicated, corrupted=corrupted + len(asked_again), recover_s=recover_s, injected=1,
        detail=f"SIGKILL at request {watch.m + 1} of shard {watch.k} ({done_before} of {n} shards committed); "
               f"rerun asked {sum(redone.values())} of {len(watch.keys('clean'))} items, committed shards "
               f"{sorted(committed)}")
    assert done_before == watch.k, f"killed after {done_before} shards, wanted {watch.k}"
    assert f"{done_before} of {n} shard(s) already finished" in caplog.text
    assert sorted(committed) == list(range(done_before, n)), "the rerun recomputed a finished shard"
    assert asked_again == [], f"finished items sent to the model again: {asked_again[:3]}"
    assert redone == expected_redo, "the rerun asked for other items than the unfinished shards' (or some twice)"
    assert (lost, duplicated, corrupted) == (0, 0, 0)
    assert store.manifest(resumed).metadata["failures"]["failed"] == 0


@pytest.mark.fault("crash.labeling")
def test_sigkilled_labeling_resumes_only_unfinished_shards_and_equals_an_uninterrupted_run(
        tmp_path, caplog, monkeypatch, fault_rng, reliability):
    def run(base_url, images, uri):
        return label_boxes_task.fn(_labeling(base_url), images, uri, False, ONE)

    _model_stage_crash(
        tmp_path, caplog, monkeypatch, fault_rng, reliability, stage="label", name="labeled-images", unit="label",
        id_col="image_id", reply=_label_reply, prepare=_images, run=run,
        child_args=lambda base_url, images, uri: {"config": _labeling(base_url).model_dump(mode="json"),
                                                  "images": str(images), "store": uri})


def _teacher(base_url: str) -> DistillationStageConfig:
    return DistillationStageConfig(backend="openai", endpoint=EndpointConfig(
        base_url=base_url, model="teacher-72b", concurrency=1, max_retries=0, timeout_s=30),
        options=DistillConfig(concurrency=1))


COMPOSE = CompositionConfig(pool="train", composites_per_category=4, tile_size=48)


def _composites(uri: str):
    entities, images = _inputs(uri)
    labeled = label_boxes_task.fn(LabelingStageConfig(), images, uri, False, ONE)
    comps = compose_task.fn(COMPOSE, labeled, uri, False, ShardingConfig(composites_per_shard=2), ONE)
    return comps, entities


@pytest.mark.fault("crash.distillation")
def test_sigkilled_distillation_asks_the_teacher_only_for_unfinished_items(
        tmp_path, caplog, monkeypatch, fault_rng, reliability):
    def run(base_url, inputs, uri):
        return distill_cot_task.fn(_teacher(base_url), inputs[0], inputs[1], uri, False, ONE)

    _model_stage_crash(
        tmp_path, caplog, monkeypatch, fault_rng, reliability, stage="distill", name="cot", unit="distill",
        id_col="question_id", reply=_teacher_reply, prepare=_composites, run=run,
        child_args=lambda base_url, inputs, uri: {"config": _teacher(base_url).model_dump(mode="json"),
                                                  "composites": str(inputs[0]), "entities": str(inputs[1]),
                                                  "store": uri})


@pytest.mark.fault("crash.composition")
def test_sigkilled_composition_recomposes_only_unfinished_shards(tmp_path, caplog, monkeypatch, fault_rng, reliability):
    killed_uri, clean_uri = str(tmp_path / "killed"), str(tmp_path / "clean")
    _, images = _inputs(killed_uri)
    labeled = label_boxes_task.fn(LabelingStageConfig(), images, killed_uri, False, ONE)
    shutil.copytree(killed_uri, clean_uri)
    store, clean_store = ArtifactStore(StoreSettings(uri=killed_uri)), ArtifactStore(StoreSettings(uri=clean_uri))
    sharding = ShardingConfig(composites_per_shard=2)
    clean = compose_task.fn(COMPOSE, labeled, clean_uri, False, sharding, ONE)
    n = int(clean_store.manifest(clean).metadata["shards"])
    assert n >= 3, f"only {n} composition shards: too few to kill in the middle"
    k = fault_rng.randint(1, n - 1)
    child = _spawn("compose", {"config": COMPOSE.model_dump(mode="json"), "labeled": str(labeled),
                               "sharding": sharding.model_dump(mode="json"), "store": killed_uri}, kill_after=k)
    _wait_killed(child)
    name = clean.name
    done_before = _records(Path(killed_uri), name, "compose")
    assert not list(Path(killed_uri).glob(f"{name}/*/_manifest.json")), "the killed run committed a version"
    kept = {p.name: p.read_bytes() for p in Path(killed_uri).glob(f"{name}/*/{SHARDS}/compose/*.json")}

    committed = _spy_commits(monkeypatch)
    t0 = time.monotonic()
    with caplog.at_level("INFO"):
        resumed = compose_task.fn(COMPOSE, labeled, killed_uri, False, sharding, ONE)
    recover_s = time.monotonic() - t0
    lost, duplicated, corrupted = _compare(store, resumed, clean_store, clean, "composite_id")
    rewritten = [p for p, body in kept.items()
                 if next(Path(killed_uri).glob(f"{name}/*/{SHARDS}/compose/{p}")).read_bytes() != body]
    reliability.record(lost=lost, duplicated=duplicated, corrupted=corrupted + len(rewritten), recover_s=recover_s,
                       injected=1, detail=f"SIGKILL after shard {k} of {n} committed ({done_before} records); rerun "
                                          f"composed shards {sorted(committed)}")
    assert done_before == k
    assert f"{done_before} of {n} shard(s) already finished" in caplog.text
    assert sorted(committed) == list(range(k, n)), "the rerun recomposed a finished shard"
    assert rewritten == []
    assert (lost, duplicated, corrupted) == (0, 0, 0)


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
