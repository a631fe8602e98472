"""The Prefect UI shows what a run publishes, checked in headless Chromium against a real server
with the UI on (infra/ui/screenshots.py's own functions): the parent run's report renders
``Acc@0.5`` as text and ``<answer>`` visibly, its metrics table and version index are there, and
a stage's progress bar is on its run.

The run photographed is a small flow (a stage subflow with a progress bar, then a real report
version rendered by deepperception.report from two arms' metrics, then publish_run_artifacts), not
a full toy reproduction: ``make screenshots`` runs that one (minutes) into docs/screenshots/."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Slow like test_stack.py: it runs on the session's local stack (minutes to bring up alone; shared
# with test_stack.py in a full run, where this test adds ~25 s: one small flow and three pages).
pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("dp_ui_screenshots", REPO / "infra" / "ui" / "screenshots.py")
screenshots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(screenshots)

SAMPLE_RUN = r'''
import json, sys
from prefect import flow
from prefect.context import get_run_context
import tasks.progress  # installs the Prefect progress sink
from deepperception import progress as prog
from deepperception.report import EvalSummary, render_json, render_markdown
from deepperception.store import ArtifactStore, StoreSettings
from deepperception.store.stage import run_stage
from tasks.reporting import publish_run_artifacts

uri = sys.argv[1]
store = ArtifactStore(StoreSettings(uri=uri))

def arm(label, acc):
    m = {g: {"all": {"Acc": acc, "IoU": 0.4, "Num": 12}} for g in ("all", "seen domain", "unseen domain", "glider")}
    return EvalSummary(label=label, checkpoint=f"{label}-checkpoint@1", bench="bench@2", evaluation=f"evaluation@{label}",
                       config_hash="c0ffee", code_version="0.1.0", metrics=m, cis={"all": {"lo": acc - 0.1, "hi": acc + 0.1}},
                       strict={"all": {"Acc": acc, "parse_rate": 0.9, "official_hits_outside_answer": 1}})

@flow(name="ui-check-stage")
def stage():
    with prog.progress("evaluate sft", 12, unit="questions", min_interval=0.0) as t:
        for _ in range(12):
            t.advance()

@flow(name="ui-check-parent")
def parent():
    stage()
    arms = [arm("sft", 0.5), arm("grpo", 0.5833)]
    def produce(w):
        w.write_bytes("report.md", render_markdown(arms, {"profile": "toy"}).encode())
        w.write_json("report.json", render_json(arms, {"profile": "toy"}))
        return {}
    report, _ = run_stage(store, "report", "report", {"sample": 1}, {}, produce)
    publish_run_artifacts({"report": str(report), "artifacts": {}}, store_uri=uri)
    return str(get_run_context().flow_run.id)

print(json.dumps({"flow_run": parent()}))
'''


@pytest.fixture(scope="module")
def chromium():
    path = screenshots.find_chromium()
    if path is None:
        pytest.skip("no Chromium installed (Debian package `chromium`, or DP_CHROMIUM=<path>): the UI check needs one")
    pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is not installed")
    return path


@pytest.fixture(scope="module")
def ui_api(request, tmp_path_factory):
    """The API URL of a Prefect server with its UI on: the session's local stack (tests/infra/
    conftest.py; already up for test_stack.py, so no second server start, a minute on a busy
    2-core machine), else a server of our own."""
    try:
        yield request.getfixturevalue("local_stack").api_url
        return
    except pytest.skip.Exception:
        pass
    with screenshots.ui_server(tmp_path_factory.mktemp("ui-prefect")) as api:
        yield api


def test_parent_run_report_metrics_versions_and_a_progress_bar_render_in_the_ui(chromium, ui_api, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DP_STORE_"))}
    env.update(PREFECT_API_URL=ui_api, PREFECT_HOME=str(tmp_path / "client"), PREFECT_LOGGING_LEVEL="WARNING",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", SAMPLE_RUN, str(tmp_path / "store")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = json.loads(done.stdout.strip().splitlines()[-1])["flow_run"]
    # Three pages (each costs seconds on a busy machine); `make screenshots` takes them all.
    pages = ("report", "metrics", "progress")
    shots, problems = screenshots.shoot(ui_api, run_id, tmp_path / "shots", chromium, pages=pages)
    assert problems == []
    assert set(shots) == set(pages)
    for name, png in shots.items():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
