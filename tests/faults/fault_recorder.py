"""What each fault scenario run reports, and where it goes.

A test in ``tests/faults/`` is marked ``@pytest.mark.fault("<scenario id>")`` and calls
``reliability.record(...)`` once it has checked its promise, saying what the fault cost: items
lost, duplicated or corrupted (each must be 0 for the test to pass anyway; they are counted so
the report shows the figure, not just a tick), the seconds from restart to a complete result, and
one line of detail (where it was killed, how much was redone). ``conftest.py`` writes one JSON line
per run to ``$DP_RELIABILITY_LOG`` when set (``make reliability`` sets it), with the test's
outcome, so a failed run is reported as failed even when it never reached ``record``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fault_catalogue import BY_ID

LOG_ENV = "DP_RELIABILITY_LOG"
RUNS_ENV = "DP_FAULT_RUNS"
SEED_ENV = "DP_FAULT_SEED"


@dataclass
class RunRecord:
    scenario: str
    nodeid: str
    seed: int | None
    lost: int | None = None
    duplicated: int | None = None
    corrupted: int | None = None
    recover_s: float | None = None
    """Seconds from the restart (or the fault clearing) to a complete, committed result."""
    injected: int | None = None
    """How many faults this run injected (kills, failed requests, fuzz examples, ...)."""
    detail: str = ""
    passed: bool | None = None
    finished_at: float = field(default_factory=time.time)


class Reliability:
    """The ``reliability`` fixture: collects this test's records (see module doc)."""

    def __init__(self, nodeid: str, default_scenario: str | None, seed: int | None) -> None:
        self.nodeid, self.default_scenario, self.seed = nodeid, default_scenario, seed
        self.records: list[RunRecord] = []

    def record(self, *, lost: int, duplicated: int = 0, corrupted: int = 0, recover_s: float | None = None,
               injected: int = 1, detail: str = "", scenario: str | None = None) -> RunRecord:
        sid = scenario or self.default_scenario
        if sid not in BY_ID:
            raise ValueError(f"scenario {sid!r} is not in tests/faults/fault_catalogue.py")
        for name, value in (("lost", lost), ("duplicated", duplicated), ("corrupted", corrupted)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a count >= 0, got {value!r}")
        rec = RunRecord(sid, self.nodeid, self.seed, lost, duplicated, corrupted,
                        None if recover_s is None else round(float(recover_s), 3), injected, detail)
        self.records.append(rec)
        return rec


def write_records(records: list[RunRecord], passed: bool) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for rec in records:
            rec.passed = passed
            fh.write(json.dumps(asdict(rec), sort_keys=True) + "\n")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    text = Path(path).read_text(encoding="utf-8") if Path(path).exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
