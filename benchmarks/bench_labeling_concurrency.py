"""Labeling throughput at concurrency 1 vs 32 against a loopback endpoint with injected latency.

The grounding labeler (``ModelGroundingLabeler`` over ``ChatClient``) labels real JPEG photos
against the fault-injecting OpenAI-compatible server of ``tests/serving/fault_server.py``, which
answers every request after a fixed delay (default 200 ms, a model's generation time) with a box.
Both concurrencies run in one process, side by side; every item must come back with a box (the
script exits non-zero otherwise), and the server's observed peak in-flight count is reported so
the speedup is attributable to the concurrency bound.

Run: .venv/bin/python benchmarks/bench_labeling_concurrency.py [--latency-ms 200] [--seconds 6]
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "serving"))

from PIL import Image  # noqa: E402

from fault_server import FaultServer  # noqa: E402

from deepperception.engine.model_labeler import LabelItem, ModelGroundingLabeler  # noqa: E402
from deepperception.serving import ChatClient, EndpointConfig  # noqa: E402


def make_items(n: int, size: tuple[int, int] = (320, 240)) -> list[LabelItem]:
    out = []
    for i in range(n):
        b = io.BytesIO()
        Image.new("RGB", size, (i * 37 % 256, i * 91 % 256, 128)).save(b, "JPEG", quality=85)
        out.append(LabelItem(f"img-{i}", b.getvalue(), size[0], size[1], f"entity {i % 50}"))
    return out


def measure(concurrency: int, n: int, latency_s: float) -> dict:
    items = make_items(n)
    server = FaultServer(latency_s=latency_s, reply=lambda text, k: "<|box_start|>(120,80),(640,900)<|box_end|>")
    cfg = EndpointConfig(base_url=server.base_url, model="bench-grounder", timeout_s=30, max_retries=0,
                         concurrency=concurrency)
    with server, ChatClient(cfg) as client:
        t0 = time.perf_counter()
        out = list(ModelGroundingLabeler(client).label_many(iter(items)))
        wall = time.perf_counter() - t0
    bad = [o for o in out if not o.ok]
    if len(out) != n or bad or [o.key for o in out] != [it.key for it in items]:
        raise SystemExit(f"concurrency {concurrency}: {len(out)}/{n} outcomes, {len(bad)} failed: {bad[:3]}")
    return {"concurrency": concurrency, "items": n, "wall_s": wall, "items_per_s": n / wall,
            "max_in_flight": server.max_in_flight}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-ms", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=6.0, help="Target wall time of each side (sets the item counts).")
    ap.add_argument("--high", type=int, default=32, help="The concurrent side's concurrency.")
    args = ap.parse_args(argv)
    lat = args.latency_ms / 1000.0
    n_low = max(5, int(args.seconds / lat))
    n_high = max(args.high * 2, int(args.seconds / lat) * args.high)
    low = measure(1, n_low, lat)
    high = measure(args.high, n_high, lat)
    speedup = high["items_per_s"] / low["items_per_s"]
    cmd = "python benchmarks/bench_labeling_concurrency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"# labeling items/s, loopback endpoint, {args.latency_ms:.0f} ms injected latency "
          f"({platform.python_implementation()} {platform.python_version()}, {platform.machine()})")
    print(f"command: `{cmd.strip()}`")
    print()
    print("| latency | c=1 items/s (n) | c=%d items/s (n) | peak in flight | speedup | target |" % args.high)
    print("|---|---|---|---|---|---|")
    print(f"| {args.latency_ms:.0f} ms | {low['items_per_s']:.2f} ({low['items']}) | {high['items_per_s']:.1f} "
          f"({high['items']}) | {low['max_in_flight']} / {high['max_in_flight']} | {speedup:.1f}x | >= 20x "
          f"{'met' if speedup >= 20 else 'MISSED'} |")


if __name__ == "__main__":
    main()
