"""Map a stage's shard work over a Prefect task runner: threads here, or Ray (``prefect-ray``).

``map_shards(fn, jobs, runner, name)`` runs ``fn(job)`` for every job as its own Prefect task run
(task name ``name``, run name ``<name>-<shard>``, so each shard is visible, timed and logged in
the UI) and returns the results in job order. The runner is a setting
(:class:`deepperception.engine.shard_runner.ShardRunnerConfig`); the stage code is the same
either way, and the scheduling is Prefect's (``ThreadPoolTaskRunner``) or Ray's
(``prefect_ray.RayTaskRunner``): nothing here decides where a shard runs.

How it is wired (checked against the installed prefect 3.8.8 / prefect-ray 0.6.0 sources):

* ``task.submit`` / ``task.map`` always use the *flow's* task runner (``FlowRunContext.task_runner``),
  and from inside a running task they would nest into the very pool that runs the caller. So
  ``map_shards`` builds its own runner and uses it as a context manager:
  ``with runner: runner.submit(task, parameters)``. That works inside a flow, inside a task (the
  stage task that wraps ``run_stage``; the shard runs are linked to it as children) and inside a
  task run without a flow. Threads carry the Prefect context with ``copy_context``; Ray ships it
  with ``serialize_context`` (API URL and settings included), so Ray workers report to the same
  Prefect API.
* All results are gathered *inside* the ``with`` block: leaving it shuts a local Ray down and
  cancels pending thread futures.
* Failure contract: every shard is waited for, then the first failure (in job order) is raised,
  with a note saying how many shards failed. The shards that finished have already committed
  their output through ``fn`` (``store.commit_shard``), so a rerun redoes only the failed ones.
* Outside any Prefect run (a benchmark, a plain script) there is no run to attach task runs to,
  and creating them would start an ephemeral Prefect server. There ``map_shards`` runs ``fn`` on
  a plain ``concurrent.futures.ThreadPoolExecutor`` (threads) or as plain Ray remote functions
  (ray), with the same ordering and failure contract.
* A local Ray (``address=None``) is started for the map and stopped after it (``ray.init`` /
  ``ray.shutdown`` by ``RayTaskRunner``); that costs Ray's start-up (seconds) per call. A Ray that
  is already initialised in this process is reused and left running. ``address="auto"`` is passed
  to ``ray.init`` as ``address="auto"`` (``RayTaskRunner`` itself would treat it as "start a new
  one").

``fn`` and every job must pickle with the standard pickler: a module-level function (importable
on a Ray worker, which has this package installed) and plain data (paths, refs, pydantic
models). Lambdas and closures are refused up front with a :class:`TypeError`, on threads too, so
a stage that works on threads also works on a cluster.
"""

from __future__ import annotations

import concurrent.futures
import pickle
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prefect import task
from prefect.context import FlowRunContext, TaskRunContext
from prefect.futures import wait

from deepperception.engine.shard_runner import ShardRunnerConfig
from tasks.common import TASK_DEFAULTS, run_logger

J = TypeVar("J")
R = TypeVar("R")


def _run_shard(fn: Callable[[Any], Any], job: Any, shard: int | str) -> Any:
    """The body of one shard's task run (``shard`` is only there to name the run)."""
    return fn(job)


_shard_task = task(_run_shard, name="shard", **TASK_DEFAULTS)


def check_picklable(fn: Callable[[J], R], jobs: Sequence[J]) -> None:
    """Refuse what a Ray worker could not receive: a lambda, a closure, unpicklable job data.

    >>> import math
    >>> check_picklable(math.sqrt, [1.0, 4.0])
    >>> check_picklable(lambda job: job, [1])
    Traceback (most recent call last):
    ...
    TypeError: map_shards needs a module-level function, got <lambda> (lambdas, closures and local functions cannot be sent to a Ray worker); define it at the top of a module
    >>> check_picklable(math.sqrt, [1.0, (x for x in [])])
    Traceback (most recent call last):
    ...
    TypeError: map_shards: job 1 (generator) does not pickle: cannot pickle 'generator' object; jobs must be plain data (paths, refs, pydantic models)
    """
    qualname = getattr(fn, "__qualname__", repr(fn))
    if not callable(fn):
        raise TypeError(f"map_shards needs a callable, got {fn!r}")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise TypeError(f"map_shards needs a module-level function, got {qualname} (lambdas, closures and "
                        "local functions cannot be sent to a Ray worker); define it at the top of a module")
    try:
        pickle.dumps(fn)
    except Exception as exc:
        raise TypeError(f"map_shards: function {qualname} does not pickle ({exc}); use a module-level "
                        "function") from None
    for i, job in enumerate(jobs):
        try:
            pickle.dumps(job)
        except Exception as exc:
            raise TypeError(f"map_shards: job {i} ({type(job).__name__}) does not pickle: {exc}; jobs must be "
                            "plain data (paths, refs, pydantic models)") from None


def _raise_first(errors: list[tuple[int | str, BaseException]], total: int, name: str) -> None:
    if not errors:
        return
    shard, first = errors[0]
    failed = ", ".join(str(s) for s, _ in errors[:10]) + (" ..." if len(errors) > 10 else "")
    first.add_note(f"map_shards {name!r}: {len(errors)} of {total} shards failed (shards {failed}); this is "
                   f"shard {shard}. The other shards completed; a rerun redoes only the failed ones.")
    raise first


def _in_prefect_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _prefect_task_runner(runner: ShardRunnerConfig):
    if runner.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=runner.max_workers)
    from prefect_ray import RayTaskRunner

    kwargs = runner.ray_init_kwargs()
    address = runner.address
    if address == "auto":  # RayTaskRunner turns "auto" into ray.init() (a new local Ray); ask ray.init itself
        kwargs["address"], address = "auto", None
    return RayTaskRunner(address=address, init_kwargs=kwargs)


def _map_prefect(fn, jobs, runner: ShardRunnerConfig, name: str, ids: list) -> list:
    shard_task = _shard_task.with_options(name=name, task_run_name=f"{name}-{{shard}}")
    results: list[Any] = [None] * len(jobs)
    errors: list[tuple[int | str, BaseException]] = []
    with _prefect_task_runner(runner) as task_runner:
        futures = [task_runner.submit(shard_task, {"fn": fn, "job": job, "shard": sid})
                   for job, sid in zip(jobs, ids)]
        wait(futures)
        for i, (future, sid) in enumerate(zip(futures, ids)):
            try:
                results[i] = future.result()
            except BaseException as exc:  # a Crashed run raises a non-Exception too
                errors.append((sid, exc))
    _raise_first(errors, len(jobs), name)
    return results


def _map_plain_threads(fn, jobs, runner: ShardRunnerConfig, name: str, ids: list) -> list:
    errors: list[tuple[int | str, BaseException]] = []
    results: list[Any] = [None] * len(jobs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=runner.max_workers,
                                               thread_name_prefix=f"shard-{name}") as pool:
        futures = [pool.submit(fn, job) for job in jobs]
        for i, (future, sid) in enumerate(zip(futures, ids)):
            try:
                results[i] = future.result()
            except BaseException as exc:
                errors.append((sid, exc))
    _raise_first(errors, len(jobs), name)
    return results


def _call(fn, job):
    return fn(job)


def _map_plain_ray(fn, jobs, runner: ShardRunnerConfig, name: str, ids: list) -> list:
    import ray

    owns = not ray.is_initialized()
    if owns:
        kwargs = runner.ray_init_kwargs()
        if runner.address is not None:
            kwargs.setdefault("address", runner.address)
        ray.init(**kwargs)
    try:
        remote = ray.remote(_call).options(name=name)
        refs = [remote.remote(fn, job) for job in jobs]
        results: list[Any] = [None] * len(jobs)
        errors: list[tuple[int | str, BaseException]] = []
        for i, (ref, sid) in enumerate(zip(refs, ids)):
            try:
                results[i] = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # re-raise what fn raised, not Ray's wrapper
                errors.append((sid, exc.cause if isinstance(exc.cause, BaseException) else exc))
            except BaseException as exc:  # a dead worker, an unpicklable result
                errors.append((sid, exc))
    finally:
        if owns:
            ray.shutdown()
    _raise_first(errors, len(jobs), name)
    return results


def map_shards(fn: Callable[[J], R], jobs: Sequence[J], runner: ShardRunnerConfig | None = None,
               name: str = "shard", *, shard_ids: Sequence[int | str] | None = None) -> list[R]:
    """``[fn(job) for job in jobs]``, each call a Prefect task run on the configured runner.

    ``runner`` None means :meth:`ShardRunnerConfig.from_env` (threads unless ``DP_SHARD_RUNNER``
    says otherwise). ``shard_ids`` name the task runs (``<name>-<id>``; default: the job's
    position); pass the stage's shard indices when ``jobs`` is only the unfinished shards of a
    resumed stage, so the UI shows the real index. Every job is waited for; then the first
    failure (in job order) is raised, after the others completed.

    >>> import math
    >>> map_shards(math.sqrt, [1.0, 4.0, 9.0], ShardRunnerConfig(max_workers=2), name="sqrt")
    [1.0, 2.0, 3.0]
    """
    jobs = list(jobs)
    ids = list(range(len(jobs))) if shard_ids is None else list(shard_ids)
    if len(ids) != len(jobs):
        raise ValueError(f"map_shards {name!r}: {len(jobs)} jobs but {len(ids)} shard_ids")
    check_picklable(fn, jobs)
    runner = ShardRunnerConfig.from_env() if runner is None else runner
    if not jobs:
        return []
    if _in_prefect_run():
        where = (f"threads (max_workers={runner.max_workers})" if runner.kind == "threads"
                 else f"Ray ({runner.address or 'local'})")
        run_logger().info("%s: %d shards as Prefect task runs on %s", name, len(jobs), where)
        return _map_prefect(fn, jobs, runner, name, ids)
    if runner.kind == "threads":
        return _map_plain_threads(fn, jobs, runner, name, ids)
    return _map_plain_ray(fn, jobs, runner, name, ids)


def run_stage_shards(store, writer, logger, unit: str, n_shards: int, spec, fn, runner: ShardRunnerConfig | None):
    """Run the shards of ``writer``'s version that are not finished yet (``fn(job)`` per shard, on
    ``runner``; env overrides applied) and return every shard's record, in index order.

    Finished shards of an earlier, interrupted run of the same version are reused, and a shard that
    finished with failed items is run again with ``job.redo`` set (see
    :mod:`deepperception.engine.sharding`)."""
    from deepperception.engine.sharding import gather, plan_shards

    plan = plan_shards(store, writer.ref, unit, n_shards, spec)
    if plan.done:
        logger.info("%s: resuming %s: %d of %d shard(s) already finished, %d to run (%d of them to retry failed "
                    "items)", writer.stage, writer.ref, len(plan.done), n_shards, len(plan.jobs),
                    sum(1 for j in plan.jobs if j.redo))
    results = map_shards(fn, plan.jobs, (runner or ShardRunnerConfig()).with_env(), name=f"{writer.stage}-shard",
                         shard_ids=[j.index for j in plan.jobs]) if plan.jobs else []
    return gather(plan, results)
