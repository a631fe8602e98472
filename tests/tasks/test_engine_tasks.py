"""The real-data path through the same tasks: ImageFolder datasets -> entities -> images."""

from PIL import Image

from deepperception.config import DataSourceConfig, ImageFolderSource
from deepperception.engine.collection import CollectionConfig
from deepperception.store import ArtifactStore, StoreSettings
from tasks.engine import collect_images_task, mine_entities_task


def _folder(root, entities, n=3):
    for e in entities:
        d = root / e
        d.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40 + i, 30), (10 * i, 100, 200)).save(d / f"{i}.jpg")
    return root


def test_image_folders_flow_through_mine_and_collect(tmp_path):
    src = DataSourceConfig(kind="image_folder", folders=[
        ImageFolderSource(category="aircraft", root=str(_folder(tmp_path / "fgvc", ["Boeing_767", "A320"]))),
        ImageFolderSource(category="dog", root=str(_folder(tmp_path / "dogs", ["Beagle"])), split="unseen"),
    ])
    uri = str(tmp_path / "store")
    entities = mine_entities_task.fn(src, uri)
    store = ArtifactStore(StoreSettings(uri=uri))
    ent = store.read_table(entities)
    assert sorted(ent.column("name").to_pylist()) == ["A320", "Beagle", "Boeing 767"]
    images = collect_images_task.fn(src, CollectionConfig(), entities, uri)
    table = store.read_table(images)
    assert table.num_rows == 9
    assert set(table.column("category").to_pylist()) == {"aircraft", "dog"}
    pools = {p for c, p in zip(table.column("category").to_pylist(), table.column("pool").to_pylist()) if c == "dog"}
    assert pools == {"test"}
    assert all(b is None for b in table.column("source_box_px").to_pylist())
