"""Thin Prefect tasks for what the data engine hands users besides training rows: the
contamination report against the bench, the data card, and exports in the formats other tools read.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
from prefect import task

from deepperception.engine import cards, contamination
from deepperception.engine.contamination import ContaminationConfig
from deepperception.images import read_image_bytes
from deepperception.store import ArtifactRef
from deepperception.store.stage import run_stage
from tasks.common import TASK_DEFAULTS, open_store, run_logger


def _load(row: dict) -> bytes:
    """A row's photo bytes: inline (a binary column or a bench ``{bytes, path}`` struct) or by URI."""
    image = row.get("image")
    if isinstance(image, dict):
        image = image.get("bytes")
    return read_image_bytes(image, row.get("image_uri"))


@task(name="check-contamination", **TASK_DEFAULTS)
def contamination_task(config: ContaminationConfig, bench: ArtifactRef, bench_composites: ArtifactRef,
                       labeled: ArtifactRef, train_composites: ArtifactRef, store_uri: str | None = None,
                       force: bool = False) -> ArtifactRef:
    """Matches (train item -> bench item) as a table, excluded composite ids, and a summary."""
    store = open_store(store_uri)
    logger = run_logger()

    def produce(w):
        index = contamination.BenchIndex.from_batches(
            [*store.iter_batches(bench, batch_size=256), *store.iter_batches(bench_composites, batch_size=256)],
            load_bytes=_load)
        scan = contamination.NearDuplicateScan(index, max_distance=config.max_distance,
                                               max_dhash_distance=config.max_dhash_distance, load_bytes=_load)
        import pyarrow.compute as pc

        with w.table_writer("data", schema=contamination.MATCH_SCHEMA) as out:
            for b in store.iter_batches(labeled, batch_size=256):
                train = b.filter(pc.equal(b.column("pool"), "train"))
                if train.num_rows:
                    out.write(scan.scan(train))
            for b in store.iter_batches(train_composites, batch_size=128):
                out.write(scan.scan(b))
        summary = scan.summary()
        flagged_images = contamination.contaminated_ids(scan.table(), "image_id")
        excluded = set(contamination.contaminated_ids(scan.table(), "composite_id"))
        for b in store.iter_batches(train_composites, columns=["composite_id", "entities"]):
            for cid, ents in zip(b.column("composite_id").to_pylist(), b.column("entities").to_pylist()):
                if any(e.get("image_id") in flagged_images for e in json.loads(ents)):
                    excluded.add(cid)
        w.write_table(pa.table({"composite_id": pa.array(sorted(excluded), pa.string())}), "excluded")
        if summary.get("pairs"):
            logger.warning("contamination: %d near-duplicate pair(s) of training items and bench images; %d training "
                           "composite(s) %s", summary["pairs"], len(excluded),
                           "left out of training" if config.drop else "flagged (drop is off)")
        return {"summary": summary, "excluded_composites": len(excluded), "drop": config.drop}

    return run_stage(store, "contamination", "contamination", config,
                     {"bench": bench, "bench_composites": bench_composites, "labeled": labeled,
                      "train_composites": train_composites}, produce, force=force)[0]


def excluded_composites(store, ref: ArtifactRef | None) -> set[str]:
    """Composite ids a contamination version says to leave out (none unless it was run with drop)."""
    if ref is None or not store.manifest(ref).metadata.get("drop"):
        return set()
    return set(store.read_table(ref, "excluded").column("composite_id").to_pylist())


@task(name="write-data-card", **TASK_DEFAULTS)
def data_card_task(refs: dict[str, ArtifactRef], store_uri: str | None = None, force: bool = False) -> ArtifactRef:
    """The data card of one data-engine run (``refs``: images, labeled, composites, cot,
    cot_filtered, sft_dataset, grpo_pool, bench and optionally contamination), as Markdown with
    figures in the store and as a Prefect Markdown artifact."""
    store = open_store(store_uri)
    logger = run_logger()

    def produce(w):
        stats = cards.DataCardStats()
        for b in store.iter_batches(refs["images"], columns=None, batch_size=1024):
            stats.add_images(b.drop_columns([c for c in ("image",) if c in b.schema.names]))
        for b in store.iter_batches(refs["labeled"], batch_size=1024):
            stats.add_labels(b.drop_columns([c for c in ("image",) if c in b.schema.names]))
        for name in ("images", "labeled"):
            for b in store.iter_batches(refs[name], "rejected"):
                stats.add_rejections(b, stage=name)
        for b in store.iter_batches(refs["composites"], columns=["composite_id", "category", "layout", "entities",
                                                                 "width", "height"]):
            stats.add_composites(b)
        for b in store.iter_batches(refs["cot"]):
            stats.add_cot(b)
        for b in store.iter_batches(refs["cot_filtered"], "rejected"):
            stats.add_rejections(b, stage="cot_filter")
        label_meta = store.manifest(refs["labeled"]).metadata
        images_m = store.manifest(refs["images"])
        entities_meta = store.manifest(ArtifactRef.parse(images_m.upstream["entities"])).metadata \
            if "entities" in images_m.upstream else {}
        cot_meta = store.manifest(refs["cot"]).metadata
        meta = {
            "dataset": "DeepPerception data engine output", "version": str(refs["sft_dataset"]),
            "labeler": {**(label_meta.get("labeler") or {}), "usage": label_meta.get("usage") or {}},
            "teacher": {**(cot_meta.get("teacher") or {}), "usage": cot_meta.get("usage") or {}},
            **({"knowledge": entities_meta["knowledge"]} if entities_meta.get("knowledge") else {}),
            "tables": {k: store.num_rows(v) for k, v in refs.items() if k in ("sft_dataset", "grpo_pool", "bench")},
            "notes": [f"{k}: {v}" for k, v in sorted(refs.items())],
        }
        if refs.get("contamination"):
            meta["contamination"] = store.manifest(refs["contamination"]).metadata.get("summary")
        markdown, figures = cards.render_card(stats, meta)
        w.write_bytes("card.md", markdown.encode())
        for name, png in sorted(figures.items()):
            w.write_bytes(f"{cards.FIGURE_DIR}/{name}", png)
        _publish(cards.render_card_for_prefect(stats, meta), logger)
        return {"figures": sorted(figures)}

    return run_stage(store, "data-card", "data-card", {}, refs, produce, force=force)[0]


def _publish(markdown: str, logger) -> None:
    """A Prefect Markdown artifact of the card (only inside a run; scripts get the stored card)."""
    try:
        from prefect.artifacts import create_markdown_artifact
        from prefect.context import get_run_context

        get_run_context()
    except Exception:
        return
    create_markdown_artifact(markdown=markdown, key="data-card", description="DeepPerception data card")
    logger.info("data card published as the Prefect artifact 'data-card'")


@task(name="export-datasets", **TASK_DEFAULTS)
def export_task(sft_dataset: ArtifactRef, grpo_pool: ArtifactRef, store_uri: str | None = None,
                force: bool = False) -> ArtifactRef:
    """The SFT rows as LLaMA-Factory sharegpt datasets (``kvg-<category>``, with ``dataset_info.json``,
    how the official stage 1 was trained) and the GRPO pool as the official ``grpo-<category>.parquet``."""
    from deepperception.engine import exports

    store = open_store(store_uri)

    def produce(w):
        cats = sorted({q.split("/", 1)[0] for b in store.iter_batches(sft_dataset, columns=["question_id"])
                       for q in b.column("question_id").to_pylist()})
        written = {}
        with tempfile.TemporaryDirectory(prefix="dp-export-") as tmp:
            out = Path(tmp)
            for cat in cats:
                def of_category(cat=cat):
                    for b in store.iter_batches(sft_dataset, batch_size=256):
                        keep = [q.split("/", 1)[0] == cat for q in b.column("question_id").to_pylist()]
                        yield b.filter(pa.array(keep))
                written[f"kvg-{cat}"] = exports.export_sharegpt(of_category(), out / "llamafactory", f"kvg-{cat}")["rows"]
            grpo = exports.export_grpo(store.iter_batches(grpo_pool, batch_size=256), out / "grpo")
            w.write_dir(out)
        return {"sharegpt": written, "grpo": {k: v["rows"] for k, v in grpo.items()}}

    return run_stage(store, "exports", "export", {}, {"sft_dataset": sft_dataset, "grpo_pool": grpo_pool},
                     produce, force=force)[0]
