"""Which labeler and which teacher a stage config asks for: the one dispatch table of backends.

Backends are built inside each shard job (in its own worker process), so an endpoint's client,
its connection pool and its usage meter belong to one shard; API keys are read there from the
environment variable the config names, never carried in a job or a manifest.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:  # pragma: no cover
    from deepperception.config import DistillationStageConfig, LabelingStageConfig
    from deepperception.engine.distillation import Teacher
    from deepperception.engine.labeling import BoxLabeler


def make_labeler(config: "LabelingStageConfig") -> "BoxLabeler":
    from deepperception.engine import labeling

    if config.backend == "oracle":
        return labeling.OracleLabeler()
    ep = config.endpoint
    return labeling.OpenAIGroundingLabeler(
        base_url=ep.base_url, model=ep.model, api_key=os.environ.get(ep.api_key_env, "EMPTY"),
        timeout=ep.timeout_s, max_retries=ep.max_retries, concurrency=ep.concurrency, box_format=config.box_format)


def make_teacher(config: "DistillationStageConfig", entities_table: pa.Table) -> "Teacher":
    from deepperception.engine import distillation

    if config.backend == "template":
        return distillation.TemplateTeacher(entities_table)
    ep = config.endpoint
    return distillation.OpenAITeacher(
        base_url=ep.base_url, model=ep.model, api_key=os.environ.get(ep.api_key_env, "EMPTY"),
        timeout=ep.timeout_s, max_retries=ep.max_retries, concurrency=ep.concurrency,
        temperature=config.temperature, max_tokens=config.max_tokens)
