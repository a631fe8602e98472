"""KVG-Bench scoring: our vectorized scorer vs the official per-sample torch loop, side by side.

Bench: synthetic, official schema and per-category sizes (1,336 questions, 10 categories);
outputs: seeded adversarial texts that walk every official regex path. Checks that both produce
the identical metrics.json string, then reports wall time (median of --repeats runs) for

* official: tests/eval/official_reference.py (literal evaluate.py: get_bbox + one torch box_iou
  per sample, re-parsed for each of the 13 groups, as the official code does);
* ours (full): deepperception.eval.scoring.score: official metrics + strict parse + two
  2000-resample bootstrap CIs per group + the predictions table;
* ours (metrics only): the same call with 1 resample, i.e. parsing + vectorized IoU + aggregation.

Run: .venv/bin/python benchmarks/bench_scoring.py [--repeats 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "eval"))

import official_reference as ref  # noqa: E402
import torch  # noqa: E402

from deepperception.eval.scoring import score  # noqa: E402
from deepperception.eval.synthetic import make_bench, make_outputs  # noqa: E402


def _time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    bench = make_bench(seed=args.seed)
    outputs = make_outputs(bench, seed=args.seed)
    rows = bench.select(["question_id", "category", "answer"]).to_pylist()
    temp = {r["question_id"]: ref.inference_temp_record(r, outputs[r["question_id"]]) for r in rows}

    t_off, off_json = _time(lambda: ref.official_metrics_json(rows, temp), args.repeats)
    t_full, full = _time(lambda: score(bench, outputs), args.repeats)
    t_min, fast = _time(lambda: score(bench, outputs, n_resamples=1), args.repeats)
    same = json.dumps(full.metrics) == off_json == json.dumps(fast.metrics)

    print(f"questions: {bench.num_rows}, python {platform.python_version()}, torch {torch.__version__}, "
          f"repeats {args.repeats} (median)")
    print(f"match-pattern counts [none, #1..#8]: {full.pattern_counts['all']}")
    print(f"metrics.json identical to official: {same}")
    print(f"official per-sample loop     : {t_off:.3f} s")
    print(f"ours, metrics only           : {t_min:.3f} s  ({t_off / t_min:.1f}x)")
    print(f"ours, full (strict + 2x2000-resample CIs per group): {t_full:.3f} s")
    print(f"all Acc {full.metrics['all']['all']['Acc']:.6f}  IoU {full.metrics['all']['all']['IoU']:.6f}")
    if not same:
        raise SystemExit("PARITY FAILURE: metrics differ")


if __name__ == "__main__":
    main()
