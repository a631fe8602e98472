"""Which labeler and which teacher a stage config asks for: the one dispatch table of backends.

Backends are built inside each shard job (in its own worker process), so an endpoint's client,
its connection pool and its usage meter belong to one shard; API keys are read there from the
environment variable the config names, never carried in a job or a manifest. Model-served
backends go through :class:`deepperception.serving.client.ChatClient` (bounded concurrency,
client-side rate limit, retries with backoff and jitter, per-item failure records, token and
cost accounting); the offline backends (oracle labeler, template teacher) need no endpoint.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:  # pragma: no cover
    from deepperception.config import DistillationStageConfig, LabelingStageConfig
    from deepperception.serving.endpoint import EndpointConfig


def make_client(endpoint: "EndpointConfig"):
    from deepperception.serving.client import ChatClient

    return ChatClient(endpoint, api_key=os.environ.get(endpoint.api_key_env) or "EMPTY")


class _Metered:
    """A model backend plus its client: ``usage`` is the client's meter, ``close`` frees its pool."""

    def __init__(self, backend, client) -> None:
        self._backend, self._client = backend, client
        self.name = backend.name
        self.usage = client.meter

    def __getattr__(self, item):
        return getattr(self._backend, item)

    def close(self) -> None:
        self._client.close()


def make_labeler(config: "LabelingStageConfig"):
    from deepperception.engine import labeling

    if config.backend == "oracle":
        return labeling.OracleLabeler()
    from deepperception.engine.model_labeler import ModelGroundingLabeler

    client = make_client(config.endpoint)
    return _Metered(ModelGroundingLabeler(client, box_format=config.box_format), client)


def make_teacher(config: "DistillationStageConfig", entities_table: pa.Table):
    from deepperception.engine import distillation

    if config.backend == "template":
        return distillation.TemplateTeacher(entities_table)
    from deepperception.engine.model_teacher import ModelTeacher

    client = make_client(config.endpoint)
    return _Metered(ModelTeacher(client, temperature=config.temperature, max_tokens=config.max_tokens), client)


def close(backend) -> None:
    """Release a backend's connections (a no-op for the offline ones)."""
    fn = getattr(backend, "close", None)
    if callable(fn):
        fn()
