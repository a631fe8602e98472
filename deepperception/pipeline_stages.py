"""The reproduction's stages, named once.

Every list of stage names (``reproduce(force_stages=...)``, the CLI's ``--force``, the partial
rerun tests, the stage deployments) reads :data:`STAGES`; a new stage is added here and nowhere
else.

>>> STAGES[:3]
('mine', 'collect', 'label')
>>> "grpo" in Stage.__args__
True
"""

from __future__ import annotations

from typing import Literal

STAGES: tuple[str, ...] = (
    "mine", "collect", "label", "compose", "bench", "distill", "filter", "contamination", "training-data",
    "data-card", "export", "base-model", "sft", "rl-filter", "grpo", "evaluate", "report",
)

# ``Literal[tuple]`` is ``Literal[*tuple]``: Prefect turns it into a dropdown (an enum in the schema).
Stage = Literal[STAGES]  # type: ignore[valid-type]
