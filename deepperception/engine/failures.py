"""Per-item failures of a stage: how many are acceptable, how they are recorded, what is retried.

Model-backed stages (box labeling, CoT distillation) record an item that failed (HTTP error after
retries, a dead endpoint, an unparsable reply) as a row with an error string instead of failing
the batch. Committing such a table unconditionally poisons the store: a dead endpoint would give
a version whose every row failed, downstream stages would build empty datasets from it, and an
identical rerun would reuse all of that. So:

* ``enforce_failure_limit`` refuses a result with no good item, or whose failure rate passes the
  stage's ``max_failure_rate``: the caller raises before committing, so nothing is stored;
* ``FailureSummary.to_metadata`` is the manifest's ``failures`` entry, which marks a version
  with ``failed > 0`` as *partial* (the store never reuses it as is);
* ``good_rows`` picks the items of a partial earlier attempt worth keeping, so a rerun asks the
  model again for the failed items only;
* ``FailureBudget`` stops sending requests once the limit is passed: the stage fails anyway, and
  against a dead or unresponsive endpoint every further request only costs retries and timeouts
  (the paper profile: 288 images x 4 attempts x 120 s).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pyarrow as pa

from deepperception.errors import StageFailedError

N_EXAMPLES = 5
NOT_ATTEMPTED = "not attempted: "
"""Prefix of the error of an item ``FailureBudget`` skipped (not a failure of the item itself)."""


@dataclass(frozen=True)
class FailureSummary:
    """How many of ``total`` items failed, with the first few error messages (``id: error``);
    ``skipped`` of the failed ones were never attempted (the failure budget ran out)."""

    failed: int
    total: int
    examples: list[str] = field(default_factory=list)
    skipped: int = 0

    @property
    def good(self) -> int:
        return self.total - self.failed

    @property
    def rate(self) -> float:
        """Failed fraction; 1.0 for an empty result (nothing good came out of it)."""
        return self.failed / self.total if self.total else 1.0

    def to_metadata(self) -> dict[str, Any]:
        """The manifest's ``failures`` entry (the store's partial-version contract)."""
        return {"failed": self.failed, "total": self.total, "examples": list(self.examples)}


def summarize(ids: Sequence[Any], errors: Sequence[str | None], n_examples: int = N_EXAMPLES) -> FailureSummary:
    """Count the non-null ``errors`` and keep the first ``n_examples`` as ``"<id>: <error>"``.

    Skipped items (``NOT_ATTEMPTED``) count as failed but are no example: they say nothing about
    what went wrong.

    >>> s = summarize(["a", "b", "c"], [None, "HTTP 500", "not attempted: budget"])
    >>> (s.failed, s.skipped, s.total, s.examples)
    (2, 1, 3, ['b: HTTP 500'])
    """
    if len(ids) != len(errors):
        raise ValueError(f"{len(ids)} ids but {len(errors)} error cells")
    bad = [(i, e) for i, e in zip(ids, errors) if e]
    real = [f"{i}: {e}" for i, e in bad if not e.startswith(NOT_ATTEMPTED)]
    return FailureSummary(failed=len(bad), total=len(errors), examples=real[:n_examples],
                          skipped=len(bad) - len(real))


def summarize_table(table: pa.Table, id_column: str, error_column: str) -> FailureSummary:
    return summarize(table.column(id_column).to_pylist(), table.column(error_column).to_pylist())


def enforce_failure_limit(summary: FailureSummary, *, stage: str, artifact: str, max_failure_rate: float,
                          hint: str = "") -> None:
    """Raise ``StageFailedError`` when nothing succeeded or more than ``max_failure_rate`` failed.

    >>> enforce_failure_limit(FailureSummary(1, 40, ["x: HTTP 500"]), stage="label", artifact="labeled-images",
    ...                       max_failure_rate=0.05)
    >>> enforce_failure_limit(FailureSummary(3, 3, ["a: Connection error."]), stage="label",
    ...                       artifact="labeled-images", max_failure_rate=1.0)
    Traceback (most recent call last):
    ...
    deepperception.errors.StageFailedError: stage label: 3 of 3 items of labeled-images failed (no item succeeded); nothing was committed. First errors: a: Connection error.
    """
    if not 0.0 <= max_failure_rate <= 1.0:
        raise ValueError(f"max_failure_rate must be within 0..1, got {max_failure_rate}")
    if summary.good > 0 and summary.rate <= max_failure_rate and not summary.skipped:
        return
    if summary.skipped:
        why = f"more than max_failure_rate {max_failure_rate:.1%} allows; {summary.skipped} more not attempted"
    elif summary.good == 0:
        why = "no item succeeded"
    else:
        why = f"{summary.rate:.1%} > max_failure_rate {max_failure_rate:.1%}"
    first = "; ".join(summary.examples) if summary.examples else "(no item to process)"
    raise StageFailedError(
        f"stage {stage}: {summary.failed - summary.skipped} of {summary.total} items of {artifact} failed ({why}); "
        f"nothing was committed. First errors: {first}{hint}"
    )


def require_rows(table: pa.Table, *, stage: str, artifact: str) -> None:
    """An output table with no row is never worth committing: no consumer can use it, and a
    rerun would reuse it instead of recomputing."""
    if table.num_rows == 0:
        raise StageFailedError(
            f"stage {stage}: {artifact} would have 0 rows; nothing was committed (check the stage's input and config)")


def good_rows(previous: pa.Table | None, key: str, columns: Sequence[str],
              ok: Callable[[dict], bool]) -> dict[Any, dict]:
    """Rows of a partial earlier attempt worth keeping, by ``key``: those ``ok`` accepts, with
    only ``key`` and ``columns`` (not the image bytes).

    >>> prev = pa.table({"id": ["a", "b"], "box": [[1, 2, 3, 4], None], "label_error": [None, "HTTP 500"]})
    >>> good_rows(prev, "id", ["box", "label_error"], lambda r: r["label_error"] is None)
    {'a': {'id': 'a', 'box': [1, 2, 3, 4], 'label_error': None}}
    """
    if previous is None:
        return {}
    return {r[key]: r for r in previous.select([key, *columns]).to_pylist() if ok(r)}


class FailureBudget:
    """How many of ``total`` items may still fail before the stage is past ``max_failure_rate``
    (``None``: no limit). Thread-safe: items run on ``map_bounded``'s threads.

    >>> b = FailureBudget(10, 0.1)
    >>> b.record_failure(); b.exhausted
    False
    >>> b.record_failure(); b.exhausted
    True
    >>> b.skip_message()
    'not attempted: 2 items had already failed, more than max_failure_rate allows (1 of 10)'
    >>> FailureBudget(10, None).exhausted
    False
    """

    def __init__(self, total: int, max_failure_rate: float | None) -> None:
        self.total = total
        self.allowed = None if max_failure_rate is None else math.floor(max_failure_rate * total + 1e-9)
        self.failed = 0
        self._lock = threading.Lock()

    @property
    def exhausted(self) -> bool:
        return self.allowed is not None and self.failed > self.allowed

    def record_failure(self) -> None:
        with self._lock:
            self.failed += 1

    def skip_message(self) -> str:
        return (f"{NOT_ATTEMPTED}{self.failed} items had already failed, more than max_failure_rate allows "
                f"({self.allowed} of {self.total})")
