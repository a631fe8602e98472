"""A commit is announced: listeners hear every committed version (never a failed or lost one), a
failing listener cannot fail the commit, and inside a Prefect run the announcement is a Prefect
event the API stores (what prefect.yaml's evaluate-on-publish trigger listens for)."""

from __future__ import annotations

import logging
import time

import pytest

from deepperception.errors import AlreadyCommittedError
from deepperception.store import ArtifactStore, StoreSettings
from deepperception.store.events import Commit, add_commit_listener, remove_commit_listener


@pytest.fixture
def heard():
    got: list[Commit] = []
    add_commit_listener(got.append)
    yield got
    remove_commit_listener(got.append)


def _commit(store: ArtifactStore, name: str, config: dict):
    with store.plan(name, "test", config, {}) as w:
        w.write_json("x.json", config)
        return w.commit({"n": 1})


def test_listeners_hear_each_commit_with_its_manifest_and_store(tmp_path, heard):
    store = ArtifactStore(StoreSettings(uri=str(tmp_path / "s")))
    ref = _commit(store, "sft-checkpoint", {"a": 1})
    assert [c.ref for c in heard] == [ref]
    assert heard[0].manifest.stage == "test" and heard[0].manifest.metadata == {"n": 1}
    assert heard[0].store_uri == store.uri

    # A writer that loses the race (the version is already committed) announces nothing.
    loser = store.plan("sft-checkpoint", "test", {"a": 1}, {})
    with pytest.raises(AlreadyCommittedError):
        with loser:
            pass
    # A body that raises before commit announces nothing either.
    with pytest.raises(RuntimeError):
        with store.plan("sft-checkpoint", "test", {"a": 2}, {}) as w:
            w.write_json("x.json", {})
            raise RuntimeError("boom")
    assert len(heard) == 1


def test_a_failing_listener_is_logged_and_the_commit_stands(tmp_path, heard, caplog):
    def broken(commit):
        raise ValueError("listener down")

    add_commit_listener(broken)
    add_commit_listener(broken)  # registering twice is a no-op
    try:
        store = ArtifactStore(StoreSettings(uri=str(tmp_path / "s")))
        with caplog.at_level(logging.WARNING, logger="deepperception.store.events"):
            ref = _commit(store, "grpo-checkpoint", {"b": 1})
    finally:
        remove_commit_listener(broken)
    assert store.exists(ref) and [c.ref for c in heard] == [ref]  # later listeners still called
    failures = [r for r in caplog.records if "commit listener" in r.getMessage()]
    assert len(failures) == 1 and str(ref) in failures[0].getMessage()


def test_the_event_names_the_artifact_its_store_and_whether_a_parent_run_owns_it(tmp_path):
    from tasks.events import EVENT, commit_event

    store = ArtifactStore(StoreSettings(uri=str(tmp_path / "s")))
    ref = _commit(store, "sft-checkpoint", {"c": 1})
    manifest = store.manifest(ref)
    ev = commit_event(Commit(ref=ref, manifest=manifest, store_uri="rel/store"), "run-1", nested=False)
    assert ev["event"] == EVENT == "deepperception.artifact.committed"
    res = ev["resource"]
    assert res["prefect.resource.id"] == f"deepperception.artifact.sft-checkpoint.{ref.version}"
    assert res["deepperception.artifact.ref"] == str(ref) and res["deepperception.artifact.name"] == "sft-checkpoint"
    assert res["deepperception.store"].endswith("/rel/store") and res["deepperception.store"].startswith("/")
    assert res["deepperception.standalone"] == "true"
    assert ev["payload"]["stage"] == "test" and ev["payload"]["flow_run_id"] == "run-1"
    assert commit_event(Commit(ref=ref, manifest=manifest, store_uri="s3://b/p"), None, nested=True)[
        "resource"]["deepperception.standalone"] == "false"


def test_no_event_outside_a_prefect_run(tmp_path, monkeypatch):
    import tasks.events

    sent = []
    monkeypatch.setattr(tasks.events, "emit_event", lambda **kw: sent.append(kw))
    _commit(ArtifactStore(StoreSettings(uri=str(tmp_path / "s"))), "sft-checkpoint", {"d": 1})
    assert sent == []  # no run: nothing to send it to (Prefect would start a temporary server)


def test_a_commit_inside_a_run_reaches_the_api_as_an_event(prefect_harness, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    import tasks.common  # noqa: F401 - registers the listener, as every task module does
    from tasks.events import EVENT

    uri = str(tmp_path / "s")

    @flow(name="commit-child")
    def child() -> str:
        return str(_commit(ArtifactStore(StoreSettings(uri=uri)), "sft-checkpoint", {"nested": True}))

    @flow(name="commit-parent")
    def parent() -> tuple[str, str]:
        own = str(_commit(ArtifactStore(StoreSettings(uri=uri)), "grpo-checkpoint", {"nested": False}))
        return own, child()

    own, nested = parent()
    ids = {f"deepperception.artifact.{r.replace('@', '.')}": r for r in (own, nested)}
    flt = EventFilter(event=EventNameFilter(name=[EVENT]), resource=EventResourceFilter(id=list(ids)))
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(filter=flt, limit=50).events  # the server allows 50
            if len(events) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    by_ref = {e.resource["deepperception.artifact.ref"]: e for e in events}
    assert set(by_ref) == {own, nested}
    assert by_ref[own].resource["deepperception.standalone"] == "true"
    assert by_ref[nested].resource["deepperception.standalone"] == "false"
    assert by_ref[own].resource["deepperception.store"] == str((tmp_path / "s").resolve())
    assert by_ref[own].payload["stage"] == "test"
