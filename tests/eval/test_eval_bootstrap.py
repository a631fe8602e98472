"""Bootstrap CIs: coverage sanity, determinism, and the paired comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deepperception.errors import InputDataError
from deepperception.eval.bootstrap import paired_bootstrap, paired_delta, percentile_ci
from deepperception.eval.synthetic import make_bench, make_outputs
from deepperception.eval.scoring import score


def test_percentile_ci_coverage_is_near_nominal():
    rng = np.random.default_rng(123)
    p, n, trials = 0.35, 150, 300
    hits = 0
    for t in range(trials):
        x = (rng.random(n) < p).astype(float)
        ci = percentile_ci(x, n_resamples=400, seed=t)
        hits += ci.lo <= p <= ci.hi
    assert 0.90 <= hits / trials <= 0.99, hits / trials


def test_ci_width_shrinks_with_n():
    small = percentile_ci(np.array([1, 0] * 25), seed=0)
    big = percentile_ci(np.array([1, 0] * 500), seed=0)
    assert (big.hi - big.lo) < (small.hi - small.lo) / 3


def test_deterministic_with_seed_and_independent_of_other_groups():
    x = np.array([1, 0, 0, 1, 1, 0, 1] * 20, dtype=float)
    assert percentile_ci(x, group="car", seed=5) == percentile_ci(x, group="car", seed=5)
    assert percentile_ci(x, group="car", seed=5) != percentile_ci(x, group="car", seed=6)
    bench = make_bench({"car": 40, "dog": 30, "bird": 20}, seed=1)
    out = make_outputs(bench, seed=1)
    kw = dict(seen_categories=["car", "bird"], n_resamples=300, seed=9)
    a = score(bench, out, all_categories=["car", "dog", "bird"], **kw)
    b = score(bench, out, all_categories=["car", "dog", "bird"], **kw)
    c = score(bench, out, all_categories=["bird", "car", "dog"], **kw)
    assert a.cis == b.cis
    assert a.cis["car"] == c.cis["car"]  # reordering groups does not change a group's interval
    for g, ci in a.cis.items():
        off = ci["official"]
        assert off["lo"] <= off["estimate"] <= off["hi"]
        assert off["estimate"] == a.metrics[g]["all"]["Acc"]


def test_bootstrap_on_full_bench_matches_a_per_resample_loop(monkeypatch):
    # Correctness only; the timing lives in benchmarks/bench_wallclock.py (see benchmarks/RESULTS.md).
    from deepperception.eval import bootstrap

    x = (np.random.default_rng(0).random(1336) < 0.5).astype(float)
    ci = percentile_ci(x, n_resamples=2000)
    rng = bootstrap.group_rng(0, "all")
    loop = [x[rng.integers(0, x.size, size=x.size, dtype=np.int32)].mean() for _ in range(2000)]
    lo, hi = np.quantile(loop, [0.025, 0.975])
    assert (ci.estimate, ci.n, ci.n_resamples) == (x.mean(), 1336, 2000)
    assert ci.lo == pytest.approx(lo, rel=1e-12) and ci.hi == pytest.approx(hi, rel=1e-12)
    monkeypatch.setattr(bootstrap, "_MAX_CELLS", 7 * x.size)  # chunked resampling: the same interval
    assert percentile_ci(x, n_resamples=2000) == ci


def _preds(qids, cats, domains, correct):
    return pd.DataFrame({"question_id": qids, "category": cats, "domain": domains, "correct": correct})


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one():
    n = 400
    rng = np.random.default_rng(0)
    qids = [f"q{i}" for i in range(n)]
    cats = ["car"] * 200 + ["dog"] * 200
    doms = ["seen"] * 200 + ["unseen"] * 200
    a = rng.random(n) < 0.5
    b = a.copy()
    flip = rng.choice(n, 60, replace=False)  # B loses 60 questions A got right or wrong...
    b[flip] = False
    pa_, pb_ = _preds(qids, cats, doms, a), _preds(qids, cats, doms, b)
    res = paired_bootstrap(pa_, pb_.sample(frac=1, random_state=1), n_resamples=1000)  # order must not matter
    assert list(res) == ["all", "seen domain", "unseen domain", "car", "dog"]
    r = res["all"]
    assert r.delta == pytest.approx(a.mean() - b.mean())
    assert r.delta > 0 and r.lo > 0 and r.p_value < 0.01
    same = paired_bootstrap(pa_, pa_, n_resamples=200)["all"]
    assert (same.delta, same.lo, same.hi, same.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_is_tighter_than_unpaired_for_correlated_runs():
    rng = np.random.default_rng(1)
    a = (rng.random(500) < 0.6).astype(float)
    b = a.copy()
    b[rng.choice(500, 20, replace=False)] = 0
    r = paired_delta(a, b, n_resamples=1000)
    ca, cb = percentile_ci(a, n_resamples=1000), percentile_ci(b, n_resamples=1000)
    assert (r.hi - r.lo) < 0.5 * ((ca.hi - ca.lo) + (cb.hi - cb.lo)) / 2


def test_paired_bootstrap_refuses_different_question_sets():
    a = _preds(["q1", "q2", "q3"], ["car"] * 3, ["seen"] * 3, [True, False, True])
    b = _preds(["q1", "q2", "q4"], ["car"] * 3, ["seen"] * 3, [True, False, True])
    with pytest.raises(InputDataError, match=r"only in A \(e.g. \['q3'\]\).*only in B \(e.g. \['q4'\]\)"):
        paired_bootstrap(a, b)
    c = _preds(["q1", "q2", "q3"], ["car", "dog", "car"], ["seen"] * 3, [True, False, True])
    with pytest.raises(InputDataError, match="disagree on category"):
        paired_bootstrap(a, c)
