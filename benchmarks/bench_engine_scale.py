"""Peak memory of the data engine at 2K vs 20K source photos, ours (streamed, sharded) vs the whole
table in memory; composites/s; Parquet write MB/s of ``VersionWriter.table_writer`` vs one
``pq.write_table``.

Setup. An FGVC-Aircraft tree in its published layout is built with the test fixture builder
(``tests/sources/fixture_trees.py``: real JPEGs, one encoded per variant and reused) at each size,
with a fixed number of variants (entities) and photos per variant scaled. One fault-injecting
OpenAI-compatible server (``tests/serving/fault_server.py``, latency 0) runs in *this* process and
answers knowledge cards (text-only requests) and boxes (grounding requests). Every size and
approach then runs in its own fresh child process, whose per-stage peak RSS is read from
``/proc/self/status`` (VmHWM), reset before each stage through ``/proc/self/clear_refs`` (``5``),
so each stage's figure is the most the process held while that stage ran:

- ours: ``tasks.engine`` mine (LLM cards) -> collect (photos by URI, ``images_per_shard`` rows per
  part) -> label (openai backend, one shard per part) -> compose (train pool,
  ``photos // 10`` composites per category, ``composites_per_shard`` per shard) -> distill
  (template teacher over the cards), each task called as a plain function (``.fn``);
- official approach: the same mine + collect, then every table whole in memory: the images table
  read in full with every photo's bytes loaded into it, ``labeling.label_table``,
  ``composition.compose`` and ``distillation.distill`` on whole tables, each output written with
  one ``pq.write_table``.

Run: .venv/bin/python benchmarks/bench_engine_scale.py [--sizes 2000 20000] [--images-per-shard 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CARD = ("The {name} shows a distinctive silhouette and proportions, with characteristic markings and colours "
        "that a photograph shows clearly.")
BOX_REPLY = "<|object_ref_start|>x<|object_ref_end|><|box_start|>(40,60),(960,940)<|box_end|>"


def reply(text: str, n_images: int) -> str:
    """A knowledge card for text-only requests, a box for grounding requests."""
    if n_images == 0:
        m = re.search(r'knowledge card for "([^"]+)"', text)
        return CARD.format(name=m.group(1) if m else "entity")
    return BOX_REPLY


# ---- measurement helpers (child side) ---------------------------------------------------------

def _status_kb(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else -1


def reset_peak() -> None:
    """Set VmHWM to the current RSS (Linux >= 4.0), so the next reading is this stage's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class Stages:
    """Per-stage wall time, items and peak RSS (MiB) of one child run."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def run(self, name: str, fn, items=None):
        import gc

        gc.collect()
        reset_peak()
        start_rss = _status_kb("VmRSS")
        t0 = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t0
        n = items(out) if callable(items) else items
        self.rows.append({"stage": name, "wall_s": wall, "items": n, "items_per_s": (n / wall) if n else None,
                          "rss_start_mib": start_rss / 1024, "peak_mib": _status_kb("VmHWM") / 1024})
        return out


def _configs(args):
    from deepperception.config import (DataSourceConfig, DistillationStageConfig, KnowledgeStageConfig,
                                       LabelingStageConfig, ShardingConfig)
    from deepperception.engine.composition import CompositionConfig
    from deepperception.engine.distillation import DistillConfig
    from deepperception.engine.shard_runner import ShardRunnerConfig
    from deepperception.serving.endpoint import EndpointConfig
    from deepperception.sources.collect import SourceSpec

    ep = EndpointConfig(base_url=args.base_url, model="bench-vl", max_retries=1, backoff_base_s=0.01,
                        concurrency=args.concurrency, timeout_s=60)
    data = DataSourceConfig(kind="datasets", sources=[
        SourceSpec(source="fgvc-aircraft", root=args.root, category="aircraft", split="seen")])
    return dict(
        data=data,
        knowledge=KnowledgeStageConfig(backend="openai", endpoint=ep),
        labeling=LabelingStageConfig(backend="openai", endpoint=ep),
        composition=CompositionConfig(pool="train", k_min=2, k_max=4, tile_size=args.tile_size,
                                      composites_per_category=max(1, args.photos // 10)),
        distillation=DistillationStageConfig(options=DistillConfig(targets_per_composite=1)),
        sharding=ShardingConfig(images_per_shard=args.images_per_shard, composites_per_shard=args.composites_per_shard),
        runner=ShardRunnerConfig(kind="threads", max_workers=args.max_workers),
    )


def child_ours(args) -> dict:
    from deepperception.engine.collection import CollectionConfig
    from deepperception.store import ArtifactStore
    from tasks.engine import collect_images_task, compose_task, distill_cot_task, label_boxes_task, mine_entities_task

    c = _configs(args)
    uri = args.store
    store = ArtifactStore.from_uri(uri)
    st = Stages()
    baseline = _status_kb("VmRSS") / 1024
    ent = st.run("mine (LLM cards)", lambda: mine_entities_task.fn(c["data"], uri, False, c["knowledge"]),
                 lambda r: store.num_rows(r))
    images = st.run("collect", lambda: collect_images_task.fn(c["data"], CollectionConfig(), ent, uri, False,
                                                              c["sharding"]), lambda r: store.num_rows(r))
    labeled = st.run("label", lambda: label_boxes_task.fn(c["labeling"], images, uri, False, c["runner"]),
                     lambda r: store.num_rows(r))
    comps = st.run("compose", lambda: compose_task.fn(c["composition"], labeled, uri, False, c["sharding"],
                                                      c["runner"]), lambda r: store.num_rows(r))
    cot = st.run("distill", lambda: distill_cot_task.fn(c["distillation"], comps, ent, uri, False, c["runner"]),
                 lambda r: store.num_rows(r))
    shards = {k: len(store.table_files(r)) for k, r in (("images", images), ("labeled", labeled),
                                                        ("composites", comps), ("cot", cot))}
    return {"baseline_mib": baseline, "stages": st.rows, "parts": shards,
            "refs": {"images": str(images), "labeled": str(labeled), "composites": str(comps), "cot": str(cot)}}


def child_official(args) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deepperception.engine import composition, distillation, labeling
    from deepperception.engine.backends import close, make_labeler, make_teacher
    from deepperception.engine.collection import CollectionConfig
    from deepperception.store import ArtifactStore
    from tasks.engine import collect_images_task, mine_entities_task

    c = _configs(args)
    uri = args.store
    store = ArtifactStore.from_uri(uri)
    out_dir = Path(args.store) / "official-out"
    out_dir.mkdir(parents=True, exist_ok=True)
    st = Stages()
    baseline = _status_kb("VmRSS") / 1024
    ent = st.run("mine (LLM cards)", lambda: mine_entities_task.fn(c["data"], uri, False, c["knowledge"]),
                 lambda r: store.num_rows(r))
    images_ref = st.run("collect", lambda: collect_images_task.fn(c["data"], CollectionConfig(), ent, uri, False,
                                                                  c["sharding"]), lambda r: store.num_rows(r))
    state: dict = {}

    def label():
        images = store.read_table(images_ref)
        photos = [Path(u).read_bytes() for u in images.column("image_uri").to_pylist()]
        images = images.set_column(images.column_names.index("image"), "image", pa.array(photos, pa.binary()))
        labeler = make_labeler(c["labeling"])
        try:
            result = labeling.label_table(images, labeler, c["labeling"].options,
                                          max_failure_rate=c["labeling"].max_failure_rate)
        finally:
            close(labeler)
        pq.write_table(result.data, out_dir / "labeled.parquet", compression="zstd")
        state["labeled"] = result.data
        return result.data.num_rows

    def compose():
        state["composites"] = composition.compose(state["labeled"], c["composition"])
        pq.write_table(state["composites"], out_dir / "composites.parquet", compression="zstd")
        return state["composites"].num_rows

    def distill():
        teacher = make_teacher(c["distillation"], store.read_table(ent))
        cot = distillation.distill(state["composites"], teacher, c["distillation"].options)
        pq.write_table(cot, out_dir / "cot.parquet", compression="zstd")
        return cot.num_rows

    st.run("label", label, lambda n: n)
    st.run("compose", compose, lambda n: n)
    st.run("distill", distill, lambda n: n)
    return {"baseline_mib": baseline, "stages": st.rows}


# ---- parent side --------------------------------------------------------------------------------

def textured_jpeg(width: int, height: int, seed: int) -> bytes:
    """A JPEG with a gradient plus noise: it compresses like a photo (~10 KB at 160x120), unlike the
    builder's flat colour (~1 KB), so holding photos and composites in memory shows in the RSS."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, np.full((height, width), (37 * seed) % 256)], -1)
    pixels = np.clip(base + rng.normal(0, 40, (height, width, 3)), 0, 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def build_tree(root: Path, photos: int, variants: int, size: tuple[int, int], texture: bool = True):
    sys.path.insert(0, str(ROOT / "tests" / "sources"))
    import fixture_trees as ft

    if texture:  # the builder encodes one JPEG per (size, variant) through this cache; give it photo-like ones
        for v in range(variants):
            ft._JPEGS[(size[0], size[1], v % 256)] = textured_jpeg(size[0], size[1], v)

    per = photos // variants  # 80 % trainval, 20 % test, as FGVC's proportions roughly are
    train = per * 4 // 5
    return ft.build_fgvc_aircraft(root, n_variants=variants, per_variant=train, test_per_variant=per - train,
                                  missing=0, size=size)


def run_child(mode: str, args, photos: int, root: Path, store: Path, base_url: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--root", str(root), "--store", str(store),
           "--base-url", base_url, "--photos", str(photos), "--images-per-shard", str(args.images_per_shard),
           "--composites-per-shard", str(args.composites_per_shard), "--concurrency", str(args.concurrency),
           "--max-workers", str(args.max_workers), "--tile-size", str(args.tile_size)]
    env = {**os.environ, "DP_STORE_CACHE_DIR": str(store.parent / f"cache-{store.name}"), "DP_SHARD_RUNNER": "threads",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} at {photos} photos failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["child_wall_s"] = time.perf_counter() - t0
    return out


def io_bench(store_uri: str, refs: dict, repeats: int) -> list[dict]:
    """Parquet write MB/s: the same in-memory table through ``table_writer`` (bounded parts) and
    through one ``pq.write_table`` (zstd both), best of ``repeats``."""
    import pyarrow.parquet as pq

    from deepperception.store import ArtifactRef, ArtifactStore
    from deepperception.store.artifacts import VersionWriter

    store = ArtifactStore.from_uri(store_uri)
    rows = []
    for name in ("labeled", "composites"):
        table = store.read_table(ArtifactRef.parse(refs[name]))
        mib = table.nbytes / 2**20
        best_ours = best_one = best_pq = float("inf")
        out_bytes = {}
        for r in range(repeats):
            w = VersionWriter(store, f"bench-write-{name}", "bench", {"r": r, "t": time.time()}, {})
            with w:
                t0 = time.perf_counter()
                with w.table_writer("data", schema=table.schema) as tw:  # as stages stream: 1024-row batches
                    for b in table.to_batches(max_chunksize=1024):
                        tw.write(b)
                best_ours = min(best_ours, time.perf_counter() - t0)
                out_bytes["ours"] = sum(e.bytes for e in tw.entries)
                parts = len(tw.entries)
                t0 = time.perf_counter()
                with w.table_writer("whole", schema=table.schema) as tw:  # the whole table in one write()
                    tw.write(table)
                best_one = min(best_one, time.perf_counter() - t0)
                out_bytes["one"] = sum(e.bytes for e in tw.entries)
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                pq.write_table(table, f"{d}/t.parquet", compression="zstd")
                best_pq = min(best_pq, time.perf_counter() - t0)
                out_bytes["pq"] = Path(f"{d}/t.parquet").stat().st_size
        rows.append({"table": name, "rows": table.num_rows, "arrow_mib": mib, "parts": parts,
                     "ours_s": best_ours, "pq_s": best_pq, "ours_mib_s": mib / best_ours, "pq_mib_s": mib / best_pq,
                     "one_mib_s": mib / best_one, "one_file_mib": out_bytes["one"] / 2**20,
                     "ours_file_mib": out_bytes["ours"] / 2**20, "pq_file_mib": out_bytes["pq"] / 2**20})
    import hashlib

    blob = os.urandom(64 << 20)
    t0 = time.perf_counter()
    hashlib.sha256(blob).hexdigest()
    rows.append({"sha256_mib_s": 64 / (time.perf_counter() - t0)})
    return rows


def render_bench(store_uri: str, refs: dict, tile_size: int, n: int) -> dict:
    """Composites/s of rendering alone (plan + decode tiles + paste + PNG), one thread."""
    from deepperception.engine import composition
    from deepperception.store import ArtifactRef, ArtifactStore

    store = ArtifactStore.from_uri(store_uri)
    labeled = ArtifactRef.parse(refs["labeled"])
    cfg = composition.CompositionConfig(pool="train", k_min=2, k_max=4, tile_size=tile_size,
                                        composites_per_category=n)
    cols = [c for c in composition.PLAN_COLUMNS + ["image_uri", "crop_bottom"]]
    t0 = time.perf_counter()
    plans = composition.plan_composites(((p, b) for p in range(len(store.table_files(labeled)))
                                         for b in store.iter_batches(labeled, columns=cols, parts=[p])), cfg)
    plan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for plan in plans:
        composition.render_composite(plan, composition.load_tiles(plan, {}), cfg)
    render_s = time.perf_counter() - t0
    return {"n": len(plans), "plan_s": plan_s, "render_s": render_s, "per_s": len(plans) / render_s}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--variants", type=int, default=50, help="Entities (FGVC variants); photos per variant scale.")
    ap.add_argument("--photo-size", type=int, nargs=2, default=[160, 120])
    ap.add_argument("--flat-photos", action="store_true", help="The builder's flat-colour JPEGs (~1 KB) instead of "
                    "textured ones (~10 KB at 160x120).")
    ap.add_argument("--images-per-shard", type=int, default=256)
    ap.add_argument("--composites-per-shard", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16, help="Requests in flight per shard's endpoint client.")
    ap.add_argument("--max-workers", type=int, default=2, help="Shards at once (thread runner).")
    ap.add_argument("--tile-size", type=int, default=96)
    ap.add_argument("--approaches", nargs="+", default=["ours", "official"], choices=["ours", "official"])
    ap.add_argument("--io-repeats", type=int, default=3)
    ap.add_argument("--render-n", type=int, default=300, help="Composites rendered single-threaded for composites/s.")
    ap.add_argument("--keep", help="Keep the trees and stores under this directory.")
    # child mode
    ap.add_argument("--child", choices=["ours", "official"])
    ap.add_argument("--root")
    ap.add_argument("--store")
    ap.add_argument("--base-url")
    ap.add_argument("--photos", type=int)
    args = ap.parse_args(argv)

    if args.child:
        res = child_ours(args) if args.child == "ours" else child_official(args)
        print(json.dumps(res))
        return

    sys.path.insert(0, str(ROOT / "tests" / "serving"))
    from fault_server import FaultServer

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dp-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    t_all = time.perf_counter()
    try:
        with FaultServer(reply=reply, latency_s=0.0) as server:
            for photos in args.sizes:
                root = work / f"fgvc-{photos}"
                t0 = time.perf_counter()
                tree = build_tree(root, photos, args.variants, tuple(args.photo_size), not args.flat_photos)
                built = time.perf_counter() - t0
                for mode in args.approaches:
                    server.arrivals.clear()  # the server's request log (with images) lives in this process
                    res = run_child(mode, args, tree.count(), root, work / f"store-{mode}-{photos}", server.base_url)
                    res["tree_s"] = built
                    results[(mode, photos)] = res
                    print(f"[{mode} {photos}] peak {max(r['peak_mib'] for r in res['stages'][2:]):.0f} MiB, "
                          f"{res['child_wall_s']:.0f} s", file=sys.stderr, flush=True)
        big = max(args.sizes)
        ours_big = results.get(("ours", big))
        io_rows = io_bench(str(work / f"store-ours-{big}"), ours_big["refs"], args.io_repeats) if ours_big else []
        render = render_bench(str(work / f"store-ours-{big}"), ours_big["refs"], args.tile_size,
                              args.render_n) if ours_big else None
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(args, argv, results, io_rows, render, time.perf_counter() - t_all)


def report(args, argv, results: dict, io_rows: list, render, total_s: float) -> None:
    small, big = min(args.sizes), max(args.sizes)
    cmd = "python benchmarks/bench_engine_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"# data engine at scale ({platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f} at the end; total {total_s:.0f} s)")
    print(f"command: `{cmd.strip()}`")
    print()
    print("Peak RSS (MiB, VmHWM of the child, reset per stage) of label + compose + distill:")
    print()
    print(f"| approach | import baseline | peak at {small} | peak at {big} | ratio | growth above baseline "
          f"{small} -> {big} | target < 1.5x |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.approaches:
        a, b = results.get((mode, small)), results.get((mode, big))
        if not (a and b):
            continue
        pa_ = max(r["peak_mib"] for r in a["stages"] if r["stage"] in ("label", "compose", "distill"))
        pb = max(r["peak_mib"] for r in b["stages"] if r["stage"] in ("label", "compose", "distill"))
        ratio = pb / pa_
        print(f"| {mode} | {a['baseline_mib']:.0f} | {pa_:.0f} | {pb:.0f} | **{ratio:.2f}x** | "
              f"{pa_ - a['baseline_mib']:.0f} -> {pb - b['baseline_mib']:.0f} MiB | "
              f"{'met' if ratio < 1.5 else 'MISSED'} |")
    print()
    print("Per stage (peak MiB / wall s / items per s):")
    print()
    print("| approach | photos | stage | items | wall s | items/s | RSS at start | peak |")
    print("|---|---|---|---|---|---|---|---|")
    for (mode, photos), res in sorted(results.items(), key=lambda kv: (kv[0][0] != "ours", kv[0][1])):
        for r in res["stages"]:
            ips = f"{r['items_per_s']:.0f}" if r["items_per_s"] else "-"
            print(f"| {mode} | {photos} | {r['stage']} | {r['items']} | {r['wall_s']:.1f} | {ips} | "
                  f"{r['rss_start_mib']:.0f} | {r['peak_mib']:.0f} |")
    for photos in args.sizes:
        res = results.get(("ours", photos))
        if res:
            print(f"\nours at {photos}: parts per table {res['parts']}; child wall {res['child_wall_s']:.0f} s "
                  f"(tree built in {res['tree_s']:.0f} s)")
    if render:
        print(f"\nRender only (one thread, plan + decode tiles + paste + PNG, tile {args.tile_size}): "
              f"{render['n']} composites in {render['render_s']:.2f} s = **{render['per_s']:.0f} composites/s** "
              f"(planning from the {big}-photo labeled table: {render['plan_s']:.2f} s)")
    if io_rows:
        print("\nParquet write (zstd, the same in-memory table, best of "
              f"{args.io_repeats}; MiB/s of Arrow data):")
        print()
        print("| table | rows | Arrow MiB | table_writer parts | table_writer MiB/s, 1024-row batches | "
              "table_writer MiB/s, one write() | pq.write_table MiB/s | file MiB (batches / one write / pq) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in io_rows:
            if "table" not in r:
                print(f"\n(sha256 alone on this machine: {r['sha256_mib_s']:.0f} MiB/s)")
                continue
            print(f"| {r['table']} | {r['rows']} | {r['arrow_mib']:.1f} | {r['parts']} | {r['ours_mib_s']:.0f} | "
                  f"{r['one_mib_s']:.0f} | {r['pq_mib_s']:.0f} | {r['ours_file_mib']:.2f} / {r['one_file_mib']:.2f} / "
                  f"{r['pq_file_mib']:.2f} |")


if __name__ == "__main__":
    main()
