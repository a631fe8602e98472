"""The reproduction's stages, named once: stage -> flow -> deployment -> work pool.

Every list of stage names (``reproduce(force_stages=...)``, the CLI's ``--force``, the partial
rerun tests, the stage deployments) reads :data:`CATALOGUE` (or :data:`STAGES`, its names); a new
stage is added here and nowhere else. Each entry says which stage flow runs it (its name in
``flows/stages.py``), whether ``prefect.yaml`` deploys that flow on its own (deployment
``<flow>/<flow>``) and on which work pool it runs (``gpu``: training and evaluation; ``cpu``:
the data engine, run in the parent when not deployed). ``tests/test_pipeline_stages.py`` checks
this table against ``prefect.yaml`` and ``flows/stages.py``.

>>> STAGES[:3]
('mine', 'collect', 'label')
>>> "grpo" in Stage.__args__
True
>>> BY_STAGE["sft"].deployment, BY_STAGE["sft"].pool, BY_STAGE["mine"].deployment
('train-sft/train-sft', 'gpu', None)
>>> GPU_DEPLOYMENTS["evaluate-checkpoint"]
'evaluate-checkpoint/evaluate-checkpoint'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Pool = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class StageSpec:
    """One stage of the reproduction."""

    stage: str
    """The name ``force_stages`` / ``--force`` take."""
    flow: str
    """The stage flow's name (``@flow(name=...)`` in ``flows/stages.py``)."""
    pool: Pool
    """The work pool that runs it (the parent's pool, ``cpu``, when it is not deployed)."""
    deployed: bool = False
    """Whether ``prefect.yaml`` deploys the flow on its own (``<flow>/<flow>``)."""

    @property
    def deployment(self) -> str | None:
        """``flow-name/deployment-name`` as ``run_deployment`` takes it, or None."""
        return f"{self.flow}/{self.flow}" if self.deployed else None


CATALOGUE: tuple[StageSpec, ...] = (
    StageSpec("mine", "mine-entities", "cpu"),
    StageSpec("collect", "collect-images", "cpu"),
    StageSpec("label", "label-boxes", "cpu", deployed=True),
    StageSpec("compose", "compose-images", "cpu", deployed=True),
    StageSpec("bench", "build-bench", "cpu"),
    StageSpec("distill", "distill-cot", "cpu", deployed=True),
    StageSpec("filter", "filter-cot", "cpu"),
    StageSpec("contamination", "check-contamination", "cpu", deployed=True),
    StageSpec("training-data", "build-training-data", "cpu"),
    StageSpec("data-card", "write-data-card", "cpu", deployed=True),
    StageSpec("export", "export-datasets", "cpu", deployed=True),
    StageSpec("base-model", "build-base-model", "cpu"),
    StageSpec("sft", "train-sft", "gpu", deployed=True),
    StageSpec("rl-filter", "rl-filter", "gpu", deployed=True),
    StageSpec("grpo", "train-grpo", "gpu", deployed=True),
    StageSpec("evaluate", "evaluate-checkpoint", "gpu", deployed=True),
    StageSpec("report", "write-report", "cpu"),
)
"""Every stage, in pipeline order."""

STAGES: tuple[str, ...] = tuple(s.stage for s in CATALOGUE)
BY_STAGE: dict[str, StageSpec] = {s.stage: s for s in CATALOGUE}
BY_FLOW: dict[str, StageSpec] = {s.flow: s for s in CATALOGUE}

GPU_DEPLOYMENTS: dict[str, str] = {s.flow: s.deployment for s in CATALOGUE if s.pool == "gpu" and s.deployment}
"""Stage flow name -> the ``gpu`` pool deployment that serves it (what the parent dispatches to)."""

# ``Literal[tuple]`` is ``Literal[*tuple]``: Prefect turns it into a dropdown (an enum in the schema).
Stage = Literal[STAGES]  # type: ignore[valid-type]
