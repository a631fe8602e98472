"""Several real processes producing the SAME version at once, each writing different bytes.

Before attempts existed, writers of one version shared its paths: a loser overwrote (or its
``__enter__`` deleted) the winner's committed files, and the version stayed corrupt forever.
Both tests here fail on that code; the first one deterministically.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from deepperception.store import ArtifactStore, StoreSettings
from deepperception.store.stage import run_stage

pytestmark = pytest.mark.slow  # N spawned interpreters per test: tens of seconds on two cores

N = 4
NAME, STAGE, CONFIG = "race", "train_stage", {"k": 1}
# A small, stable code scope: the version id must not move while the checkout is being edited.
CODE = ("deepperception.boxes",)


@pytest.fixture(params=["local", "moto", "seaweedfs"])
def settings(request, tmp_path) -> StoreSettings:
    if request.param == "local":
        return StoreSettings(uri=str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"))
    if request.param == "moto":
        uri, endpoint = request.getfixturevalue("s3_store_uri")
        return StoreSettings(uri=uri, s3_endpoint_url=endpoint, cache_dir=str(tmp_path / "cache"))
    return request.getfixturevalue("weed_store_settings")


def _write_mine(w, pid: int) -> None:
    w.write_table(pa.table({"writer": [pid] * 200, "i": list(range(200))}))
    w.write_bytes("files/train_stage.json", json.dumps({"writer": pid}).encode())
    w.write_bytes("files/blob.bin", pid.to_bytes(8, "little") * 40_000)


def _count_waits(waits) -> None:
    """Make this process count how often ``run_stage`` waits on another run's lease."""
    import deepperception.store.stage as stage_mod

    original = stage_mod.wait_while_leased

    def counted(store, ref):
        with waits.get_lock():
            waits.value += 1
        original(store, ref)

    stage_mod.wait_while_leased = counted


def _worker(settings_kwargs: dict, barrier, results, mode: str, counters) -> None:
    """Runs in a spawned process: one ``run_stage`` of the shared version."""
    store = ArtifactStore(StoreSettings(**settings_kwargs))
    pid = os.getpid()
    produced, waits = counters
    _count_waits(waits)

    def produce(w):
        with produced.get_lock():
            produced.value += 1
        if mode == "leased":
            # Holding the lease: commit only once every other run is waiting on it.
            deadline = time.monotonic() + 120
            while waits.value < N - 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            _write_mine(w, pid)
            return {"writer": pid}
        rank = barrier.wait(timeout=120)  # all N are inside produce: each really computes
        if mode == "free":
            _write_mine(w, pid)
            barrier.wait(timeout=120)  # all have written before any commits: the commits race
        elif rank != 0:
            # Ordered mode: rank 0 commits first; the others write their bytes only afterwards,
            # which on shared paths would overwrite the committed files.
            deadline = time.monotonic() + 120
            while not store.exists(w.ref) and time.monotonic() < deadline:
                time.sleep(0.05)
            _write_mine(w, pid)
        else:
            _write_mine(w, pid)
        return {"writer": pid}

    try:
        if mode == "leased":
            barrier.wait(timeout=120)  # start together
        ref, reused = run_stage(store, NAME, STAGE, CONFIG, {}, produce, code=CODE)
        results.put((pid, str(ref), reused, None))
    except BaseException as exc:  # reported to the parent, which fails the test with it
        results.put((pid, None, None, repr(exc)))


def _race(settings: StoreSettings, mode: str) -> tuple[list[tuple], int, int]:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(N), ctx.Queue()
    counters = (ctx.Value("i", 0), ctx.Value("i", 0))
    # Without the lease every run computes, so the commit protocol itself is what is raced.
    kwargs = {"uri": settings.uri, "s3_endpoint_url": settings.s3_endpoint_url, "cache_dir": settings.cache_dir,
              "lease": mode == "leased", "lease_poll_s": 0.1}
    procs = [ctx.Process(target=_worker, args=(kwargs, barrier, results, mode, counters)) for _ in range(N)]
    for p in procs:
        p.start()
    out = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return out, counters[0].value, counters[1].value


def _all_files(store: ArtifactStore, directory: str) -> set[str]:
    infos = store.fs.get_file_info(pafs.FileSelector(directory, recursive=True, allow_not_found=True))
    return {i.path[len(directory) + 1:] for i in infos if i.type == pafs.FileType.File}


@pytest.mark.parametrize("mode", ["ordered", "free", "leased"])
def test_racing_writers_of_one_version_leave_exactly_the_winners_data(settings, mode):
    """ordered: the losers write after the winner committed; free: all write, then all commit at
    once; leased: with leases on, one run computes while the others wait and reuse its version."""
    results, produced, waits = _race(settings, mode)
    assert [r[3] for r in results] == [None] * N, results
    if mode == "leased":
        assert (produced, waits) == (1, N - 1), "one run computes; every other one waits for it"
    else:
        assert produced == N
    winners = [r for r in results if r[2] is False]
    assert len(winners) == 1, f"exactly one process must compute-and-commit: {results}"
    assert {r[1] for r in results} == {winners[0][1]}, "every loser must return the winner's ref"

    store = ArtifactStore(settings)
    (ref,) = store.refs(NAME) if hasattr(store, "refs") else [v.ref for v in store.list(NAME)]
    assert str(ref) == winners[0][1]
    writer = store.manifest(ref).metadata["writer"]
    assert writer == winners[0][0]
    # Every file reads back (sha256 verified) and comes from the one writer that committed.
    assert set(store.read_table(ref).column("writer").to_pylist()) == {writer}
    assert json.loads(store.read_bytes(ref, "files/train_stage.json")) == {"writer": writer}
    assert store.read_bytes(ref, "files/blob.bin") == writer.to_bytes(8, "little") * 40_000
    assert store.verify(ref) == []
    # Nothing of the losers remains: only the manifest and the files it references.
    m = store.manifest(ref)
    referenced = {getattr(e, "key", None) or e.path for e in m.files}
    assert _all_files(store, store._dir(ref.name, ref.version)) == referenced | {"_manifest.json"}
    # A plain rerun now reuses it.
    assert run_stage(store, NAME, STAGE, CONFIG, {}, lambda w: pytest.fail("recomputed"), code=CODE)[1] is True
