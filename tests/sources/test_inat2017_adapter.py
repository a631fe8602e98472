"""iNaturalist 2017 adapter: COCO JSON, supercategory filter, optional box files."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixture_trees import INAT_SPECIES, build_inat2017

from deepperception.errors import ConfigError, InputDataError
from deepperception.sources import open_source
from deepperception.sources.inspect import inspect_source


@pytest.fixture
def tree(tmp_path):
    return build_inat2017(tmp_path / "inat2017", per_species_train=3, per_species_val=2, missing=1)


def test_supercategory_filter_and_splits(tree):
    src = open_source("inat2017", tree.root, supercategories=["Reptilia"])
    assert src.entities() == INAT_SPECIES["Reptilia"]
    train, test = list(src.iter_images("train")), list(src.iter_images("test"))
    assert len(train) == 9 and len(test) == 6  # 3 species x 3 train, x 2 val
    assert {im.supercategory for im in train + test} == {"Reptilia"}
    assert all("/train_val_images/Reptilia/" in im.uri for im in train + test)
    assert all(im.exists for im in train + test)  # the missing photo is an Plantae val one
    both = open_source("inat2017", tree.root, supercategories=["aves", "REPTILIA"])  # case-insensitive
    assert set(both.entities()) == set(INAT_SPECIES["Aves"] + INAT_SPECIES["Reptilia"])
    assert len(list(both.iter_images())) == 6 * 5


def test_sizes_boxes_and_missing(tree):
    src = open_source("inat2017", tree.root)
    images = list(src.iter_images())
    assert len(images) == tree.count() == 8 * 5
    for im in images:
        assert (im.width, im.height) == tree.sizes[im.key]  # from the JSON, not decoded
        if im.supercategory == "Plantae":
            assert im.box_px is None
        else:  # [x, y, w, h] -> x1 y1 x2 y2; of the two boxes of the first photo, the larger
            x, y, w, h = tree.boxes[im.key]
            assert im.box_px == (x, y, x + w, y + h)
        assert im.exists == Path(im.uri).is_file()
    assert sorted(im.uri for im in images if not im.exists) == sorted(tree.missing)
    report = inspect_source("inat2017", tree.root, split="test", supercategories=["Plantae"])
    assert report == {"source": "inat2017", "split": "test", "entities": 2, "images": 4, "images_with_box": 0,
                      "missing": 1, "per_entity": {"Quercus alba": 2, "Acer rubrum": 2}}


def test_box_files_are_optional(tmp_path):
    tree = build_inat2017(tmp_path / "inat", boxes=False)
    assert not (tree.root / "train_2017_bboxes.json").exists()
    assert all(im.box_px is None for im in open_source("inat2017", tree.root).iter_images())


def test_unknown_supercategory_lists_the_available_ones(tree):
    with pytest.raises(ConfigError, match=r"unknown supercategory Mammalia \(available: Aves, Plantae, Reptilia\)"):
        open_source("inat2017", tree.root, supercategories=["Mammalia"]).entities()


def test_bad_json_names_file_line_and_record(tree):
    (tree.root / "val2017.json").write_text('{"images": [\n{"id": 1,,}]}')
    src = open_source("inat2017", tree.root)
    assert len(list(src.iter_images("train"))) == 24
    with pytest.raises(InputDataError, match=r"val2017\.json line 2: is not valid JSON"):
        list(src.iter_images("test"))
    (tree.root / "val2017.json").write_text('{"images": [{"id": 1}], "annotations": [], "categories": '
                                            '[{"id": 0, "name": "x", "supercategory": "Aves"}]}')
    with pytest.raises(InputDataError, match=r"images\[0\] lacks 'file_name'"):
        list(open_source("inat2017", tree.root).iter_images("test"))
    (tree.root / "train2017.json").unlink()
    with pytest.raises(InputDataError, match=r"train2017\.json is missing"):
        list(open_source("inat2017", tree.root).iter_images("train"))


def test_validation_annotations_alone_are_enough_for_the_test_split(tree):
    (tree.root / "train2017.json").unlink()
    src = open_source("inat2017", tree.root, supercategories=["Aves"])
    assert src.entities() == INAT_SPECIES["Aves"]
    assert len(list(src.iter_images("test"))) == 6
    (tree.root / "val2017.json").unlink()
    with pytest.raises(InputDataError, match=r"train2017\.json is missing"):
        open_source("inat2017", tree.root).entities()
