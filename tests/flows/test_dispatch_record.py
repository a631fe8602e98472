"""The parent waits for a dispatched child's result record: Prefect runs on-completion hooks after
the child is marked Completed, so the record can appear a moment after the state does."""

import json
import threading
import time

from deepperception.store import ArtifactStore, StoreSettings
from flows.dispatch import RUNS_DIR, _wait_for_record


def test_a_record_written_after_completion_is_waited_for(tmp_path):
    store = ArtifactStore(StoreSettings(uri=str(tmp_path / "store")))
    path = tmp_path / "store" / RUNS_DIR / "run-1.json"

    def hook_runs_late():
        time.sleep(1.0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"flow": "evaluate-checkpoint", "result": "evaluation@abc"}))

    t = threading.Thread(target=hook_runs_late)
    t.start()
    t0 = time.monotonic()
    record = _wait_for_record(store, "run-1", wait_s=30)
    t.join()
    assert record == {"flow": "evaluate-checkpoint", "result": "evaluation@abc"}
    assert 0.9 <= time.monotonic() - t0 < 30


def test_a_record_that_never_comes_gives_none_after_the_wait(tmp_path):
    store = ArtifactStore(StoreSettings(uri=str(tmp_path / "store")))
    t0 = time.monotonic()
    assert _wait_for_record(store, "missing", wait_s=1.0) is None
    assert 1.0 <= time.monotonic() - t0 < 5
