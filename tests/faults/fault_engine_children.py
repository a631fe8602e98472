"""The child process of ``test_fault_crash_engine.py``: one data-engine stage, run for real, to be SIGKILLed.

``python fault_engine_children.py <stage> <args.json>`` runs ``label``, ``compose`` or ``distill``
(the stage task's body, shard runner threads, one worker so shards commit one after another).
With ``DP_FAULT_KILL_AFTER_SHARDS=k`` the process SIGKILLs itself right after its k-th shard
record is committed (no cleanup, no ``finally``); otherwise the parent kills it.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def _arm_self_kill() -> None:
    k = int(os.environ.get("DP_FAULT_KILL_AFTER_SHARDS") or 0)
    if k <= 0:
        return
    from deepperception.store.artifacts import ArtifactStore

    original = ArtifactStore.commit_shard
    done = [0]

    def commit_then_maybe_die(self, *args, **kwargs):
        record = original(self, *args, **kwargs)
        done[0] += 1
        if done[0] >= k:
            os.kill(os.getpid(), signal.SIGKILL)
        return record

    ArtifactStore.commit_shard = commit_then_maybe_die


def main(stage: str, args: dict) -> None:
    from deepperception.config import DistillationStageConfig, LabelingStageConfig, ShardingConfig
    from deepperception.engine.composition import CompositionConfig
    from deepperception.engine.shard_runner import ShardRunnerConfig
    from deepperception.store import ArtifactRef
    from tasks import engine

    _arm_self_kill()
    runner = ShardRunnerConfig(kind="threads", max_workers=1)
    uri = args["store"]
    if stage == "label":
        engine.label_boxes_task.fn(LabelingStageConfig.model_validate(args["config"]),
                                   ArtifactRef.parse(args["images"]), uri, False, runner)
    elif stage == "compose":
        engine.compose_task.fn(CompositionConfig.model_validate(args["config"]), ArtifactRef.parse(args["labeled"]),
                               uri, False, ShardingConfig.model_validate(args["sharding"]), runner)
    elif stage == "distill":
        engine.distill_cot_task.fn(DistillationStageConfig.model_validate(args["config"]),
                                   ArtifactRef.parse(args["composites"]), ArtifactRef.parse(args["entities"]),
                                   uri, False, runner)
    else:
        raise SystemExit(f"error: unknown stage {stage!r} (label, compose, distill)")


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
