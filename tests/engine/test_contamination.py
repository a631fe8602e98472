"""Contamination check: copies of bench pictures among training photos/composite crops are found,
unrelated pictures are not, and unreadable items are recorded with their reason."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageEnhance

from deepperception.engine.collection import IMAGES_SCHEMA
from deepperception.engine.composition import CompositionConfig, compose
from deepperception.engine.contamination import (
    MATCH_SCHEMA, BenchIndex, NearDuplicateScan, contaminated_ids, drop_contaminated, find_near_duplicates, image_hashes,
)
from deepperception.engine.datasets import build_bench
from deepperception.engine.labeling import OracleLabeler, label_images
from deepperception.errors import InputDataError


def photo(seed: int, size=(120, 96)) -> Image.Image:
    """A photo-like picture: smooth random colour field plus grain (synthetic renders of one
    entity are near-identical drawings, which would be true near duplicates of each other)."""
    r = np.random.default_rng(seed)
    im = Image.fromarray((r.random((5, 7, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    a = np.asarray(im).astype(float) + r.normal(0, 8, (size[1], size[0], 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def enc(im: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def images_table(specs, pool):
    """IMAGES_SCHEMA rows: specs = [(image_id, entity, bytes)], box 10%..90% of the photo."""
    rows = []
    for image_id, ent, data in specs:
        w, h = Image.open(io.BytesIO(data)).size
        rows.append({"image_id": image_id, "entity_id": f"plane/{ent}", "category": "plane", "name": ent.upper(),
                     "split": "seen", "pool": pool, "image": data, "image_uri": None, "width": w, "height": h,
                     "source_box_px": [0.1 * w, 0.1 * h, 0.9 * w, 0.9 * h], "crop_bottom": 0, "source": "synthetic"})
    return pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA)


@pytest.fixture(scope="module")
def world():
    test = images_table([(f"plane/e{e}/t{i}", f"e{e}", enc(photo(100 + 10 * e + i))) for e in range(5) for i in range(2)], "test")
    test_comps = compose(label_images(test, OracleLabeler()), CompositionConfig(composites_per_category=3, pool="test", seed=1, k_min=3, k_max=5))
    bench = build_bench(test_comps, questions_per_composite=2, seed=0)
    used = sorted({e["image_id"] for r in test_comps.to_pylist() for e in json.loads(r["entities"])})
    src = {r["image_id"]: r["image"] for r in test.to_pylist()}
    a, b = used[0], used[1]
    img_b = Image.open(io.BytesIO(src[b])).convert("RGB")
    altered = ImageEnhance.Brightness(img_b.resize((96, 77), Image.Resampling.LANCZOS)).enhance(1.12)
    bench_whole = Image.open(io.BytesIO(bench.column("image")[0].as_py()["bytes"])).convert("RGB")
    train = images_table(
        [("plane/x/copy", "x", src[a]),                                  # exact copy of a test photo
         ("plane/y/altered", "y", enc(altered, "JPEG", quality=70)),     # resized, brightened, JPEG
         ("plane/z/whole", "z", enc(bench_whole, "JPEG", quality=85))]   # a bench image itself
        + [(f"plane/u{e}/{i}", f"u{e}", enc(photo(500 + 10 * e + i))) for e in range(4) for i in range(3)], "train")
    train_comps = compose(label_images(train, OracleLabeler()), CompositionConfig(composites_per_category=4, pool="train", seed=2, k_min=4, k_max=6))
    return dict(bench=bench, test_comps=test_comps, train=train, train_comps=train_comps, a=a, b=b)


def test_hashes_survive_reencoding_but_separate_unrelated_photos():
    base = photo(1)
    p0, d0 = image_hashes(base)
    p1, d1 = image_hashes(Image.open(io.BytesIO(enc(ImageEnhance.Brightness(base.resize((90, 72))).enhance(1.1), "JPEG", quality=70))))
    p2, d2 = image_hashes(photo(2))
    assert bin(p0 ^ p1).count("1") <= 4 and bin(d0 ^ d1).count("1") <= 8
    assert bin(p0 ^ p2).count("1") > 12


def test_bench_index_has_whole_images_and_entity_crops(world):
    index = BenchIndex.from_batches(world["bench"].to_batches(max_chunksize=3))
    n_images = len({r["image"]["bytes"] for r in world["bench"].to_pylist()})
    assert index.counts() == {"image": n_images, "crop": world["bench"].num_rows}
    assert index.phash.dtype == np.uint64 and len(index.phash) == len(index)
    # A composites table gives the same whole images and one crop per entity.
    by_comp = BenchIndex.from_batches([world["test_comps"]])
    assert by_comp.counts() == {"image": world["test_comps"].num_rows,
                                "crop": sum(len(json.loads(e)) for e in world["test_comps"].column("entities").to_pylist())}


def test_copies_match_and_unrelated_photos_do_not(world):
    index = BenchIndex.from_batches([world["test_comps"]])
    m = find_near_duplicates(world["train"].to_batches(max_chunksize=4), index)
    assert m.schema == MATCH_SCHEMA
    hit = {r["train_id"]: r for r in m.to_pylist() if r["bench_id"] is not None}
    assert set(hit) == {"plane/x/copy", "plane/y/altered", "plane/z/whole"}
    assert hit["plane/x/copy"]["bench_kind"] == "crop" and hit["plane/x/copy"]["distance"] <= 4
    assert hit["plane/z/whole"]["bench_kind"] == "image"
    assert all(r["train_kind"] == "photo" for r in hit.values())
    # every bench crop of photo a is matched by the copy (a may sit in several composites)
    a_crops = {f"{r['composite_id']}#{j}" for r in world["test_comps"].to_pylist()
               for j, e in enumerate(json.loads(r["entities"])) if e["image_id"] == world["a"]}
    assert a_crops <= {r["bench_id"] for r in m.to_pylist() if r["train_id"] == "plane/x/copy"}


def test_composite_crop_taken_from_a_bench_photo_is_found(world):
    # KVG questions name only their targets' boxes: index the bench composites' every entity too
    index = BenchIndex.from_batches([*world["bench"].to_batches(), world["test_comps"]])
    assert index.counts()["image"] == world["test_comps"].num_rows  # same bytes: indexed once
    scan = NearDuplicateScan(index)
    for batch in world["train_comps"].to_batches(max_chunksize=2):
        scan.scan(batch)
    m = scan.table()
    ents = {f"{r['composite_id']}#{j}": e for r in world["train_comps"].to_pylist() for j, e in enumerate(json.loads(r["entities"]))}
    hits = [r for r in m.to_pylist() if r["bench_id"] is not None]
    assert hits and all(r["train_kind"] == "crop" for r in hits)
    # exactly the crops whose source photo is a copy of a bench photo (x: exact, y: altered) match;
    # the whole-bench-image photo z is a 5-entity picture, its crop is not a bench crop
    expected = {k for k, e in ents.items() if e["image_id"] in ("plane/x/copy", "plane/y/altered")}
    assert expected and {r["train_id"] for r in hits} >= expected
    assert all(ents[r["train_id"]]["image_id"] in ("plane/x/copy", "plane/y/altered", "plane/z/whole") for r in hits)
    assert {r["image_id"] for r in hits} <= {"plane/x/copy", "plane/y/altered", "plane/z/whole"}
    s = scan.summary()
    assert s["checked"] == {"composite": world["train_comps"].num_rows, "crop": len(ents)}
    assert s["contaminated"]["crop"] == len({r["train_id"] for r in hits})
    assert s["contaminated_composite_ids"] == len({r["composite_id"] for r in hits})
    assert s["bench_probes"] == index.counts() and s["max_distance"] == 10
    json.dumps(s)  # goes into manifests as is
    from deepperception.engine.cards import DataCardStats, render_card

    md, _ = render_card(DataCardStats(), {"contamination": s})
    assert f"| crop | {len(ents)} | {s['contaminated']['crop']} |" in md and "imagehash" in md


def test_unhashable_items_are_recorded_with_reason(world, tmp_path):
    index = BenchIndex.from_batches([world["test_comps"]])
    good = world["train"].slice(0, 1).to_pylist()[0]
    rows = [{**good, "image_id": "plane/bad/corrupt", "image": b"\x89PNG\r\n\x1a\n-truncated"},
            {**good, "image_id": "plane/bad/missing", "image": None, "image_uri": str(tmp_path / "nope.jpg")},
            {**good, "image_id": "plane/bad/nobytes", "image": None, "image_uri": "s3://b/k.jpg"}]
    batch = pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA)

    def load(row):
        if row["image"] is not None:
            return row["image"]
        if row["image_uri"].startswith("s3://"):
            raise ValueError("no s3 client here")
        return open(row["image_uri"], "rb").read()

    m = find_near_duplicates([batch], index, load_bytes=load)
    # the project's own loader (local path or s3://) reports its reason codes through
    from deepperception.images import read_image_bytes

    lead = find_near_duplicates([batch.slice(0, 2)], index, load_bytes=lambda r: read_image_bytes(r["image"], r["image_uri"]))
    assert lead.column("hash_reason").to_pylist() == ["corrupt_image", "missing_file"]
    got = {r["train_id"]: (r["hash_reason"], r["bench_id"]) for r in m.to_pylist()}
    assert got == {"plane/bad/corrupt": ("corrupt_image", None), "plane/bad/missing": ("missing_file", None),
                   "plane/bad/nobytes": ("load_error", None)}
    assert "does not decode" in m.column("hash_error")[0].as_py()
    # without a loader, a row that only references its file says so
    scan = NearDuplicateScan(index, load_bytes=load)
    assert scan.scan(batch).num_rows == 3 and scan.table().num_rows == 0  # only matches are kept
    assert scan.summary()["unhashable"] == {"corrupt_image": 1, "load_error": 1, "missing_file": 1}
    assert scan.summary()["checked"] == {"photo": 3}
    d = find_near_duplicates([batch.slice(1, 1)], index)
    assert d.column("hash_reason").to_pylist() == ["empty_image"] and "pass load_bytes" in d.column("hash_error")[0].as_py()
    # a corrupt BENCH image is an error naming the row: a partial bench would pass wrongly
    bad_bench = world["bench"].slice(0, 1).to_pylist()
    bad_bench[0]["image"] = {"bytes": b"garbage", "path": "x.png"}
    with pytest.raises(InputDataError, match=r"row=.* field=image.*corrupt_image"):
        BenchIndex.from_batches([pa.Table.from_pylist(bad_bench, schema=world["bench"].schema)])


def test_vectorised_lookup_equals_brute_force():
    rng = np.random.default_rng(0)
    idx = BenchIndex(ids=[str(i) for i in range(300)], kinds=["image"] * 300,
                     phash=rng.integers(0, 2**63, 300, dtype=np.uint64), dhash=rng.integers(0, 2**63, 300, dtype=np.uint64))
    probes_p = np.concatenate([idx.phash[:50] ^ np.uint64(0b1011), rng.integers(0, 2**63, 200, dtype=np.uint64)])
    probes_d = np.concatenate([idx.dhash[:50] ^ np.uint64(0b1), rng.integers(0, 2**63, 200, dtype=np.uint64)])
    pi, bi, pd, dd = idx.within(probes_p, probes_d, 24, 26)
    brute = {(i, j) for i in range(250) for j in range(300)
             if bin(int(probes_p[i]) ^ int(idx.phash[j])).count("1") <= 24 and bin(int(probes_d[i]) ^ int(idx.dhash[j])).count("1") <= 26}
    assert set(zip(pi.tolist(), bi.tolist())) == brute and {(i, i) for i in range(50)} <= brute
    assert all(p == 3 for (i, j), p in zip(zip(pi.tolist(), bi.tolist()), pd.tolist()) if i == j and i < 50)


def test_drop_contaminated_streams_batches(world):
    index = BenchIndex.from_batches([world["test_comps"]])
    m = find_near_duplicates([world["train"]], index)
    assert contaminated_ids(m) == {"plane/x/copy", "plane/y/altered", "plane/z/whole"}
    out = list(drop_contaminated(world["train"].to_batches(max_chunksize=5), m, "image_id"))
    assert all(isinstance(b, pa.RecordBatch) for b in out)
    kept = pa.Table.from_batches(out).column("image_id").to_pylist()
    assert len(kept) == world["train"].num_rows - 3 and not set(kept) & contaminated_ids(m)
    with pytest.raises(InputDataError, match="field=composite_id"):
        list(drop_contaminated(world["train"].to_batches(), {"x"}, "composite_id"))
