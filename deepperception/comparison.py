"""The paper's comparisons as settings of a reproduction: which extra arms train (direct SFT
beside CoT-SFT, paper Table 4: +8.08 %), which extra benches are scored beside the composed one
(the real KVG-Bench), and in which prompt modes the base checkpoint is scored (the official
``eval.sh`` gives the base model the raw question: ``baseline``).

Also the names the flow and the report share: the label of every evaluated arm, the order of the
report's rows, and the paired differences the report computes. Kept free of Prefect and of the
store so the flow, the report task and the tests cannot disagree on them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BasePromptMode = Literal["baseline", "r1"]

#: The bench every reproduction composes itself (its name in the report).
COMPOSED_BENCH = "composed"
DIRECT_SFT = "direct-sft"
COT_SFT = "sft"
GRPO = "grpo"

#: Titles of the arms in the report (labels stay short: they are in evaluation versions and keys).
ARM_TITLES = {DIRECT_SFT: "direct-SFT", COT_SFT: "CoT-SFT", GRPO: "CoT-SFT+GRPO"}


def base_label(mode: str) -> str:
    """Label of the base checkpoint scored in prompt ``mode``.

    >>> base_label("baseline"), base_label("r1")
    ('base (baseline prompt)', 'base (r1 prompt)')
    """
    return f"base ({mode} prompt)"


def arm_title(label: str) -> str:
    """What the report calls an arm.

    >>> arm_title("sft"), arm_title("base (baseline prompt)")
    ('CoT-SFT', 'base, raw question (baseline prompt)')
    """
    if label == base_label("baseline"):
        return "base, raw question (baseline prompt)"
    return ARM_TITLES.get(label, label)


def artifact_key(label: str, bench: str = COMPOSED_BENCH) -> str:
    """Key of an evaluation in ``reproduce``'s ``artifacts`` (identifier-like, bench appended
    for an extra bench).

    >>> artifact_key("base (r1 prompt)"), artifact_key("direct-sft", "kvg-bench")
    ('evaluation_base_r1', 'evaluation_direct_sft_on_kvg_bench')
    """
    name = label.replace(" prompt)", "").replace(" (", "_").replace("-", "_").replace(" ", "_")
    key = f"evaluation_{name}"
    return key if bench == COMPOSED_BENCH else f"{key}_on_{bench.replace('-', '_').replace(' ', '_')}"


def arm_order(modes: list[str], direct_sft: bool) -> list[str]:
    """Labels in report row order: base (each mode), direct-SFT, CoT-SFT, CoT-SFT+GRPO.

    >>> arm_order(["baseline", "r1"], True)
    ['base (baseline prompt)', 'base (r1 prompt)', 'direct-sft', 'sft', 'grpo']
    """
    return [base_label(m) for m in modes] + ([DIRECT_SFT] if direct_sft else []) + [COT_SFT, GRPO]


#: Paired differences ``A - B`` the report computes whenever both arms were scored on a bench.
DIFFERENCES: tuple[tuple[str, str, str], ...] = (
    (COT_SFT, DIRECT_SFT, "CoT vs direct fine-tuning on the same rows (paper Table 4: +8.08)"),
    (GRPO, COT_SFT, "what stage-2 GRPO adds"),
    (COT_SFT, base_label("r1"), "what CoT-SFT adds over the base, same prompt"),
    (GRPO, base_label("r1"), "the whole recipe over the base, same prompt"),
    (base_label("r1"), base_label("baseline"), "the base's prompt sensitivity"),
)


def base_eval_update(mode: str, baseline_max_new_tokens: int | None) -> dict:
    """Evaluation settings of the base in prompt ``mode`` (over the stage's own).

    >>> base_eval_update("baseline", 64), base_eval_update("r1", 64), base_eval_update("baseline", None)
    ({'prompt_mode': 'baseline', 'max_new_tokens': 64}, {'prompt_mode': 'r1'}, {'prompt_mode': 'baseline'})
    """
    update: dict = {"prompt_mode": mode}
    if mode == "baseline" and baseline_max_new_tokens is not None:
        update["max_new_tokens"] = baseline_max_new_tokens
    return update


def differences_for(labels: list[str]) -> list[tuple[str, str, str]]:
    """The entries of :data:`DIFFERENCES` whose two arms are both in ``labels``.

    >>> [(a, b) for a, b, _ in differences_for(["base (r1 prompt)", "sft", "grpo"])]
    [('grpo', 'sft'), ('sft', 'base (r1 prompt)'), ('grpo', 'base (r1 prompt)')]
    """
    have = set(labels)
    return [d for d in DIFFERENCES if d[0] in have and d[1] in have]


class ExtraBench(BaseModel):
    """A bench scored beside the composed one: a KVG-Bench-schema Parquet file (local path or
    ``s3://``) or a store reference ``name@version``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="Label in the report (e.g. kvg-bench); letters, digits, '.', '_', '-'.")
    source: str = Field(description="Parquet path/URI in the official KVG-Bench schema, or a store ref name@version.")
    seen_categories: list[str] | None = Field(None, description="None: the official KVG-Bench seen categories.")
    all_categories: list[str] | None = Field(None, description="None: the official KVG-Bench categories.")


class ComparisonConfig(BaseModel):
    """Arms, benches and prompt modes of the report."""

    model_config = ConfigDict(extra="forbid")

    direct_sft: bool = Field(
        False, description="Also train the direct-SFT arm (answer-only targets on the same SFT rows) and report "
        "base / direct-SFT / CoT-SFT / CoT-SFT+GRPO side by side with paired-bootstrap differences.")
    base_prompt_modes: list[BasePromptMode] = Field(
        default_factory=lambda: ["baseline", "r1"],
        description="Prompt modes the base checkpoint is scored in: baseline = the raw question (official eval.sh "
        "for base models), r1 = the DeepPerception prompt. Each is a labelled row of the report.")
    baseline_max_new_tokens: int | None = Field(
        None, ge=1, description="Generation cap of the base's baseline (raw question) evaluation; None = "
        "evaluation.max_new_tokens (official: 1500). A raw-question answer is a bare box (~20 tokens), so a cap "
        "changes nothing for a model that stops, and bounds one that never does (a random-init base).")
    extra_benches: list[ExtraBench] = Field(default_factory=list, description="Benches scored beside the composed one.")
    n_resamples: int = Field(2000, ge=100, description="Paired-bootstrap resamples for the arm differences.")
    seed: int = Field(0, description="Seed of the paired bootstrap.")

    @model_validator(mode="after")
    def _distinct_names(self) -> "ComparisonConfig":
        names = [b.name for b in self.extra_benches]
        clash = sorted({n for n in names if names.count(n) > 1 or n == COMPOSED_BENCH})
        if clash:
            raise ValueError(f"extra_benches names must be distinct and not {COMPOSED_BENCH!r}: {clash}")
        if len(set(self.base_prompt_modes)) != len(self.base_prompt_modes):
            raise ValueError(f"base_prompt_modes repeats a mode: {self.base_prompt_modes}")
        return self
