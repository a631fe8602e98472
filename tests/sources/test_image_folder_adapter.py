"""image-folder adapter: root/<entity>/*.jpg|png, split by the same hash as collection."""

from __future__ import annotations

import pytest
from fixture_trees import build_image_folder

from deepperception.engine.collection import collect_from_image_folder
from deepperception.errors import ConfigError
from deepperception.sources import open_source
from deepperception.sources.collect import SourceSpec, collect_batches


@pytest.fixture
def tree(tmp_path):
    return build_image_folder(tmp_path / "folder", n_entities=3, per_entity=8)


def test_entities_and_hash_split(tree):
    src = open_source("image-folder", tree.root, test_fraction=0.5, seed=3)
    assert src.entities() == tree.entities  # underscores read as spaces
    train, test = list(src.iter_images("train")), list(src.iter_images("test"))
    assert len(train) + len(test) == 24 and train and test
    assert all(src.pool_of(im.entity, im.key) == im.split for im in train + test)
    assert {(im.entity, im.key) for im in train}.isdisjoint({(im.entity, im.key) for im in test})
    assert all(im.box_px is None and im.exists for im in train + test)
    assert any(im.uri.endswith(".png") for im in train + test)
    assert [im.key for im in open_source("image-folder", tree.root, test_fraction=0.0).iter_images("test")] == []
    assert len(list(open_source("image-folder", tree.root, test_fraction=1.0).iter_images("test"))) == 24


def test_pools_agree_with_collect_from_image_folder(tree):
    old = collect_from_image_folder(tree.root, "thing", "seen", test_fraction=0.5, seed=7, max_side=None)
    spec = SourceSpec(source="image-folder", root=str(tree.root), category="thing", split="seen",
                      test_fraction=0.5, seed=7)
    new = [r for b in collect_batches(spec) for r in b.to_pylist()]
    assert {r["image_id"]: r["pool"] for r in new} == dict(zip(old["image_id"].to_pylist(), old["pool"].to_pylist()))
    assert all(r["image"] is None and r["image_uri"] for r in new)


def test_shared_stem_keeps_both_files(tree):
    d = tree.root / "Entity 0 Mk_0"
    (d / "img_001.png").write_bytes((d / "img_000.png").read_bytes())
    keys = sorted(im.key for im in open_source("image-folder", tree.root).iter_images()
                  if im.entity == "Entity 0 Mk 0")
    assert "img_001.jpg" in keys and "img_001.png" in keys and "img_002" in keys


def test_bad_options(tree):
    with pytest.raises(ConfigError, match="test_fraction must be within"):
        open_source("image-folder", tree.root, test_fraction=2.0)
    with pytest.raises(ConfigError, match="takes no option colour"):
        open_source("image-folder", tree.root, colour="red")
