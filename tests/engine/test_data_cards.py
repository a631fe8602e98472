"""Data cards: the numbers in the Markdown are the inputs' numbers, and the figures are PNGs."""

from __future__ import annotations

import base64
import io
import json
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from deepperception.engine.cards import DataCardStats, render_card, render_card_for_prefect
from deepperception.engine.composition import CompositionConfig, compose
from deepperception.engine.distillation import DistillConfig, TemplateTeacher, distill
from deepperception.engine.filtering import filter_cot
from deepperception.errors import InputDataError


@pytest.fixture(scope="module")
def tables(labeled, entities):
    comps = compose(labeled, CompositionConfig(composites_per_category=3, seed=5))
    cot = distill(comps, TemplateTeacher(entities), DistillConfig(targets_per_composite=1))
    # two teacher failures and one CoT that the filter must reject
    rows = cot.to_pylist()
    rows[0].update(cot=None, response=None, error="HTTP 500 after 3 attempts")
    rows[1].update(cot=None, response=None, error="timeout")
    rows[2].update(cot="too short")
    cot = pa.Table.from_pylist(rows, schema=cot.schema)
    kept, rejected = filter_cot(cot)
    return dict(comps=comps, cot=cot, kept=kept, rejected=rejected)


META = {
    "dataset": "kvg-train", "version": "ab12cd",
    "labeler": {"model": "qwen2-vl-7b", "backend": "openai", "prompt_hash": "p1a2",
                "usage": {"requests": 100, "failed": 2, "prompt_tokens": 1000, "completion_tokens": 500, "cost_usd": 0.25}},
    "teacher": {"model": "qwen2-vl-72b", "prompt_hash": "t9f8", "usage": {"requests": 10, "prompt_tokens": 2_000_000,
                                                                         "completion_tokens": 1_000_000},
                "price_per_million": {"prompt": 0.5, "completion": 2.0}},
    "prompt_hashes": {"knowledge_card": "k777"},
    "drops": {"collect": {"corrupt_image": 3, "missing_file": 1}},
    "tables": {"sft": 42},
    "contamination": {"method": "imagehash phash", "checked": {"photo": 80, "crop": 30}, "contaminated": {"crop": 2},
                      "unhashable": {"corrupt_image": 1},
                      "examples": [{"train_id": "c#1", "bench_id": "bird/3", "distance": 2}]},
    "notes": ["rehearsal scale"],
}


def _stats(labeled, t, *, chunk=7) -> DataCardStats:
    s = DataCardStats()
    for b in labeled.to_batches(max_chunksize=chunk):
        s.add_images(b)
        s.add_labels(b)
    for b in t["comps"].to_batches(max_chunksize=chunk):
        s.add_composites(b)
    for b in t["cot"].to_batches(max_chunksize=chunk):
        s.add_cot(b)
    s.add_rejections(t["rejected"], stage="cot_filter")
    s.add_labels(ious=[0.9, 0.6, 0.4, 0.2])
    s.add_labels(iou_histogram={"edges": [0.0, 0.5, 1.0], "counts": [3, 7]})
    return s


def row(md: str, *cells) -> bool:
    return ("| " + " | ".join(map(str, cells)) + " |") in md


def test_card_numbers_match_inputs(labeled, tables):
    md, figs = render_card(_stats(labeled, tables), META)
    assert md.startswith("# Data card: kvg-train @ ab12cd")
    # photos per category and entity
    for cat, n in Counter(labeled.column("category").to_pylist()).items():
        ents = len({e for e, c in zip(labeled.column("entity_id").to_pylist(), labeled.column("category").to_pylist()) if c == cat})
        assert row(md, cat, ents, n)
    assert row(md, "photos", labeled.num_rows) and row(md, "entities", len(set(labeled.column("entity_id").to_pylist())))
    per = Counter(labeled.column("entity_id").to_pylist())
    assert f"Photos per entity: min {min(per.values())}, median" in md
    e0 = sorted(per)[0]
    name = labeled.column("name").to_pylist()[labeled.column("entity_id").to_pylist().index(e0)]
    appear = sum(1 for ents in tables["comps"].column("entities").to_pylist() for it in json.loads(ents) if it["entity_id"] == e0)
    assert row(md, e0, name, per[e0], appear)
    # composites: k and layout distributions
    comps = tables["comps"]
    n = comps.num_rows
    ks = Counter(len(json.loads(e)) for e in comps.column("entities").to_pylist())
    for k, c in ks.items():
        assert row(md, k, c, f"{100 * c / n:.1f} %")
    for lay, c in Counter(comps.column("layout").to_pylist()).items():
        assert row(md, lay, c, f"{100 * c / n:.1f} %")
    # box sizes
    assert row(md, "composite entities", sum(ks[k] * k for k in ks), md.split("| composite entities | ")[1].split(" | ")[1].split(" |")[0])
    boxes = [b for b in labeled.column("box").to_pylist() if b is not None]
    assert f"Labeled: {len(boxes)} of {labeled.num_rows} photos got a box (100.0 %)." in md
    # labeler agreement: the label_iou column + 2 of 4 listed + 7 of 10 in the histogram
    ious = [v for v in labeled.column("label_iou").to_pylist() if v is not None]
    good, total = sum(v >= 0.5 for v in ious) + 9, len(ious) + 14
    assert f"Labeler agreement with the dataset boxes: {good} of {total} with IoU >= 0.5 ({100 * good / total:.1f} %)." in md
    # CoT and rejections
    cot = tables["cot"]
    assert f"Teacher replies: {cot.num_rows - 2} of {cot.num_rows} usable" in md
    assert row(md, "teacher_error", 2)
    for reason, c in Counter(tables["rejected"].column("reason").to_pylist()).items():
        assert row(md, "cot_filter", reason, c)
    assert row(md, "cot_filter", "too_short", 1)
    assert row(md, "collect", "corrupt_image", 3) and row(md, "collect", "missing_file", 1)
    assert row(md, "rejected or dropped items", tables["rejected"].num_rows + 4)
    # models, tokens, cost (teacher cost from prices: 2M * 0.5 + 1M * 2.0 per million = 3.0 USD)
    assert row(md, "labeler", "qwen2-vl-7b", "openai", "p1a2", 100, 2, 1000, 500, "0.2500")
    assert row(md, "teacher", "qwen2-vl-72b", "", "t9f8", 10, "", 2_000_000, 1_000_000, "3.0000")
    assert row(md, "total", "", "", "", 110, "", 2_001_000, 1_000_500, "3.2500")
    assert row(md, "knowledge_card", "k777") and row(md, "sft rows", 42)
    assert row(md, "crop", 30, 2) and row(md, "c#1", "bird/3", 2) and "- rehearsal scale" in md
    # every figure is referenced and decodes as a PNG
    links = re.findall(r"\]\(figures/([^)]+)\)", md)
    assert sorted(links) == sorted(figs) == sorted(["categories.png", "label_agreement.png", "box_sizes.png",
                                                    "composites.png", "rejections.png"])
    for data in figs.values():
        im = Image.open(io.BytesIO(data))
        assert im.format == "PNG" and min(im.size) > 50
        im.load()


def test_sharded_stats_merge_to_the_same_card(labeled, tables):
    whole = render_card(_stats(labeled, tables), META)
    half = labeled.num_rows // 2
    a = _stats(labeled.slice(0, half), {**tables, "comps": tables["comps"].slice(0, 2), "cot": tables["cot"].slice(0, 0),
                                       "rejected": tables["rejected"]})
    b = DataCardStats()
    for x in labeled.slice(half).to_batches():
        b.add_images(x)
        b.add_labels(x)
    b.add_composites(tables["comps"].slice(2))
    b.add_cot(tables["cot"])
    assert render_card(a.merge(b), META) == whole  # same Markdown and byte-identical PNGs


def test_prefect_card_inlines_figures(labeled, tables):
    stats = _stats(labeled, tables)
    md, figs = render_card(stats, META)
    inlined = render_card_for_prefect(stats, META)
    assert "](figures/" not in inlined
    urls = re.findall(r"\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", inlined)
    assert sorted(base64.b64decode(u) for u in urls) == sorted(figs.values())


def test_empty_stats_and_bad_input():
    md, figs = render_card(DataCardStats(), {})
    assert md.startswith("# Data card: dataset") and figs == {} and row(md, "photos", 0)
    s = DataCardStats()
    with pytest.raises(InputDataError, match="field=iou_histogram"):
        s.add_labels(iou_histogram={"edges": [0.0, 0.3, 1.0], "counts": [1, 2]})
    with pytest.raises(InputDataError, match="field=ious"):
        s.add_labels(ious=[1.5])
    with pytest.raises(InputDataError, match="field=reason"):
        s.add_rejections(pa.table({"question_id": ["a"]}))
    with pytest.raises(InputDataError, match="row=c1 field=entities"):
        s.add_composites(pa.table({"composite_id": ["c1"], "category": ["x"], "entities": ["not json"]}))
    # a drops table with a per-item reason column: null reasons are rows that did not fail
    s.add_rejections(pa.table({"image_id": ["a", "b", "c"], "label_reason": ["timeout", None, "timeout"]}), stage="label")
    s.add_labels(pa.table({"box": pa.array([[0, 0, 500, 500], None], pa.list_(pa.int32(), 4)),
                           "label_reason": [None, "no_box"], "label_iou": [0.75, None]}))
    # the labeling stage's agreement dict and a REJECTED_SCHEMA table (stage per row)
    from deepperception.engine.common import rejected_table
    from deepperception.engine.labeling import agreement_stats

    s.add_labels(iou_histogram=agreement_stats([0.05, 0.45, 0.55, 1.0], 0.5))
    s.add_rejections(rejected_table([{"item_id": "p", "stage": "collect", "reason": "missing_file", "detail": None}]), stage="x")
    md, figs = render_card(s, {})
    assert "3 of 5 with IoU >= 0.5 (60.0 %)" in md and row(md, "collect", "missing_file", 1)
    assert row(md, "label", "timeout", 2) and row(md, "no_box", 1) 
    assert np.asarray(s.photo_box_area).sum() == 1 and s.photo_box_area[5] == 1  # area share 0.25
