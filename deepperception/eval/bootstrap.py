"""Percentile bootstrap CIs for per-group accuracy, and a paired bootstrap for run comparison.

KVG-Bench categories have 83-251 questions, so a 2-point difference in one category is well
inside sampling noise; every number we report therefore carries a 95% interval. Resampling is
vectorized (one ``(B, n)`` index draw per group) and seeded per group from ``(seed, crc32(group
name))``, so a group's interval does not change when other groups are added or removed.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from deepperception.errors import InputDataError
from deepperception.eval.groups import groups_from_domains

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
_MAX_CELLS = 8_000_000  # resample in chunks above this many (B x n) cells


def group_rng(seed: int, group: str) -> np.random.Generator:
    """The generator for one group: independent of which other groups exist.

    >>> float(group_rng(0, "car").random()) == float(group_rng(0, "car").random())
    True
    """
    return np.random.default_rng([int(seed), zlib.crc32(group.encode("utf-8"))])


def bootstrap_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``n_resamples`` means of ``values`` resampled with replacement (vectorized, chunked).

    >>> bootstrap_means(np.ones(5), 3, np.random.default_rng(0)).tolist()
    [1.0, 1.0, 1.0]
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    if n == 0:
        return np.full(n_resamples, np.nan)
    out = np.empty(n_resamples, dtype=np.float64)
    step = max(1, _MAX_CELLS // n)
    for s in range(0, n_resamples, step):
        b = min(step, n_resamples - s)
        idx = rng.integers(0, n, size=(b, n), dtype=np.int64 if n > 2**31 - 1 else np.int32)
        out[s : s + b] = v[idx].mean(axis=1)
    return out


@dataclass(frozen=True)
class CI:
    """A point estimate with its percentile-bootstrap interval."""

    estimate: float
    lo: float
    hi: float
    n: int
    n_resamples: int
    confidence: float
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def percentile_ci(
    values: np.ndarray,
    *,
    group: str = "all",
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> CI:
    """Percentile bootstrap CI of the mean of ``values`` (0/1 correctness gives accuracy).

    >>> ci = percentile_ci(np.array([1, 0] * 50), seed=1)
    >>> ci.estimate, 0.38 < ci.lo < 0.45, 0.55 < ci.hi < 0.62
    (0.5, True, True)
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return CI(float("nan"), float("nan"), float("nan"), 0, n_resamples, confidence, seed)
    boots = bootstrap_means(v, n_resamples, group_rng(seed, group))
    alpha = 1.0 - confidence
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return CI(float(v.mean()), float(lo), float(hi), int(v.size), n_resamples, confidence, seed)


def group_cis(
    values: np.ndarray,
    groups: Mapping[str, np.ndarray],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, dict]:
    """``{group: CI.to_dict()}`` for every group (each resampled within itself).

    >>> out = group_cis(np.array([1.0, 0.0, 1.0]), {"all": np.arange(3), "x": np.array([0])}, n_resamples=50)
    >>> out["x"]["lo"], out["x"]["hi"], out["all"]["n"]
    (1.0, 1.0, 3)
    """
    v = np.asarray(values, dtype=np.float64)
    return {
        g: percentile_ci(v[idx], group=g, n_resamples=n_resamples, confidence=confidence, seed=seed).to_dict()
        for g, idx in groups.items()
    }


@dataclass(frozen=True)
class PairedResult:
    """``delta = mean(a) - mean(b)`` over the same questions, its CI, and a two-sided bootstrap
    sign fraction ``p = min(1, 2 * min(P*(delta <= 0), P*(delta >= 0)))`` (a p-value-like
    number, not an exact test)."""

    n: int
    a: float
    b: float
    delta: float
    lo: float
    hi: float
    p_value: float
    n_resamples: int
    confidence: float
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired_delta(
    a: np.ndarray,
    b: np.ndarray,
    *,
    group: str = "all",
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> PairedResult:
    """Paired bootstrap of ``mean(a) - mean(b)``: questions are resampled together.

    >>> r = paired_delta(np.array([1, 1, 1, 0] * 25), np.array([0, 1, 1, 0] * 25), seed=0)
    >>> round(r.delta, 2), r.lo > 0, r.p_value < 0.01
    (0.25, True, True)
    """
    va = np.asarray(a, dtype=np.float64)
    vb = np.asarray(b, dtype=np.float64)
    if va.shape != vb.shape:
        raise ValueError(f"paired samples differ in length: {va.size} vs {vb.size}")
    n = int(va.size)
    if n == 0:
        nan = float("nan")
        return PairedResult(0, nan, nan, nan, nan, nan, nan, n_resamples, confidence, seed)
    d = va - vb
    boots = bootstrap_means(d, n_resamples, group_rng(seed, group))
    alpha = 1.0 - confidence
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2.0 * min(float(np.mean(boots <= 0)), float(np.mean(boots >= 0))))
    return PairedResult(n, float(va.mean()), float(vb.mean()), float(d.mean()), float(lo), float(hi), p,
                        n_resamples, confidence, seed)


def paired_bootstrap(
    pred_a: pd.DataFrame,
    pred_b: pd.DataFrame,
    *,
    column: str = "correct",
    category_order: list[str] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, PairedResult]:
    """Per-group paired difference A - B of ``column`` between two predictions tables.

    Rows are paired by ``question_id``; both runs must cover exactly the same questions with the
    same category and domain, otherwise :class:`InputDataError` lists the differing ids. Groups are
    ``all``, ``seen domain``, ``unseen domain`` and the categories (``category_order`` or first
    appearance in A).
    """
    for name, p in (("A", pred_a), ("B", pred_b)):
        missing = [c for c in ("question_id", "category", "domain", column) if c not in p.columns]
        if missing:
            raise InputDataError(f"run {name} predictions lack column(s) {missing}", stage="eval.compare", field=missing[0])
        dup = p["question_id"][p["question_id"].duplicated()].tolist()
        if dup:
            raise InputDataError(f"run {name} has duplicate question ids {dup[:10]}", stage="eval.compare", field="question_id")
    ids_a = set(pred_a["question_id"])
    ids_b = set(pred_b["question_id"])
    if ids_a != ids_b:
        only_a = sorted(ids_a - ids_b)
        only_b = sorted(ids_b - ids_a)
        raise InputDataError(
            f"runs cover different questions: {len(only_a)} only in A (e.g. {only_a[:5]}), "
            f"{len(only_b)} only in B (e.g. {only_b[:5]})",
            stage="eval.compare",
            field="question_id",
        )
    b = pred_b.set_index("question_id").loc[pred_a["question_id"]]
    for col in ("category", "domain"):
        diff = np.flatnonzero(pred_a[col].to_numpy() != b[col].to_numpy())
        if diff.size:
            qids = pred_a["question_id"].to_numpy()[diff[:5]].tolist()
            raise InputDataError(f"runs disagree on {col} for {diff.size} question(s), e.g. {qids}",
                                 stage="eval.compare", field=col)
    groups = groups_from_domains(pred_a["category"].to_numpy(), pred_a["domain"].to_numpy(), category_order)
    va = pred_a[column].to_numpy(dtype=np.float64)
    vb = b[column].to_numpy(dtype=np.float64)
    return {
        g: paired_delta(va[idx], vb[idx], group=g, n_resamples=n_resamples, confidence=confidence, seed=seed)
        for g, idx in groups.items()
    }
