"""The campaign's bookkeeping: every catalogue scenario has a test, every test's scenario is in the
catalogue, the recorder refuses what the report could not show, and the report marks loss."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from fault_catalogue import BY_ID, SCENARIOS
from fault_recorder import Reliability

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
import reliability as report  # noqa: E402

MARK = re.compile(r"""pytest\.mark\.fault\(\s*["']([\w.]+)["']""")


def _marked() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in HERE.glob("test_*.py"):
        for sid in MARK.findall(path.read_text(encoding="utf-8")):
            found.setdefault(sid, []).append(path.name)
    return found


def test_ids_are_unique_and_grouped():
    assert len(BY_ID) == len(SCENARIOS)
    assert {s.group for s in SCENARIOS} == {"crash", "edge", "fuzz", "secrets"}


def test_every_scenario_has_a_test_and_every_test_a_scenario():
    marked = _marked()
    assert sorted(set(BY_ID) - set(marked)) == [], "catalogue scenarios with no test in tests/faults/"
    assert sorted(set(marked) - set(BY_ID)) == [], "tests marked with a scenario the catalogue lacks"


def test_recorder_refuses_unknown_scenarios_and_bad_counts():
    rel = Reliability("t", "crash.sft", 1)
    with pytest.raises(ValueError, match="not in tests/faults"):
        rel.record(lost=0, scenario="crash.nope")
    with pytest.raises(ValueError, match="lost"):
        rel.record(lost=-1)
    assert rel.record(lost=0, recover_s=1.23456).recover_s == 1.235


def test_report_marks_loss_failure_and_missing_runs():
    ok = dict(passed=True, lost=0, duplicated=0, corrupted=0, recover_s=1.0, injected=1, seed=1, detail="")
    records = [dict(ok, scenario=s.id) for s in SCENARIOS]
    rows = report.summarize(records)
    assert all(r["ok"] for r in rows)
    assert "zero loss and zero corruption in every scenario" in report.render(rows, command="c", runs=1,
                                                                              wall_s=1.0, commit="x")
    lossy = report.summarize(records + [dict(ok, scenario="crash.sft", lost=2)])
    assert [r["id"] for r in lossy if not r["ok"]] == ["crash.sft"]
    failed = report.summarize(records + [dict(ok, scenario="crash.grpo", passed=False)])
    assert [r["id"] for r in failed if not r["ok"]] == ["crash.grpo"]
    missing = report.summarize(records[1:])
    assert [r["id"] for r in missing if not r["ok"]] == [SCENARIOS[0].id]
    assert "FAILED" in report.render(missing, command="c", runs=1, wall_s=None, commit="x")
