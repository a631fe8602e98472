"""Adversarial model outputs: our linear-time parsers vs the official backtracking regexes.

Builds 1,336 outputs (the KVG-Bench size) from families that make the official `re` patterns
backtrack super-linearly ("(1," repeated, "[a, " repeated, many "<answer>" without a box, ...),
with lengths spread geometrically from 250 B to 20 KB, then reports

* ours: `score()` on a synthetic bench with these outputs (official metrics + strict parse +
  bootstrap CIs: the whole scoring stage), and the parsers alone (`official_parse`,
  `grpo_bbox`, `grpo_first_answer`, `grpo_format_match`, `strict_parse`) per family;
* official: `tests/eval/official_reference.get_bbox` (literal evaluate.py) on the outputs up to
  --official-max-len characters, one output at a time in a worker process that is killed after
  --cap seconds (so this script terminates); where it finishes, its box and pattern must equal
  ours (the script exits non-zero otherwise).

Run: .venv/bin/python benchmarks/bench_parsing.py [--official-max-len 600] [--cap 1.0]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import platform
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "eval"))

# Imported here, before any fork, so a restarted worker does not pay for importing torch again.
import official_reference as ref  # noqa: E402

from deepperception.eval.parsing import (  # noqa: E402
    NO_MATCH_BOX,
    OFFICIAL_BBOX_PATTERNS,
    _cast_groups,
    grpo_bbox,
    grpo_first_answer,
    grpo_format_match,
    official_bbox,
    official_parse,
)
from deepperception.eval.scoring import score  # noqa: E402
from deepperception.eval.strict import strict_parse  # noqa: E402
from deepperception.eval.synthetic import make_bench  # noqa: E402
from deepperception.eval.synthetic import make_outputs as synthetic_outputs  # noqa: E402

N_OUTPUTS = 1336


def _rep(unit: str, n: int, head: str = "", tail: str = "") -> str:
    return head + unit * max(1, (n - len(head) - len(tail)) // len(unit)) + tail


def _noise(n: int, seed: int) -> str:
    rng = random.Random(seed)
    toks = ["(", ")", "[", "]", ",", ", ", "1", "23", " ", "x", "\n", "<answer>", "</answer>", "."]
    weights = [8, 3, 4, 2, 8, 6, 6, 3, 4, 2, 1, 1, 1, 2]
    out: list[str] = []
    size = 0
    while size < n:
        t = rng.choices(toks, weights)[0]
        out.append(t)
        size += len(t)
    return "".join(out)


# name -> output of about n characters. The comment says which official regex suffers.
FAMILIES = {
    "(1,": lambda n, i: _rep("(1,", n),                                         # #3, #4: no box at all
    "(1, + box": lambda n, i: _rep("(1,", n, tail="(5,6),(7,8)"),               # #3 hits only after all of it
    "[a, ": lambda n, i: _rep("[a, ", n),                                       # #6
    "(1, 2) alone": lambda n, i: _rep(" then", n, head="<think>(1, 2)"),        # #4, #8: no second box
    "<answer> no box": lambda n, i: _rep("<answer>", n),                        # #1, answer helpers
    "<answer>(1,": lambda n, i: _rep("<answer>(1,", n),                         # #1, #3, #4
    "So the answer is (1,": lambda n, i: _rep("So the answer is (1,", n),       # #2
    "(1,\\n lines": lambda n, i: _rep("(1,\n", n),                              # many lines
    "[1, 2, 3, ": lambda n, i: _rep("[1, 2, 3, ", n),                           # #5, #6
    "(1, 2, 3, ": lambda n, i: _rep("(1, 2, 3, ", n),                           # #4, #7
    "</think><answer>": lambda n, i: _rep("</think><answer>", n, head="<think>"),  # format check
    "random tokens": lambda n, i: _noise(n, i),
}


def make_outputs(qids: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """question_id -> output, question_id -> family name (families cycle, lengths 250 B .. 20 KB)."""
    names = list(FAMILIES)
    outputs, family = {}, {}
    for i, q in enumerate(qids):
        name = names[i % len(names)]
        n = round(250 * math.exp(math.log(80) * i / (len(qids) - 1)))
        outputs[q] = FAMILIES[name](n, i)
        family[q] = name
    return outputs, family


def ours_parse(text: str):
    strict_parse(text)
    grpo_first_answer(text)
    grpo_format_match(text)
    return official_bbox(text), grpo_bbox(text)


def _worker(conn) -> None:
    while True:
        text = conn.recv()
        t = time.perf_counter()
        box, pattern = ref.get_bbox(text)
        conn.send(([float(v) for v in box], pattern, time.perf_counter() - t))


class Official:
    """ref.get_bbox in a child process, killed and restarted when one output exceeds ``cap`` seconds."""

    def __init__(self, cap: float):
        self.cap = cap
        self._start()

    def _start(self) -> None:
        self.conn, child = mp.Pipe()
        self.proc = mp.get_context("fork").Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()

    def __call__(self, text: str):
        self.conn.send(text)
        if self.conn.poll(self.cap):
            return self.conn.recv()
        self.proc.kill()
        self.proc.join()
        self._start()
        return None

    def close(self) -> None:
        self.proc.kill()
        self.proc.join()


def regex_parse(text: str):
    """The previous implementation: the official compiled regexes, last finditer hit of the first that hits."""
    for i, pattern in enumerate(OFFICIAL_BBOX_PATTERNS):
        last = None
        for last in pattern.finditer(text):
            pass
        if last is not None:
            return _cast_groups(last.groups()), i + 1, (last.start(1), last.end(4))
    return NO_MATCH_BOX, 0, None


def normal_outputs_section(repeats: int) -> None:
    """The 1,336 seeded outputs of bench_scoring.py: linear parsers vs the regexes they replace."""
    bench = make_bench(seed=0)
    texts = list(synthetic_outputs(bench, seed=0).values())

    def run(f):
        best = math.inf
        for _ in range(repeats):
            t = time.perf_counter()
            out = [f(x) for x in texts]
            best = min(best, time.perf_counter() - t)
        return best, out

    t_re, by_re = run(regex_parse)
    t_lin, by_lin = run(lambda x: tuple(official_parse(x).__dict__.values()))
    same = [repr(a) for a in by_re] == [repr(b) for b in by_lin]
    print(f"normal outputs (eval.synthetic.make_outputs seed 0, {len(texts)}): official regexes {t_re * 1000:.1f} ms, "
          f"linear {t_lin * 1000:.1f} ms (best of {repeats}); identical box/pattern/span: {same}")
    if not same:
        raise SystemExit("PARITY FAILURE on normal outputs")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official-max-len", type=int, default=600)
    ap.add_argument("--cap", type=float, default=1.0, help="seconds per output for the official parser")
    ap.add_argument("--repeats", type=int, default=5, help="repeats for the normal-outputs timing (best of)")
    args = ap.parse_args()
    normal_outputs_section(args.repeats)

    bench = make_bench(seed=0)
    qids = bench.column("question_id").to_pylist()
    outputs, family = make_outputs(qids)
    lengths = [len(t) for t in outputs.values()]
    print(f"python {platform.python_version()}; {len(outputs)} outputs, {sum(lengths) / 1e6:.2f} M chars, "
          f"lengths {min(lengths)}..{max(lengths)}, {len(FAMILIES)} families")

    t = time.perf_counter()
    res = score(bench, outputs)
    t_score = time.perf_counter() - t
    print(f"ours, score() on all {len(outputs)} (official metrics + strict + 2x2000-resample CIs): {t_score:.2f} s")

    per_family: dict[str, list[float]] = defaultdict(list)
    ours: dict[str, tuple] = {}
    for q, text in outputs.items():
        t = time.perf_counter()
        ours[q] = ours_parse(text)
        per_family[family[q]].append(time.perf_counter() - t)
    total = sum(sum(v) for v in per_family.values())
    print(f"ours, parsers only on all {len(outputs)}: {total:.2f} s")

    off = Official(args.cap)
    done = timeouts = mismatches = 0
    t_off = t_ours_same = 0.0
    fam_off: dict[str, list] = defaultdict(lambda: [0, 0, 0.0])  # done, timed out, seconds
    try:
        for q, text in outputs.items():
            if len(text) > args.official_max_len:
                continue
            r = off(text)
            f = fam_off[family[q]]
            if r is None:
                timeouts += 1
                f[1] += 1
                continue
            box, pattern, secs = r
            done += 1
            f[0] += 1
            f[2] += secs
            t_off += secs
            t = time.perf_counter()
            mine = official_bbox(text)
            t_ours_same += time.perf_counter() - t
            if mine != (box, pattern) and not (str(mine) == str((box, pattern))):  # str: NaN == NaN
                mismatches += 1
                print(f"MISMATCH {q} ({family[q]}, {len(text)} chars): ours {mine} official {(box, pattern)}")
    finally:
        off.close()
    print(f"official get_bbox on the {done + timeouts} outputs <= {args.official_max_len} chars: {done} finished in "
          f"{t_off:.2f} s (ours on those: {t_ours_same:.3f} s), {timeouts} killed after {args.cap:g} s each")
    print("\nfamily                  | n   | ours total s | ours max ms | official <= max-len: finished / killed, s")
    for name in FAMILIES:
        v = per_family[name]
        d, k, s = fam_off[name]
        print(f"{name:23s} | {len(v):3d} | {sum(v):12.3f} | {1000 * max(v):11.1f} | {d} / {k}, {s:.2f}")
    print(f"\nmatch-pattern counts [none, #1..#8]: {res.pattern_counts['all']}")
    if mismatches:
        raise SystemExit(f"PARITY FAILURE: {mismatches} outputs differ from the official parser")


if __name__ == "__main__":
    main()
