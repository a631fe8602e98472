"""Stanford Cars adapter on real .mat files written in the devkit's exact structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from fixture_trees import _annotations, build_stanford_cars

from deepperception.errors import InputDataError
from deepperception.sources import open_source
from deepperception.sources.inspect import inspect_source


@pytest.fixture
def tree(tmp_path):
    return build_stanford_cars(tmp_path / "stanford_cars", n_classes=3, per_class_train=3, per_class_test=2)


def test_fixture_mat_files_have_the_devkit_structure(tree):
    meta = scipy.io.loadmat(tree.root / "devkit" / "cars_meta.mat")
    assert meta["class_names"].shape == (1, 3) and meta["class_names"].dtype == object
    assert meta["class_names"][0, 1][0] == "Audi S4 Sedan 2012"
    annos = scipy.io.loadmat(tree.root / "devkit" / "cars_train_annos.mat")["annotations"]
    assert annos.shape == (1, 9)
    assert annos.dtype.names == ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    assert annos[0, 0]["fname"][0] == "00001.jpg" and annos[0, 0]["class"].shape == (1, 1)


def test_reads_classes_splits_and_boxes(tree):
    src = open_source("stanford-cars", tree.root)
    assert src.entities() == tree.entities
    train, test = list(src.iter_images("train")), list(src.iter_images("test"))
    assert len(train) == 9 and len(test) == 6
    assert train[0].key == "train-00001" and test[0].key == "test-00001"  # same file names in both folders
    assert train[0].uri.endswith("cars_train/00001.jpg") and test[0].uri.endswith("cars_test/00001.jpg")
    for im in train + test:
        x1, y1, x2, y2 = tree.boxes[im.key]
        assert im.box_px == (x1 - 1, y1 - 1, x2, y2)
        assert im.crop_bottom == 0 and im.exists == Path(im.uri).is_file()
    per = {e: sum(im.entity == e for im in test) for e in tree.entities}
    assert per == tree.test  # class (1-based) -> class_names{class}
    assert sorted(im.uri for im in test if not im.exists) == sorted(tree.missing)
    report = inspect_source("stanford-cars", tree.root)
    assert (report["images"], report["images_with_box"], report["missing"], report["entities"]) == (15, 15, 1, 3)


def test_test_annotations_in_devkit_are_found(tmp_path):
    tree = build_stanford_cars(tmp_path / "cars", test_annos_in_devkit=True)
    assert len(list(open_source("stanford-cars", tree.root).iter_images("test"))) == tree.count("test")


def test_missing_labelled_test_annotations(tree):
    (tree.root / "cars_test_annos_withlabels.mat").unlink()
    src = open_source("stanford-cars", tree.root)
    assert len(list(src.iter_images("train"))) == 9
    with pytest.raises(InputDataError, match=r"cars_test_annos_withlabels\.mat are missing"):
        list(src.iter_images("test"))


def test_class_out_of_range_names_file_and_row(tree):
    rows = [(1, 1, 10, 10, 1, "00001.jpg"), (1, 1, 10, 10, 4, "00002.jpg")]
    scipy.io.savemat(tree.root / "devkit" / "cars_train_annos.mat", {"annotations": _annotations(rows)})
    with pytest.raises(InputDataError, match=r"cars_train_annos\.mat: annotations\(2\)\.class 4 is outside 1\.\.3") as e:
        list(open_source("stanford-cars", tree.root).iter_images("train"))
    assert e.value.row == 2 and e.value.field == "class"


def test_unreadable_or_wrong_mat(tree):
    (tree.root / "devkit" / "cars_meta.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(InputDataError, match=r"cars_meta\.mat: is not a readable MATLAB file"):
        open_source("stanford-cars", tree.root).entities()
    scipy.io.savemat(tree.root / "devkit" / "cars_meta.mat", {"names": np.array(["x"])})
    with pytest.raises(InputDataError, match="has no 'class_names' variable"):
        open_source("stanford-cars", tree.root).entities()
