"""The paper's comparisons as settings of a reproduction: which extra arms train (direct SFT
beside CoT-SFT, paper Table 4: +8.08 %), which extra benches are scored beside the composed one
(the real KVG-Bench), and in which prompt modes the base checkpoint is scored (the official
``eval.sh`` gives the base model the raw question: ``baseline``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ExtraBench(BaseModel):
    """A bench scored beside the composed one: a KVG-Bench-schema Parquet file (local path or
    ``s3://``) or a store reference ``name@version``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Label in the report (e.g. kvg-bench).")
    source: str = Field(description="Parquet path/URI in the official KVG-Bench schema, or a store ref name@version.")
    seen_categories: list[str] | None = Field(None, description="None: the official KVG-Bench seen categories.")
    all_categories: list[str] | None = Field(None, description="None: the official KVG-Bench categories.")


class ComparisonConfig(BaseModel):
    """Arms, benches and prompt modes of the report."""

    model_config = ConfigDict(extra="forbid")

    direct_sft: bool = Field(
        False, description="Also train the direct-SFT arm (answer-only targets on the same SFT rows) and report "
        "base / direct-SFT / CoT-SFT / CoT-SFT+GRPO side by side with paired-bootstrap differences.")
    base_prompt_modes: list[Literal["baseline", "r1"]] = Field(
        default_factory=lambda: ["baseline", "r1"],
        description="Prompt modes the base checkpoint is scored in: baseline = the raw question (official eval.sh "
        "for base models), r1 = the DeepPerception prompt. Each is a labelled row of the report.")
    extra_benches: list[ExtraBench] = Field(default_factory=list, description="Benches scored beside the composed one.")
    n_resamples: int = Field(2000, ge=100, description="Paired-bootstrap resamples for the arm differences.")
    seed: int = Field(0, description="Seed of the paired bootstrap.")
