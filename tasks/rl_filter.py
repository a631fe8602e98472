"""Thin Prefect task of stage-2 data filtering (the RL filter) between CoT-SFT and GRPO."""

from __future__ import annotations

from prefect import task

from deepperception.engine.shard_runner import ShardRunnerConfig
from deepperception.engine.sharding import merged_metadata
from deepperception.errors import ArtifactError
from deepperception.store import ArtifactRef
from deepperception.store.stage import run_stage
from deepperception.training.rl_filter import RLFilterConfig
from tasks.common import TASK_DEFAULTS, checkpoint_dir, open_store, require_input_rows, run_logger
from tasks.sharding import run_stage_shards


@task(name="rl-filter", **TASK_DEFAULTS)
def rl_filter_task(
    config: RLFilterConfig, checkpoint: ArtifactRef, pool: ArtifactRef,
    store_uri: str | None = None, force: bool = False, runner: ShardRunnerConfig | None = None,
) -> ArtifactRef:
    """Keep GRPO items the stage-1 model solves sometimes but not always (paper: 1-3 of 4).

    Sampling runs shard by shard, one shard per part of the pool (``runner``: threads or Ray); each
    finished shard commits every row with its counts, so a killed run, rerun, samples only the
    unfinished parts. The keep rule and ``on_empty`` then apply to the histogram of the whole pool,
    and the kept rows stream into ``data`` (every scored row stays readable as table ``scored``).
    """
    from deepperception.training import rl_filter as rlf

    store = open_store(store_uri)
    logger = run_logger()

    def produce(w):
        n_in = require_input_rows(store, pool, "rl-filter")
        files = store.table_files(pool)
        ckpt = checkpoint_dir(store, checkpoint)
        seeds = rlf.shard_seeds([int(f.rows or 0) for f in files], config.seed, config.batch_size)
        spec = {"pool": str(pool), "checkpoint": str(checkpoint), "ckpt_dir": str(ckpt),
                "rl_filter": config.model_dump(mode="json")}
        try:
            records = run_stage_shards(store, w, logger, rlf.SHARD_UNIT, len(files),
                                  lambda i: {**spec, "part": i, "seed": seeds[i]}, rlf.rl_score_shard, runner)
        finally:  # threads shared one loaded stage-1 model; free it before the next (GPU) stage
            rlf.clear_model_cache()
        histogram = {int(k): v for k, v in (merged_metadata(records, "count_histogram") or {}).items()}
        scored_rows = sum(r.rows(rlf.SCORED_TABLE) for r in records)
        if scored_rows != n_in:
            raise ArtifactError(f"rl-filter: the shards of {w.ref} scored {scored_rows} rows, {pool} has {n_in}")
        policy = rlf.decide_policy(histogram, config.n_samples, config.keep_min, config.keep_max, config.on_empty)
        w.adopt_shards(records)
        with w.table_writer("data") as tw:
            for r in records:  # one shard in memory at a time
                scored = store.read_shard_table(w.ref, r, rlf.SCORED_TABLE)
                tw.schema = tw.schema or scored.schema
                kept = scored.filter(rlf.keep_mask(scored.column("n_correct"), config.keep_min, config.keep_max,
                                                   policy))
                if kept.num_rows:
                    tw.write(kept)
        stats = rlf.filter_stats(
            n_in, tw.rows, histogram, policy, on_empty=config.on_empty, n_samples=config.n_samples,
            keep_min=config.keep_min, keep_max=config.keep_max, **config.sampling(),
            max_new_tokens=config.max_new_tokens, seed=config.seed, ckpt_dir=ckpt,
            tally=merged_metadata(records, "advantage_tally") or {}, correct=config.correct,
            reward=config.reward_config())
        logger.info("rl-filter: %s", rlf.describe_zero_advantage(stats))
        if policy != "filter":
            logger.warning("rl-filter: no item had %d-%d of %d correct; policy %s kept all %d items",
                           config.keep_min, config.keep_max, config.n_samples, policy, tw.rows)
        return {"stats": stats, "shards": len(records)}

    return run_stage(store, "grpo-dataset", "rl-filter", config, {"checkpoint": checkpoint, "pool": pool},
                     produce, force=force)[0]
