"""Shard work of a long stage: which shards are left, the job each one runs, and their sum.

A long stage (labeling, composition, distillation, RL filtering) is split into shards that are
pure functions of the stage's version: shard ``i`` of labeling is part ``i`` of the images table,
shard ``i`` of composition the ``i``-th block of planned composites. Each shard job runs anywhere
(a thread, a Ray worker on another machine) with only its :class:`ShardJob`: it opens the store by
URI, reads what it needs, and commits its output as a shard record of the version being built
(:mod:`deepperception.store.shards`). The stage then lists every shard's files in the version's
manifest. A rerun after a crash finds the finished shards and runs only the others; a shard that
finished with failed items is run again, keeping its good items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from deepperception.engine.common import merge_counts
from deepperception.store import ArtifactRef, ArtifactStore


@dataclass(frozen=True)
class ShardJob:
    """Everything one shard needs, picklable and small (it travels to Ray workers).

    ``store`` is the store's location (absolute path or s3:// URI; endpoint and credentials come
    from the worker's own DP_STORE_*/AWS_* environment, never from the job)."""

    store: str
    out: str
    """``name@version`` of the version being built."""
    unit: str
    index: int
    spec: dict[str, Any] = field(default_factory=dict)
    redo: bool = False
    """An earlier record of this shard had failed items: keep its good ones, retry the rest, replace it."""

    @property
    def out_ref(self) -> ArtifactRef:
        return ArtifactRef.parse(self.out)

    def open_store(self) -> ArtifactStore:
        return ArtifactStore.from_uri(self.store)


def store_location(store: ArtifactStore) -> str:
    """How a worker finds ``store``: the absolute root of a local store (a relative ``.dp-store``
    would resolve against each worker's own working directory), the URI of an S3 one."""
    return store.uri if store.settings.is_s3 else store.root


def record_failed(record) -> int:
    """Items of a finished shard that failed (they are retried by the next run of the stage)."""
    return int(((record.metadata or {}).get("failures") or {}).get("failed", 0) or 0)


@dataclass
class ShardPlan:
    """The shards of one stage run: those already finished and the jobs still to run."""

    n_shards: int
    done: dict[int, Any]
    jobs: list[ShardJob]

    @property
    def resumed(self) -> int:
        return len(self.done) - sum(1 for j in self.jobs if j.redo)


def plan_shards(store: ArtifactStore, out: ArtifactRef, unit: str, n_shards: int,
                spec: Callable[[int], dict[str, Any]]) -> ShardPlan:
    """Jobs for the shards of ``out`` that are missing, or finished with failed items."""
    done = store.completed_shards(out, unit)
    for i in [i for i in done if i >= n_shards]:  # cannot happen for one version; never adopt them
        done.pop(i)
    where = store_location(store)
    jobs = [ShardJob(where, str(out), unit, i, spec(i), redo=i in done)
            for i in range(n_shards) if i not in done or record_failed(done[i])]
    return ShardPlan(n_shards, done, jobs)


def gather(plan: ShardPlan, results: list) -> list:
    """Every shard's record in index order: the fresh results over the earlier ones."""
    records = dict(plan.done)
    records.update({r.index: r for r in results})
    missing = [i for i in range(plan.n_shards) if i not in records]
    if missing:
        raise RuntimeError(f"shards {missing} produced no record")
    return [records[i] for i in range(plan.n_shards)]


def merged_metadata(records: list, key: str) -> Any:
    """Sum one metadata entry over shard records (counts add, histograms add element-wise).

    >>> from types import SimpleNamespace as R
    >>> merged_metadata([R(metadata={"failures": {"failed": 1, "total": 4}}), R(metadata={"failures": {"failed": 0, "total": 3}})], "failures")
    {'failed': 1, 'total': 7}
    """
    out = None
    for r in records:
        out = merge_counts(out, (r.metadata or {}).get(key))
    return out
