"""Every scenario of the reliability campaign, by id: what it does to the pipeline and what must hold.

``benchmarks/reliability.py`` (``make reliability``) reports one row per entry, in this order, and
fails when a scenario did not run or lost anything; ``test_fault_catalogue.py`` checks that every id
here is recorded by a test in ``tests/faults/`` and that no test records an id missing here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    id: str
    group: str
    """crash | edge | fuzz | secrets (the issue's items 1-4)."""
    title: str
    promise: str
    """What must hold after the fault (what "lost" counts against)."""


_S = Scenario
SCENARIOS: tuple[Scenario, ...] = (
    # 1. SIGKILL a real process at a random point, restart.
    _S("crash.labeling", "crash", "box labeling SIGKILLed mid-stage, rerun",
       "no image lost or labeled twice; finished shards' photos not sent to the model again; same version bytes"),
    _S("crash.composition", "crash", "composition SIGKILLed mid-stage, rerun",
       "no composite lost or duplicated; finished shards not recomposed; same version bytes"),
    _S("crash.distillation", "crash", "CoT distillation SIGKILLed mid-stage, rerun",
       "no CoT lost or duplicated; finished items not requested from the teacher again; same version bytes"),
    _S("crash.rl_filter", "crash", "RL filter SIGKILLed mid-stage, rerun",
       "finished shards not rolled out again; same filtered pool as an uninterrupted run"),
    _S("crash.sft", "crash", "CoT-SFT SIGKILLed mid-training, rerun",
       "continues from the last checkpoint (no step trained twice); weights equal an uninterrupted run"),
    _S("crash.grpo", "crash", "GRPO SIGKILLed mid-training, rerun",
       "continues from the last checkpoint (no step trained twice); weights equal an uninterrupted run"),
    _S("crash.evaluation", "crash", "KVG-Bench evaluation SIGKILLed mid-run, rerun",
       "only the missing questions generated; final files identical to an uninterrupted run"),
    _S("crash.commit", "crash", "artifact commit SIGKILLed mid-write (local and S3), rerun",
       "the killed version is invisible to every reader; the rerun commits it complete"),
    # 2. Faults at the edges.
    _S("edge.s3_restart", "edge", "S3 server stopped mid-stage and restarted",
       "the stage retries and commits once the server is back; nothing half-committed"),
    _S("edge.s3_down", "edge", "S3 server stopped mid-stage and left down",
       "a clear error naming the endpoint after the retries; no version committed; a rerun completes"),
    _S("edge.slow_store", "edge", "every store request delayed (a slow bucket)",
       "the stage commits the same version as on a fast store; leases do not expire under it"),
    _S("edge.endpoint_faults", "edge", "teacher/labeler endpoints answering 429, 500, timeouts, garbage",
       "retried with backoff; items that stay failed are recorded with reason codes and retried by a rerun; none lost"),
    _S("edge.disk_full", "edge", "disk full while a stage writes its version",
       "a clear error; no version committed; the rerun on free space completes"),
    _S("edge.worker_killed", "edge", "Prefect worker and its flow-run process SIGKILLed mid-run",
       "the run ends Crashed, not Running (zombie automation); a rerun reuses what was committed"),
    # 3. Hostile input, fuzzed.
    _S("fuzz.answer_parser", "fuzz", "answer parser on arbitrary model output (hypothesis)",
       "never an exception, a defined result, bounded time"),
    _S("fuzz.boxes_iou", "fuzz", "boxes and IoU on arbitrary numbers (hypothesis)",
       "never an exception, a defined result in range, bounded time"),
    _S("fuzz.rewards", "fuzz", "reward functions on arbitrary completions and solutions (hypothesis)",
       "never an exception, a finite reward in range, bounded time"),
    _S("fuzz.images", "fuzz", "corrupt, truncated and decompression-bomb images",
       "a clear error or a per-item failure naming the file; memory and time bounded"),
    _S("fuzz.parquet", "fuzz", "Parquet with missing or mistyped columns",
       "a clear error naming the file and the column; nothing committed"),
    _S("fuzz.oversized_outputs", "fuzz", "oversized model and teacher outputs",
       "bounded time and memory; rejected or truncated with a reason code, never a crash"),
    # 4. Secrets.
    _S("secrets.scan", "secrets", "known API key and S3 secret scanned for after a run",
       "zero hits in run logs, manifests, artifacts, data cards and the Prefect database"),
)

BY_ID = {s.id: s for s in SCENARIOS}
