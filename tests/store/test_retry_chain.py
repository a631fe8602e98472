"""Partial versions are not reused: reruns retry only the failed items, chaining versions."""

import pyarrow as pa
import pytest

from deepperception.errors import ArtifactError
from deepperception.store.stage import retry_salt, run_stage

CODE = ("deepperception.boxes",)  # a stable code scope: versions must not move while others edit
ITEMS = [1, 2, 3, 4, 5]


class FlakyStage:
    """Processes items; those in ``failing`` fail this run. Records what each run attempted."""

    def __init__(self, store):
        self.store, self.failing, self.runs = store, set(), []

    def __call__(self, w):
        done = {}
        if w.previous is not None:
            prev = self.store.read_table(w.previous).to_pylist()
            done = {r["item"]: r["value"] for r in prev}
        todo = [i for i in ITEMS if i not in done]
        self.runs.append({"previous": w.previous, "attempted": todo})
        failed = [i for i in todo if i in self.failing]
        done.update({i: i * 10 for i in todo if i not in self.failing})
        w.write_table(pa.table({"item": sorted(done), "value": [done[i] for i in sorted(done)]}))
        return {"failures": {"failed": len(failed), "total": len(ITEMS), "examples": [f"item {i}" for i in failed]}}


def _run(store, stage):
    return run_stage(store, "answers", "answer", {"k": 1}, {}, stage, code=CODE)


def test_rerun_retries_only_failed_items_then_reuses_the_complete_version(store):
    stage = FlakyStage(store)
    stage.failing = {2, 4}
    first, reused = _run(store, stage)
    assert not reused and store.manifest(first).is_partial
    assert store.read_table(first).column("item").to_pylist() == [1, 3, 5]

    stage.failing = set()
    second, reused = _run(store, stage)
    assert not reused and second != first
    assert stage.runs[-1] == {"previous": first, "attempted": [2, 4]}
    assert not store.manifest(second).is_partial
    assert store.read_table(second).column("value").to_pylist() == [10, 20, 30, 40, 50]
    # The attempt's id is the deterministic retry-1 version of the same plan.
    code = store.manifest(first).code_version
    assert second.version == store.plan("answers", "answer", {"k": 1}, {}, salt=retry_salt("", 1), code=code).version

    third, reused = _run(store, stage)
    assert (third, reused, len(stage.runs)) == (second, True, 2)
    assert store.manifest(first).is_partial  # the partial version stays, immutable


def test_a_rerun_with_failures_left_grows_the_chain_by_one(store):
    stage = FlakyStage(store)
    stage.failing = {2, 4}
    v0, _ = _run(store, stage)
    stage.failing = {4}
    v1, _ = _run(store, stage)
    assert store.manifest(v1).failures == {"failed": 1, "total": 5, "examples": ["item 4"]}
    assert stage.runs[-1] == {"previous": v0, "attempted": [2, 4]}
    stage.failing = set()
    v2, reused = _run(store, stage)
    assert not reused and stage.runs[-1] == {"previous": v1, "attempted": [4]}
    assert len({v0, v1, v2}) == 3
    assert _run(store, stage) == (v2, True) and len(stage.runs) == 3


def test_complete_first_run_has_no_previous(store):
    stage = FlakyStage(store)
    ref, _ = _run(store, stage)
    assert stage.runs == [{"previous": None, "attempted": ITEMS}] and not store.manifest(ref).is_partial


def test_malformed_failures_metadata_is_refused_by_field(store):
    def produce(w):
        w.write_table(pa.table({"x": [1]}))
        return {"failures": {"failed": "two", "total": 5}}

    with pytest.raises(ArtifactError, match="'failures'"):
        run_stage(store, "t", "s", {}, {}, produce, code=CODE)
    assert store.refs("t") == []
