"""Typed configuration of the whole reproduction, one pydantic model per stage.

Profiles:

- ``toy``: the smallest run that still exercises every stage (tests, ~1 minute).
- ``demo``: the embedded default for ``make demo`` (synthetic domain, tiny Qwen2-VL, CPU, minutes).
- ``paper``: the official hyper-parameters (official-code.md §4) for Qwen2-VL-7B-Instruct on GPU
  workers; point ``base_model.checkpoint`` at the checkpoint directory and the collection at the
  real image folders.

Each stage's config is hashed into its artifact version, so changing one field recomputes that
stage and everything downstream, and nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deepperception.errors import ConfigError

from deepperception.domain.synthetic import SyntheticDomainConfig
from deepperception.engine.collection import CollectionConfig
from deepperception.engine.composition import CompositionConfig
from deepperception.engine.contamination import ContaminationConfig
from deepperception.engine.distillation import DistillConfig
from deepperception.engine.filtering import FilterConfig
from deepperception.engine.labeling import LabelConfig
from deepperception.engine.shard_runner import ShardRunnerConfig
from deepperception.serving.endpoint import EndpointConfig
from deepperception.sources.collect import SourceSpec
from deepperception.comparison import ComparisonConfig
from deepperception.training.grpo import GRPOStageConfig
from deepperception.training.rl_filter import RLFilterConfig
from deepperception.training.launch import LaunchConfig
from deepperception.training.sft import SFTStageConfig

ProfileName = Literal["toy", "demo", "paper"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageFolderSource(_Strict):
    """One real dataset prepared as ``root/<entity name>/*.jpg`` (FGVC-Aircraft, Stanford Cars, ...)."""

    category: str = Field(description="Category name used in the bench (e.g. aircraft).")
    root: str = Field(description="Directory (local path) with one sub-directory per entity.")
    split: Literal["seen", "unseen"] = Field("seen", description="seen = used for training.")
    max_images_per_entity: int | None = Field(None, ge=1, description="Cap per entity; None keeps all.")


class DataSourceConfig(_Strict):
    """Where entities and single-entity images come from."""

    kind: Literal["synthetic", "datasets", "image_folder"] = Field(
        "synthetic", description="synthetic: the embedded procedural domain; datasets: real FGVR datasets in their "
        "own published layouts (`sources`); image_folder: the older spelling of image-folder sources (`folders`)."
    )
    synthetic: SyntheticDomainConfig = Field(default_factory=SyntheticDomainConfig)
    sources: list[SourceSpec] = Field(
        default_factory=list, description="kind=datasets: one entry per bench category (fgvc-aircraft -> aircraft, "
        "stanford-cars -> car, inat2017 Reptilia -> reptilia, inat2017 Aves -> bird, food101 -> food, ...).")
    folders: list[ImageFolderSource] = Field(default_factory=list, description="Used when kind=image_folder.")

    @model_validator(mode="after")
    def _check_sources(self) -> "DataSourceConfig":
        if self.kind == "image_folder" and not self.folders:
            raise ValueError("kind=image_folder needs at least one entry in folders")
        if self.kind == "datasets" and not self.sources:
            raise ValueError("kind=datasets needs at least one entry in sources")
        cats = [s.category for s in self.source_specs()]
        dup = sorted({c for c in cats if cats.count(c) > 1})
        if dup:
            raise ValueError(f"categories {dup} come from more than one source; give each source its own category")
        return self

    def source_specs(self) -> list[SourceSpec]:
        """Every real source as a ``SourceSpec`` (image folders are the ``image-folder`` adapter)."""
        if self.kind == "datasets":
            return list(self.sources)
        if self.kind == "image_folder":
            return [SourceSpec(source="image-folder", root=f.root, category=f.category, split=f.split,
                               max_images_per_entity=f.max_images_per_entity, min_images_per_entity=1)
                    for f in self.folders]
        return []


class ShardingConfig(_Strict):
    """How long stages split their work. Part of the versions of the stages whose output layout it
    decides (collection, composition), so a resumed run always continues the same shard plan."""

    images_per_shard: int = Field(
        512, ge=1, description="Rows per part of the images table; one labeling shard per part (the unit a crash "
        "loses and a rerun redoes).")
    composites_per_shard: int = Field(
        64, ge=1, description="Composites rendered per composition shard; distillation then runs one shard per part.")
    max_part_bytes: int = Field(
        128 * 1024 * 1024, ge=1024, description="A Parquet part is closed past this size (tables with image bytes).")


class KnowledgeStageConfig(_Strict):
    """Knowledge cards for real entities (the synthetic domain ships its own): an LLM behind an
    OpenAI-compatible endpoint writes, per entity, the visual features that identify it; the CoT
    teacher reasons with them. Cards are cached per (model, prompt hash, entity) and the prompt's
    hash is part of the entities version."""

    backend: Literal["none", "openai"] = Field(
        "none", description="none: real entities get no card (use a model teacher); openai: ask an LLM endpoint.")
    endpoint: EndpointConfig = Field(default_factory=lambda: EndpointConfig(model="Qwen2-VL-72B-Instruct"))
    max_failure_rate: float = Field(
        0.05, ge=0, le=1, description="Largest fraction of entities that may get no card before the stage fails.")
    cache: bool = Field(True, description="Reuse cards written before for the same model, prompt and entity.")


class LabelingStageConfig(_Strict):
    backend: Literal["oracle", "openai"] = Field(
        "oracle", description="oracle: the synthetic renderer's true box; openai: a grounding VLM endpoint."
    )
    endpoint: EndpointConfig = Field(default_factory=lambda: EndpointConfig(model="Qwen2-VL-7B-Instruct"))
    box_format: Literal["qwen_0_1000", "pixels"] = Field("qwen_0_1000", description="How the labeler model answers.")
    max_failure_rate: float = Field(
        0.05, ge=0, le=1,
        description="Largest fraction of images that may get no box (HTTP error, unparsable reply) before the stage "
        "fails and commits nothing; a stage with no labeled image always fails. A version with some failures is "
        "partial: a rerun asks again for the failed images only.")
    options: LabelConfig = Field(default_factory=LabelConfig)


class DistillationStageConfig(_Strict):
    backend: Literal["template", "openai"] = Field(
        "template", description="template: offline teacher writing CoTs from knowledge cards; openai: a VLM teacher."
    )
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig)
    temperature: float = Field(0.7, ge=0)
    max_tokens: int = Field(1024, ge=16)
    max_failure_rate: float = Field(
        0.05, ge=0, le=1,
        description="Largest fraction of questions the teacher may fail (HTTP error, empty CoT) before the stage "
        "fails and commits nothing; a stage with no CoT always fails. A version with some failures is partial: "
        "a rerun asks again for the failed questions only.")
    options: DistillConfig = Field(default_factory=DistillConfig)


class DatasetsConfig(_Strict):
    grpo_targets_per_composite: int = Field(1, ge=1, description="GRPO questions per training composite.")
    bench_questions_per_composite: int = Field(2, ge=1, description="Bench questions per held-out composite.")
    seed: int = 0


class BaseModelConfig(_Strict):
    """The stage-0 checkpoint: a real directory, or a tiny random-weight Qwen2-VL built offline."""

    checkpoint: str | None = Field(
        None, description="Path to a Qwen2-VL checkpoint directory (e.g. Qwen2-VL-7B-Instruct). None builds the tiny model."
    )
    vocab_size: int = Field(1024, ge=256, description="Tiny model: BPE vocabulary trained on the domain's text.")
    hidden: int = Field(64, ge=16)
    layers: int = Field(2, ge=1)
    # Positive and ordered here, at load time: a bad limit used to build and commit the base
    # checkpoint and only fail later, inside SFT's image resize (`math domain error`).
    image_min_pixels: int = Field(56 * 56, gt=0, description="Processor min_pixels of the tiny model.")
    image_max_pixels: int = Field(112 * 112, gt=0, description="Processor max_pixels of the tiny model.")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "BaseModelConfig":
        if self.image_min_pixels > self.image_max_pixels:
            raise ValueError(f"image_min_pixels ({self.image_min_pixels}) must be <= image_max_pixels "
                             f"({self.image_max_pixels})")
        # build_tiny_qwen2vl uses 4 attention heads and needs an even head_dim.
        if self.checkpoint is None and self.hidden % 8:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of 8 (4 heads, even head_dim)")
        return self


class EvalStageConfig(_Strict):
    backend: Literal["hf", "vllm"] = "hf"
    batch_size: int = Field(16, ge=1)
    prompt_mode: Literal["r1", "baseline", "cot"] = Field("r1", description="Official DeepPerception prompt by default.")
    max_new_tokens: int = Field(1500, ge=1, description="Official: 1500.")
    device: str = "cpu"
    n_resamples: int = Field(2000, ge=100, description="Bootstrap resamples for CIs.")
    seed: int = 0


class ReproductionConfig(_Strict):
    profile: str = Field("demo", description="Name of the profile these settings came from.")
    data: DataSourceConfig = Field(default_factory=DataSourceConfig)
    knowledge: KnowledgeStageConfig = Field(default_factory=KnowledgeStageConfig)
    collection: CollectionConfig = Field(default_factory=CollectionConfig)
    labeling: LabelingStageConfig = Field(default_factory=LabelingStageConfig)
    compose_train: CompositionConfig = Field(default_factory=lambda: CompositionConfig(pool="train"))
    compose_bench: CompositionConfig = Field(default_factory=lambda: CompositionConfig(pool="test"))
    distillation: DistillationStageConfig = Field(default_factory=DistillationStageConfig)
    filtering: FilterConfig = Field(default_factory=FilterConfig)
    contamination: ContaminationConfig = Field(default_factory=ContaminationConfig)
    datasets: DatasetsConfig = Field(default_factory=DatasetsConfig)
    base_model: BaseModelConfig = Field(default_factory=BaseModelConfig)
    sft: SFTStageConfig = Field(default_factory=lambda: SFTStageConfig.profile("cpu_tiny"))
    rl_filter: RLFilterConfig = Field(default_factory=RLFilterConfig)
    grpo: GRPOStageConfig = Field(default_factory=lambda: GRPOStageConfig.profile("cpu_tiny"))
    evaluation: EvalStageConfig = Field(default_factory=EvalStageConfig)
    comparison: ComparisonConfig = Field(default_factory=ComparisonConfig)
    sharding: ShardingConfig = Field(default_factory=ShardingConfig)
    runner: ShardRunnerConfig = Field(
        default_factory=ShardRunnerConfig,
        description="Where shards run: threads in this process (default) or Ray (local or a cluster). Not part of any "
        "artifact version; env DP_SHARD_RUNNER / DP_RAY_ADDRESS override it.")
    launch: LaunchConfig = Field(
        default_factory=LaunchConfig,
        description="How training processes start (in process on CPU; accelerate + ZeRO-3 on GPU workers). "
        "Not part of any artifact version: it changes where training runs, not what it computes.")

    @model_validator(mode="after")
    def _rl_filter_samples_as_grpo(self) -> "ReproductionConfig":
        # The RL filter decides which items carry GRPO signal, so by default it samples exactly as
        # GRPO's rollouts will (recipe parity: official-code.md §4.1 step 5 with §4.4's sampling).
        fill = {k: getattr(self.grpo, k) for k in ("temperature", "top_k", "top_p")
                if getattr(self.rl_filter, k) is None}
        if fill:
            self.rl_filter = self.rl_filter.model_copy(update=fill)
        return self

    @model_validator(mode="after")
    def _check_launch(self) -> "ReproductionConfig":
        # GRPO's batch-divisibility check needs the real number of processes.
        if self.launch.kind == "accelerate" and self.grpo.world_size != self.launch.num_processes:
            raise ValueError(f"grpo.world_size ({self.grpo.world_size}) must equal launch.num_processes "
                             f"({self.launch.num_processes})")
        return self

    @model_validator(mode="after")
    def _check_across_stages(self) -> "ReproductionConfig":
        # Rules that involve several stages, or fields of stage models whose own constraints allow
        # values this reproduction cannot use. All are checked here, before the first stage runs,
        # so a bad value never gets as far as committing an artifact. Every message starts with
        # the field path.
        problems: list[str] = []
        base = self.base_model
        for stage in ("sft", "grpo"):
            st = getattr(self, stage)
            for which in ("image_min_pixels", "image_max_pixels"):
                v = getattr(st, which)
                if v is not None and v <= 0:
                    problems.append(f"{stage}.{which}: must be > 0 (got {v})")
            if st.max_steps == 0 or st.max_steps < -1:
                problems.append(f"{stage}.max_steps: must be -1 (use epochs) or >= 1 (got {st.max_steps})")
        # Effective limits: a stage's None keeps what its input checkpoint has (SFT starts from the
        # base model, GRPO from SFT's output).
        lo = base.image_min_pixels if base.checkpoint is None else None
        hi = base.image_max_pixels if base.checkpoint is None else None
        for stage in ("sft", "grpo"):
            st = getattr(self, stage)
            lo = st.image_min_pixels if st.image_min_pixels is not None else lo
            hi = st.image_max_pixels if st.image_max_pixels is not None else hi
            if lo is not None and hi is not None and 0 < hi < lo:
                problems.append(f"{stage}.image_min_pixels/image_max_pixels: effective min_pixels ({lo}) "
                                f"> max_pixels ({hi})")
        if self.sft.max_length is not None and self.sft.max_length < 1:
            problems.append(f"sft.max_length: must be >= 1 or null (got {self.sft.max_length})")
        c = self.collection
        if c.scale_min > c.scale_max:
            problems.append(f"collection.scale_min ({c.scale_min}) must be <= collection.scale_max ({c.scale_max})")
        if not 0 < c.test_fraction < 1:
            problems.append(f"collection.test_fraction: must be strictly between 0 and 1, or the train or the "
                            f"test pool is empty (got {c.test_fraction})")
        f = self.filtering
        if f.min_cot_chars > f.max_cot_chars:
            problems.append(f"filtering.min_cot_chars ({f.min_cot_chars}) must be <= filtering.max_cot_chars "
                            f"({f.max_cot_chars})")
        for name, want in (("compose_train", "train"), ("compose_bench", "test")):
            comp = getattr(self, name)
            if comp.pool != want:
                problems.append(f"{name}.pool: must be {want!r} (got {comp.pool!r}); the bench must not share "
                                f"images with training")
            if comp.pool not in self.labeling.options.pools:
                problems.append(f"labeling.options.pools: must include {comp.pool!r}, which {name} composes from "
                                f"(got {self.labeling.options.pools})")
        if problems:
            raise ValueError("\n".join(problems))
        return self


def profile(name: ProfileName) -> ReproductionConfig:
    """Build a named profile."""
    if name == "toy":
        return ReproductionConfig(
            profile="toy",
            data=DataSourceConfig(synthetic=SyntheticDomainConfig(
                seen_categories=["glider", "fish"], unseen_categories=["badge"], entities_per_category=4)),
            collection=CollectionConfig(images_per_entity=3, image_size=64),
            compose_train=CompositionConfig(pool="train", k_min=2, k_max=3, composites_per_category=4, tile_size=64),
            compose_bench=CompositionConfig(pool="test", k_min=2, k_max=3, composites_per_category=2, tile_size=64),
            datasets=DatasetsConfig(bench_questions_per_composite=2),
            base_model=BaseModelConfig(vocab_size=512, image_max_pixels=56 * 56 * 4),
            sft=SFTStageConfig.profile("cpu_tiny", max_steps=2),
            rl_filter=RLFilterConfig(n_samples=2, keep_max=1, max_new_tokens=24, on_empty="keep_all"),
            grpo=GRPOStageConfig.profile("cpu_tiny", max_steps=1, num_generations=2, max_completion_length=16),
            evaluation=EvalStageConfig(max_new_tokens=24, n_resamples=200),
        )
    if name == "demo":
        # Tuned so the tiny random-init model shows a real (if small) learning curve on 2 CPU cores in
        # ~5-6 min: 2 side-by-side entities per image (the template CoT is ~360 tokens, so every
        # generation budget below is 420 tokens), 384 SFT rows seen ~13 times, the random-init vision
        # tower trained with the LM (there is no pretrained one to preserve), a 192-item RL-filter pool
        # and 16 GRPO steps at a gentle LR. The bench keeps 96 questions.
        layouts: list[Any] = ["horizontal", "grid"]
        return ReproductionConfig(
            profile="demo",
            collection=CollectionConfig(images_per_entity=6, image_size=96),
            compose_train=CompositionConfig(pool="train", k_min=2, k_max=2, composites_per_category=48, tile_size=96,
                                            layouts=layouts),
            compose_bench=CompositionConfig(pool="test", k_min=2, k_max=2, composites_per_category=8, tile_size=96,
                                            layouts=layouts),
            distillation=DistillationStageConfig(options=DistillConfig(targets_per_composite=2)),
            base_model=BaseModelConfig(vocab_size=2048, hidden=128, layers=4, image_max_pixels=112 * 112 * 2),
            sft=SFTStageConfig.profile("cpu_tiny", max_steps=640, per_device_train_batch_size=8, learning_rate=2e-3,
                                       lr_scheduler_type="cosine", warmup_ratio=0.05, freeze_vision_tower=False,
                                       freeze_projector=False, logging_steps=20),
            rl_filter=RLFilterConfig(n_samples=4, max_new_tokens=420, batch_size=128, on_empty="keep_all"),
            grpo=GRPOStageConfig.profile("cpu_tiny", max_steps=16, num_generations=4, per_device_train_batch_size=8,
                                         max_completion_length=420, learning_rate=2e-5),
            evaluation=EvalStageConfig(max_new_tokens=420, batch_size=96, n_resamples=2000),
        )
    if name == "paper":
        return ReproductionConfig(
            profile="paper",
            labeling=LabelingStageConfig(backend="openai"),
            distillation=DistillationStageConfig(backend="openai"),
            base_model=BaseModelConfig(checkpoint="Qwen2-VL-7B-Instruct"),
            sft=SFTStageConfig.profile("paper"),
            rl_filter=RLFilterConfig(max_new_tokens=512, device="cuda"),
            grpo=GRPOStageConfig.profile("paper"),
            evaluation=EvalStageConfig(max_new_tokens=1500, device="cuda"),
            launch=LaunchConfig(kind="accelerate", num_processes=8),
        )
    raise ValueError(f"unknown profile {name!r}; expected toy, demo or paper")


class ConfigFileError(ConfigError):
    """A config override file that cannot be read, parsed or validated; the message names the
    file, the line (parse errors) or the field path (validation errors)."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.fields = fields or []


def validation_lines(exc: ValidationError) -> list[str]:
    """One ``<field path>: <problem> (got <value>)`` line per error of a pydantic ``ValidationError``.

    >>> try:
    ...     BaseModelConfig(image_min_pixels=-1)
    ... except ValidationError as e:
    ...     print(validation_lines(e))
    ['image_min_pixels: Input should be greater than 0 (got -1)']
    """
    out = []
    for err in exc.errors(include_url=False):
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        msg = err["msg"]
        if err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif err["type"] == "extra_forbidden":
            msg = "unknown setting (not a field of this section; check the spelling)"
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) or err["type"] in ("value_error", "missing") else f" (got {got!r})"
        # A model validator reporting several problems puts one per line (see _check_across_stages).
        for part in f"{msg}{shown}".splitlines():
            out.append(f"{loc}: {part}" if loc else part)
    return out


def _parse_overrides(path: Path) -> dict[str, Any]:
    """Read a JSON/YAML override file; every failure names the file (and line where one exists)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigFileError(f"config file {path}: cannot read ({exc.strerror or exc})", path=str(path)) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigFileError(f"config file {path}, line {line}: not valid UTF-8 (byte "
                              f"{data[exc.start:exc.start + 1]!r}: {exc.reason})", path=str(path), line=line) from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            overrides = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            where = f", line {line}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigFileError(f"config file {path}{where}: YAML does not parse ({problem})",
                                  path=str(path), line=line) from exc
    else:
        try:
            overrides = json.loads(text) if text.strip() else None
        except json.JSONDecodeError as exc:
            raise ConfigFileError(f"config file {path}, line {exc.lineno}, column {exc.colno}: JSON does not parse "
                                  f"({exc.msg})", path=str(path), line=exc.lineno) from exc
    if overrides is None:  # an empty file overrides nothing
        return {}
    if not isinstance(overrides, dict):
        raise ConfigFileError(f"config file {path}: the top level must be a mapping of settings "
                              f"(e.g. `sft: {{max_steps: 4}}`), got a {type(overrides).__name__}", path=str(path))
    return overrides


def load_profile(name: str = "demo", overrides: dict[str, Any] | None = None, *,
                 source: str = "overrides") -> ReproductionConfig:
    """The named profile with ``overrides`` (a nested mapping, e.g. ``{"grpo": {"beta": 0.02}}``)
    deep-merged onto it, validated in full. ``source`` names where the overrides came from in
    errors (a file path, "--set", "the flow's overrides parameter").

    >>> load_profile("paper", {"grpo": {"beta": 0.02}}).grpo.beta
    0.02
    """
    if name not in ("toy", "demo", "paper"):
        raise ConfigFileError(f"unknown profile {name!r}; expected toy, demo or paper")
    cfg = profile(name)  # type: ignore[arg-type]
    if not overrides:
        return cfg
    if not isinstance(overrides, dict):
        raise ConfigFileError(f"{source}: must be a mapping of settings (e.g. {{'sft': {{'max_steps': 4}}}}), "
                              f"got a {type(overrides).__name__}")
    merged = _deep_merge(cfg.model_dump(mode="json"), overrides)
    try:
        return ReproductionConfig.model_validate(merged)
    except ValidationError as exc:
        lines = validation_lines(exc)
        raise ConfigFileError(f"{source} (profile {name}): {len(lines)} invalid setting(s)\n"
                              + "\n".join(f"  {line}" for line in lines), fields=lines) from exc


def load_config(profile_name: str = "demo", override_file: str | None = None) -> ReproductionConfig:
    """A profile, optionally deep-merged with a JSON or YAML file of overrides, validated in full.

    This is the only entry point the CLI uses, so every rule of every section (field constraints
    and model validators) is checked here, before any stage runs. Errors are
    :class:`ConfigFileError` (a ``ValueError``) naming the file and each bad field path.
    """
    if profile_name not in ("toy", "demo", "paper"):
        raise ConfigFileError(f"unknown profile {profile_name!r}; expected toy, demo or paper")
    cfg = profile(profile_name)  # type: ignore[arg-type]
    if not override_file:
        return cfg
    path = Path(override_file)
    overrides = _parse_overrides(path)
    merged = _deep_merge(cfg.model_dump(mode="json"), overrides)
    try:
        return ReproductionConfig.model_validate(merged)
    except ValidationError as exc:
        lines = validation_lines(exc)
        raise ConfigFileError(f"config file {path} (profile {profile_name}): {len(lines)} invalid setting(s)\n"
                              + "\n".join(f"  {line}" for line in lines),
                              path=str(path), fields=lines) from exc


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``over`` wins.

    >>> _deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
    {'a': {'b': 1, 'c': 3}}
    """
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
