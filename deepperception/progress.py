"""Progress of long loops (labeling items, training steps, evaluation questions), reported to
whoever listens, without this package knowing who that is.

The library only counts: ``with progress("evaluate sft", total=len(rows), unit="questions") as t:
t.advance(len(batch))``. Where the counts go is a process-global *sink*: ``tasks.progress``
registers one that turns them into Prefect progress artifacts (the orchestrator's concern, so no
Prefect import here); with no sink every call is a no-op costing a lock and an addition.

Updates are throttled (at most one every ``min_interval`` seconds unless the fraction moved by
``min_fraction`` or the loop finished), so a tight loop of a million items sends about twenty
updates, not a million, and a slow one still shows movement every couple of seconds. A sink that
fails is logged once and then ignored: progress reporting must never fail the work it reports on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

__all__ = ["ProgressSink", "Tracker", "get_sink", "progress", "set_sink"]

log = logging.getLogger(__name__)


class ProgressSink(Protocol):
    """Receives a tracker's counts. ``start`` is called in the thread that created the tracker
    (e.g. a Prefect task's thread, whose run context it may read); ``update`` may come from any
    thread that advances it, never concurrently for one handle."""

    def start(self, what: str, done: int, total: int, unit: str) -> Any:
        """Begin showing a loop; the returned handle (None: not shown) is passed to ``update``."""

    def update(self, handle: Any, done: int, total: int, unit: str, final: bool) -> None:
        """Show new counts; ``final`` once the tracker is closed."""


_sink: ProgressSink | None = None
_sink_lock = threading.Lock()


def set_sink(sink: ProgressSink | None) -> ProgressSink | None:
    """Install ``sink`` for every tracker created from now on (None removes it); returns the previous one."""
    global _sink
    with _sink_lock:
        previous, _sink = _sink, sink
    return previous


def get_sink() -> ProgressSink | None:
    """The installed sink, or None."""
    return _sink


def percent(done: int, total: int) -> float:
    """Share done in percent, clamped to 0..100 (an empty loop is complete).

    >>> percent(3, 4), percent(0, 0), percent(7, 5)
    (75.0, 100.0, 100.0)
    """
    if total <= 0:
        return 100.0
    return max(0.0, min(100.0, 100.0 * done / total))


def describe(what: str, done: int, total: int, unit: str) -> str:
    """The one-line text a sink shows beside the bar.

    >>> describe("label-boxes", 37, 120, "images")
    'label-boxes: 37/120 images (30.8 %)'
    """
    return f"{what}: {done}/{total} {unit} ({percent(done, total):.1f} %)"


class Tracker:
    """Counts one loop's progress and forwards it, throttled, to the sink it was created with.

    Thread-safe: worker threads may ``advance`` concurrently; a publish already under way makes
    the others skip (the next advance or ``close`` catches up), so no thread waits on the sink.
    Also a context manager: leaving the block sends the final counts.
    """

    def __init__(self, what: str, total: int, *, done: int = 0, unit: str = "items",
                 sink: ProgressSink | None = None, min_interval: float = 2.0, min_fraction: float = 0.05,
                 clock=time.monotonic) -> None:
        self.what, self.total, self.unit = what, max(0, int(total)), unit
        self.done = max(0, int(done))
        self.min_interval, self.min_fraction, self._clock = min_interval, min_fraction, clock
        self.updates = 0  # how many times the sink was updated (tests and benchmarks read it)
        self._lock = threading.Lock()
        self._publishing = threading.Lock()
        self._sink = sink
        self._handle = None
        self._closed = False
        self._last_t = clock()
        self._last_done = self.done
        if sink is not None:
            try:
                self._handle = sink.start(what, self.done, self.total, unit)
            except Exception:  # noqa: BLE001 - reporting must not fail the work
                log.warning("progress sink failed to start %r; not reporting it", what, exc_info=True)
                self._handle = None
        if self._handle is None:
            self._sink = None

    @property
    def active(self) -> bool:
        """Whether a sink shows this tracker (False: every call is a cheap no-op)."""
        return self._sink is not None

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units done; publish if the throttle allows."""
        with self._lock:
            self.done = min(self.done + int(n), self.total) if self.total else self.done + int(n)
            if self._sink is None or self._closed:
                return
            now = self._clock()
            due = (self.done >= self.total or now - self._last_t >= self.min_interval
                   or (self.total and (self.done - self._last_done) / self.total >= self.min_fraction))
            if not due:
                return
        self._publish(final=False)

    def close(self) -> None:
        """Send the final counts (once); later advances are counted but not sent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._sink is not None:
            with self._publishing:  # wait for an update in flight: the final one must come last
                self._send(final=True)

    def _publish(self, final: bool) -> None:
        if not self._publishing.acquire(blocking=False):
            return
        try:
            self._send(final)
        finally:
            self._publishing.release()

    def _send(self, final: bool) -> None:
        with self._lock:
            done, self._last_done, self._last_t = self.done, self.done, self._clock()
        sink = self._sink
        if sink is None:
            return
        try:
            sink.update(self._handle, done, self.total, self.unit, final)
            self.updates += 1
        except Exception:  # noqa: BLE001 - reporting must not fail the work
            log.warning("progress sink failed to update %r; not reporting it any more", self.what, exc_info=True)
            self._sink = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(what: str, total: int, *, done: int = 0, unit: str = "items", **throttle: float) -> Tracker:
    """A tracker for a loop of ``total`` units (``done`` already finished, e.g. resumed), reporting
    to the installed sink (a no-op tracker when there is none).

    >>> with progress("toy", 3) as t:
    ...     t.advance(2)
    >>> t.done, t.active
    (2, False)
    """
    return Tracker(what, total, done=done, unit=unit, sink=_sink, **throttle)
