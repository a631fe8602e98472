"""Leases: exclusive, taken over when expired, released on success and on failure."""

import datetime as dt
import json

import pyarrow as pa
import pytest

from deepperception.store.lease import Lease, lease_path, read_lease
from deepperception.store.stage import run_stage
from deepperception.version import code_version

CODE = ("deepperception.boxes",)  # a stable code scope: versions must not move while others edit


def _planned(store):
    return store.plan("t", "s", {"k": 1}, {}, code=code_version(CODE)).ref


def _plant(store, ref, owner, expires):
    path = lease_path(store, ref)
    store.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    store._overwrite(path, json.dumps({"owner": owner, "expires_at": expires.isoformat()}).encode())


def _now():
    return dt.datetime.now(dt.timezone.utc)


def test_lease_is_exclusive_until_released(store):
    ref = _planned(store)
    first = Lease.acquire(store, ref, owner="a")
    assert first is not None and read_lease(store, ref).owner == "a"
    assert Lease.acquire(store, ref, owner="b") is None
    first.release()
    assert read_lease(store, ref) is None
    second = Lease.acquire(store, ref, owner="b")
    assert second is not None and read_lease(store, ref).owner == "b"


def test_renewal_extends_only_its_own_lease(store):
    ref = _planned(store)
    lease = Lease.acquire(store, ref, owner="a")
    _plant(store, ref, "a", _now() - dt.timedelta(seconds=5))
    lease.renew()
    assert not read_lease(store, ref).expired
    _plant(store, ref, "b", _now() + dt.timedelta(hours=1))  # taken over by someone else
    lease.renew()
    lease.release()
    assert read_lease(store, ref).owner == "b"  # neither renewed nor deleted by the old owner


def test_expired_lease_of_a_dead_run_is_taken_over(store):
    ref = _planned(store)
    _plant(store, ref, "dead-run", _now() - dt.timedelta(seconds=1))
    holders = []

    def produce(w):
        holders.append(read_lease(store, w.ref).owner)
        w.write_table(pa.table({"x": [1]}))
        return {}

    assert run_stage(store, "t", "s", {"k": 1}, {}, produce, code=CODE) == (ref, False)
    assert len(holders) == 1 and holders[0] != "dead-run"
    assert read_lease(store, ref) is None  # released after the commit


def test_failed_run_releases_its_lease(store):
    def produce(w):
        assert read_lease(store, w.ref) is not None
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_stage(store, "t", "s", {"k": 1}, {}, produce, code=CODE)
    assert read_lease(store, _planned(store)) is None
    assert store.refs("t") == []


def test_a_lease_whose_process_died_on_this_machine_is_taken_over_at_once(store):
    """A rerun right after a SIGKILL must not wait out the TTL: same machine and boot, dead pid."""
    import os
    import subprocess
    import sys

    from deepperception.store.lease import machine_id, wait_while_leased

    ref = _planned(store)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = lease_path(store, ref)
    store.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    far = (_now() + dt.timedelta(hours=1)).isoformat()
    for pid, machine, taken in ((os.getpid(), machine_id(), False),   # alive: wait for it
                                (dead.pid, "another-machine", False),  # elsewhere: only the expiry tells
                                (dead.pid, machine_id(), True)):       # gone: take over now
        store._overwrite(path, json.dumps({"owner": "x", "expires_at": far, "machine": machine,
                                           "pid": pid}).encode())
        assert read_lease(store, ref).owner_gone is taken
        lease = Lease.acquire(store, ref)
        assert (lease is not None) is taken
    lease.release()
    store._overwrite(path, json.dumps({"owner": "x", "expires_at": far, "machine": machine_id(),
                                       "pid": dead.pid}).encode())
    wait_while_leased(store, ref)  # returns at once instead of waiting an hour


def test_a_lease_released_here_whose_file_could_not_be_deleted_is_taken_over_at_once(store, monkeypatch):
    """A run failing because the store went down cannot delete its lease; a rerun in the same live
    process (a retrying flow) takes it over instead of waiting out the TTL."""
    ref = _planned(store)
    first = Lease.acquire(store, ref, owner="failing-run")
    monkeypatch.setattr(store, "_delete_file", lambda path: (_ for _ in ()).throw(OSError("store down")))
    with pytest.raises(OSError, match="store down"):
        first.release()
    monkeypatch.undo()
    held = read_lease(store, ref)
    assert held is not None and held.owner == "failing-run" and not held.expired and held.released_here
    other = Lease.acquire(store, ref, owner="rerun")
    assert other is not None and read_lease(store, ref).owner == "rerun"
    assert Lease.acquire(store, ref, owner="third") is None  # a live, unreleased lease still excludes
    other.release()
