"""Tiny dataset trees in each source's exact published layout (shared with integration tests).

Every builder writes real JPEGs (PIL), the metadata in the dataset's own syntax, and a few
photos the metadata names but the tree lacks (``missing``, the last photos of the last entity of
the test split, or of train where a split has no test). It returns a :class:`Tree` with what a
reader must find, so tests compare against the builder instead of repeating numbers. Sizes are
parameters so the same builders make 10-photo and 20K-photo trees; one JPEG is encoded per
entity and split and its bytes reused, so large trees are quick to write.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FGVC_NAMES = ["Boeing 737-800", "F-16A/B", "Cessna 172", "DHC-8-300", "A320"]
CARS_NAMES = ["AM General Hummer SUV 2000", "Audi S4 Sedan 2012", "Volvo 240 Sedan 1993", "BMW M3 Coupe 2012"]
FOOD = [("apple_pie", "Apple pie"), ("baby_back_ribs", "Baby back ribs"), ("eggs_benedict", "Eggs benedict"),
        ("pho", "Pho")]
INAT_SPECIES = {"Reptilia": ["Anolis carolinensis", "Crotalus atrox", "Chelydra serpentina"],
                "Aves": ["Cardinalis cardinalis", "Turdus migratorius", "Ardea herodias"],
                "Plantae": ["Quercus alba", "Acer rubrum"]}


@dataclass
class Tree:
    """What a reader of the tree must report."""

    root: Path
    entities: list[str]
    train: dict[str, int] = field(default_factory=dict)
    """Photos the metadata names per entity in the train split (present or not)."""
    test: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    """Absolute paths the metadata names that are not written."""
    boxes: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    """key -> the box as *published* (the dataset's own convention)."""
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)

    def count(self, split: str = "all") -> int:
        parts = [self.train, self.test] if split == "all" else [getattr(self, split)]
        return sum(sum(p.values()) for p in parts)


def _name(names: list[str], i: int, fmt: str) -> str:
    return names[i] if i < len(names) else fmt.format(i=i)


_JPEGS: dict[tuple[int, int, int], bytes] = {}


def jpeg_bytes(width: int, height: int, shade: int = 0) -> bytes:
    """A real baseline JPEG of ``width x height`` (cached per size and shade)."""
    key = (width, height, shade % 256)
    if key not in _JPEGS:
        from PIL import Image

        img = Image.new("RGB", (width, height), ((40 + 37 * shade) % 256, (90 + 53 * shade) % 256, 160))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        _JPEGS[key] = buf.getvalue()
    return _JPEGS[key]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_fgvc_aircraft(root: str | Path, n_variants: int = 3, per_variant: int = 3, test_per_variant: int = 2,
                        missing: int = 1, size: tuple[int, int] = (64, 48)) -> Tree:
    """``data/`` of fgvc-aircraft-2013b: images, variants, trainval/test lists, 1-based boxes."""
    root = Path(root)
    data = root / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    names = [_name(FGVC_NAMES, i, "Variant {i} Mk II") for i in range(n_variants)]
    tree = Tree(root=root, entities=names)
    (data / "variants.txt").write_text("".join(f"{n}\n" for n in names))
    w, h = size
    next_id = 34309  # published ids have leading zeros: 0034309
    box_lines = []
    for split, per, fname in (("train", per_variant, "images_variant_trainval.txt"),
                              ("test", test_per_variant, "images_variant_test.txt")):
        lines = []
        for v, name in enumerate(names):
            getattr(tree, split)[name] = per
            for j in range(per):
                image_id = f"{next_id:07d}"
                next_id += 1
                lines.append(f"{image_id} {name}\n")
                box = (1 + j % 8, 2 + v % 8, w - j % 8, h - 20 - v % 8)  # 1-based inclusive, above the banner
                box_lines.append(f"{image_id} {box[0]} {box[1]} {box[2]} {box[3]}\n")
                tree.boxes[image_id] = tuple(float(b) for b in box)  # type: ignore[assignment]
                path = data / "images" / f"{image_id}.jpg"
                is_missing = split == ("test" if test_per_variant else "train") and v == n_variants - 1 \
                    and j >= per - missing
                if is_missing:
                    tree.missing.append(str(path))
                else:
                    _write(path, jpeg_bytes(w, h, v))
        (data / fname).write_text("".join(lines))
    (data / "images_box.txt").write_text("".join(box_lines))
    return tree


def _annotations(rows: list[tuple[int, int, int, int, int, str]]) -> np.ndarray:
    """A 1xN MATLAB struct array exactly as the devkit's ``annotations`` (scalars as 1x1 arrays)."""
    dt = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    arr = np.zeros((1, len(rows)), dtype=dt)
    for i, (x1, y1, x2, y2, cls, fname) in enumerate(rows):
        arr[0, i] = (np.array([[x1]], dtype=np.uint16), np.array([[y1]], dtype=np.uint16),
                     np.array([[x2]], dtype=np.uint16), np.array([[y2]], dtype=np.uint16),
                     np.array([[cls]], dtype=np.uint8), np.array([fname]))
    return arr


def build_stanford_cars(root: str | Path, n_classes: int = 3, per_class_train: int = 3, per_class_test: int = 2,
                        missing: int = 1, size: tuple[int, int] = (64, 48),
                        test_annos_in_devkit: bool = False) -> Tree:
    """cars_train/, cars_test/, devkit/cars_meta.mat, devkit/cars_train_annos.mat,
    cars_test_annos_withlabels.mat, written with ``scipy.io.savemat`` in the devkit's structure."""
    import scipy.io

    root = Path(root)
    names = [_name(CARS_NAMES, i, "Make{i} Model Sedan 2012") for i in range(n_classes)]
    tree = Tree(root=root, entities=names)
    (root / "devkit").mkdir(parents=True, exist_ok=True)
    class_names = np.empty((1, n_classes), dtype=object)
    for i, n in enumerate(names):
        class_names[0, i] = np.array([n])
    scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": class_names})
    w, h = size
    for split, per, folder in (("train", per_class_train, "cars_train"), ("test", per_class_test, "cars_test")):
        rows = []
        n = 1
        for c, name in enumerate(names):
            getattr(tree, split)[name] = per
            for j in range(per):
                fname = f"{n:05d}.jpg"  # train and test both start at 00001.jpg, as published
                n += 1
                box = (1 + j % 8, 1 + c % 8, w - j % 8, h - c % 8)
                rows.append((*box, c + 1, fname))
                tree.boxes[f"{split}-{fname[:-4]}"] = tuple(float(b) for b in box)  # type: ignore[assignment]
                path = root / folder / fname
                if split == "test" and c == n_classes - 1 and j >= per - missing:
                    tree.missing.append(str(path))
                else:
                    _write(path, jpeg_bytes(w, h, c))
        target = (root / "devkit" / "cars_train_annos.mat" if split == "train" else
                  root / ("devkit" if test_annos_in_devkit else "") / "cars_test_annos_withlabels.mat")
        scipy.io.savemat(target, {"annotations": _annotations(rows)})
    return tree


def build_inat2017(root: str | Path, species: dict[str, list[str]] | None = None, per_species_train: int = 3,
                   per_species_val: int = 1, missing: int = 1, boxes: bool = True,
                   size: tuple[int, int] = (64, 48)) -> Tree:
    """train_val_images/<supercategory>/<species>/, train2017.json, val2017.json and (``boxes``)
    train_2017_bboxes.json / val_2017_bboxes.json, COCO style. ``tree.boxes`` is keyed by stem
    with the published ``[x, y, w, h]``; the first image of each species gets two boxes, the
    second larger (the adapter keeps the largest); Plantae gets no box (as in the release)."""
    root = Path(root)
    species = species if species is not None else INAT_SPECIES
    cats = []
    cid = 0
    for sup, names in species.items():
        for n in names:
            cats.append({"id": cid, "name": n, "supercategory": sup})
            cid += 1
    tree = Tree(root=root, entities=[c["name"] for c in cats])
    w, h = size
    image_id = 100
    for split, per, fname, bname in (("train", per_species_train, "train2017.json", "train_2017_bboxes.json"),
                                     ("test", per_species_val, "val2017.json", "val_2017_bboxes.json")):
        images, annos, box_images, box_annos = [], [], [], []
        for c in cats:
            getattr(tree, split)[c["name"]] = per
            for j in range(per):
                stem = f"{image_id:08x}{'ab' * 12}"
                file_name = f"train_val_images/{c['supercategory']}/{c['name']}/{stem}.jpg"
                images.append({"id": image_id, "file_name": file_name, "width": w + j, "height": h,
                               "license": 1, "rights_holder": "someone"})
                annos.append({"id": image_id, "image_id": image_id, "category_id": c["id"]})
                tree.sizes[stem] = (w + j, h)
                if boxes and c["supercategory"] != "Plantae":
                    box_images.append({"id": image_id, "file_name": file_name, "width": w + j, "height": h})
                    published = [1.0 + j % 8, 2.0, 20.0 + j % 8, 10.5]
                    if j == 0:
                        box_annos.append({"id": len(box_annos), "image_id": image_id, "category_id": c["id"],
                                          "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0})
                    box_annos.append({"id": len(box_annos), "image_id": image_id, "category_id": c["id"],
                                      "bbox": published, "area": published[2] * published[3], "iscrowd": 0})
                    tree.boxes[stem] = tuple(published)  # type: ignore[assignment]
                path = root / file_name
                if split == "test" and c is cats[-1] and j >= per - missing:
                    tree.missing.append(str(path))
                else:
                    _write(path, jpeg_bytes(w + j, h, c["id"]))
                image_id += 1
        doc = {"info": {"year": 2017}, "images": images, "annotations": annos, "categories": cats,
               "licenses": [{"id": 1, "name": "cc"}]}
        (root / fname).write_text(json.dumps(doc))
        if boxes:
            (root / bname).write_text(json.dumps({"images": box_images, "annotations": box_annos,
                                                  "categories": cats}))
    return tree


def build_food101(root: str | Path, n_classes: int = 3, per_class_train: int = 3, per_class_test: int = 1,
                  missing: int = 1, size: tuple[int, int] = (64, 48)) -> Tree:
    """``food-101/``: images/<class>/<id>.jpg and meta/{classes,labels,train,test}.txt."""
    root = Path(root)
    classes = [FOOD[i] if i < len(FOOD) else (f"dish_{i}", f"Dish {i}") for i in range(n_classes)]
    tree = Tree(root=root, entities=[label for _, label in classes])
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "classes.txt").write_text("".join(f"{c}\n" for c, _ in classes))
    (root / "meta" / "labels.txt").write_text("".join(f"{label}\n" for _, label in classes))
    w, h = size
    n = 1000000
    for split, per in (("train", per_class_train), ("test", per_class_test)):
        lines = []
        for ci, (cls, label) in enumerate(classes):
            getattr(tree, split)[label] = per
            for j in range(per):
                lines.append(f"{cls}/{n}\n")
                path = root / "images" / cls / f"{n}.jpg"
                if split == ("test" if per_class_test else "train") and ci == n_classes - 1 and j >= per - missing:
                    tree.missing.append(str(path))
                else:
                    _write(path, jpeg_bytes(w, h, ci))
                n += 7
        (root / "meta" / f"{split}.txt").write_text("".join(lines))
    return tree


def build_image_folder(root: str | Path, n_entities: int = 3, per_entity: int = 4,
                       size: tuple[int, int] = (64, 48)) -> Tree:
    """``root/<entity name>/*.jpg`` (one .png per entity too); names with underscores for spaces."""
    root = Path(root)
    names = [f"Entity {i} Mk_{i}" for i in range(n_entities)]
    tree = Tree(root=root, entities=[n.replace("_", " ") for n in names])
    for i, n in enumerate(names):
        for j in range(per_entity):
            ext = "png" if j == 0 else "jpg"
            if ext == "png":
                from PIL import Image

                buf = io.BytesIO()
                Image.new("RGB", size, (i * 40 % 256, 0, 0)).save(buf, format="PNG")
                data = buf.getvalue()
            else:
                data = jpeg_bytes(*size, i)
            _write(root / n / f"img_{j:03d}.{ext}", data)
        tree.train[n.replace("_", " ")] = per_entity  # split by hash: train + test together
    return tree


def upload_tree(local_root: str | Path, s3_client, bucket: str, prefix: str) -> str:
    """Copy a built tree to ``s3://bucket/prefix`` (boto3 client); returns that URI."""
    local_root = Path(local_root)
    for path in sorted(local_root.rglob("*")):
        if path.is_file():
            s3_client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(local_root).as_posix()}",
                                 Body=path.read_bytes())
    return f"s3://{bucket}/{prefix}"
