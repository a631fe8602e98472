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
  model again for the failed items only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pyarrow as pa

from deepperception.errors import StageFailedError

N_EXAMPLES = 5


@dataclass(frozen=True)
class FailureSummary:
    """How many of ``total`` items failed, with the first few error messages (``id: error``)."""

    failed: int
    total: int
    examples: list[str] = field(default_factory=list)

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

    >>> s = summarize(["a", "b", "c"], [None, "HTTP 500", None])
    >>> (s.failed, s.total, s.examples)
    (1, 3, ['b: HTTP 500'])
    """
    if len(ids) != len(errors):
        raise ValueError(f"{len(ids)} ids but {len(errors)} error cells")
    bad = [f"{i}: {e}" for i, e in zip(ids, errors) if e]
    return FailureSummary(failed=len(bad), total=len(errors), examples=bad[:n_examples])


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
    if summary.good > 0 and summary.rate <= max_failure_rate:
        return
    why = ("no item succeeded" if summary.good == 0
           else f"{summary.rate:.1%} > max_failure_rate {max_failure_rate:.1%}")
    first = "; ".join(summary.examples) if summary.examples else "(no item to process)"
    raise StageFailedError(
        f"stage {stage}: {summary.failed} of {summary.total} items of {artifact} failed ({why}); "
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
