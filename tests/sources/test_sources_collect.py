"""collect_batches / collect_drops / source_entities: rows in IMAGES_SCHEMA, every drop with its reason."""

from __future__ import annotations

import pyarrow as pa
import pytest
from fixture_trees import build_fgvc_aircraft, build_food101, build_inat2017

from deepperception.engine.collection import IMAGES_SCHEMA
from deepperception.errors import InputDataError
from deepperception.sources.collect import DROPS_SCHEMA, SourceSpec, collect_batches, collect_drops, source_entities


def _spec(tree, source="food101", **kw):
    kw.setdefault("category", "food")
    kw.setdefault("split", "seen")
    return SourceSpec(source=source, root=str(tree.root), **kw)


def test_batches_schema_pools_and_ids(tmp_path):
    tree = build_food101(tmp_path / "food", n_classes=4, per_class_train=5, per_class_test=2, missing=1)
    batches = list(collect_batches(_spec(tree), batch_rows=7))
    assert [b.num_rows for b in batches] == [7, 7, 7, 6]  # 28 named, 1 missing
    assert all(b.schema == IMAGES_SCHEMA for b in batches)
    rows = pa.Table.from_batches(batches).to_pylist()
    assert len({r["image_id"] for r in rows}) == 27
    assert sum(r["pool"] == "train" for r in rows) == 20 and sum(r["pool"] == "test" for r in rows) == 7
    assert rows[0]["entity_id"] == "food/apple-pie" and rows[0]["image_id"] == "food/apple-pie/1000000"
    assert all(r["split"] == "seen" and r["source"] == "food101" and r["image"] is None for r in rows)
    unseen = _spec(tree, split="unseen", source_split="train")
    rows = [r for b in collect_batches(unseen) for r in b.to_pylist()]
    assert len(rows) == 20 and {r["pool"] for r in rows} == {"test"}  # unseen: bench only, whatever the split
    assert {r["split"] for r in rows} == {"unseen"}
    ents = source_entities(_spec(tree))
    assert [e.entity_id for e in ents] == ["food/apple-pie", "food/baby-back-ribs", "food/eggs-benedict", "food/pho"]
    assert all(e.knowledge_card == "" and e.split == "seen" and e.category == "food" for e in ents)


def test_drops_too_few_photos_empty_entity_and_missing(tmp_path):
    tree = build_food101(tmp_path / "food", n_classes=3, per_class_train=2, per_class_test=1, missing=1)
    # Pho: listed in classes.txt but no photo in any list.
    for name, line in (("classes.txt", "pho"), ("labels.txt", "Pho")):
        p = tree.root / "meta" / name
        p.write_text(p.read_text() + line + "\n")
    spec = _spec(tree, source_split="test", min_images_per_entity=1)
    drops = collect_drops(spec)
    assert drops.schema == DROPS_SCHEMA
    assert [(d["item_id"], d["reason"]) for d in drops.to_pylist()] == [
        ("food/pho", "empty_entity"), ("food/eggs-benedict/1000056", "missing_file")]
    # Every entity has one test photo: with the default minimum of 2 nothing is left.
    with pytest.raises(InputDataError, match=r"is empty: no entity has 2 or more present photos \(most: 1\)"):
        next(collect_batches(_spec(tree, source_split="test")))


def test_min_images_per_entity_drops_small_entities(tmp_path):
    tree = build_food101(tmp_path / "food", n_classes=3, per_class_train=3, per_class_test=1, missing=1)
    spec = _spec(tree, min_images_per_entity=4)  # 3 train + 1 test named each; the last class's test photo is missing
    seen: list[dict] = []
    rows = [r for b in collect_batches(spec, on_drop=seen.append) for r in b.to_pylist()]
    assert {r["name"] for r in rows} == {"Apple pie", "Baby back ribs"}
    assert sorted(d["reason"] for d in seen) == ["missing_file"] + ["too_few_photos"] * 3
    assert all("fewer than min_images_per_entity=4" in d["detail"] for d in seen if d["reason"] == "too_few_photos")
    assert [e.name for e in source_entities(spec)] == ["Apple pie", "Baby back ribs"]
    assert collect_drops(spec).to_pylist() == seen  # one pass with on_drop == the drops table


def test_max_images_per_entity_and_duplicates(tmp_path):
    tree = build_fgvc_aircraft(tmp_path / "fgvc", n_variants=2, per_variant=4, test_per_variant=0, missing=0)
    trainval = tree.root / "data" / "images_variant_trainval.txt"
    first = trainval.read_text().splitlines()[0]
    trainval.write_text(trainval.read_text() + first + "\n")  # the same photo listed twice
    spec = _spec(tree, source="fgvc-aircraft", category="aircraft", max_images_per_entity=3)
    seen: list[dict] = []
    rows = [r for b in collect_batches(spec, on_drop=seen.append) for r in b.to_pylist()]
    assert len(rows) == 6 and len({r["image_id"] for r in rows}) == 6
    assert [(d["reason"], d["item_id"]) for d in seen] == [("duplicate_id", f"aircraft/boeing-737-800/{first[:7]}")]


def test_empty_category_names_root_and_why(tmp_path):
    tree = build_inat2017(tmp_path / "inat", per_species_val=1, missing=1)
    spec = _spec(tree, source="inat2017", category="reptile", supercategories=["Reptilia"], source_split="test")
    with pytest.raises(InputDataError, match=r"category reptile from inat2017 at .*inat \(supercategories Reptilia\) "
                                             r"is empty: no entity has 2 or more present photos \(most: 1\)"):
        list(collect_batches(spec))
    spec = _spec(tree, source="inat2017", category="plant", supercategories=["Plantae"], source_split="test",
                 min_images_per_entity=1)
    assert len([r for b in collect_batches(spec) for r in b.to_pylist()]) == 1  # 2 photos, 1 missing
    (tree.root / "train_val_images" / "Plantae").rename(tree.root / "gone")
    with pytest.raises(InputDataError, match=r"is empty: none of the 2 photos the metadata names exists"):
        source_entities(spec)


def test_spec_validation():
    with pytest.raises(ValueError, match="unknown source 'imagenet'"):
        SourceSpec(source="imagenet", root="/x", category="a", split="seen")
    with pytest.raises(ValueError, match="category"):
        SourceSpec(source="food101", root="/x", category="food/stuff", split="seen")
