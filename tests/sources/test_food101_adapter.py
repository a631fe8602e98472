"""Food-101 adapter: meta/{classes,labels,train,test}.txt and images/<class>/<id>.jpg."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixture_trees import build_food101

from deepperception.errors import ConfigError, InputDataError
from deepperception.sources import open_source
from deepperception.sources.inspect import inspect_source


@pytest.fixture
def tree(tmp_path):
    return build_food101(tmp_path / "food-101", n_classes=3, per_class_train=3, per_class_test=2)


def test_human_labels_splits_and_missing(tree):
    src = open_source("food101", tree.root)
    assert src.entities() == ["Apple pie", "Baby back ribs", "Eggs benedict"]  # labels.txt, not class dirs
    train, test = list(src.iter_images("train")), list(src.iter_images("test"))
    assert (len(train), len(test)) == (9, 6)
    assert all(im.box_px is None and im.width is None for im in train + test)
    assert train[0].key == "1000000" and train[0].uri.endswith("images/apple_pie/1000000.jpg")
    assert all(im.exists == Path(im.uri).is_file() for im in train + test)
    assert [im.uri for im in test if not im.exists] == tree.missing
    report = inspect_source("food101", tree.root, split="train")
    assert report == {"source": "food101", "split": "train", "entities": 3, "images": 9, "images_with_box": 0,
                      "missing": 0, "per_entity": tree.train}


def test_labels_must_pair_with_classes(tree):
    (tree.root / "meta" / "labels.txt").write_text("Apple pie\nBaby back ribs\n")
    with pytest.raises(InputDataError, match=r"labels\.txt: has 2 labels but meta/classes\.txt has 3 classes"):
        open_source("food101", tree.root).entities()


def test_bad_list_lines_name_the_line(tree):
    path = tree.root / "meta" / "test.txt"
    path.write_text(path.read_text() + "sushi/123\n")
    with pytest.raises(InputDataError, match=r"test\.txt line 7: class 'sushi' is not in meta/classes\.txt"):
        list(open_source("food101", tree.root).iter_images("test"))
    path.write_text("apple_pie\n")
    with pytest.raises(InputDataError, match=r"test\.txt line 1: expected '<class>/<id>'"):
        list(open_source("food101", tree.root).iter_images("test"))


def test_no_supercategories_and_bad_split(tree):
    with pytest.raises(ConfigError, match="has no supercategories"):
        open_source("food101", tree.root, supercategories=["Aves"])
    with pytest.raises(ConfigError, match="split must be one of"):
        list(open_source("food101", tree.root).iter_images("val"))  # type: ignore[arg-type]
