"""Stages against real endpoints that are dead or flaky, through the thin tasks and the store.

The regression: a dead labeling endpoint used to commit ``labeled-images`` with every row
failed, then empty composites, CoTs, datasets and bench, which a rerun reused once the endpoint
was back. Now such a stage commits nothing and says why; a partly failed version is partial and
its rerun asks again only for the failed items; and no stage accepts an empty input table.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from deepperception import boxes
from deepperception.config import (
    BaseModelConfig,
    DataSourceConfig,
    DatasetsConfig,
    DistillationStageConfig,
    EndpointConfig,
    EvalStageConfig,
    LabelingStageConfig,
    RLFilterConfig,
    profile,
)
from deepperception.domain.synthetic import SyntheticDomainConfig
from deepperception.engine.collection import CollectionConfig
from deepperception.engine.composition import CompositionConfig
from deepperception.engine.filtering import FilterConfig
from deepperception.errors import InputDataError, StageFailedError
from deepperception.store import ArtifactRef, ArtifactStore
from deepperception.store.stage import run_stage
from tasks import engine, evaluation, training

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from fake_openai_server import FakeOpenAIServer  # noqa: E402

PROMPT = "Find and give the bounding box of "


def _closed_port() -> int:
    """A port nothing listens on (bound, then released): connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _key(png: bytes | Image.Image) -> str:
    img = Image.open(io.BytesIO(png)) if isinstance(png, bytes) else png
    return hashlib.sha1(np.asarray(img.convert("RGB")).tobytes()).hexdigest()


@pytest.fixture
def images(tmp_path):
    """``(uri, store, images ref, images table)``: 12 rendered photos of a tiny domain."""
    uri = str(tmp_path / "store")
    src = DataSourceConfig(synthetic=SyntheticDomainConfig(seen_categories=["glider"], unseen_categories=["badge"],
                                                           entities_per_category=2))
    entities = engine.mine_entities_task.fn(src, uri)
    ref = engine.collect_images_task.fn(src, CollectionConfig(images_per_entity=3, image_size=48), entities, uri)
    store = ArtifactStore.from_uri(uri)
    return uri, store, ref, store.read_table(ref)


class Grounder:
    """Responder: the true box of every photo; HTTP 500 for the photos in ``failing``."""

    def __init__(self, table: pa.Table):
        self.truth = {(r["name"], _key(r["image"])): boxes.pixels_to_qwen(r["source_box_px"], r["width"], r["height"])
                      for r in table.to_pylist()}
        self.failing: set[str] = set()
        self.asked: list[str] = []

    def __call__(self, image, text, req):
        key = _key(image)
        self.asked.append(key)
        if key in self.failing:
            return 500
        name = text[len(PROMPT):]
        x1, y1, x2, y2 = self.truth[(name, key)]
        return f"{name}({x1},{y1}),({x2},{y2})"


def _labeling(port: int, concurrency: int = 2, **kw) -> LabelingStageConfig:
    return LabelingStageConfig(backend="openai", endpoint=EndpointConfig(
        base_url=f"http://127.0.0.1:{port}/v1", model="vl", timeout_s=10, max_retries=0, concurrency=concurrency), **kw)


def test_dead_labeling_endpoint_commits_nothing_and_the_rerun_succeeds(images):
    uri, store, ref, table = images
    port = _closed_port()
    cfg = _labeling(port)
    with pytest.raises(StageFailedError) as err:
        engine.label_boxes_task.fn(cfg, ref, uri)
    msg = str(err.value)
    # The first failures end it (the limit is passed; the other images are not sent to a dead server):
    # at most the requests already in flight (concurrency 2, one pulled ahead) fail, the rest are skipped.
    m = re.search(rf"stage label: (\d+) of {table.num_rows} items of labeled-images failed \(more than "
                  r"max_failure_rate 5.0% allows; (\d+) more not attempted\)", msg)
    assert m, msg
    failed, skipped = int(m.group(1)), int(m.group(2))
    assert 1 <= failed <= 3 and failed + skipped == table.num_rows, msg
    assert f"ConnectError talking to vl at http://127.0.0.1:{port}/v1" in msg  # names the endpoint failure
    assert store.list("labeled-images") == []  # nothing a rerun could reuse

    # The endpoint comes up where it was missing; the same command (same config) now succeeds.
    grounder = Grounder(table)
    with FakeOpenAIServer(grounder, port=port) as server:
        labeled = engine.label_boxes_task.fn(cfg, ref, uri)
    assert server.problems == []
    out = store.read_table(labeled)
    assert out.num_rows == table.num_rows and out.column("label_error").null_count == table.num_rows
    for r in out.to_pylist():
        assert tuple(r["box"]) == grounder.truth[(r["name"], _key(r["image"]))]
    assert store.manifest(labeled).metadata["failures"] == {"failed": 0, "total": table.num_rows, "examples": []}


def test_partly_failed_labeling_is_partial_and_the_rerun_asks_only_the_failed_images(images):
    uri, store, ref, table = images
    keys = [_key(b) for b in table.column("image").to_pylist()]
    grounder = Grounder(table)
    grounder.failing = {keys[2], keys[7]}
    with FakeOpenAIServer(grounder) as server:
        cfg = _labeling(int(server.base_url.rsplit(":", 1)[1].split("/")[0]), max_failure_rate=0.25)
        partial = engine.label_boxes_task.fn(cfg, ref, uri)
        m = store.manifest(partial)
        assert m.metadata["failures"]["failed"] == 2 and m.metadata["failures"]["total"] == table.num_rows
        assert all("HTTP 500" in e for e in m.metadata["failures"]["examples"])
        failed_ids = [r["image_id"] for r in store.read_table(partial).to_pylist() if r["label_error"]]
        assert failed_ids == [table.column("image_id")[i].as_py() for i in (2, 7)]

        grounder.failing, grounder.asked = set(), []
        repaired = engine.label_boxes_task.fn(cfg, ref, uri)
        assert sorted(grounder.asked) == sorted([keys[2], keys[7]])  # only the failed images again
        assert repaired != partial and store.manifest(repaired).metadata["failures"]["failed"] == 0
        out = store.read_table(repaired)
        assert out.column("image_id").to_pylist() == table.column("image_id").to_pylist()
        for r in out.to_pylist():
            assert r["label_error"] is None and tuple(r["box"]) == grounder.truth[(r["name"], _key(r["image"]))]

        # Complete now: a third run reuses it without asking anything.
        grounder.asked = []
        assert engine.label_boxes_task.fn(cfg, ref, uri) == repaired and grounder.asked == []
    assert server.problems == []


def test_labeling_over_the_failure_limit_commits_nothing_and_stops_asking(images):
    uri, store, ref, table = images
    grounder = Grounder(table)
    keys = [_key(b) for b in table.column("image").to_pylist()]
    grounder.failing = {keys[3], keys[5]}  # 10% of 12 allows one failure; the second one passes the limit
    ids = table.column("image_id").to_pylist()
    with FakeOpenAIServer(grounder) as server:
        cfg = _labeling(int(server.base_url.rsplit(":", 1)[1].split("/")[0]), concurrency=1, max_failure_rate=0.1)
        # The client keeps `concurrency` requests in flight plus one pulled ahead: after the second failure
        # at most that one more photo is sent, the rest are not.
        with pytest.raises(StageFailedError, match=r"2 of 12 items of labeled-images failed \(more than max_failure_rate "
                                                   r"10.0% allows; [56] more not attempted\); nothing was committed\. "
                                                   rf"First errors: {re.escape(ids[3])}: HTTP 500.*; "
                                                   rf"{re.escape(ids[5])}: HTTP 500"):
            engine.label_boxes_task.fn(cfg, ref, uri)
    assert grounder.asked[:6] == keys[:6] and len(grounder.asked) <= 7  # one failure allowed; the second ended it
    assert store.list("labeled-images") == []


def test_dead_teacher_endpoint_commits_no_cot(images):
    uri, store, ref, _ = images
    labeled = engine.label_boxes_task.fn(LabelingStageConfig(), ref, uri)
    comps = engine.compose_task.fn(CompositionConfig(pool="train", composites_per_category=2, tile_size=48), labeled, uri)
    entities = ArtifactRef.parse(store.manifest(ref).upstream["entities"])
    cfg = DistillationStageConfig(backend="openai", endpoint=EndpointConfig(
        base_url=f"http://127.0.0.1:{_closed_port()}/v1", model="teacher", timeout_s=10, max_retries=0, concurrency=1))
    with pytest.raises(StageFailedError, match=r"stage distill: [12] of 2 items of cot failed \(.*\); nothing was "
                                               r"committed.*ConnectError talking to teacher"):
        engine.distill_cot_task.fn(cfg, comps, entities, uri)
    assert store.list("cot") == []


def _commit(store: ArtifactStore, name: str, table: pa.Table) -> ArtifactRef:
    def produce(w):
        w.write_table(table)
        return {"rows": table.num_rows}
    return run_stage(store, name, "legacy", {"rows": table.num_rows}, {}, produce)[0]


def _empty_inputs(images: pa.Table) -> dict[str, pa.Table]:
    """Each consumer's input with its real schema and no rows: what the old code committed after a
    dead endpoint (and then happily consumed, committing the next empty version)."""
    from deepperception.engine.composition import COMPOSITES_SCHEMA
    from deepperception.engine.distillation import COT_SCHEMA
    from deepperception.engine.labeling import OracleLabeler, label_images
    from deepperception.model.synthetic import synthetic_bench, synthetic_grpo_rows, synthetic_sft_rows

    composites = COMPOSITES_SCHEMA.empty_table()
    grpo = synthetic_grpo_rows(1).slice(0, 0)
    return {"compose": label_images(images.slice(0, 1), OracleLabeler()).slice(0, 0),
            "build-bench": composites, "build-grpo": composites, "distill": composites,
            "filter": COT_SCHEMA.empty_table(), "build-sft": COT_SCHEMA.empty_table(),
            "base-model": synthetic_sft_rows(1).slice(0, 0), "sft": synthetic_sft_rows(1).slice(0, 0),
            "rl-filter": grpo, "grpo": grpo, "evaluate": synthetic_bench(1).slice(0, 0)}


_CKPT = ArtifactRef(name="some-checkpoint", version="0000")  # never reached: the input is refused first
CONSUMERS = {
    # stage -> call with (the empty input, a non-empty side input, store uri)
    "compose": lambda e, side, uri: engine.compose_task.fn(CompositionConfig(), e, uri),
    "build-bench": lambda e, side, uri: engine.build_bench_task.fn(DatasetsConfig(), e, uri),
    "build-grpo": lambda e, side, uri: engine.build_grpo_pool_task.fn(DatasetsConfig(), e, uri),
    "distill": lambda e, side, uri: engine.distill_cot_task.fn(DistillationStageConfig(), e, side, uri),
    "filter": lambda e, side, uri: engine.filter_cot_task.fn(FilterConfig(), e, uri),
    "build-sft": lambda e, side, uri: engine.build_sft_dataset_task.fn(e, side, uri),
    "base-model": lambda e, side, uri: training.build_base_model_task.fn(BaseModelConfig(), e, side, uri),
    "sft": lambda e, side, uri: training.train_sft_task.fn(profile("toy").sft, _CKPT, e, uri),
    "rl-filter": lambda e, side, uri: training.rl_filter_task.fn(RLFilterConfig(), _CKPT, e, uri),
    "grpo": lambda e, side, uri: training.train_grpo_task.fn(profile("toy").grpo, _CKPT, e, uri),
    "evaluate": lambda e, side, uri: evaluation.evaluate_task.fn(EvalStageConfig(), "x", _CKPT, e, store_uri=uri),
}


@pytest.mark.parametrize("consumer", list(CONSUMERS))
def test_an_empty_input_table_is_refused_naming_artifact_and_stage(images, consumer):
    uri, store, _, table = images
    before = {(m.name, m.version) for m in store.list()}
    empty = _commit(store, "upstream", _empty_inputs(table)[consumer])
    side = _commit(store, "side", pa.table({"x": pa.array([1], pa.int32())}))
    with pytest.raises(InputDataError) as err:
        CONSUMERS[consumer](empty, side, uri)
    assert err.value.artifact == str(empty) and err.value.stage == consumer
    assert f"input {empty} has no rows" in str(err.value)
    assert {(m.name, m.version) for m in store.list()} == before | {(empty.name, empty.version), (side.name, side.version)}
