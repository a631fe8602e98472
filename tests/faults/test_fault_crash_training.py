"""Fault campaign, crash.sft / crash.grpo / crash.rl_filter. A training stage SIGKILLed midway resumes from its last complete checkpoint: the rerun of the
same version continues the optimizer step count (global_step ends at max_steps, no step is
trained twice), keeps the intermediate checkpoint the killed run had published, and lands on
the weights of an uninterrupted run (CPU, float32, deterministic)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deepperception.errors import ArtifactError
from deepperception.model.synthetic import synthetic_sft_rows
from deepperception.store import ArtifactRef, ArtifactStore, StoreSettings
from deepperception.store.stage import run_stage
from tasks.common import checkpoint_dir, register_external_checkpoint, resolve_checkpoint_ref
from tasks.training import train_grpo_task, train_sft_task

MAX_STEPS, RESUME_EVERY, SAVE_EVERY = 6, 2, 3


def _resume_points(upto: int) -> list[int]:
    """Steps <= upto where the trainer saves a resume point (the resume and the publish multiples)."""
    return [s for s in range(1, upto + 1) if s % RESUME_EVERY == 0 or s % SAVE_EVERY == 0]


# The child kills itself with SIGKILL (no handler, no cleanup runs) when optimizer step KILL + 1
# starts (KILL drawn by fault_rng): no race against the clock. Every step it starts is appended to
# STEPS_LOG first, so the test counts what each process trained.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import transformers
    kill_at, log = int(sys.argv[5]), sys.argv[6]
    _step = transformers.Trainer.training_step
    def training_step(self, *a, **k):
        if self.state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        with open(log, "a") as f:
            f.write(f"{self.state.global_step + 1}\\n")
        return _step(self, *a, **k)
    transformers.Trainer.training_step = training_step
    from deepperception.store import ArtifactRef
    from deepperception.training.grpo import GRPOStageConfig
    from deepperception.training.sft import SFTStageConfig
    from tasks.training import train_grpo_task, train_sft_task
    stage = sys.argv[7] if len(sys.argv) > 7 else "sft"
    task, cls = (train_sft_task, SFTStageConfig) if stage == "sft" else (train_grpo_task, GRPOStageConfig)
    cfg = cls.model_validate_json(sys.argv[1])
    task.fn(cfg, ArtifactRef.parse(sys.argv[2]), ArtifactRef.parse(sys.argv[3]), sys.argv[4])
""")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from deepperception.model.synthetic import cached_tiny_checkpoint
    return cached_tiny_checkpoint(tmp_path_factory.getbasetemp())


def _inputs(uri: str, tiny_ckpt) -> tuple[ArtifactRef, ArtifactRef]:
    store = ArtifactStore(StoreSettings(uri=uri))
    base = register_external_checkpoint(store, str(tiny_ckpt), "base-checkpoint", "base-model")
    rows = synthetic_sft_rows(8)
    data = run_stage(store, "sft-dataset", "build-sft", {"n": 8}, {}, lambda w: (w.write_table(rows), {})[1])[0]
    return base, data


def _cfg():
    from deepperception.config import load_profile

    return load_profile("toy", {"sft": {"max_steps": MAX_STEPS, "per_device_train_batch_size": 2,
                                        "resume_steps": RESUME_EVERY, "save_steps": SAVE_EVERY}}).sft


@pytest.mark.fault("crash.sft")
def test_sigkilled_sft_resumes_from_last_checkpoint_and_matches_an_uninterrupted_run(
        tiny_ckpt, tmp_path, caplog, monkeypatch, reliability, fault_rng):
    import torch
    import transformers
    from deepperception.model.loading import load_model

    kill_at = fault_rng.randint(RESUME_EVERY, MAX_STEPS - 1)  # after the first resume point, before the end
    last = max(_resume_points(kill_at))
    killed_uri, clean_uri = str(tmp_path / "killed"), str(tmp_path / "clean")
    base, data = _inputs(killed_uri, tiny_ckpt)
    assert _inputs(clean_uri, tiny_ckpt) == (base, data)
    cfg = _cfg()
    assert cfg.gradient_accumulation_steps == 1  # one training_step call per optimizer step
    log = tmp_path / "killed-steps.log"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd()), "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", CHILD, cfg.model_dump_json(), str(base), str(data), killed_uri,
                            str(kill_at), str(log)], env=env, capture_output=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-3000:]
    killed_steps = [int(x) for x in log.read_text().split()]
    assert killed_steps == list(range(1, kill_at + 1))

    store = ArtifactStore(StoreSettings(uri=killed_uri))
    assert store.latest("sft-checkpoint") is None  # nothing committed by the killed run
    works = list((store.settings.local_cache() / "work" / store.identity / "sft-checkpoint").iterdir())
    assert len(works) == 1
    trainer_dir = works[0] / "trainer"
    assert sorted(p.name for p in trainer_dir.glob("checkpoint-*")) == [f"checkpoint-{last}"]  # older ones pruned
    assert (works[0] / "published" / f"step-{SAVE_EVERY:06d}").is_dir() == (kill_at >= SAVE_EVERY)

    resumed_steps: list[int] = []
    _step = transformers.Trainer.training_step

    def training_step(self, *a, **k):
        resumed_steps.append(self.state.global_step + 1)
        return _step(self, *a, **k)

    monkeypatch.setattr(transformers.Trainer, "training_step", training_step)
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        resumed = train_sft_task.fn(cfg, base, data, killed_uri)
    resume_s = time.perf_counter() - t0
    monkeypatch.undo()
    meta = store.manifest(resumed).metadata
    m = meta["train"]

    clean = train_sft_task.fn(cfg, base, data, clean_uri)
    clean_store = ArtifactStore(StoreSettings(uri=clean_uri))
    c = clean_store.manifest(clean).metadata["train"]
    a = load_model(checkpoint_dir(store, resumed)).state_dict()
    b = load_model(checkpoint_dir(clean_store, clean)).state_dict()

    # The weights' steps: the killed run's up to its last resume point, then the resumed run's.
    applied = [s for s in killed_steps if s <= last] + resumed_steps
    lost = len(set(range(1, MAX_STEPS + 1)) - set(applied))
    duplicated = len(applied) - len(set(applied))
    corrupted = sum(not torch.equal(a[k], b[k]) for k in b) + len(set(a) ^ set(b))
    reliability.record(lost=lost, duplicated=duplicated, corrupted=corrupted, recover_s=resume_s, injected=1,
                       detail=f"SIGKILL when step {kill_at + 1} started; resumed from step {last}, "
                              f"{kill_at - last} step(s) redone, {len(resumed_steps)} trained after the restart")
    assert (lost, duplicated, corrupted) == (0, 0, 0), (applied, kill_at, last)

    assert f"sft: resuming from step {last}" in caplog.text
    assert m["resumed_from_step"] == last and m["steps"] == MAX_STEPS
    assert resumed_steps == list(range(last + 1, MAX_STEPS + 1))
    # The step count continued: one loss per optimizer step 1..MAX_STEPS, the first ones restored from the
    # killed run's trainer_state, the rest trained after the resume (not MAX_STEPS new ones).
    assert len(m["train_losses"]) == MAX_STEPS
    assert meta["checkpoints"] == [SAVE_EVERY, MAX_STEPS]
    assert not works[0].exists()  # resume state dropped once the version committed
    assert clean == resumed  # same version id: same inputs, config and code
    assert c["resumed_from_step"] is None and c["steps"] == MAX_STEPS
    # Restored RNG, data order and optimizer state: the resumed losses equal the uninterrupted ones.
    assert m["train_losses"] == c["train_losses"], (m["train_losses"], c["train_losses"])

    # A published step is selectable by the one ref syntax and reloads.
    ref, step = resolve_checkpoint_ref(store, f"{resumed}#step={SAVE_EVERY}")
    d5 = checkpoint_dir(store, ref, step)
    assert json.loads((d5 / "config.json").read_text())["model_type"] == "qwen2_vl"
    load_model(d5)
    with pytest.raises(ArtifactError, match=rf"no published step 4 \(published steps: \[{SAVE_EVERY}, {MAX_STEPS}\]"):
        resolve_checkpoint_ref(store, f"{resumed}#step=4")


GRPO_STEPS, GRPO_RESUME = 3, 1
# Fidelity: the tiny random model earns reward 0 on every completion, so GRPO's advantages are 0.
# weight_decay makes step 1 move the weights (AdamW's decoupled decay, on the restored LR schedule);
# from step 2 the policy differs from the reference model, so the KL term gives real gradients that
# depend on the sampled completions (the restored RNG). The weights are compared exactly.


@pytest.mark.fault("crash.grpo")
def test_sigkilled_grpo_resumes_from_last_checkpoint_and_matches_an_uninterrupted_run(
        tiny_ckpt, tmp_path, monkeypatch, reliability, fault_rng):
    import torch
    import transformers
    from deepperception.config import load_profile
    from deepperception.model.loading import load_model
    from deepperception.model.synthetic import synthetic_grpo_rows

    kill_at = fault_rng.randint(GRPO_RESUME, GRPO_STEPS - 1)
    last = kill_at  # a resume point every step
    cfg = load_profile("toy", {"grpo": {"max_steps": GRPO_STEPS, "resume_steps": GRPO_RESUME,
                                        "save_steps": GRPO_STEPS, "per_device_train_batch_size": 2,
                                        "max_completion_length": 8, "weight_decay": 0.1}}).grpo
    assert cfg.gradient_accumulation_steps == 1
    uris = [str(tmp_path / "killed"), str(tmp_path / "clean")]
    refs = []
    for uri in uris:
        store = ArtifactStore(StoreSettings(uri=uri))
        init = register_external_checkpoint(store, str(tiny_ckpt), "sft-checkpoint", "sft")
        rows = synthetic_grpo_rows(4)
        data = run_stage(store, "grpo-dataset", "rl-filter", {"n": 4}, {}, lambda w: (w.write_table(rows), {})[1])[0]
        refs.append((init, data))
    assert refs[0] == refs[1]
    init, data = refs[0]
    log = tmp_path / "killed-steps.log"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd()), "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", CHILD, cfg.model_dump_json(), str(init), str(data), uris[0],
                            str(kill_at), str(log), "grpo"], env=env, capture_output=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-3000:]
    killed_steps = [int(x) for x in log.read_text().split()]
    store = ArtifactStore(StoreSettings(uri=uris[0]))
    assert store.latest("grpo-checkpoint") is None

    resumed_steps: list[int] = []
    _step = transformers.Trainer.training_step

    def training_step(self, *a, **k):
        resumed_steps.append(self.state.global_step + 1)
        return _step(self, *a, **k)

    monkeypatch.setattr(transformers.Trainer, "training_step", training_step)
    t0 = time.perf_counter()
    resumed = train_grpo_task.fn(cfg, init, data, uris[0])
    resume_s = time.perf_counter() - t0
    monkeypatch.undo()
    m = store.manifest(resumed).metadata["train"]
    clean = train_grpo_task.fn(cfg, init, data, uris[1])
    clean_store = ArtifactStore(StoreSettings(uri=uris[1]))
    c = clean_store.manifest(clean).metadata["train"]
    a = load_model(checkpoint_dir(store, resumed)).state_dict()
    b = load_model(checkpoint_dir(clean_store, clean)).state_dict()

    applied = [s for s in killed_steps if s <= last] + resumed_steps
    lost = len(set(range(1, GRPO_STEPS + 1)) - set(applied))
    duplicated = len(applied) - len(set(applied))
    corrupted = sum(not torch.equal(a[k], b[k]) for k in b) + len(set(a) ^ set(b))
    reliability.record(lost=lost, duplicated=duplicated, corrupted=corrupted, recover_s=resume_s, injected=1,
                       detail=f"SIGKILL when GRPO step {kill_at + 1} started; resumed from step {last}, "
                              f"{len(resumed_steps)} step(s) trained after the restart")
    assert (lost, duplicated, corrupted) == (0, 0, 0), (applied, kill_at, last, m, c)
    assert killed_steps == list(range(1, kill_at + 1))
    assert m["resumed_from_step"] == last and m["steps"] == GRPO_STEPS
    assert c["resumed_from_step"] is None and c["steps"] == GRPO_STEPS
    assert clean == resumed
    # The comparison means something: GRPO moved the weights away from the initial checkpoint.
    init_sd = load_model(tiny_ckpt).state_dict()
    assert any(not torch.equal(init_sd[k], b[k]) for k in b), "GRPO steps left every weight unchanged"


# The RL filter's sampler answers from a table by question id (as tests/training/test_rl_filter_shards.py
# does: the stage-1 model's sampling is not what this scenario tests); the stage, its shards, the store
# and the kill are real. The child SIGKILLs itself when shard KILL starts (shards run one at a time).
RL_CHILD = textwrap.dedent("""
    import json, os, signal, sys
    from deepperception.config import RLFilterConfig
    from deepperception.engine.shard_runner import ShardRunnerConfig
    from deepperception.store import ArtifactRef
    from deepperception.training import rl_filter as rlf
    from tasks.rl_filter import rl_filter_task
    cfg, ckpt, pool, uri, kill_at, log, answers = sys.argv[1:8]
    answers = json.loads(answers)
    def sampler(rows, ckpt_dir, **kw):
        qids = rows.column("question_id").to_pylist()
        with open(log, "a") as f:
            f.write(" ".join(qids) + "\\n")
        return {q: answers[q] for q in qids}
    rlf.sample_cached = sampler
    _score = rlf.rl_score_shard
    def score(job):
        if job.spec["part"] == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
        return _score(job)
    rlf.rl_score_shard = score
    rl_filter_task.fn(RLFilterConfig.model_validate_json(cfg), ArtifactRef.parse(ckpt), ArtifactRef.parse(pool),
                      uri, False, ShardRunnerConfig(kind="threads", max_workers=1))
""")
RL_RIGHT, RL_WRONG = "<answer>(0,0),(100,100)</answer>", "<answer>(900,900),(999,999)</answer>"
RL_GT = "<answer> <|object_ref_start|>X<|object_ref_end|><|box_start|>(0,0),(100,100)<|box_end|> </answer>"


@pytest.mark.fault("crash.rl_filter")
def test_sigkilled_rl_filter_reruns_only_unfinished_shards_and_keeps_the_same_pool(
        tmp_path, monkeypatch, reliability, fault_rng):
    import pyarrow as pa
    from deepperception.config import RLFilterConfig
    from deepperception.engine.shard_runner import ShardRunnerConfig
    from deepperception.training import rl_filter as rlf
    from tasks.rl_filter import rl_filter_task

    n_rows, per_part = 8, 2
    n_parts = n_rows // per_part
    counts = [fault_rng.randint(0, 4) for _ in range(n_rows)]
    counts[0] = 2  # at least one kept row
    answers = {f"q{i}": [RL_RIGHT] * c + [RL_WRONG] * (4 - c) for i, c in enumerate(counts)}
    table = pa.Table.from_pylist([{"question_id": f"q{i}", "problem": f"find {i}", "solution": RL_GT}
                                  for i in range(n_rows)])
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text('{"model_type": "qwen2_vl"}')
    refs = []
    for name in ("killed", "clean"):
        store = ArtifactStore(StoreSettings(uri=str(tmp_path / name)))
        with store.plan("grpo-pool", "training-data", {"rows": n_rows, "per_part": per_part}, {}) as w:
            with w.table_writer("data", max_rows=per_part) as tw:
                tw.write(table)
            pool = w.commit({"rows": n_rows})
        ckpt = register_external_checkpoint(store, str(tmp_path / "ckpt"), "sft-checkpoint", "sft")
        refs.append((pool, ckpt))
    assert refs[0] == refs[1]
    pool, ckpt = refs[0]
    cfg = RLFilterConfig(on_empty="error")
    kill_at = fault_rng.randint(1, n_parts - 1)  # shards 0..kill_at-1 finished
    log = tmp_path / "killed-sampled.log"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd()), "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", RL_CHILD, cfg.model_dump_json(), str(ckpt), str(pool),
                            str(tmp_path / "killed"), str(kill_at), str(log), json.dumps(answers)],
                           env=env, capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-3000:]
    killed_sampled = log.read_text().split()
    killed_store = ArtifactStore(StoreSettings(uri=str(tmp_path / "killed")))
    assert killed_store.latest("grpo-dataset") is None

    sampled: list[str] = []

    def sampler(rows, ckpt_dir, **kw):
        qids = rows.column("question_id").to_pylist()
        sampled.extend(qids)
        return {q: answers[q] for q in qids}

    monkeypatch.setattr(rlf, "sample_cached", sampler)
    one = ShardRunnerConfig(kind="threads", max_workers=1)
    t0 = time.perf_counter()
    out = rl_filter_task.fn(cfg, ckpt, pool, str(tmp_path / "killed"), False, one)
    recover_s = time.perf_counter() - t0
    resumed_sampled = list(sampled)
    sampled.clear()
    clean = rl_filter_task.fn(cfg, ckpt, pool, str(tmp_path / "clean"), False, one)
    clean_store = ArtifactStore(StoreSettings(uri=str(tmp_path / "clean")))

    all_q = [f"q{i}" for i in range(n_rows)]
    got = killed_store.read_table(out, "scored").column("question_id").to_pylist()
    lost = len(set(all_q) - set(got))
    duplicated = (len(got) - len(set(got))) + len(set(killed_sampled) & set(resumed_sampled))
    corrupted = int(not killed_store.read_table(out).equals(clean_store.read_table(clean))) + int(
        not killed_store.read_table(out, "scored").equals(clean_store.read_table(clean, "scored")))
    reliability.record(lost=lost, duplicated=duplicated, corrupted=corrupted, recover_s=recover_s, injected=1,
                       detail=f"SIGKILL when shard {kill_at} of {n_parts} started; rerun sampled "
                              f"{len(resumed_sampled)} of {n_rows} rows")
    assert (lost, duplicated, corrupted) == (0, 0, 0), (killed_sampled, resumed_sampled)
    assert killed_sampled == all_q[:kill_at * per_part]
    assert sorted(resumed_sampled) == all_q[kill_at * per_part:]  # finished shards not rolled out again
    assert out == clean


def test_the_health_table_reaches_the_prefect_api(prefect_harness, tmp_path):
    """The monitors table of a trained checkpoint becomes a Prefect table artifact (what the UI
    shows), its description carrying the summary's flags; outside a run nothing is created."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.training import _publish_monitors

    rows = [{"step": 1, "reward": 0.1, "parse_rate": 0.5}, {"step": 2, "reward": 0.2, "parse_rate": None}]
    summary = {"flags": ["collapse_zero_std"]}
    (tmp_path / "monitors.json").write_text(json.dumps({"stage": "grpo", "rows": rows, "summary": summary}))
    ref = ArtifactRef(name="grpo-checkpoint", version="abc")
    assert _publish_monitors("grpo", ref, tmp_path) == summary  # no run: returns the summary only

    @flow
    def publish():
        return _publish_monitors("grpo", ref, tmp_path)

    state = publish(return_state=True)
    assert state.result() == summary
    # The harness is shared by the whole session: other runs publish under this key too, so
    # take the artifact this flow run created.
    with get_client(sync_client=True) as client:
        arts = [a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["grpo-monitors"])))
            if a.flow_run_id == state.state_details.flow_run_id]
    assert len(arts) == 1 and arts[0].type == "table" and "collapse_zero_std" in arts[0].description
    table = arts[0].data if isinstance(arts[0].data, list) else json.loads(arts[0].data)
    assert [r["step"] for r in table] == [1, 2]
