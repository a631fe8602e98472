"""The paper's comparison as one reproduction (issue 9 items 3-4), toy size: the direct-SFT arm
trains on the same SFT rows as CoT-SFT with answer-only targets, the base is scored in both
prompt modes, an extra KVG-Bench-schema parquet is imported and scored by every arm, and the
report puts the five arms side by side per bench with paired-bootstrap differences and lineage.
One module-scoped run serves every assertion."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepperception.comparison import arm_order
from deepperception.config import profile
from deepperception.errors import InputDataError
from deepperception.eval.groups import DEFAULT_ALL
from deepperception.store import ArtifactRef, ArtifactStore, StoreSettings

pytestmark = pytest.mark.slow

# Toy categories renamed to official KVG-Bench ones, so the default category lists apply:
# aircraft and bird are seen, dog is unseen.
OFFICIAL = {"glider": "aircraft", "fish": "bird", "badge": "dog"}
LABELS = arm_order(["baseline", "r1"], True)


def _kvg_bench_from(store, bench_ref, path):
    t = store.read_table(bench_ref)
    t = t.set_column(t.column_names.index("category"), "category",
                     pa.array([OFFICIAL[c] for c in t.column("category").to_pylist()], pa.string()))
    pq.write_table(t, path)
    return t


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory):
    from flows import stages
    from flows.reproduce import reproduce

    tmp = tmp_path_factory.mktemp("comparison")
    uri = str(tmp / "store")
    cfg = profile("toy")
    # The toy bench first (reused by the run below), to build the extra bench from it.
    entities = stages.mine_entities(cfg.data, uri, False, cfg.knowledge)
    images = stages.collect_images(cfg.data, cfg.collection, entities, uri, False, cfg.sharding)
    labeled = stages.label_boxes(cfg.labeling, images, uri, False, cfg.runner)
    composites = stages.compose_images(cfg.compose_bench, labeled, uri, False, cfg.sharding, cfg.runner)
    bench = stages.build_bench(cfg.datasets, composites, uri, False)
    store = ArtifactStore(StoreSettings(uri=uri))
    kvg = _kvg_bench_from(store, bench, tmp / "kvg-bench.parquet")
    overrides = {"comparison": {"direct_sft": True, "n_resamples": 200,
                                "extra_benches": [{"name": "kvg-bench", "source": str(tmp / "kvg-bench.parquet")}]}}
    result = reproduce(profile="toy", overrides=overrides, store_uri=uri, dispatch="inline")
    report = json.loads(store.read_bytes(ArtifactRef.parse(result["report"]), "report.json"))
    md = store.read_bytes(ArtifactRef.parse(result["report"]), "report.md").decode()
    return {"store": store, "uri": uri, "result": result, "report": report, "md": md, "kvg": kvg, "tmp": tmp}


def test_both_sft_arms_train_on_the_same_rows_and_base(run):
    from deepperception.training.targets import apply_target

    store, arts = run["store"], run["result"]["artifacts"]
    cot, direct = (store.manifest(ArtifactRef.parse(arts[k])) for k in ("sft_checkpoint", "direct_sft_checkpoint"))
    assert cot.ref != direct.ref and cot.name == direct.name == "sft-checkpoint"
    assert cot.upstream == direct.upstream == {"base": arts["base_checkpoint"], "dataset": arts["sft_dataset"]}
    assert (cot.config["target"], direct.config["target"]) == ("cot", "direct")
    # The rows each arm trains on: the same dataset through the arm's recorded target (what
    # sft._dataset applies to every row).
    rows = store.read_table(ArtifactRef.parse(arts["sft_dataset"])).to_pylist()
    msgs = [json.loads(r["messages"]) if isinstance(r["messages"], str) else r["messages"] for r in rows]
    direct_turns = [apply_target(m, direct.config["target"])[-1]["content"] for m in msgs]
    cot_turns = [apply_target(m, cot.config["target"])[-1]["content"] for m in msgs]
    assert len(direct_turns) == len(rows) > 0 and all("<think>" not in json.dumps(t) for t in direct_turns)
    assert all("<answer>" in json.dumps(t) for t in direct_turns) and all("<think>" in json.dumps(t) for t in cot_turns)


def test_extra_bench_is_imported_and_every_arm_scored_on_both_benches(run):
    store, arts, report = run["store"], run["result"]["artifacts"], run["report"]
    kvg_ref = ArtifactRef.parse(arts["bench_kvg_bench"])
    assert store.read_table(kvg_ref).equals(run["kvg"])  # imported as-is, versioned by content
    assert report["header"]["extra benches"] == {"kvg-bench": str(kvg_ref)}
    rows = [(c["bench_name"], c["label"]) for c in report["checkpoints"]]
    assert rows == [(b, label) for b in ("composed", "kvg-bench") for label in LABELS]
    for c in report["checkpoints"]:
        ev = store.manifest(ArtifactRef.parse(c["evaluation"]))
        assert ev.upstream["bench"] == c["bench"] and ev.upstream["checkpoint"] == c["checkpoint"]
        mode = ev.config["prompt_mode"]
        assert mode == ("baseline" if c["label"] == "base (baseline prompt)" else "r1")
    kvg = [c for c in report["checkpoints"] if c["bench_name"] == "kvg-bench"]
    # Official KVG-Bench categories by default (aircraft/bird seen, dog unseen); categories
    # without questions are left out; the report's table keeps the official order.
    cats = run["kvg"].column("category").to_pylist()
    m = kvg[0]["metrics"]
    groups = ["all", "seen domain", "unseen domain"] + [c for c in DEFAULT_ALL if c in cats]
    assert set(m) == set(groups)  # (report.json's keys are sorted)
    table = run["md"].split("## Bench kvg-bench ")[1].split("### Per category")[1].split("\n## ")[0]
    assert [line.split(" | ")[0].lstrip("| ") for line in table.strip().splitlines()[2:]] == groups
    assert m["unseen domain"]["all"]["Num"] == cats.count("dog") > 0
    assert m["seen domain"]["all"]["Num"] == cats.count("aircraft") + cats.count("bird") > 0


def test_report_sets_arms_side_by_side_with_differences_and_lineage(run):
    report, md, arts = run["report"], run["md"], run["result"]["artifacts"]
    diffs = report["differences"]
    pairs = {(d["bench_name"], d["a"], d["b"]) for d in diffs}
    for bench in ("composed", "kvg-bench"):
        assert {(bench, "sft", "direct-sft"), (bench, "grpo", "sft"), (bench, "sft", "base (r1 prompt)")} <= pairs
    by_eval = {c["evaluation"]: c for c in report["checkpoints"]}
    for d in diffs:
        assert d["lo"] <= d["delta"] <= d["hi"] and d["n"] > 0
        a, b = by_eval[d["evaluation_a"]], by_eval[d["evaluation_b"]]
        assert (a["label"], b["label"], a["bench_name"]) == (d["a"], d["b"], d["bench_name"])
        assert d["acc_a"] == pytest.approx(a["metrics"][d["group"]]["all"]["Acc"])
        assert d["delta"] == pytest.approx(d["acc_a"] - d["acc_b"])
    for bench in ("composed", "kvg-bench"):
        section = md.split(f"## Bench {bench} ")[1].split("\n## ")[0]
        side = section.split("### Arms side by side")[1].split("###")[0]
        assert [line.split(" | ")[0].lstrip("| ") for line in side.strip().splitlines()[2:]] == [
            "base, raw question (baseline prompt)", "base (r1 prompt)", "direct-SFT", "CoT-SFT", "CoT-SFT+GRPO"]
        assert "### Differences (paired bootstrap)" in section and "CoT-SFT − direct-SFT" in section
    for key in ("sft_checkpoint", "direct_sft_checkpoint", "grpo_checkpoint", "bench", "bench_kvg_bench"):
        assert arts[key] in md
    assert all(c["evaluation"] in md for c in report["checkpoints"])
    # The report's version depends on every evaluation it reads.
    assert set(run["store"].manifest(ArtifactRef.parse(run["result"]["report"])).upstream.values()) == \
        {c["evaluation"] for c in report["checkpoints"]}


def test_a_bench_file_without_a_column_is_refused_naming_file_and_column(run):
    from tasks.evaluation import resolve_bench_task

    bad = run["tmp"] / "no-category.parquet"
    pq.write_table(run["kvg"].drop(["category"]), bad)
    with pytest.raises(InputDataError) as err:
        resolve_bench_task(str(bad), run["uri"])
    assert str(bad) in str(err.value) and "field=category" in str(err.value)
    with pytest.raises(InputDataError, match="no such bench file"):
        resolve_bench_task(str(run["tmp"] / "missing.parquet"), run["uri"])


def test_a_bad_extra_bench_fails_the_run_before_any_training(run):
    from flows.reproduce import reproduce

    store = run["store"]
    bad = run["tmp"] / "no-answer.parquet"
    pq.write_table(run["kvg"].drop(["answer"]), bad)
    overrides = {"sft": {"learning_rate": 1e-3},  # a new SFT version
                 "comparison": {"extra_benches": [{"name": "kvg-bench", "source": str(bad)}]}}
    n_sft = len(store.list("sft-checkpoint"))
    with pytest.raises(InputDataError) as err:
        reproduce(profile="toy", overrides=overrides, store_uri=run["uri"], dispatch="inline")
    assert str(bad) in str(err.value) and "field=answer" in str(err.value)
    assert len(store.list("sft-checkpoint")) == n_sft  # nothing trained
