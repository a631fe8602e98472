"""The real-data path end to end, on tiny trees in each dataset's exact published layout:
FGVC-Aircraft, Stanford Cars, iNaturalist 2017 (Reptilia and Aves) and Food-101 -> entities with
LLM knowledge cards -> photos by reference -> labels from a model endpoint (checked against the
datasets' boxes) -> composites -> bench and CoTs -> contamination check, data card and exports.
Every model call goes over HTTP to a loopback OpenAI-compatible server."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from deepperception.config import (
    DataSourceConfig,
    DatasetsConfig,
    DistillationStageConfig,
    KnowledgeStageConfig,
    LabelingStageConfig,
    ShardingConfig,
)
from deepperception.engine.collection import CollectionConfig
from deepperception.engine.composition import CompositionConfig
from deepperception.engine.contamination import ContaminationConfig
from deepperception.engine.distillation import DistillConfig
from deepperception.engine.filtering import FilterConfig
from deepperception.engine.labeling import LabelConfig
from deepperception.serving.endpoint import EndpointConfig
from deepperception.sources.collect import SourceSpec
from deepperception.store import ArtifactStore, StoreSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sources"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
import fixture_trees as ft  # noqa: E402
from fault_server import FaultServer  # noqa: E402

pytestmark = pytest.mark.slow

CARD = ("The {name} shows a distinctive silhouette and proportions, with characteristic markings and colours "
        "that a photograph shows clearly.")


def _reply(text: str, n_images: int) -> str:
    """A knowledge card for text-only requests, a box for grounding requests."""
    if n_images == 0:
        name = re.search(r'knowledge card for "([^"]+)"', text)
        return CARD.format(name=name.group(1) if name else "entity")
    if text.startswith("Find and give the bounding box of"):
        return "<|object_ref_start|>x<|object_ref_end|><|box_start|>(40,60),(960,940)<|box_end|>"
    return "no box here"


def _trees(root: Path) -> dict[str, ft.Tree]:
    return {
        "aircraft": ft.build_fgvc_aircraft(root / "fgvc-aircraft-2013b", n_variants=3, per_variant=3, test_per_variant=2),
        "car": ft.build_stanford_cars(root / "stanford-cars", n_classes=3, per_class_train=3, per_class_test=2),
        "inat": ft.build_inat2017(root / "inat2017", per_species_train=3, per_species_val=2),
        "food": ft.build_food101(root / "food-101", n_classes=3, per_class_train=3, per_class_test=2),
    }


def test_four_datasets_through_the_data_engine(prefect_harness, tmp_path):
    from flows import stages

    trees = _trees(tmp_path / "data")
    sources = DataSourceConfig(kind="datasets", sources=[
        SourceSpec(source="fgvc-aircraft", root=str(trees["aircraft"].root), category="aircraft", split="seen"),
        SourceSpec(source="stanford-cars", root=str(trees["car"].root), category="car", split="seen"),
        SourceSpec(source="inat2017", root=str(trees["inat"].root), category="reptilia", split="seen",
                   supercategories=["Reptilia"]),
        SourceSpec(source="inat2017", root=str(trees["inat"].root), category="bird", split="seen",
                   supercategories=["Aves"]),
        SourceSpec(source="food101", root=str(trees["food"].root), category="food", split="unseen"),
    ])
    uri = str(tmp_path / "store")
    store = ArtifactStore(StoreSettings(uri=uri, cache_dir=str(tmp_path / "cache")))
    with FaultServer(reply=_reply) as server:
        ep = EndpointConfig(base_url=server.base_url, model="vl", max_retries=1, backoff_base_s=0.01, concurrency=4)
        entities = stages.mine_entities(sources, uri, knowledge=KnowledgeStageConfig(backend="openai", endpoint=ep))
        ent = store.read_table(entities).to_pylist()
        assert {e["category"] for e in ent} == {"aircraft", "car", "reptilia", "bird", "food"}
        assert all(e["knowledge_card"].startswith(f"The {e['name']} shows") for e in ent)
        assert store.manifest(entities).metadata["knowledge"]["usage"]["succeeded"] == len(ent)

        images = stages.collect_images(sources, CollectionConfig(), entities, uri,
                                       sharding=ShardingConfig(images_per_shard=8))
        table = store.read_table(images)
        assert table.column("image").null_count == table.num_rows  # referenced, not copied
        assert all(Path(u).is_file() for u in table.column("image_uri").to_pylist())
        rejected = store.read_table(images, "rejected").to_pylist()
        assert {r["reason"] for r in rejected} == {"missing_file"}  # each tree names one absent photo
        missing = {m for t in trees.values() for m in t.missing}
        assert all(any(m in r["detail"] for m in missing) for r in rejected)
        fgvc = [r for r in table.to_pylist() if r["source"] == "fgvc-aircraft"]
        assert fgvc and all(r["crop_bottom"] == 20 and r["source_box_px"] for r in fgvc)
        assert {r["pool"] for r in table.to_pylist() if r["category"] == "food"} == {"test"}  # unseen

        labeling = LabelingStageConfig(backend="openai", endpoint=ep,
                                       options=LabelConfig(box_source="model_checked"))
        labeled = stages.label_boxes(labeling, images, uri)
        lab = store.read_table(labeled)
        assert lab.num_rows == table.num_rows and lab.column("box").null_count == 0  # zero items lost
        meta = store.manifest(labeled).metadata
        agree = meta["agreement"]
        with_box = sum(1 for b in table.column("source_box_px").to_pylist() if b)
        assert agree["compared"] == with_box and sum(agree["histogram"]) == with_box
        sources_used = set(lab.column("box_source").to_pylist())
        assert sources_used <= {"model", "dataset"} and "model" in sources_used  # food has no dataset box
        assert meta["usage"]["requests"] >= table.num_rows and meta["usage"]["failed"] == 0
        # The photo sent for FGVC is cropped above its banner; the size recorded is the cropped one.
        by_id = {r["image_id"]: r for r in lab.to_pylist()}
        assert all(by_id[r["image_id"]]["height"] == r["height"] - 20 for r in fgvc if r["height"])

        comp_cfg = dict(k_min=2, k_max=3, composites_per_category=3, tile_size=48)
        train = stages.compose_images(CompositionConfig(pool="train", **comp_cfg), labeled, uri,
                                      sharding=ShardingConfig(composites_per_shard=4))
        test = stages.compose_images(CompositionConfig(pool="test", **comp_cfg), labeled, uri)
        assert len(store.table_files(train)) == 3  # 4 seen categories x 3 composites, 4 per shard
        bench = stages.build_bench(DatasetsConfig(bench_questions_per_composite=1), test, uri)
        assert set(store.read_table(bench).column("category").to_pylist()) == {"aircraft", "car", "reptilia", "bird",
                                                                                "food"}
        cot = stages.distill_cot(DistillationStageConfig(options=DistillConfig(targets_per_composite=1)), train,
                                 entities, uri)
        cots = store.read_table(cot)
        assert cots.column("error").null_count == cots.num_rows
        assert all(CARD.split("{name}")[1][:20] in c for c in cots.column("cot").to_pylist())
        kept = stages.filter_cot(FilterConfig(min_cot_chars=50), cot, uri)
        clean = stages.check_contamination(ContaminationConfig(), bench, test, labeled, train, uri)
        data = stages.build_training_data(DatasetsConfig(), kept, train, uri, contamination=clean)
        card = stages.write_data_card({"images": images, "labeled": labeled, "composites": train, "cot": cot,
                                       "cot_filtered": kept, "sft_dataset": data["sft_dataset"],
                                       "grpo_pool": data["grpo_pool"], "bench": bench, "contamination": clean}, uri)
        exported = stages.export_datasets(data["sft_dataset"], data["grpo_pool"], uri)

    text = store.read_bytes(card, "card.md").decode()
    assert "missing_file" in text and "vl" in text
    files = {f.path for f in store.manifest(exported).files}
    assert {"files/llamafactory/dataset_info.json", "files/grpo/grpo-aircraft.parquet"} <= files
    info = json.loads(store.read_bytes(exported, "files/llamafactory/dataset_info.json"))
    assert set(info) == {f"kvg-{c}" for c in ("aircraft", "car", "reptilia", "bird")}
