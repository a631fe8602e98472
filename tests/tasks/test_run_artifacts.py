"""What a run shows in the Prefect UI, read back from a real (test) Prefect API: progress bars
created on the run and updated from worker threads, and the parent run's report, metrics table
and artifact-version index (tasks/progress.py, tasks/reporting.py)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.context import get_run_context

from deepperception import progress as prog
from deepperception.report import EvalSummary, render_json, render_markdown
from deepperception.store import ArtifactStore, StoreSettings
from deepperception.store.stage import run_stage


def _artifacts(flow_run_id) -> dict:
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in arts}


def test_progress_bar_on_the_run_updated_from_worker_threads(prefect_harness):
    import tasks.progress  # noqa: F401 - installs the Prefect sink

    assert prog.get_sink() is tasks.progress.SINK
    assert not prog.progress("outside a run", 3).active  # no run, no artifact

    @flow
    def labels() -> str:
        with prog.progress("label-boxes", 40, unit="images", min_interval=0.0, min_fraction=0.1) as t:
            with ThreadPoolExecutor(4) as pool:  # threads without the run's context variables
                list(pool.map(lambda _: t.advance(), range(40)))
        assert t.active and t.updates >= 2
        return str(get_run_context().flow_run.id)

    run_id = labels()
    bar = _artifacts(run_id)["progress-label-boxes"]
    assert bar.type == "progress" and bar.data == 100.0
    assert bar.description == "label-boxes: 40/40 images (100.0 %) done"


def _summary(label: str, acc: float) -> EvalSummary:
    metrics = {g: {"all": {"Acc": acc, "IoU": 0.4, "Num": 10}} for g in ("all", "seen domain", "unseen domain")}
    return EvalSummary(label=label, checkpoint=f"{label}-checkpoint@1", bench="bench@2", evaluation=f"evaluation@{label}",
                       config_hash="c", code_version="0.1.0", metrics=metrics, cis={"all": {"lo": acc - 0.1, "hi": acc + 0.1}},
                       strict={"all": {"Acc": acc, "parse_rate": 1.0, "official_hits_outside_answer": 0}})


def test_parent_run_carries_report_metrics_and_every_version(prefect_harness, tmp_path):
    from tasks.reporting import METRICS_KEY, REPORT_KEY, VERSIONS_KEY, publish_run_artifacts

    uri = str(tmp_path / "store")
    store = ArtifactStore(StoreSettings(uri=uri))
    # Committed before the run (outside any flow): the run reuses it.
    old, _ = run_stage(store, "entities", "mine", {"n": 1}, {}, lambda w: (w.write_json("e.json", {}), {})[1])
    summaries = [_summary("sft", 0.5), _summary("grpo", 0.625)]

    @flow(name="parent")
    def parent() -> str:
        def produce(w):
            w.write_bytes("report.md", render_markdown(summaries, {"profile": "toy"}).encode())
            w.write_json("report.json", render_json(summaries, {"profile": "toy"}))
            return {}

        report, _ = run_stage(store, "report", "report", {"x": 1}, {"entities": old}, produce)
        # No store_uri: found from the report's location, as reproduce's result gives it.
        ids = publish_run_artifacts({"report": str(report), "report_markdown": store.location(report, "report.md"),
                                     "artifacts": {"entities": str(old)}})
        assert set(ids) == {REPORT_KEY, METRICS_KEY, VERSIONS_KEY}
        return str(get_run_context().flow_run.id)

    run_id = parent()
    arts = _artifacts(run_id)
    report = store.latest("report")
    assert arts[REPORT_KEY].type == "markdown" and arts[REPORT_KEY].data == store.read_bytes(report, "report.md").decode()
    table = json.loads(arts[METRICS_KEY].data)
    assert [(r["arm"], r["Acc@0.5 %"], r["95% CI"]) for r in table] == [
        ("CoT-SFT", 50.0, "[40.00, 60.00]"), ("CoT-SFT+GRPO", 62.5, "[52.50, 72.50]")]
    index = arts[VERSIONS_KEY].data
    assert "1 new, 1 reused" in index
    assert f"`{report}`" in index and f"`{old}`" in index
    assert f"`{store.location(report)}`" in index and f"`{store.location(old)}`" in index
    assert f"/runs/flow-run/{run_id})" in index  # the report row links to the run that committed it
