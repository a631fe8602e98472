"""The RL filter stage runs shard by shard (one shard per part of the GRPO pool): a shard that
fails leaves the finished ones committed, and the rerun samples only the unfinished parts; the
keep rule and ``on_empty`` apply to the whole pool; a one-part pool gives exactly ``rl_filter``'s
result (same samples, same seed use), on the toy profile's settings with the tiny model.

Most tests replace the sampler with precomputed answers (``sample_cached`` monkeypatched: shards
run on threads in this process), so every count is known in advance.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from deepperception.config import RLFilterConfig, profile
from deepperception.engine.shard_runner import ShardRunnerConfig
from deepperception.store import ArtifactStore, StoreSettings
from deepperception.store.shards import SHARDS
from deepperception.training import rl_filter as rlf
from tasks.common import register_external_checkpoint
from tasks.rl_filter import rl_filter_task

GT = "<answer> <|object_ref_start|>X<|object_ref_end|><|box_start|>(0,0),(100,100)<|box_end|> </answer>"
RIGHT = "<answer>(0,0),(100,100)</answer>"
WRONG = "<answer>(900,900),(999,999)</answer>"
THREADS = ShardRunnerConfig(kind="threads", max_workers=2)


def _answers(n_correct: int, n: int = 4) -> list[str]:
    return [RIGHT] * n_correct + [WRONG] * (n - n_correct)


def _store(path: Path) -> ArtifactStore:
    return ArtifactStore(StoreSettings(uri=str(path)))


def _pool(store: ArtifactStore, table: pa.Table, rows_per_part: int):
    """A grpo-pool version whose data table has ceil(rows / rows_per_part) parts."""
    with store.plan("grpo-pool", "training-data", {"rows": table.num_rows, "per_part": rows_per_part,
                                                   "qids": table.column("question_id").to_pylist()}, {}) as w:
        with w.table_writer("data", max_rows=rows_per_part) as tw:
            tw.write(table)
        return w.commit({"rows": table.num_rows})


def _fake_checkpoint(tmp_path: Path) -> Path:
    d = tmp_path / "ckpt"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text('{"model_type": "qwen2_vl"}')
    return d


class FakeSampler:
    """Precomputed answers by question id; records every call; can fail for chosen questions."""

    def __init__(self, answers: dict[str, list[str]], fail_on: set[str] = frozenset()):
        self.answers = answers
        self.fail_on = set(fail_on)
        self.calls: list[tuple[list[str], dict]] = []
        self._lock = threading.Lock()

    def __call__(self, rows, ckpt_dir, **kw):
        qids = rows.column("question_id").to_pylist()
        with self._lock:
            self.calls.append((qids, kw))
        if self.fail_on & set(qids):
            raise RuntimeError(f"sampler died on {sorted(self.fail_on & set(qids))}")
        return {q: self.answers[q] for q in qids}

    def sampled(self) -> list[str]:
        return sorted(q for qids, _ in self.calls for q in qids)


def _table(counts: list[int]) -> tuple[pa.Table, dict[str, list[str]]]:
    rows = [{"question_id": f"q{i}", "problem": f"find {i}", "solution": GT} for i in range(len(counts))]
    return pa.Table.from_pylist(rows), {f"q{i}": _answers(c) for i, c in enumerate(counts)}


def _setup(tmp_path, counts, rows_per_part, name="store"):
    store = _store(tmp_path / name)
    table, answers = _table(counts)
    pool = _pool(store, table, rows_per_part)
    ckpt = register_external_checkpoint(store, str(_fake_checkpoint(tmp_path)), "sft-checkpoint", "sft")
    return store, table, answers, pool, ckpt


def _shard_records(store: ArtifactStore) -> list[Path]:
    return sorted(Path(store.root).glob(f"grpo-dataset/*/{SHARDS}/{rlf.SHARD_UNIT}/*.json"))


def test_keep_rule_and_policy_apply_over_all_shards(tmp_path, monkeypatch):
    # Part 0 holds only 0/4 and 4/4 items (no signal): alone it would fall into on_empty; the
    # pool-wide rule keeps the 1..3 items of the other parts and drops part 0 entirely.
    counts = [0, 4, 2, 0, 1, 3, 4]
    store, table, answers, pool, ckpt = _setup(tmp_path, counts, rows_per_part=2)
    assert len(store.table_files(pool)) == 4
    fake = FakeSampler(answers)
    monkeypatch.setattr(rlf, "sample_cached", fake)
    cfg = RLFilterConfig(on_empty="error")
    out = rl_filter_task.fn(cfg, ckpt, pool, str(tmp_path / "store"), False, THREADS)

    kept = store.read_table(out)
    assert kept.column("question_id").to_pylist() == ["q2", "q4", "q5"]
    assert kept.column("n_correct").to_pylist() == [2, 1, 3]
    assert fake.sampled() == sorted(f"q{i}" for i in range(7)) and len(fake.calls) == 4
    scored = store.read_table(out, "scored")  # every row, nothing dropped, in pool order
    assert scored.column("question_id").to_pylist() == [f"q{i}" for i in range(7)]
    assert scored.column("n_correct").to_pylist() == counts

    # Exactly what the one-piece filter gives, stats keys and values included.
    ckpt_dir = store.manifest(ckpt).metadata["external_path"]
    want, want_stats = rlf.rl_filter(table, ckpt_dir, samples=answers, on_empty="error", **cfg.sampling())
    assert kept.equals(want)
    meta = store.manifest(out).metadata
    assert meta["stats"] == json.loads(json.dumps(want_stats))
    assert set(meta["stats"]) == set(want_stats) and meta["shards"] == 4
    assert meta["stats"]["count_histogram"] == {"0": 2, "1": 1, "2": 1, "3": 1, "4": 2}
    assert store.verify(out) == []


def test_on_empty_is_decided_over_the_whole_pool(tmp_path, monkeypatch):
    counts = [0, 4, 0, 0, 4]
    store, table, answers, pool, ckpt = _setup(tmp_path, counts, rows_per_part=2)
    monkeypatch.setattr(rlf, "sample_cached", FakeSampler(answers))
    with pytest.raises(rlf.RLFilterEmptyError, match=r"no item has 1..3 of 4 correct \(histogram \{0: 3, 4: 2\}\)"):
        rl_filter_task.fn(RLFilterConfig(on_empty="error"), ckpt, pool, str(tmp_path / "store"), False, THREADS)
    out = rl_filter_task.fn(RLFilterConfig(on_empty="keep_all"), ckpt, pool, str(tmp_path / "store"), False, THREADS)
    kept = store.read_table(out)
    assert kept.column("n_correct").to_pylist() == counts
    stats = store.manifest(out).metadata["stats"]
    assert (stats["policy_applied"], stats["n_in"], stats["n_kept"]) == ("keep_all", 5, 5)


def test_a_failed_shard_is_the_only_one_sampled_again(tmp_path, monkeypatch, caplog):
    counts = [1, 2, 0, 3, 4, 1, 2]
    store, table, answers, pool, ckpt = _setup(tmp_path, counts, rows_per_part=3)  # parts: 3 + 3 + 1 rows
    uri = str(tmp_path / "store")
    failing = FakeSampler(answers, fail_on={"q4"})  # part 1
    monkeypatch.setattr(rlf, "sample_cached", failing)
    with pytest.raises(RuntimeError, match="sampler died on"):
        rl_filter_task.fn(RLFilterConfig(), ckpt, pool, uri, False, ShardRunnerConfig(max_workers=1))
    assert failing.sampled() == sorted(f"q{i}" for i in range(7))  # every shard ran; one failed
    assert [p.name for p in _shard_records(store)] == ["00000.json", "00002.json"]
    assert not list(Path(store.root).glob("grpo-dataset/*/_manifest.json"))

    rerun = FakeSampler(answers)
    monkeypatch.setattr(rlf, "sample_cached", rerun)
    with caplog.at_level("INFO"):
        resumed = rl_filter_task.fn(RLFilterConfig(), ckpt, pool, uri, False, ShardRunnerConfig(max_workers=1))
    assert "2 of 3 shard(s) already finished" in caplog.text
    assert rerun.sampled() == ["q3", "q4", "q5"]  # part 1 only

    # The resumed version is the one an uninterrupted run commits, byte for byte.
    clean_store, *_, clean_pool, clean_ckpt = _setup(tmp_path, counts, rows_per_part=3, name="clean")
    assert (clean_pool, clean_ckpt) == (pool, ckpt)
    clean_sampler = FakeSampler(answers)
    monkeypatch.setattr(rlf, "sample_cached", clean_sampler)
    clean = rl_filter_task.fn(RLFilterConfig(), ckpt, pool, str(tmp_path / "clean"), False, THREADS)
    assert clean == resumed
    a, b = store.manifest(resumed), clean_store.manifest(clean)
    assert [(f.path, f.sha256, f.rows) for f in a.files] == [(f.path, f.sha256, f.rows) for f in b.files]
    assert a.metadata == b.metadata
    assert store.read_table(resumed).column("question_id").to_pylist() == ["q0", "q1", "q3", "q5", "q6"]

    # Committed: a third run reuses the version and samples nothing.
    again = FakeSampler(answers)
    monkeypatch.setattr(rlf, "sample_cached", again)
    assert rl_filter_task.fn(RLFilterConfig(), ckpt, pool, uri, False, THREADS) == resumed
    assert again.calls == []


def test_each_shard_samples_with_the_seed_of_its_first_batch(tmp_path, monkeypatch):
    counts = [1, 1, 1, 1, 1]
    store, table, answers, pool, ckpt = _setup(tmp_path, counts, rows_per_part=2)  # parts: 2 + 2 + 1
    fake = FakeSampler(answers)
    monkeypatch.setattr(rlf, "sample_cached", fake)
    cfg = RLFilterConfig(seed=3, batch_size=1, temperature=0.7, max_new_tokens=32)
    rl_filter_task.fn(cfg, ckpt, pool, str(tmp_path / "store"), False, THREADS)
    seeds = sorted((qids[0], kw["seed"]) for qids, kw in fake.calls)
    assert seeds == [("q0", 3), ("q2", 5), ("q4", 7)]  # batch b of the pool runs under seed + b
    _, kw = fake.calls[0]
    assert {k: kw[k] for k in ("n", "temperature", "max_new_tokens", "batch_size", "top_k", "top_p", "device")} == {
        "n": 4, "temperature": 0.7, "max_new_tokens": 32, "batch_size": 1, "top_k": 50, "top_p": 1.0, "device": "cpu"}  # unset top_k/top_p: GRPO's


def test_a_bad_row_names_itself_and_commits_nothing(tmp_path, monkeypatch):
    store, table, answers, pool, ckpt = _setup(tmp_path, [1, 2, 3], rows_per_part=2)
    answers["q2"] = answers["q2"][:3]
    monkeypatch.setattr(rlf, "sample_cached", FakeSampler(answers))
    from deepperception.errors import InputDataError

    with pytest.raises(InputDataError, match="expected 4 samples, got 3") as e:
        rl_filter_task.fn(RLFilterConfig(), ckpt, pool, str(tmp_path / "store"), False, THREADS)
    assert e.value.row == "q2"
    assert not list(Path(store.root).glob("grpo-dataset/*/_manifest.json"))


# ---- with the tiny model ---------------------------------------------------------------------

@pytest.fixture
def model_store(tmp_path, tiny_ckpt):
    from deepperception.model.synthetic import synthetic_grpo_rows

    store = _store(tmp_path / "store")
    ckpt = register_external_checkpoint(store, str(tiny_ckpt), "sft-checkpoint", "sft")
    return store, ckpt, synthetic_grpo_rows(6), Path(store.manifest(ckpt).metadata["external_path"])


class SpySampler:
    """The real cached sampler, recording what each shard got."""

    def __init__(self, real):
        self.real = real
        self.answers: dict[str, list[str]] = {}

    def __call__(self, rows, ckpt_dir, **kw):
        out = self.real(rows, ckpt_dir, **kw)
        self.answers.update(out)
        return out


def _toy_kwargs(cfg: RLFilterConfig) -> dict:
    return dict(n_samples=cfg.n_samples, keep_min=cfg.keep_min, keep_max=cfg.keep_max, on_empty=cfg.on_empty,
                temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                batch_size=cfg.batch_size, device=cfg.device)


def test_one_part_pool_gives_exactly_rl_filters_result_on_the_toy_profile(model_store, monkeypatch):
    from deepperception.model import sampling

    store, ckpt, table, ckpt_dir = model_store
    cfg = profile("toy").rl_filter
    pool = _pool(store, table, rows_per_part=100)
    assert len(store.table_files(pool)) == 1
    spy = SpySampler(rlf.sample_cached)
    monkeypatch.setattr(rlf, "sample_cached", spy)
    out = rl_filter_task.fn(cfg, ckpt, pool, store.root, False, THREADS)

    want_answers = sampling.sample_answers(table, ckpt_dir, n=cfg.n_samples, temperature=cfg.temperature,
                                           max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                                           batch_size=cfg.batch_size, device=cfg.device)
    assert spy.answers == want_answers  # the same sampled texts, not only the same (all-zero) IoUs
    want, want_stats = rlf.rl_filter(table, ckpt_dir, **_toy_kwargs(cfg))
    got = store.read_table(out)
    assert got.schema.equals(want.schema) and got.equals(want)
    assert store.manifest(out).metadata["stats"] == json.loads(json.dumps(want_stats))


def test_batch_aligned_parts_equal_one_run_and_the_model_loads_once(model_store, monkeypatch):
    from deepperception.model import sampling
    from deepperception.model import loading

    store, ckpt, table, ckpt_dir = model_store
    cfg = profile("toy").rl_filter.model_copy(update={"batch_size": 2})
    pool = _pool(store, table, rows_per_part=2)
    assert len(store.table_files(pool)) == 3
    loads = []
    real_load = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda *a, **kw: loads.append(a) or real_load(*a, **kw))
    rlf.clear_model_cache()
    spy = SpySampler(rlf.sample_cached)
    monkeypatch.setattr(rlf, "sample_cached", spy)
    out = rl_filter_task.fn(cfg, ckpt, pool, store.root, False, THREADS)
    assert len(loads) == 1  # three shards, one model load
    rlf.clear_model_cache()

    want_answers = sampling.sample_answers(table, ckpt_dir, n=cfg.n_samples, temperature=cfg.temperature,
                                           max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, batch_size=2,
                                           device=cfg.device)
    assert spy.answers == want_answers
    want, _ = rlf.rl_filter(table, ckpt_dir, **_toy_kwargs(cfg))
    assert store.read_table(out).equals(want)


def _stored_checkpoint(store: ArtifactStore, tmp_path: Path):
    with store.plan("sft-checkpoint", "sft", {"fake": True}, {}) as w:
        w.write_dir(_fake_checkpoint(tmp_path))
        return w.commit({})


def test_a_worker_without_the_stages_checkpoint_dir_materialises_it(tmp_path):
    store = _store(tmp_path / "store")
    stored = _stored_checkpoint(store, tmp_path)
    spec = {"ckpt_dir": str(tmp_path / "not-on-this-worker"), "checkpoint": str(stored)}
    got = rlf.shard_checkpoint(store, spec)
    assert (got / "config.json").read_text() == '{"model_type": "qwen2_vl"}'
    assert rlf.shard_checkpoint(store, {**spec, "ckpt_dir": str(got)}) == got
    external = register_external_checkpoint(store, str(_fake_checkpoint(tmp_path)), "sft-checkpoint", "sft")
    from deepperception.errors import ArtifactError

    with pytest.raises(ArtifactError, match="external directory .*not-on-this-worker"):
        rlf.shard_checkpoint(store, {**spec, "checkpoint": str(external)})


def test_shards_run_as_prefect_task_runs_on_an_s3_store(prefect_harness, tmp_path, monkeypatch, s3_store_uri):
    """Inside a flow each shard is a Prefect task run; the pool, the shards and a stored
    checkpoint (materialised into the local cache) all live in S3."""
    from prefect import flow

    uri, endpoint = s3_store_uri
    monkeypatch.setenv("DP_STORE_S3_ENDPOINT_URL", endpoint)
    store = ArtifactStore.from_uri(uri)
    table, answers = _table([0, 1, 2, 3, 4])
    pool = _pool(store, table, rows_per_part=2)
    ckpt = _stored_checkpoint(store, tmp_path)
    fake = FakeSampler(answers)
    monkeypatch.setattr(rlf, "sample_cached", fake)

    @flow(name="rl-filter-shards-test")
    def run():
        return rl_filter_task(RLFilterConfig(), ckpt, pool, uri, False, THREADS)

    out = run()
    assert store.read_table(out).column("question_id").to_pylist() == ["q1", "q2", "q3"]
    assert len(fake.calls) == 3
    assert store.manifest(out).metadata["stats"]["checkpoint"] == str(store.materialize(ckpt))  # the local copy
    assert [e.path for e in store.table_files(out, "scored")] == [f"scored/part-0000{i}.parquet" for i in range(3)]


def test_reward_rule_and_zero_advantage_stats_add_up_over_shards(tmp_path, monkeypatch):
    """``correct="reward"`` with the run's reward config, in shards: the kept set, the count
    histogram and the zero-advantage comparison of both rules equal the one-piece filter's."""
    from deepperception.training.rewards import RewardConfig

    sixty = "<think>t</think><answer>(0,0),(100,60)</answer>"  # eval-correct; box reward 0 at 0.8, 0.6 at 0.5
    right = "<think>t</think><answer>(0,0),(100,100)</answer>"
    answers = {"q0": [sixty] * 4, "q1": [sixty, WRONG, WRONG, WRONG], "q2": [right, sixty, WRONG, WRONG],
               "q3": [right] * 4, "q4": [WRONG] * 4}
    table = pa.Table.from_pylist([{"question_id": q, "problem": q, "solution": GT} for q in answers])
    store = _store(tmp_path / "store")
    pool = _pool(store, table, rows_per_part=2)
    ckpt = register_external_checkpoint(store, str(_fake_checkpoint(tmp_path)), "sft-checkpoint", "sft")
    monkeypatch.setattr(rlf, "sample_cached", FakeSampler(answers))
    for reward, want_kept in ((None, ["q2"]), (RewardConfig(iou_threshold=0.5), ["q1", "q2"])):
        cfg = RLFilterConfig(correct="reward", reward=reward)
        out = rl_filter_task.fn(cfg, ckpt, pool, str(tmp_path / "store"), False, THREADS)
        assert store.read_table(out).column("question_id").to_pylist() == want_kept
        ckpt_dir = store.manifest(ckpt).metadata["external_path"]
        want, want_stats = rlf.rl_filter(table, ckpt_dir, samples=answers, correct="reward", reward=reward,
                                         **cfg.sampling())
        assert store.read_table(out).equals(want)
        stats = store.manifest(out).metadata["stats"]
        assert stats == json.loads(json.dumps(want_stats))
        z = stats["zero_advantage"]
        assert z["applied"] == "reward" and z["pool"]["fraction"] == 0.6  # q0, q3, q4: every reward equal
        assert z["kept"]["eval"]["n_kept"] == 2  # q1, q2 (q0 is 4/4 under eval)
