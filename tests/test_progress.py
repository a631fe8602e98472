"""deepperception.progress: counting without Prefect, throttled, thread-safe, never failing the work;
and the library's hooks (labeling items, training steps) reach whatever sink is installed."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import pytest

from deepperception import progress as prog


class RecordingSink:
    """Records every call; fails the test if one handle is updated from two threads at once."""

    def __init__(self, fail_update: bool = False) -> None:
        self.started: list[tuple] = []
        self.updates: list[tuple] = []
        self.fail_update = fail_update
        self._busy = threading.Lock()
        self.overlaps = 0

    def start(self, what, done, total, unit):
        self.started.append((what, done, total, unit))
        return len(self.started)

    def update(self, handle, done, total, unit, final):
        if not self._busy.acquire(blocking=False):
            self.overlaps += 1
            return
        try:
            if self.fail_update:
                raise ConnectionError("API down")
            self.updates.append((handle, done, total, final))
        finally:
            self._busy.release()


@pytest.fixture
def sink():
    s = RecordingSink()
    previous = prog.set_sink(s)
    yield s
    prog.set_sink(previous)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_without_a_sink_a_tracker_only_counts():
    previous = prog.set_sink(None)  # tasks.progress may have installed Prefect's in this session
    try:
        with prog.progress("x", 10) as t:
            t.advance(4)
    finally:
        prog.set_sink(previous)
    assert (t.done, t.active, t.updates) == (4, False, 0)


def test_a_tight_loop_sends_about_one_update_per_five_percent_and_the_final_one(sink):
    clock = Clock()  # time stands still: only the fraction can make an update due
    with prog.Tracker("label-boxes", 1000, unit="images", sink=sink, clock=clock) as t:
        for _ in range(1000):
            t.advance()
    assert sink.started == [("label-boxes", 0, 1000, "images")]
    assert 19 <= len(sink.updates) <= 22
    assert sink.updates[-1] == (1, 1000, 1000, True)
    assert [u[1] for u in sink.updates] == sorted(u[1] for u in sink.updates)


def test_a_slow_loop_updates_once_the_interval_passed(sink):
    clock = Clock()
    t = prog.Tracker("train-sft", 1000, unit="steps", sink=sink, clock=clock, min_interval=2.0)
    t.advance()  # 0.1 % after 0 s: not due
    clock.t = 1.0
    t.advance()
    assert sink.updates == []
    clock.t = 2.5
    t.advance()
    assert sink.updates == [(1, 3, 1000, False)]
    t.close()
    t.close()  # once
    assert sink.updates[-1] == (1, 3, 1000, True) and len(sink.updates) == 2


def test_resumed_counts_start_where_the_loop_was(sink):
    with prog.progress("evaluate sft", 50, done=20, unit="questions") as t:
        t.advance(30)
    assert sink.started == [("evaluate sft", 20, 50, "questions")]
    assert sink.updates[-1] == (1, 50, 50, True)


def test_threads_advancing_together_are_all_counted_and_never_overlap_the_sink(sink):
    t = prog.Tracker("label-boxes", 8 * 500, sink=sink, min_interval=0.0, min_fraction=0.0)

    def work():
        for _ in range(500):
            t.advance()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    t.close()
    assert t.done == 4000 and sink.overlaps == 0
    assert sink.updates[-1] == (1, 4000, 4000, True)


def test_a_failing_sink_is_logged_once_and_the_work_goes_on(caplog):
    s = RecordingSink(fail_update=True)
    t = prog.Tracker("evaluate", 10, sink=s, min_interval=0.0)
    with caplog.at_level(logging.WARNING, logger="deepperception.progress"):
        for _ in range(10):
            t.advance()
        t.close()
    assert t.done == 10 and not t.active
    assert sum("failed to update" in r.message for r in caplog.records) == 1


def test_labeling_reports_every_image(sink):
    from deepperception.domain import SyntheticDomainConfig, entities_to_table, mine_entities
    from deepperception.engine.collection import CollectionConfig, collect_images
    from deepperception.engine.labeling import OracleLabeler, label_table

    entities = entities_to_table(mine_entities(SyntheticDomainConfig(entities_per_category=2, seed=3)))
    images = collect_images(entities, CollectionConfig(images_per_entity=2, image_size=48, seed=1))
    result = label_table(images, OracleLabeler())
    n = images.num_rows
    assert result.data.num_rows == n
    assert sink.started == [("label-boxes", 0, n, "images")]
    assert sink.updates[-1] == (1, n, n, True)


def test_training_callback_reports_optimizer_steps(sink):
    from deepperception.training.common import make_progress_callback

    cb = make_progress_callback("train-grpo")
    state = SimpleNamespace(is_world_process_zero=True, max_steps=8, global_step=2)  # resumed at step 2
    cb.on_train_begin(None, state, None)
    for step in range(3, 9):
        state.global_step = step
        cb.on_step_end(None, state, None)
    cb.on_train_end(None, state, None)
    assert sink.started == [("train-grpo", 2, 8, "steps")]
    assert sink.updates[-1] == (1, 8, 8, True)
    other = make_progress_callback("train-sft")  # a non-main process of a launch reports nothing
    other.on_train_begin(None, SimpleNamespace(is_world_process_zero=False, max_steps=8, global_step=0), None)
    assert len(sink.started) == 1
