"""``run_stage`` paths the other store tests leave open (written from mutation-testing survivors).

How a stage's ``InputDataError`` is labelled, ``task_module`` in the version id, the lease
paths a single process can reach (a run already holding the lease commits while we wait; a
version committed between our check and our lease), a version quarantined by a concurrent
repair while we verify it, and the exact text of the corrupt-version error. Local store only:
the S3 variants of the shared paths are in the other store tests, and these run per mutant.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.fs  # noqa: F401  (pa.fs)
import pytest
from store_helpers import overwrite

from deepperception.errors import ArtifactError, InputDataError
from deepperception.store import ArtifactStore, StoreSettings
from deepperception.store import stage as stage_mod
from deepperception.store.lease import Lease, read_lease
from deepperception.store.stage import run_stage
from deepperception.version import code_version

CODE = ("deepperception.boxes",)  # a stable code scope: versions must not move while others edit


@pytest.fixture
def lstore(tmp_path):
    return ArtifactStore(StoreSettings(uri=str(tmp_path / "store"), cache_dir=str(tmp_path / "cache")))


def _table(w, rows=1):
    w.write_table(pa.table({"x": list(range(rows))}))
    return {}


def _upstream(store, name="up"):
    ref, _ = run_stage(store, name, "make", {"n": name}, {}, _table, code=CODE)
    return ref


def _planned(store, name="t"):
    return store.plan(name, "s", {"k": 1}, {}, code=code_version(CODE)).ref


# --- InputDataError labelling ---------------------------------------------------------------------

def _raised(store, upstream, **kw) -> tuple[InputDataError, InputDataError]:
    original = InputDataError("bad value", **kw)

    def produce(w):
        raise original

    with pytest.raises(InputDataError) as ei:
        run_stage(store, "t", "s", {"k": 1}, upstream, produce, code=CODE)
    assert store.refs("t") == []  # nothing committed
    return original, ei.value


def test_input_error_gets_the_stage_and_the_single_upstream(lstore):
    up = _upstream(lstore)
    original, e = _raised(lstore, {"rows": up}, row=3, field="image")
    assert e is not original and e.__cause__ is original
    assert (e.message, e.stage, e.artifact, e.row, e.field) == ("bad value", "s", str(up), 3, "image")


def test_input_error_keeps_its_own_stage_and_artifact(lstore):
    up = _upstream(lstore)
    _, e = _raised(lstore, {"rows": up}, stage="inner", row="q1", field="answer")
    assert (e.message, e.stage, e.artifact, e.row, e.field) == ("bad value", "inner", str(up), "q1", "answer")
    _, e = _raised(lstore, {"rows": up}, artifact="other@1", field="answer")
    assert (e.stage, e.artifact, e.row, e.field) == ("s", "other@1", None, "answer")
    original, e = _raised(lstore, {"rows": up}, stage="inner", artifact="other@1")
    assert e is original  # fully labelled already: re-raised as is


def test_input_error_with_several_or_no_upstreams_names_no_artifact(lstore):
    a, b = _upstream(lstore, "a"), _upstream(lstore, "b")
    _, e = _raised(lstore, {"a": a, "b": b}, row=1)
    assert (e.stage, e.artifact, e.row) == ("s", None, 1)
    _, e = _raised(lstore, {}, field="f")
    assert (e.stage, e.artifact, e.field) == ("s", None, "f")
    original, e = _raised(lstore, {"a": a, "b": b}, stage="inner")
    assert e is original


# --- version id -----------------------------------------------------------------------------------

def test_task_module_is_hashed_into_the_version(lstore):
    task = "deepperception.errors"
    ref, reused = run_stage(lstore, "t", "s", {"k": 1}, {}, _table, code=CODE, task_module=task)
    assert not reused
    assert ref == lstore.plan("t", "s", {"k": 1}, {}, code=code_version(CODE, (task,))).ref
    assert ref != _planned(lstore)
    assert lstore.manifest(ref).code_version == code_version(CODE, (task,))


def test_upstream_is_part_of_the_version(lstore):
    a, b = _upstream(lstore, "a"), _upstream(lstore, "b")
    ref_a, _ = run_stage(lstore, "t", "s", {"k": 1}, {"rows": a}, _table, code=CODE)
    ref_b, _ = run_stage(lstore, "t", "s", {"k": 1}, {"rows": b}, _table, code=CODE)
    assert ref_a == lstore.plan("t", "s", {"k": 1}, {"rows": a}, code=code_version(CODE)).ref
    assert len({ref_a, ref_b, _planned(lstore)}) == 3
    assert lstore.manifest(ref_b).upstream == {"rows": str(b)}


def test_no_code_scope_plans_without_a_code_version(lstore):
    ref, _ = run_stage(lstore, "t", "s", {"k": 1}, {}, _table)
    assert ref == lstore.plan("t", "s", {"k": 1}, {}, code=None).ref


# --- leases ---------------------------------------------------------------------------------------

def test_compute_holds_the_lease_only_when_leases_are_on(lstore):
    seen = []

    def produce(w):
        seen.append(read_lease(w.store, w.ref))
        return _table(w)

    run_stage(lstore, "t", "s", {"k": 1}, {}, produce, code=CODE)
    assert seen[-1] is not None
    off = ArtifactStore(lstore.settings.model_copy(update={"lease": False}))
    run_stage(off, "u", "s", {"k": 1}, {}, produce, code=CODE)
    assert seen[-1] is None


def test_waits_for_the_lease_holder_and_reuses_what_it_committed(lstore, monkeypatch, caplog):
    ref = _planned(lstore)
    holder = Lease.acquire(lstore, ref, owner="other-run")
    assert holder is not None
    waits = []

    def fake_wait(store, r):
        waits.append(r)
        # the other run finishes: it commits the version and releases its lease
        other = ArtifactStore(store.settings.model_copy(update={"lease": False}))
        assert run_stage(other, "t", "s", {"k": 1}, {}, lambda w: _table(w, 3), code=CODE) == (ref, False)
        holder.release()

    monkeypatch.setattr(stage_mod, "wait_while_leased", fake_wait)
    caplog.set_level(logging.INFO, logger=stage_mod.__name__)
    got = run_stage(lstore, "t", "s", {"k": 1}, {}, lambda w: pytest.fail("recomputed"), code=CODE)
    assert got == (ref, True) and waits == [ref]
    assert lstore.read_table(ref).num_rows == 3
    assert f"stage s: {ref} is being computed by other-run; waiting for it" in caplog.messages


def test_waits_then_computes_when_the_holder_gives_up(lstore, monkeypatch):
    ref = _planned(lstore)
    holder = Lease.acquire(lstore, ref, owner="other-run")
    waits = []

    def fake_wait(store, r):
        waits.append(r)
        holder.release()  # the other run failed

    monkeypatch.setattr(stage_mod, "wait_while_leased", fake_wait)
    assert run_stage(lstore, "t", "s", {"k": 1}, {}, _table, code=CODE) == (ref, False)
    assert waits == [ref] and read_lease(lstore, ref) is None


def test_version_committed_between_check_and_lease_is_reused(lstore, monkeypatch):
    ref, _ = run_stage(lstore, "t", "s", {"k": 1}, {}, _table, code=CODE)
    real_exists = lstore.exists
    calls = []

    def exists(r):
        calls.append(r)
        return False if len(calls) == 1 else real_exists(r)  # the first look misses the commit

    monkeypatch.setattr(lstore, "exists", exists)
    got = run_stage(lstore, "t", "s", {"k": 1}, {}, lambda w: pytest.fail("recomputed"), code=CODE)
    assert got == (ref, True)
    assert read_lease(lstore, ref) is None  # the lease it took was released


# --- verification on reuse ------------------------------------------------------------------------

def test_version_quarantined_while_being_verified_is_recomputed(lstore, monkeypatch):
    ref, _ = run_stage(lstore, "t", "s", {"k": 1}, {}, _table, code=CODE)
    real_verify = lstore.verify

    def verify(r, **kw):
        monkeypatch.setattr(lstore, "verify", real_verify)
        lstore.quarantine(r)  # a concurrent repair moved it aside
        raise ArtifactError(f"{r}: manifest vanished")

    monkeypatch.setattr(lstore, "verify", verify)
    calls = []
    got = run_stage(lstore, "t", "s", {"k": 1}, {}, lambda w: calls.append(1) or _table(w, 2), code=CODE)
    assert got == (ref, False) and calls == [1]
    assert lstore.read_table(ref).num_rows == 2


def test_verify_error_on_a_version_that_is_still_there_propagates(lstore, monkeypatch):
    run_stage(lstore, "t", "s", {"k": 1}, {}, _table, code=CODE)

    def verify(r, **kw):
        raise ArtifactError("unreadable manifest")

    monkeypatch.setattr(lstore, "verify", verify)
    with pytest.raises(ArtifactError, match="^unreadable manifest$"):
        run_stage(lstore, "t", "s", {"k": 1}, {}, lambda w: pytest.fail("recomputed"), code=CODE)


def test_reuse_verifies_shallowly_with_the_configured_rehash_limit(lstore, monkeypatch):
    ref, _ = run_stage(lstore, "t", "s", {"k": 1}, {}, _table, code=CODE)
    real_verify = lstore.verify
    seen = []

    def verify(r, **kw):
        seen.append((r, kw))
        return real_verify(r, **kw)

    monkeypatch.setattr(lstore, "verify", verify)
    assert run_stage(lstore, "t", "s", {"k": 1}, {}, lambda w: pytest.fail("recomputed"), code=CODE) == (ref, True)
    assert seen == [(ref, {"deep": False, "rehash_up_to": lstore.settings.reuse_rehash_max_bytes})]


def test_corrupt_version_error_text(lstore):
    def produce(w):
        w.write_table(pa.table({"x": list(range(50))}))
        w.write_bytes("files/w.bin", bytes(range(256)))
        return {}

    ref, _ = run_stage(lstore, "t", "s", {"k": 1}, {}, produce, code=CODE)
    overwrite(lstore, lstore.file_path(ref, "data.parquet"), b"truncated")
    overwrite(lstore, lstore.file_path(ref, "files/w.bin"), b"x")
    problems = lstore.verify(ref, deep=False)
    assert len(problems) == 2
    with pytest.raises(ArtifactError) as ei:
        run_stage(lstore, "t", "s", {"k": 1}, {}, produce, code=CODE)
    assert str(ei.value) == (
        f"stage s: committed artifact {ref} is corrupt: {'; '.join(problems)}. "
        "Rerun with repair (reproduce --repair, or DP_STORE_REPAIR=1) to move it aside and recompute it"
    )


def test_repair_quarantines_then_recomputes_and_says_where(lstore, caplog):
    def produce(w):
        calls.append(w.ref)
        w.write_table(pa.table({"x": list(range(50))}))
        w.write_bytes("files/w.bin", bytes(range(256)))
        return {"rows": 50}

    calls = []
    ref, _ = run_stage(lstore, "t", "s", {"k": 1}, {}, produce, code=CODE)
    assert lstore.manifest(ref).metadata == {"rows": 50}
    overwrite(lstore, lstore.file_path(ref, "data.parquet"), b"truncated")
    overwrite(lstore, lstore.file_path(ref, "files/w.bin"), b"x")
    problems = lstore.verify(ref, deep=False)
    repairing = ArtifactStore(lstore.settings.model_copy(update={"repair": True}))
    caplog.set_level(logging.INFO, logger=stage_mod.__name__)
    assert run_stage(repairing, "t", "s", {"k": 1}, {}, produce, code=CODE) == (ref, False)
    assert calls == [ref, ref] and lstore.verify(ref) == []
    head = f"stage s: {ref} was corrupt ({'; '.join(problems)}); moved to "
    [msg] = [m for m in caplog.messages if m.startswith(head)]
    where = msg[len(head):-len(", recomputing it")]
    assert msg.endswith(", recomputing it") and "_quarantine" in where
    assert lstore.fs.get_file_info(where).type == pa.fs.FileType.Directory  # kept for inspection


# --- what the log says (the operator's only trace of reuse / retry decisions) ---------------------

def test_log_of_a_retry_chain(lstore, caplog):
    failing = {2, 4}

    def produce(w):
        done = {r["x"] for r in lstore.read_table(w.previous).to_pylist()} if w.previous is not None else set()
        todo = [i for i in range(1, 6) if i not in done]
        failed = [i for i in todo if i in failing]
        w.write_table(pa.table({"x": sorted(done | {i for i in todo if i not in failing})}))
        return {"failures": {"failed": len(failed), "total": 5}}

    caplog.set_level(logging.INFO, logger=stage_mod.__name__)
    v0, _ = run_stage(lstore, "t", "s", {"k": 1}, {}, produce, code=CODE)
    assert caplog.messages == [f"stage s: committed {v0}"]
    caplog.clear()
    failing = set()
    v1, _ = run_stage(lstore, "t", "s", {"k": 1}, {}, produce, code=CODE)
    assert caplog.messages == [
        f"stage s: {v0} is partial (2 of 5 items failed); retrying them in the next version",
        f"stage s: computing {v1}, repairing the failed items of {v0}",
        f"stage s: committed {v1}",
    ]
    caplog.clear()
    assert run_stage(lstore, "t", "s", {"k": 1}, {}, produce, code=CODE) == (v1, True)
    assert caplog.messages == [
        f"stage s: {v0} is partial (2 of 5 items failed); retrying them in the next version",
        f"stage s: reusing {v1} (identical inputs, config and code)",
    ]


def test_log_of_a_concurrent_commit(lstore, caplog):
    def produce(w):
        with lstore.plan("t", "s", {"k": 1}, {}, code=code_version(CODE)) as other:
            other.write_table(pa.table({"x": [1]}))
            other.commit()
        return _table(w)

    caplog.set_level(logging.INFO, logger=stage_mod.__name__)
    ref, reused = run_stage(lstore, "t", "s", {"k": 1}, {}, produce, code=CODE)
    assert reused
    assert caplog.messages == [f"stage s: {ref} was committed by a concurrent run; using it"]


def test_lease_gone_before_its_owner_is_read_is_waited_on_then_taken(lstore, monkeypatch, caplog):
    ref = _planned(lstore)
    real_acquire = Lease.acquire
    tries, waits = [], []

    def acquire(store, r, *args, **kwargs):
        tries.append(r)  # the first try loses to a run that releases its lease at once
        return None if len(tries) == 1 else real_acquire(store, r, *args, **kwargs)

    monkeypatch.setattr(stage_mod.Lease, "acquire", acquire)
    monkeypatch.setattr(stage_mod, "wait_while_leased", lambda store, r: waits.append(r))
    caplog.set_level(logging.INFO, logger=stage_mod.__name__)
    assert run_stage(lstore, "t", "s", {"k": 1}, {}, _table, code=CODE) == (ref, False)
    assert tries == [ref, ref] and waits == [ref]
    assert f"stage s: {ref} is being computed by ?; waiting for it" in caplog.messages
