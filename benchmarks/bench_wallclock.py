"""Wall-clock figures that used to be asserted inside tests (`< 2 s`, `< 1 s`), measured here instead.

Tests assert correctness only (tests/model/test_tiny_model.py::test_build_is_deterministic,
tests/eval/test_eval_bootstrap.py::test_bootstrap_on_full_bench_matches_a_per_resample_loop);
timing depends on the machine and its load, so it is recorded in benchmarks/RESULTS.md with
this command instead of failing a test on a busy CI runner.

* tiny checkpoint build: ``build_tiny_qwen2vl(dir, tiny_corpus(), seed=3)`` after a warm-up build
  (imports), median of --repeats; every build is checked byte-identical to the first.
* bootstrap on the full bench size: ``percentile_ci`` (vectorized ``(B, n)`` draws) side by side
  with a per-resample Python loop over the same generator (n=1,336, B=2,000); both intervals are
  checked equal (to 1e-12 relative) before timing is reported.

Run: .venv/bin/python benchmarks/bench_wallclock.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), runs


def bench_tiny_build(repeats: int) -> dict:
    from deepperception.model.synthetic import tiny_corpus
    from deepperception.model.tiny import build_tiny_qwen2vl

    corpus = tiny_corpus()
    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        build_tiny_qwen2vl(base / "warm", corpus[:4])  # imports, first-call costs
        first = build_tiny_qwen2vl(base / "ref", corpus, seed=3)
        ref = (first / "model.safetensors").read_bytes()
        count = iter(range(repeats))

        def build():
            out = build_tiny_qwen2vl(base / f"r{next(count)}", corpus, seed=3)
            assert (out / "model.safetensors").read_bytes() == ref, "tiny build is not deterministic"

        med, runs = _median_time(build, repeats)
    return {"median_s": med, "runs_s": runs}


def bench_bootstrap(repeats: int) -> dict:
    from deepperception.eval import bootstrap

    x = (np.random.default_rng(0).random(1336) < 0.5).astype(float)

    def ours():
        return bootstrap.percentile_ci(x, n_resamples=2000)

    def loop():
        rng = bootstrap.group_rng(0, "all")
        means = [x[rng.integers(0, x.size, size=x.size, dtype=np.int32)].mean() for _ in range(2000)]
        return np.quantile(means, [0.025, 0.975])

    ci, (lo, hi) = ours(), loop()
    assert abs(ci.lo - lo) <= 1e-12 * abs(lo) and abs(ci.hi - hi) <= 1e-12 * abs(hi), (ci, lo, hi)
    ours_med, ours_runs = _median_time(ours, repeats)
    loop_med, loop_runs = _median_time(loop, repeats)
    return {"ours_median_s": ours_med, "ours_runs_s": ours_runs, "loop_median_s": loop_med,
            "loop_runs_s": loop_runs, "ci": (ci.lo, ci.hi)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch

    print(f"python {platform.python_version()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"repeats {args.repeats}")
    t = bench_tiny_build(args.repeats)
    print(f"tiny checkpoint build (seed 3, deterministic: yes): median {t['median_s']:.3f} s, "
          f"runs {', '.join(f'{r:.3f}' for r in t['runs_s'])}")
    b = bench_bootstrap(args.repeats)
    print(f"bootstrap n=1336 B=2000 (identical CI {b['ci'][0]:.6f}..{b['ci'][1]:.6f}): "
          f"ours median {b['ours_median_s']:.4f} s, per-resample loop median {b['loop_median_s']:.4f} s, "
          f"speedup {b['loop_median_s'] / b['ours_median_s']:.1f}x")


if __name__ == "__main__":
    main()
