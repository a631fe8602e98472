"""crash.evaluation: the KVG-Bench evaluation stage (``tasks.evaluation.evaluate_task``, the tiny
random Qwen2-VL on a small synthetic bench) SIGKILLed at a random point in a child process, then
rerun in this process.

The child kills itself with SIGKILL (no handler, no ``finally`` runs) at a point ``fault_rng``
picks: after the k-th generated batch was appended to the work dir's ``outputs.jsonl``, inside a
``generate`` call, in the middle of an append (a torn last line: a random prefix of the batch's
bytes reaches the disk), or after every file of the version was written but before the manifest
commit. The rerun must generate exactly the questions the killed run had not finished (counted
at the generation call, by question id), and commit the version an uninterrupted run commits,
with byte-identical files (``run.json`` apart from its timings and resume counters).

Run as a script (``python test_fault_crash_eval.py <json>``) it is the child.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepperception.config import EvalStageConfig
from deepperception.model.synthetic import cached_tiny_checkpoint, synthetic_bench
from deepperception.store import ArtifactRef, ArtifactStore, StoreSettings

N_Q, BATCH, MAX_NEW = 8, 2, 6
MODES = ("after_batch", "in_generate", "torn_append", "before_commit")
# run.json fields that say how this particular run went (not what it produced).
RUN_VOLATILE = ("timing", "resumed_from")


def _cfg() -> EvalStageConfig:
    return EvalStageConfig(max_new_tokens=MAX_NEW, batch_size=BATCH, n_resamples=100,
                           determinism={"threads": 1})


def _inputs(uri: str, ckpt: Path) -> tuple[ArtifactRef, ArtifactRef]:
    from deepperception.store.stage import run_stage
    from tasks.common import register_external_checkpoint

    store = ArtifactStore(StoreSettings(uri=uri))
    base = register_external_checkpoint(store, str(ckpt), "base-checkpoint", "base-model")
    bench = synthetic_bench(N_Q, seed=3)
    bench_ref = run_stage(store, "bench", "import-bench", {"n": N_Q, "seed": 3}, {},
                          lambda w: (w.write_table(bench), {})[1])[0]
    return base, bench_ref


def _evaluate(uri: str, ckpt_ref: ArtifactRef, bench_ref: ArtifactRef) -> ArtifactRef:
    from tasks.evaluation import evaluate_task

    return evaluate_task.fn(_cfg(), "tiny", ckpt_ref, bench_ref, store_uri=uri)


# ---------------------------------------------------------------------------------------------
# the child


def _child(args: dict) -> None:
    """Install the kill point, then run the evaluation task as a pipeline worker would."""
    import deepperception.model.generation as generation
    from deepperception.eval import inference
    from deepperception.store.artifacts import VersionWriter

    mode, k = args["mode"], args["k"]  # k: batches that complete before the kill
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
    appended = [0]
    real_append, real_generate, real_commit = inference.append_records, generation.generate_batch, VersionWriter.commit

    def append_records(path, records):
        if mode == "torn_append" and appended[0] == k:
            payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
            with open(path, "ab") as f:  # the first `cut` bytes of this batch's one write reach the disk
                f.write(payload[: int(len(payload) * args["cut"])])
                f.flush()
                os.fsync(f.fileno())
            die()
        real_append(path, records)
        appended[0] += 1
        if mode == "after_batch" and appended[0] == k:
            die()

    def generate_batch(*a, **kw):
        if mode == "in_generate" and appended[0] == k:
            real_generate(*a, **kw)  # the batch's work is done, its answers are not on disk yet
            die()
        return real_generate(*a, **kw)

    def commit(self, *a, **kw):
        if mode == "before_commit" and self.name == "evaluation":
            die()  # every file of the version is in its attempt dir; no manifest
        return real_commit(self, *a, **kw)

    inference.append_records = append_records
    generation.generate_batch = generate_batch
    VersionWriter.commit = commit
    _evaluate(args["uri"], ArtifactRef.parse(args["ckpt"]), ArtifactRef.parse(args["bench"]))
    raise SystemExit(f"error: the kill point {mode} k={k} was never reached")


# ---------------------------------------------------------------------------------------------
# the test


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return cached_tiny_checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def clean_run(tiny_ckpt, tmp_path_factory):
    """The uninterrupted evaluation: (store, ref, question ids it generated, inputs)."""
    uri = str(tmp_path_factory.mktemp("eval-clean") / "store")
    inputs = _inputs(uri, tiny_ckpt)
    with _GenerationLog() as gen:
        ref = _evaluate(uri, *inputs)
    return ArtifactStore(StoreSettings(uri=uri)), ref, list(gen.ids), inputs


class _GenerationLog:
    """Records the question ids of every batch the evaluation prepares for generation (wraps the
    real ``deepperception.eval.inference._prepare``, the documented hook; nothing is replaced)."""

    def __enter__(self):
        from deepperception.eval import inference

        self.ids: list[str] = []
        self._real = inference._prepare

        def prepare(batch, *a, **kw):
            self.ids.extend(r["question_id"] for r in batch)
            return self._real(batch, *a, **kw)

        inference._prepare = prepare
        return self

    def __exit__(self, *exc):
        from deepperception.eval import inference

        inference._prepare = self._real


def _complete_lines(path: Path) -> list[str]:
    """Question ids of the complete JSON lines of a (possibly torn) outputs.jsonl."""
    if not path.exists():
        return []
    data = path.read_bytes()
    ids = []
    for line in data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]:
        ids.append(json.loads(line)["question_id"])
    return ids


def _files(store: ArtifactStore, ref: ArtifactRef) -> dict[str, bytes]:
    out = {}
    for f in store.manifest(ref).files:
        data = store.read_bytes(ref, f.path)
        if f.path == "run.json":
            run = json.loads(data)
            data = json.dumps({k: v for k, v in run.items() if k not in RUN_VOLATILE}, sort_keys=True).encode()
        out[f.path] = data
    return out


@pytest.mark.fault("crash.evaluation")
def test_evaluation_sigkilled_at_a_random_question_resumes_only_the_missing_ones(
        reliability, fault_rng, clean_run, tiny_ckpt, tmp_path):
    clean_store, clean_ref, clean_ids, clean_inputs = clean_run
    assert sorted(clean_ids) == sorted(set(clean_ids)) and len(clean_ids) == N_Q

    mode = fault_rng.choice(MODES)
    n_batches = N_Q // BATCH
    k = {"after_batch": fault_rng.randint(1, n_batches), "in_generate": fault_rng.randint(0, n_batches - 1),
         "torn_append": fault_rng.randint(0, n_batches - 1), "before_commit": n_batches}[mode]
    cut = round(fault_rng.uniform(0.05, 0.95), 3)
    uri = str(tmp_path / "store")
    inputs = _inputs(uri, tiny_ckpt)
    assert inputs == clean_inputs  # same checkpoint and bench versions: the same evaluation version

    args = {"mode": mode, "k": k, "cut": cut, "uri": uri, "ckpt": str(inputs[0]), "bench": str(inputs[1])}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, __file__, json.dumps(args)], env=env, capture_output=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-3000:]

    # What the killed run left: no evaluation version for any reader, a resumable work dir.
    store = ArtifactStore(StoreSettings(uri=uri))
    assert store.refs("evaluation") == [] and store.latest("evaluation") is None
    works = list((store.settings.local_cache() / "work" / store.identity / "evaluation").iterdir())
    assert len(works) == 1, works
    done_ids = _complete_lines(works[0] / "outputs.jsonl")
    torn = mode == "torn_append"
    expect_done = BATCH * k + (sum(1 for i in range(BATCH) if _line_ends_within(clean_store, clean_ref, k, i, cut))
                               if torn else 0)
    assert len(done_ids) == expect_done, (mode, k, cut, done_ids)

    t0 = time.perf_counter()
    with _GenerationLog() as gen:
        ref = _evaluate(uri, *inputs)
    recover_s = time.perf_counter() - t0

    final = _files(store, ref)
    clean = _files(clean_store, clean_ref)
    ids = [json.loads(line)["question_id"] for line in final["outputs.jsonl"].decode().splitlines()]
    redone = [q for q in gen.ids if q in done_ids]
    lost = len(set(clean_ids) - set(ids))
    duplicated = len(ids) - len(set(ids))
    corrupted = (sum(1 for p in set(final) | set(clean) if final.get(p) != clean.get(p))
                 + len(store.verify(ref)))
    reliability.record(
        lost=lost, duplicated=duplicated, corrupted=corrupted, recover_s=recover_s, injected=1,
        detail=f"killed {mode} (k={k} batches{f', cut {cut:.0%} into the append' if torn else ''}) with "
               f"{len(done_ids)}/{N_Q} questions on disk; the rerun generated {len(gen.ids)}, redid {len(redone)}")
    assert (lost, duplicated, corrupted) == (0, 0, 0), (sorted(set(final) ^ set(clean)),
                                                       [p for p in final if final.get(p) != clean.get(p)])
    assert ref == clean_ref  # the committed version is the uninterrupted one
    assert redone == [] and sorted(gen.ids) == sorted(set(clean_ids) - set(done_ids))
    assert len(gen.ids) == N_Q - len(done_ids)
    run = json.loads(store.read_bytes(ref, "run.json"))
    assert run["status"] == "complete" and run["resumed_from"] == len(done_ids)
    assert run["timing"]["generated"] == N_Q - len(done_ids)


def _line_ends_within(store: ArtifactStore, ref: ArtifactRef, k: int, i: int, cut: float) -> bool:
    """Whether the i-th record of the (k+1)-th batch ends (newline included) inside the first
    ``cut`` of that batch's bytes: the torn append left it complete."""
    from deepperception.eval import inference

    rows = synthetic_bench(N_Q, seed=3).to_pylist()
    order = sorted(rows, key=inference._length_key)[k * BATCH:(k + 1) * BATCH]
    recs = {json.loads(line)["question_id"]: line + "\n"
            for line in store.read_bytes(ref, "outputs.jsonl").decode().splitlines()}
    lens = [len(recs[r["question_id"]].encode()) for r in order]
    return sum(lens[: i + 1]) <= int(sum(lens) * cut)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
