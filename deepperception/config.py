"""Typed configuration of the whole reproduction, one pydantic model per stage, and the profiles.

Every field has one default, its pydantic default here or in the stage's module (the official
value where one exists: official-code.md §4). A **profile** is a YAML file in
``deepperception/profiles/`` (package data) holding only what differs from its parent: the file
named by its ``extends:``, or the field defaults when it has none; every line says why
(``deepperception profiles`` lists them, ``deepperception profiles show NAME`` prints one resolved):

- ``toy``: the smallest run that still exercises every stage (tests, ~1 minute).
- ``demo``: the embedded default for ``make demo`` (synthetic domain, tiny Qwen2-VL, CPU, minutes).
- ``paper``: the released recipe for Qwen2-VL-7B-Instruct on 8 GPUs (docs/recipe-parity.md);
  ``paper-0.85`` (the released model's IoU threshold) and ``ablation-direct-sft`` extend it.

:func:`load_profile` resolves a profile (a shipped name or a user's YAML file, which may extend a
shipped one) and deep-merges overrides onto it; the merged mapping is validated once, in full.

Each stage's config is hashed into its artifact version, so changing one field recomputes that
stage and everything downstream, and nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deepperception.determinism import DeterminismConfig
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

PROFILES_DIR = Path(__file__).with_name("profiles")
"""The shipped profile files, ``<name>.yaml`` (package data)."""
PROFILE_META_KEYS = ("extends", "description")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _partial_sections_keep_their_presets(cls, data: Any) -> Any:
        # A section whose default is a preset (compose_bench's pool "test", the labeler's model)
        # keeps the preset when a profile or override gives that section only in part.
        if not isinstance(data, dict):
            return data
        for name, field in cls.model_fields.items():
            given = data.get(name)
            if isinstance(given, dict) and field.default_factory is not None:
                preset = field.default_factory()  # type: ignore[call-arg]
                if isinstance(preset, BaseModel) and (unset := preset.model_dump(exclude_unset=True)):
                    data = {**data, name: {**unset, **given}}
        return data


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
    synthetic: SyntheticDomainConfig = Field(default_factory=SyntheticDomainConfig,
                                             description="kind=synthetic: the procedural domain's categories.")
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
    endpoint: EndpointConfig = Field(default_factory=lambda: EndpointConfig(model="Qwen2-VL-72B-Instruct"),
                                     description="backend=openai: the LLM that writes the cards.")
    max_failure_rate: float = Field(
        0.05, ge=0, le=1, description="Largest fraction of entities that may get no card before the stage fails.")
    cache: bool = Field(True, description="Reuse cards written before for the same model, prompt and entity.")


class LabelingStageConfig(_Strict):
    backend: Literal["oracle", "openai"] = Field(
        "oracle", description="oracle: the synthetic renderer's true box; openai: a grounding VLM endpoint."
    )
    endpoint: EndpointConfig = Field(default_factory=lambda: EndpointConfig(model="Qwen2-VL-7B-Instruct"),
                                     description="backend=openai: the grounding VLM (the paper: Qwen2-VL-7B-Instruct).")
    box_format: Literal["qwen_0_1000", "pixels"] = Field("qwen_0_1000", description="How the labeler model answers.")
    max_failure_rate: float = Field(
        0.05, ge=0, le=1,
        description="Largest fraction of images that may get no box (HTTP error, unparsable reply) before the stage "
        "fails and commits nothing; a stage with no labeled image always fails. A version with some failures is "
        "partial: a rerun asks again for the failed images only.")
    options: LabelConfig = Field(default_factory=LabelConfig, description="Pools to label, box source, agreement IoU.")


class DistillationStageConfig(_Strict):
    backend: Literal["template", "openai"] = Field(
        "template", description="template: offline teacher writing CoTs from knowledge cards; openai: a VLM teacher."
    )
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig, description="backend=openai: the teacher endpoint "
                                     "(the paper: Qwen2-VL-72B-Instruct).")
    temperature: float = Field(0.7, ge=0, description="Teacher sampling temperature.")
    max_tokens: int = Field(1024, ge=16, description="Longest teacher reply, in tokens.")
    max_failure_rate: float = Field(
        0.05, ge=0, le=1,
        description="Largest fraction of questions the teacher may fail (HTTP error, empty CoT) before the stage "
        "fails and commits nothing; a stage with no CoT always fails. A version with some failures is partial: "
        "a rerun asks again for the failed questions only.")
    options: DistillConfig = Field(default_factory=DistillConfig, description="Targets per composite, seed, concurrency.")


class DatasetsConfig(_Strict):
    grpo_targets_per_composite: int = Field(1, ge=1, description="GRPO questions per training composite.")
    bench_questions_per_composite: int = Field(2, ge=1, description="Bench questions per held-out composite.")
    seed: int = Field(0, description="Seed of the target choice for GRPO and bench questions.")


class BaseModelConfig(_Strict):
    """The stage-0 checkpoint: a real directory, or a tiny random-weight Qwen2-VL built offline."""

    checkpoint: str | None = Field(
        None, description="Path to a Qwen2-VL checkpoint directory (e.g. Qwen2-VL-7B-Instruct). None builds the tiny model."
    )
    vocab_size: int = Field(1024, ge=256, description="Tiny model: BPE vocabulary trained on the domain's text.")
    hidden: int = Field(64, ge=16, description="Tiny model: hidden size (a multiple of 8; 4 attention heads).")
    layers: int = Field(2, ge=1, description="Tiny model: decoder layers.")
    vision_dim: int = Field(32, ge=16, description="Tiny model: width of the random-init vision tower (ViT embed dim).")
    vision_depth: int = Field(2, ge=1, description="Tiny model: ViT blocks.")
    # Positive and ordered here, at load time: a bad limit used to build and commit the base
    # checkpoint and only fail later, inside SFT's image resize (`math domain error`).
    image_min_pixels: int = Field(56 * 56, gt=0, description="Processor min_pixels of the tiny model.")
    image_max_pixels: int = Field(112 * 112, gt=0, description="Processor max_pixels of the tiny model.")
    seed: int = Field(0, description="Tiny model: seed of its random weights (torch.manual_seed).")

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
    backend: Literal["hf", "vllm"] = Field("hf", description="hf: transformers generate (the official path); vllm: "
                                           "a vLLM engine with the same decoding.")
    batch_size: int = Field(16, ge=1, description="Questions per generate call (left padding; same greedy text).")
    prompt_mode: Literal["r1", "baseline", "cot"] = Field("r1", description="Official DeepPerception prompt by default.")
    max_new_tokens: int = Field(1500, ge=1, description="Official: 1500.")
    device: str = Field("cpu", description="Where the checkpoint runs (cuda on GPU workers; bf16 there).")
    n_resamples: int = Field(2000, ge=100, description="Bootstrap resamples for CIs.")
    seed: int = Field(0, description="Seed of the bootstrap.")
    determinism: DeterminismConfig = Field(
        default_factory=DeterminismConfig, description="Thread count, deterministic kernels and seeding of this "
        "stage's process (part of its version: another thread count is another computation).")


class ReproductionConfig(_Strict):
    profile: str = Field("defaults", description="Name of the profile these settings came from (set by "
                         "load_profile: the shipped name, or a user file's stem); defaults = the field defaults alone.")
    data: DataSourceConfig = Field(default_factory=DataSourceConfig,
        description="Where entities and single-entity photos come from.")
    knowledge: KnowledgeStageConfig = Field(default_factory=KnowledgeStageConfig,
        description="Knowledge cards for real entities.")
    collection: CollectionConfig = Field(default_factory=CollectionConfig,
        description="Photos per entity and the train/test hold-out.")
    labeling: LabelingStageConfig = Field(default_factory=LabelingStageConfig,
        description="Pseudo boxes on single-entity photos.")
    compose_train: CompositionConfig = Field(default_factory=lambda: CompositionConfig(pool="train"),
        description="Multi-entity composites for training (train pool).")
    compose_bench: CompositionConfig = Field(default_factory=lambda: CompositionConfig(pool="test"),
        description="Multi-entity composites for the bench (test pool).")
    distillation: DistillationStageConfig = Field(default_factory=DistillationStageConfig,
        description="The CoT teacher.")
    filtering: FilterConfig = Field(default_factory=FilterConfig,
        description="Which CoTs are kept.")
    contamination: ContaminationConfig = Field(default_factory=ContaminationConfig,
        description="Training photos vs the bench (perceptual hashes).")
    datasets: DatasetsConfig = Field(default_factory=DatasetsConfig,
        description="GRPO candidates and bench questions per composite.")
    base_model: BaseModelConfig = Field(default_factory=BaseModelConfig,
        description="The stage-0 checkpoint.")
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig,
        description="Stage 1: CoT-SFT.")
    rl_filter: RLFilterConfig = Field(default_factory=RLFilterConfig,
        description="Which GRPO candidates carry signal (1-3 of 4 correct).")
    grpo: GRPOStageConfig = Field(default_factory=GRPOStageConfig,
        description="Stage 2: GRPO.")
    evaluation: EvalStageConfig = Field(default_factory=EvalStageConfig,
        description="Scoring every checkpoint on the benches.")
    comparison: ComparisonConfig = Field(default_factory=ComparisonConfig,
        description="Arms, prompt modes and extra benches of the report.")
    sharding: ShardingConfig = Field(default_factory=ShardingConfig,
        description="How long stages split their work.")
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
        if self.rl_filter.reward is None:  # `correct: reward` and the zero-advantage report score with GRPO's reward
            fill["reward"] = self.grpo.reward
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


def _parse_overrides(path: Path, what: str = "config file") -> dict[str, Any]:
    """Read a JSON/YAML override file; every failure names the file (and line where one exists)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigFileError(f"{what} {path}: cannot read ({exc.strerror or exc})", path=str(path)) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigFileError(f"{what} {path}, line {line}: not valid UTF-8 (byte "
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
            raise ConfigFileError(f"{what} {path}{where}: YAML does not parse ({problem})",
                                  path=str(path), line=line) from exc
    else:
        try:
            overrides = json.loads(text) if text.strip() else None
        except json.JSONDecodeError as exc:
            raise ConfigFileError(f"{what} {path}, line {exc.lineno}, column {exc.colno}: JSON does not parse "
                                  f"({exc.msg})", path=str(path), line=exc.lineno) from exc
    if overrides is None:  # an empty file overrides nothing
        return {}
    if not isinstance(overrides, dict):
        raise ConfigFileError(f"{what} {path}: the top level must be a mapping of settings "
                              f"(e.g. `sft: {{max_steps: 4}}`), got a {type(overrides).__name__}", path=str(path))
    return overrides


def shipped_profiles() -> dict[str, Path]:
    """``name -> file`` of every profile shipped in ``deepperception/profiles/``, sorted by name.

    >>> {"toy", "demo", "paper"} <= set(shipped_profiles())
    True
    """
    return {p.stem: p for p in sorted(PROFILES_DIR.glob("*.yaml"), key=lambda p: p.stem)}


def _profile_path(ref: str, relative_to: Path | None = None) -> tuple[str, Path]:
    """``(name, file)`` of a shipped profile name, or of a path to a YAML profile file (a relative
    path in an ``extends:`` is read from the extending file's directory first)."""
    shipped = shipped_profiles()
    if ref in shipped:
        return ref, shipped[ref]
    path = Path(ref).expanduser()
    if path.suffix.lower() in (".yaml", ".yml") or len(path.parts) > 1:
        if relative_to is not None and not path.is_absolute() and (relative_to / path).is_file():
            path = relative_to / path
        if path.is_file():
            return path.stem, path
        raise ConfigFileError(f"profile file {ref}: no such file", path=str(path))
    raise ConfigFileError(f"unknown profile {ref!r}; shipped profiles: {', '.join(shipped)} "
                          f"(or give the path of a YAML profile file)")


def _read_profile_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(meta, settings)`` of one profile file: ``extends``/``description`` and the rest."""
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigFileError(f"profile file {path}: must be a .yaml or .yml file", path=str(path))
    data = _parse_overrides(path, what="profile file")
    meta = {k: data.pop(k) for k in PROFILE_META_KEYS if k in data}
    for k, v in meta.items():
        if not isinstance(v, str) or not v.strip():
            raise ConfigFileError(f"profile file {path}: {k} must be a non-empty string (got {v!r})", path=str(path),
                                  fields=[k])
    return meta, data


def profile_chain(ref: str) -> list[tuple[str, Path, dict[str, Any], dict[str, Any]]]:
    """The ``extends`` chain of a profile, root first: ``(name, file, meta, settings)`` per file.

    >>> [name for name, *_ in profile_chain("paper-0.85")]
    ['paper', 'paper-0.85']
    """
    chain: list[tuple[str, Path, dict[str, Any], dict[str, Any]]] = []
    seen: list[Path] = []
    name, path = _profile_path(ref)
    while True:
        if path.resolve() in seen:
            loop = " -> ".join(str(p) for p in [*seen, path.resolve()])
            raise ConfigFileError(f"profile file {path}: `extends` makes a cycle ({loop})", path=str(path))
        seen.append(path.resolve())
        meta, settings = _read_profile_file(path)
        chain.append((name, path, meta, settings))
        if "extends" not in meta:
            return chain[::-1]
        name, path = _profile_path(meta["extends"], relative_to=path.parent)


def _validated(settings: dict[str, Any], name: str, where: str, path: str | None = None) -> ReproductionConfig:
    try:
        return ReproductionConfig.model_validate({**settings, "profile": name})
    except ValidationError as exc:
        lines = validation_lines(exc)
        head = f"{where} (profile {name}): "
        msg = head + lines[0] if len(lines) == 1 else (
            head + f"{len(lines)} invalid setting(s)\n" + "\n".join(f"  {line}" for line in lines))
        raise ConfigFileError(msg, path=path, fields=lines) from exc


def profile_settings(ref: str) -> dict[str, Any]:
    """What a profile sets (its ``extends`` chain deep-merged, meta keys removed), each file of
    the chain validated on top of its parents so an error names the file that brought it in.

    >>> profile_settings("paper-0.85")["grpo"]["iou_threshold"]
    0.85
    """
    merged: dict[str, Any] = {}
    for name, path, _, settings in profile_chain(ref):
        merged = _deep_merge(merged, settings)
        _validated(merged, name, f"profile file {path}", str(path))
    return merged


def profile_description(ref: str) -> str:
    """A profile file's one-line ``description`` (inherited along ``extends`` when it has none)."""
    for _, _, meta, _ in reversed(profile_chain(ref)):
        if "description" in meta:
            return " ".join(meta["description"].split())
    return ""


def load_profile(name: str = "demo", overrides: dict[str, Any] | None = None, *,
                 source: str = "overrides") -> ReproductionConfig:
    """The profile ``name`` (a shipped name, see :func:`shipped_profiles`, or the path of a YAML
    profile file, which may ``extends:`` a shipped one) with ``overrides`` (a nested mapping, e.g.
    ``{"grpo": {"beta": 0.02}}``) deep-merged onto it, validated in full. ``source`` names where the
    overrides came from in errors (a file path, "--set", "the flow's overrides parameter").

    Settings merge as plain mappings and are validated once at the end, so derived defaults
    follow the overrides (an override of ``grpo.top_k`` also reaches the RL filter's sampling).

    >>> load_profile("paper", {"grpo": {"beta": 0.02}}).grpo.beta
    0.02
    >>> load_profile("demo", {"grpo": {"top_k": 7}}).rl_filter.top_k
    7
    """
    settings = profile_settings(name)
    label = _profile_path(name)[0]
    if overrides is None:
        return _validated(settings, label, f"profile {name}")
    if not isinstance(overrides, dict):
        raise ConfigFileError(f"{source}: must be a mapping of settings (e.g. {{'sft': {{'max_steps': 4}}}}), "
                              f"got a {type(overrides).__name__}")
    path = source if Path(source).suffix.lower() in (".yaml", ".yml", ".json") else None
    return _validated(_deep_merge(settings, overrides), label, source, path)


def profile(name: str) -> ReproductionConfig:
    """The profile ``name`` with nothing overridden (``load_profile(name)``)."""
    return load_profile(name)


def parse_set(assignments: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``--set key.path=value`` assignments as one nested mapping; each value is a YAML scalar or
    list (``true``, ``0.02``, ``[a, b]``, ``null``), a later assignment wins.

    >>> parse_set(["grpo.beta=0.02", "comparison.direct_sft=true", "compose_train.layouts=[grid]"])
    {'grpo': {'beta': 0.02}, 'comparison': {'direct_sft': True}, 'compose_train': {'layouts': ['grid']}}
    """
    import yaml

    out: dict[str, Any] = {}
    for item in assignments:
        key, eq, text = item.partition("=")
        parts = key.strip().split(".")
        if not eq or not all(p.strip() for p in parts):
            raise ConfigFileError(f"--set {item!r}: expected key.path=value (e.g. --set grpo.beta=0.02)")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigFileError(f"--set {key}: value {text!r} does not parse as YAML ({problem})",
                                  fields=[key]) from exc
        node = out
        for i, p in enumerate(parts[:-1]):
            if not isinstance(node.get(p), dict):
                if p in node:
                    raise ConfigFileError(f"--set {key}: {'.'.join(parts[:i + 1])} was set to a value above")
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out


def read_overrides(path: str | Path) -> dict[str, Any]:
    """A JSON/YAML overrides file as a mapping (errors name the file and line)."""
    return _parse_overrides(Path(path))


def load_config(profile_name: str = "demo", override_file: str | None = None,
                assignments: list[str] | tuple[str, ...] = ()) -> ReproductionConfig:
    """A profile (name or file), deep-merged with a JSON or YAML file of overrides and then with
    ``--set`` ``assignments``, validated in full.

    This is what the CLI checks before anything runs, so every rule of every section (field
    constraints and model validators) is checked before any stage runs. Errors are
    :class:`ConfigFileError` (a ``ValueError``) naming the file (or ``--set``) and each bad field path.
    """
    settings = profile_settings(profile_name)
    label = _profile_path(profile_name)[0]
    cfg = _validated(settings, label, f"profile {profile_name}")
    if override_file:
        path = Path(override_file)
        settings = _deep_merge(settings, _parse_overrides(path))
        cfg = _validated(settings, label, f"config file {path}", str(path))
    if assignments:
        cfg = _validated(_deep_merge(settings, parse_set(assignments)), label, "--set")
    return cfg


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``over`` wins.

    >>> _deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
    {'a': {'b': 1, 'c': 3}}
    """
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
