"""Time to resume a labeling stage SIGKILLed at 90 % vs rerunning it whole.

Setup. An FGVC-Aircraft tree (``tests/sources/fixture_trees.py``) is collected into an images
table of ``--images-per-shard`` rows per part (one labeling shard per part) in two stores (the
same version in both: stages are deterministic). The fault-injecting OpenAI-compatible server of
``tests/serving/fault_server.py`` runs in this process and answers every grounding request with a
box after ``--latency-ms`` (a model's generation time). Every labeling run is a fresh child
process calling ``tasks.engine.label_boxes_task.fn`` (openai backend, thread shard runner):

1. whole: an uninterrupted run in the clean store;
2. killed: the same stage in the other store, SIGKILLed once ``--kill-at`` of its shard records
   exist (nothing committed: no manifest);
3. resumed: the stage rerun in the killed store; it finds the finished shards and labels only the
   others.

The script checks that the resumed version equals the whole run's (same version id, same files
and sha256) and counts the requests each run sent. It reports each child's wall time (process
start to exit, interpreter and imports included) and the stage's own time inside the child.

Run: .venv/bin/python benchmarks/bench_resume.py [--photos 4000] [--images-per-shard 100] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BOX_REPLY = "<|object_ref_start|>x<|object_ref_end|><|box_start|>(40,60),(960,940)<|box_end|>"

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from deepperception.config import LabelingStageConfig
from deepperception.engine.shard_runner import ShardRunnerConfig
from deepperception.store import ArtifactRef
from tasks.engine import label_boxes_task
t1 = time.perf_counter()
cfg = LabelingStageConfig.model_validate_json(sys.argv[1])
ref = label_boxes_task.fn(cfg, ArtifactRef.parse(sys.argv[2]), sys.argv[3], False,
                          ShardRunnerConfig(kind="threads", max_workers=int(sys.argv[4])))
print(json.dumps({"ref": str(ref), "import_s": t1 - t0, "stage_s": time.perf_counter() - t1}))
"""


def _records(store_root: Path) -> int:
    from deepperception.store.shards import SHARDS

    return len(list(store_root.glob(f"labeled-images/*/{SHARDS}/label/*.json")))


def _spawn(cfg, images, uri: str, workers: int, lease_ttl_s: float | None = None) -> subprocess.Popen:
    env = {**os.environ, "DP_SHARD_RUNNER": "threads", "PYTHONPATH": str(ROOT), "PREFECT_LOGGING_LEVEL": "WARNING"}
    if lease_ttl_s is not None:
        env["DP_STORE_LEASE_TTL_S"] = str(lease_ttl_s)
        env["DP_STORE_LEASE_POLL_S"] = "0.2"
    log = tempfile.TemporaryFile(mode="w+")  # not a pipe: a chatty child must never block on a full one
    proc = subprocess.Popen([sys.executable, "-c", CHILD, cfg.model_dump_json(), str(images), uri, str(workers)],
                            env=env, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _stderr(proc: subprocess.Popen) -> str:
    proc.log.seek(0)  # type: ignore[attr-defined]
    return proc.log.read()[-3000:]  # type: ignore[attr-defined]


def _finish(proc: subprocess.Popen, t0: float, what: str) -> dict:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (rc {proc.returncode}):\n{_stderr(proc)}")
    res = json.loads(out.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    return res


def kill_and_resume(server, cfg, images, uri: str, n_shards: int, args, lease_ttl_s: float | None) -> dict:
    """SIGKILL a labeling run at ``args.kill_at`` of its shards, then rerun it; times and requests."""
    root = Path(uri)
    target = int(args.kill_at * n_shards)
    asked0 = len(server.arrivals)
    t0 = time.perf_counter()
    child = _spawn(cfg, images, uri, args.max_workers, lease_ttl_s)
    while _records(root) < target:
        if child.poll() is not None:
            raise SystemExit(f"the run to kill finished before {target} shards: {_stderr(child)}")
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    killed_s = time.perf_counter() - t0
    done = _records(root)
    asked_killed = len(server.arrivals) - asked0
    if done >= n_shards or list(root.glob("labeled-images/*/_manifest.json")):
        raise SystemExit("killed too late: the stage had finished")
    asked0 = len(server.arrivals)
    t0 = time.perf_counter()
    resumed = _finish(_spawn(cfg, images, uri, args.max_workers, lease_ttl_s), t0, "resumed run")
    return {"done": done, "killed_s": killed_s, "asked_killed": asked_killed, "resumed": resumed,
            "asked_resume": len(server.arrivals) - asked0, "lease_ttl_s": lease_ttl_s}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=3000)
    ap.add_argument("--variants", type=int, default=50)
    ap.add_argument("--images-per-shard", type=int, default=100)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=4, help="Requests in flight per shard's endpoint client.")
    ap.add_argument("--max-workers", type=int, default=2, help="Shards at once (thread runner).")
    ap.add_argument("--kill-at", type=float, default=0.9, help="Share of shard records at which the run is killed.")
    ap.add_argument("--short-lease-ttl-s", type=float, default=3.0,
                    help="Second kill/resume pass with DP_STORE_LEASE_TTL_S set to this (the dead run's lease "
                    "expires sooner); 0 skips it.")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT / "tests" / "sources"))
    sys.path.insert(0, str(ROOT / "tests" / "serving"))
    import fixture_trees as ft
    from fault_server import FaultServer

    from deepperception.config import DataSourceConfig, LabelingStageConfig, ShardingConfig
    from deepperception.engine.collection import CollectionConfig
    from deepperception.serving.endpoint import EndpointConfig
    from deepperception.sources.collect import SourceSpec
    from deepperception.store import ArtifactRef, ArtifactStore
    from deepperception.store.settings import StoreSettings
    from tasks.engine import collect_images_task, mine_entities_task

    default_ttl = StoreSettings().lease_ttl_s
    variants = [None] + ([args.short_lease_ttl_s] if args.short_lease_ttl_s else [])
    work = Path(tempfile.mkdtemp(prefix="dp-bench-resume-"))
    try:
        per = args.photos // args.variants
        tree = ft.build_fgvc_aircraft(work / "fgvc", n_variants=args.variants, per_variant=per * 4 // 5,
                                      test_per_variant=per - per * 4 // 5, missing=0, size=(160, 120))
        data = DataSourceConfig(kind="datasets", sources=[
            SourceSpec(source="fgvc-aircraft", root=str(tree.root), category="aircraft", split="seen")])
        sharding = ShardingConfig(images_per_shard=args.images_per_shard)
        uris = {"whole": str(work / "store-whole"), **{v: str(work / f"store-killed-{v}") for v in variants}}
        refs = {}
        for k, uri in uris.items():
            ent = mine_entities_task.fn(data, uri)
            refs[k] = collect_images_task.fn(data, CollectionConfig(), ent, uri, False, sharding)
        assert len(set(refs.values())) == 1, "collection is not deterministic"
        images = refs["whole"]
        n_shards = len(ArtifactStore.from_uri(uris["whole"]).table_files(images))
        n_images = ArtifactStore.from_uri(uris["whole"]).num_rows(images)

        with FaultServer(reply=lambda text, k: BOX_REPLY, latency_s=args.latency_ms / 1000) as server:
            cfg = LabelingStageConfig(backend="openai", endpoint=EndpointConfig(
                base_url=server.base_url, model="bench-vl", concurrency=args.concurrency, max_retries=0, timeout_s=30))
            t0 = time.perf_counter()
            whole = _finish(_spawn(cfg, images, uris["whole"], args.max_workers), t0, "whole run")
            asked_whole = len(server.arrivals)
            runs = [kill_and_resume(server, cfg, images, uris[v], n_shards, args, v) for v in variants]

        a = ArtifactStore.from_uri(uris["whole"])
        files = lambda store, ref: [(f.path, f.sha256) for f in store.manifest(ArtifactRef.parse(ref)).files]  # noqa: E731
        for v, r in zip(variants, runs):
            b = ArtifactStore.from_uri(uris[v])
            r["same"] = r["resumed"]["ref"] == whole["ref"] and files(a, whole["ref"]) == files(b, r["resumed"]["ref"])
            if not r["same"]:
                raise SystemExit(f"resumed version differs from the whole run's: {r['resumed']['ref']} vs {whole['ref']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cmd = "python benchmarks/bench_resume.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"# resume a labeling stage killed at {100 * args.kill_at:.0f} % ({platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f} at the end)")
    print(f"command: `{cmd.strip()}`")
    print(f"{n_images} photos, {n_shards} shards of {args.images_per_shard}, {args.latency_ms:.0f} ms latency, "
          f"{args.max_workers} shards x {args.concurrency} requests in flight")
    print()
    print("| run | lease TTL | shards computed | requests sent | stage time in child (s) | child wall incl. start-up (s) "
          "| vs whole (child wall) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| whole, uninterrupted | {default_ttl:.0f} s | {n_shards} | {asked_whole} | {whole['stage_s']:.2f} | "
          f"{whole['wall_s']:.2f} | 1.00x |")
    for r in runs:
        ttl = f"{r['lease_ttl_s'] if r['lease_ttl_s'] is not None else default_ttl:g} s"
        print(f"| killed (SIGKILL at {r['done']}/{n_shards} shard records) | {ttl} | {r['done']} finished | "
              f"{r['asked_killed']} | - | {r['killed_s']:.2f} | {r['killed_s'] / whole['wall_s']:.2f}x |")
        print(f"| resumed | {ttl} | {n_shards - r['done']} | {r['asked_resume']} | {r['resumed']['stage_s']:.2f} | "
              f"{r['resumed']['wall_s']:.2f} | **{r['resumed']['wall_s'] / whole['wall_s']:.2f}x** |")
    print()
    print("resumed version == whole run's (version id, every file path and sha256): "
          + ", ".join(f"{r['lease_ttl_s'] or default_ttl:g} s TTL: {r['same']}" for r in runs))


if __name__ == "__main__":
    main()
