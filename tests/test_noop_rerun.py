"""An unchanged `reproduce` is answered from the run record, without Prefect (deepperception/plan.py).

The versions here are real commits in a real local store (a few bytes each), so every check the
shortcut makes (committed, intact, complete) runs against what the store actually holds; the CLI
tests put a sentinel in place of the Prefect server so a shortcut that still reached it fails.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from deepperception import plan
from deepperception.config import load_config
from deepperception.store import ArtifactStore


def _commit(store: ArtifactStore, name: str, payload: int, metadata: dict | None = None):
    with store.plan(name, "test", {"payload": payload}, {}) as w:
        w.write_table(pa.table({"x": [payload]}))
        w.write_json("info.json", {"payload": payload})
        if name == "report":
            w.write_bytes("report.md", b"# report\n")
            w.write_json("report.json", {})
        return w.commit(metadata or {})


def _run(store: ArtifactStore, *, partial: bool = False) -> dict:
    """A reproduce-shaped result over committed versions."""
    report = _commit(store, "report", 1)
    data = _commit(store, "sft-dataset", 2, {"failures": {"failed": 1, "total": 4}} if partial else None)
    return {"report": str(report), "report_markdown": "ignored", "report_json": "ignored",
            "artifacts": {"sft_dataset": str(data), "evaluation_cot_sft": str(_commit(store, "evaluation", 3))}}


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore.from_uri(str(tmp_path / "store"))


@pytest.fixture
def toy():
    return load_config("toy", None, [])


def test_recorded_run_is_answered_with_the_same_refs_and_report_locations(store, toy):
    result = _run(store)
    key = plan.write_record(store, toy, result)
    done = plan.committed_run(toy, store)
    assert done is not None and done.key == key
    assert done.result["report"] == result["report"] and done.result["artifacts"] == result["artifacts"]
    report = done.result["report"]
    assert done.result["report_markdown"].endswith("report.md") and report.split("@")[1] in done.result["report_json"]


def test_the_record_lives_in_an_s3_store_too(s3_store_uri, toy, tmp_path):
    from deepperception.store import StoreSettings

    uri, endpoint = s3_store_uri
    store = ArtifactStore(StoreSettings(uri=uri, s3_endpoint_url=endpoint, cache_dir=str(tmp_path / "cache")))
    result = _run(store)
    assert plan.committed_run(toy, store) is None
    plan.write_record(store, toy, result)
    done = plan.committed_run(toy, store)
    assert done is not None and done.result["report_markdown"].startswith("s3://")
    store.fs.delete_dir(f"{store.root}/{result['artifacts']['evaluation_cot_sft'].replace('@', '/')}")
    assert plan.committed_run(toy, store) is None


def test_no_record_another_config_or_another_store_runs_the_flow(store, toy, tmp_path):
    assert plan.committed_run(toy, store) is None  # never recorded
    plan.write_record(store, toy, _run(store))
    changed = load_config("toy", None, ["evaluation.max_new_tokens=7"])
    assert plan.committed_run(changed, store) is None
    other = ArtifactStore.from_uri(str(tmp_path / "other"))
    assert plan.committed_run(toy, other) is None


def test_the_code_version_is_part_of_the_key(store, toy, monkeypatch):
    plan.write_record(store, toy, _run(store))
    monkeypatch.setattr(plan, "code_version", lambda: "0.1.0+src.edited")
    assert plan.committed_run(toy, store) is None


@pytest.mark.parametrize("damage", ["delete-version", "truncate-file", "corrupt-record"])
def test_a_missing_or_damaged_version_or_record_runs_the_flow(store, toy, damage):
    result = _run(store)
    key = plan.write_record(store, toy, result)
    root = Path(store.root)
    ref = result["artifacts"]["sft_dataset"].replace("@", "/")
    if damage == "delete-version":
        (root / ref / "_manifest.json").unlink()
    elif damage == "truncate-file":
        info = next((root / ref).rglob("info.json"))
        info.write_bytes(info.read_bytes()[:-2])
    else:
        (root / plan.RECORDS_DIR / f"{key}.json").write_text("{not json")
    assert plan.committed_run(toy, store) is None


def test_a_partial_version_is_never_answered_from_the_record(store, toy):
    plan.write_record(store, toy, _run(store, partial=True))
    assert plan.committed_run(toy, store) is None


@pytest.mark.parametrize("setting", ["comparison.extra_benches=[{name: x, source: /b.parquet}]",
                                     "base_model.checkpoint=/ckpt"])
def test_runs_reading_outside_inputs_get_no_record(store, setting):
    cfg = load_config("toy", None, [setting])
    assert plan.ineligible_reason(cfg)
    assert plan.write_record(store, cfg, _run(store)) is None
    assert plan.committed_run(cfg, store) is None


# ---- the CLI: the shortcut must not reach Prefect; --force/--repair/--run-flow must ----------------

class _PrefectReached(Exception):
    pass


@pytest.fixture
def no_prefect(monkeypatch):
    import flows.reproduce
    from deepperception import prefect_server

    calls = []

    @contextlib.contextmanager
    def fake_api():
        calls.append("api")
        raise _PrefectReached()
        yield  # pragma: no cover

    monkeypatch.setattr(prefect_server, "prefect_api", fake_api)
    monkeypatch.setattr(flows.reproduce, "reproduce", lambda **kw: pytest.fail("the flow ran"))
    monkeypatch.delenv("DP_STORE_REPAIR", raising=False)
    return calls


def _cli(*args):
    from deepperception.cli import app

    try:
        return CliRunner().invoke(app, ["reproduce", "--profile", "toy", *args])
    finally:
        os.environ.pop("DP_STORE_REPAIR", None)  # --repair sets it for its in-process run


def test_cli_answers_an_unchanged_rerun_without_prefect(store, toy, no_prefect):
    result = _run(store)
    plan.write_record(store, toy, result)
    res = _cli("--store", store.uri)
    assert res.exit_code == 0, res.output
    assert no_prefect == []
    assert "nothing to run" in res.output and f"report artifact:   {result['report']}" in res.output


@pytest.mark.parametrize("flag", [["--force", "evaluate"], ["--repair"], ["--run-flow"], ["--set", "sft.seed=1"]])
def test_cli_runs_the_flow_when_asked_or_when_anything_changed(store, toy, no_prefect, flag):
    plan.write_record(store, toy, _run(store))
    res = _cli("--store", store.uri, *flag)
    assert no_prefect == ["api"], res.output  # the CLI's error handler turns the sentinel into exit 1
    assert "_PrefectReached" in res.output and "nothing to run" not in res.output


def test_cli_writes_the_record_after_a_flow_run(store, toy, monkeypatch):
    import flows.reproduce
    from deepperception import prefect_server
    from deepperception.prefect_server import ServerInfo

    result = _run(store)

    @contextlib.contextmanager
    def fake_api():
        yield ServerInfo(api_url="http://127.0.0.1:1/api", pid=None, log=None, pid_file=None)

    monkeypatch.setattr(prefect_server, "prefect_api", fake_api)
    monkeypatch.setattr(flows.reproduce, "reproduce", lambda **kw: result)
    assert plan.committed_run(toy, store) is None
    res = _cli("--store", store.uri)
    assert res.exit_code == 0, res.output
    done = plan.committed_run(toy, store)
    assert done is not None and done.result["artifacts"] == result["artifacts"]
