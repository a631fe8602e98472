"""Where the shards of a long stage run: a thread pool here, or a Ray cluster.

This module is only the *setting* (no Prefect, no Ray import): ``tasks.sharding.map_shards`` turns
it into a Prefect task runner (``prefect.task_runners.ThreadPoolTaskRunner`` or
``prefect_ray.RayTaskRunner``), so scheduling is Prefect's and Ray's, never home-made.

Like training's ``LaunchConfig`` it changes *where* work runs, not *what* it computes, so it is
never part of an artifact version: a stage run on threads and the same stage run on Ray commit
the same version (and one can resume the other's shards).

Environment overrides (read by :meth:`ShardRunnerConfig.from_env`), so an operator can move a
run onto a cluster without editing a config file:

* ``DP_SHARD_RUNNER=threads|ray``
* ``DP_RAY_ADDRESS=ray://<head>:10001`` (a remote cluster through Ray Client), ``auto`` (the
  cluster ``ray start --head`` started on this machine), or empty (start a local Ray);
* ``DP_SHARD_MAX_WORKERS=<n>`` (threads).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deepperception.errors import ConfigError

RUNNER_ENV = "DP_SHARD_RUNNER"
ADDRESS_ENV = "DP_RAY_ADDRESS"
MAX_WORKERS_ENV = "DP_SHARD_MAX_WORKERS"


class ShardRunnerConfig(BaseModel):
    """How the shards of one stage are executed (one Prefect task run per shard)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["threads", "ray"] = Field(
        "threads", description="threads: a Prefect ThreadPoolTaskRunner in the stage's process (I/O-bound "
        "work: model-server calls, image reads); ray: prefect-ray's RayTaskRunner (a local Ray or a cluster).")
    max_workers: int = Field(4, ge=1, description="Concurrent shards for kind=threads (the thread pool size). "
                             "Ray sizes itself from the cluster's CPUs (init_kwargs num_cpus for a local Ray).")
    address: str | None = Field(
        None, description="kind=ray: None starts a local Ray for the duration of the map and stops it after; "
        "'ray://<head>:10001' connects to a cluster through Ray Client (e.g. a KubeRay head service); 'auto' "
        "connects to the cluster already running on this machine (`ray start --head`).")
    init_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for ray.init (kind=ray), e.g. {'num_cpus': 2, "
        "'include_dashboard': False} for a local Ray, or {'runtime_env': {...}} for a cluster.")
    forward_env_prefixes: list[str] = Field(
        default_factory=lambda: ["DP_STORE_"],
        description="kind=ray with an address: environment variables of the driver whose names start with one "
        "of these prefixes are added to runtime_env.env_vars, so remote workers open the same artifact store. "
        "A local Ray inherits the driver's environment and needs none. Credentials are better given to the "
        "worker pods directly (a Kubernetes Secret) than forwarded.")

    @field_validator("address")
    @classmethod
    def _check_address(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if v != "auto" and "://" not in v and ":" not in v:
            raise ValueError(f"Ray address {v!r} is neither 'auto', 'ray://host:port' nor 'host:port'")
        return v

    def with_env(self, environ: Mapping[str, str] | None = None) -> "ShardRunnerConfig":
        """This config with ``DP_SHARD_RUNNER`` / ``DP_RAY_ADDRESS`` / ``DP_SHARD_MAX_WORKERS`` applied.

        >>> ShardRunnerConfig().with_env({"DP_SHARD_RUNNER": "ray", "DP_RAY_ADDRESS": "ray://head:10001"}).address
        'ray://head:10001'
        >>> ShardRunnerConfig(kind="ray", address="auto").with_env({"DP_RAY_ADDRESS": ""}).address is None
        True
        >>> ShardRunnerConfig().with_env({"DP_SHARD_RUNNER": "dask"})
        Traceback (most recent call last):
        ...
        deepperception.errors.ConfigError: DP_SHARD_RUNNER='dask': expected 'threads' or 'ray'
        """
        env = os.environ if environ is None else environ
        update: dict[str, Any] = {}
        kind = env.get(RUNNER_ENV)
        if kind:
            kind = kind.strip().lower()
            if kind not in ("threads", "ray"):
                raise ConfigError(f"{RUNNER_ENV}={kind!r}: expected 'threads' or 'ray'")
            update["kind"] = kind
        if ADDRESS_ENV in env:
            update["address"] = env[ADDRESS_ENV]
        if env.get(MAX_WORKERS_ENV):
            try:
                update["max_workers"] = int(env[MAX_WORKERS_ENV])
            except ValueError:
                raise ConfigError(f"{MAX_WORKERS_ENV}={env[MAX_WORKERS_ENV]!r} is not an integer") from None
        if not update:
            return self
        try:
            return type(self).model_validate({**self.model_dump(), **update})
        except ValueError as exc:  # pydantic's ValidationError, with the variable named
            raise ConfigError(f"shard runner from environment {update}: {exc}") from None

    @classmethod
    def from_env(cls, base: "ShardRunnerConfig | None" = None,
                 environ: Mapping[str, str] | None = None) -> "ShardRunnerConfig":
        """``base`` (default: the defaults) with the environment overrides applied.

        >>> ShardRunnerConfig.from_env(environ={}).kind
        'threads'
        >>> ShardRunnerConfig.from_env(environ={"DP_SHARD_RUNNER": "ray"}).kind
        'ray'
        """
        return (base or cls()).with_env(environ)

    def ray_init_kwargs(self, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """What ``ray.init`` receives: ``init_kwargs``, plus the forwarded environment for a cluster.

        Explicit ``runtime_env.env_vars`` win over forwarded ones.

        >>> cfg = ShardRunnerConfig(kind="ray", address="ray://head:10001",
        ...                         init_kwargs={"runtime_env": {"env_vars": {"DP_STORE_URI": "s3://b/x"}}})
        >>> cfg.ray_init_kwargs({"DP_STORE_URI": "s3://b/y", "DP_STORE_S3_ENDPOINT_URL": "http://s3:9000", "HOME": "/h"})
        {'runtime_env': {'env_vars': {'DP_STORE_S3_ENDPOINT_URL': 'http://s3:9000', 'DP_STORE_URI': 's3://b/x'}}}
        >>> ShardRunnerConfig(kind="ray", init_kwargs={"num_cpus": 2}).ray_init_kwargs({"DP_STORE_URI": "s3://b/y"})
        {'num_cpus': 2}
        """
        kwargs = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.init_kwargs.items()}
        if self.address is None or not self.forward_env_prefixes:
            return kwargs
        env = os.environ if environ is None else environ
        forwarded = {k: v for k, v in sorted(env.items()) if k.startswith(tuple(self.forward_env_prefixes))}
        if not forwarded:
            return kwargs
        runtime_env = dict(kwargs.get("runtime_env") or {})
        runtime_env["env_vars"] = {**forwarded, **(runtime_env.get("env_vars") or {})}
        kwargs["runtime_env"] = runtime_env
        return kwargs
