"""Stage 2: GRPO with TRL's ``GRPOTrainer`` and the released IoU + format rewards.

Official run (MaxyLee/R1-V ``run_grpo.sh`` + ``grpo.py``, official-code.md §4.4): lr 1e-6, 2 epochs,
1 prompt per GPU x 2 accumulation x 8 GPUs, 4 generations, max completion 512, beta 0.04, bf16,
no gradient checkpointing, ``max_pixels`` 401408, ZeRO-3, linear decay, no warmup, HF-generate
rollouts (no vLLM), one update per batch (no clipping in effect).

Mapping to TRL 1.16 (checked against its source):

* TRL's ``per_device_train_batch_size`` counts **completions**, the official trainer's counts
  prompts. Official per GPU: 1 prompt x 4 generations x 2 accumulation steps, so the field
  defaults are ``per_device_train_batch_size=4, gradient_accumulation_steps=2, num_generations=4``
  (= 16 prompts / 64 completions per optimizer step on 8 GPUs, as the official run).
* ``loss_type="grpo"`` is the official per-sequence token mean then batch mean; advantages are
  ``(r - mean) / (std + 1e-4)`` with unbiased std in both (``scale_rewards="group"``); KL is the k3
  estimator in both. TRL's defaults differ (``loss_type="dapo"``, ``beta=0``), so both are explicit.
* Rollout sampling: the official trainer built ``GenerationConfig(do_sample=True, temperature=1)``
  under transformers 4.49, whose unset ``top_k`` defaulted to 50, so the default is ``top_k=50``
  (*inferred*, not logged by the authors). TRL suppresses ``<|image_pad|>`` in rollouts.
* TRL 1.16 has no ``max_prompt_length`` (official 1024, whose truncation was a latent no-op), so
  there is no such field.

Input rows (``pyarrow.Table``): ``question_id``, ``image`` (struct ``{bytes, path}``), ``problem``,
``solution``. Prompt = :func:`deepperception.prompts.grounding_messages` (``problem``, ``"r1"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deepperception.determinism import DeterminismConfig, apply_determinism
from deepperception.errors import ConfigError, InputDataError
from deepperception.prompts import grounding_messages
from deepperception.images import decode_image
from deepperception.tables import require_columns
from deepperception.training.common import (
    train_dtype,
    Timer, TrainResult, loss_metrics, write_stage_json, default_work_dir, train_resumable,
)
from deepperception.training.preflight import (
    check_device, check_generation_batch, check_lengths, check_model_class, require_box, token_counts, world_size,
)
from deepperception.training.rewards import FormatMode, IoUKind, RewardConfig, make_reward_funcs
from deepperception.training.trl_args import TRLMapping
from deepperception.training.trl_data import in_memory_dataset

GRPO_COLUMNS = ("question_id", "image", "problem", "solution")


class GRPOStageConfig(BaseModel):
    """GRPO settings (a typed subset of TRL's ``GRPOConfig`` plus reward options; how each field
    reaches TRL: :data:`GRPO_TRL`)."""

    model_config = ConfigDict(extra="forbid")
    STAGE: ClassVar[str] = "grpo"
    ENTRY: ClassVar[str] = "deepperception.training.grpo"
    """The module a launched process runs (``python -m``; its ``__main__`` block)."""

    learning_rate: float = Field(1e-6, gt=0, description="Official 1e-6.")
    num_train_epochs: float = Field(2.0, gt=0, description="Official 2. Ignored when max_steps > 0.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    per_device_train_batch_size: int = Field(4, ge=1, description=(
        "Completions per device per micro-step (TRL counts completions; official 1 prompt x 4 generations)."))
    gradient_accumulation_steps: int = Field(2, ge=1, description="Official 2.")
    num_generations: int = Field(4, ge=2, description="Samples per prompt G (official 4).")
    world_size: int = Field(1, ge=1, description="Number of training processes; only used to validate batch divisibility.")
    max_completion_length: int = Field(512, ge=1, description="Official 512 new tokens per rollout.")
    temperature: float = Field(1.0, gt=0, description="Rollout temperature (official 1.0).")
    top_k: int = Field(50, ge=0, description="Rollout top-k; 0 disables (official: transformers 4.49 default 50, inferred).")
    top_p: float = Field(1.0, gt=0, le=1, description="Rollout top-p (official 1.0).")
    beta: float = Field(0.04, ge=0, description="KL coefficient (official 0.04; TRL default 0 loads no reference model).")
    loss_type: str = Field("grpo", description="TRL loss aggregation; 'grpo' matches the official loss.")
    scale_rewards: str = Field("group", description="Advantage std normalisation ('group' = official).")
    iou_threshold: float = Field(0.8, ge=0, le=1, description="IoU reward pays IoU only when > threshold (released 0.8).")
    format_mode: FormatMode = Field("released", description="'released' (max 0.5) or 'intended' (+0.5 for a Qwen box).")
    iou_kind: IoUKind = Field("released", description="Box reward: 'released' (IoU past iou_threshold, the official "
                              "one), or the dense 'continuous' (IoU), 'squared' (IoU^2), 'giou' (GIoU).")
    use_vllm: bool = Field(False, description="vLLM rollouts (GPU only; the official run used HF generate).")
    bf16: bool = Field(True, description="bf16 (official true). False on CPU.")
    use_cpu: bool = Field(False, description="Force CPU training (CI/demo).")
    activation_checkpointing: bool = Field(False, description="Official gradient_checkpointing false.")
    image_min_pixels: int | None = Field(3136, description="Processor min_pixels (official 3136).")
    image_max_pixels: int | None = Field(401408, description="Processor max_pixels (official 401408). None: keep.")
    lr_scheduler_type: str = Field("linear", description="HF default linear decay (official: not set).")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Official 0.")
    weight_decay: float = Field(0.0, ge=0, description="Official 0.")
    deepspeed: str | None = Field(None, description="DeepSpeed JSON (paper: infra/deepspeed/zero3.json). GPU only.")
    seed: int = Field(42, description="Trainer seed: data order and rollout sampling.")
    logging_steps: int = Field(1, ge=1, description="Log every N steps.")
    report_to: str = Field("none", description="'none', 'wandb', ...")
    determinism: DeterminismConfig = Field(
        default_factory=DeterminismConfig, description="Thread count, deterministic kernels and seeding of this "
        "stage's process (part of its version: another thread count is another computation).")
    use_bias_correction_kl: bool = Field(False, description=(
        "TRL 1.16's option (its default: True) to multiply the k3 per-token KL by the importance ratio "
        "exp(logp - logp_old), which is 1 in value on-policy but differentiable, so it adds KL * grad(logp) to the "
        "KL gradient (the unbiased reverse-KL gradient of DeepSeek-V3.2). False = the released fork's plain k3 "
        "KL, exp(ref - logp) - (ref - logp) - 1, as in its loss (official-code.md 4.4)."))
    save_steps: int | None = Field(100, ge=0, description=(
        "Publish a model-only checkpoint every N optimizer steps as checkpoints/step-N/ of the grpo-checkpoint "
        "version (official --save_steps 100 --save_only_model true; the authors evaluated step 800); None/0: the "
        "final checkpoint only."))
    resume_steps: int | None = Field(None, ge=0, description=(
        "Write a full trainer checkpoint (optimizer, scheduler, RNG) every N steps in the stage's work directory so "
        "a killed run resumes there; None: at the save_steps multiples; 0: never (a rerun starts over)."))

    @model_validator(mode="after")
    def _check_batch(self) -> "GRPOStageConfig":
        global_batch = self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size
        if global_batch % self.num_generations:
            raise ConfigError(
                f"per_device_train_batch_size ({self.per_device_train_batch_size}) x gradient_accumulation_steps "
                f"({self.gradient_accumulation_steps}) x world_size ({self.world_size}) = {global_batch} completions "
                f"must be divisible by num_generations ({self.num_generations})"
            )
        if self.use_vllm and self.use_cpu:
            raise ConfigError("use_vllm=True needs a GPU; set use_cpu=False or use_vllm=False")
        return self

    @property
    def reward(self) -> RewardConfig:
        return RewardConfig(iou_threshold=self.iou_threshold, format_mode=self.format_mode, iou_kind=self.iou_kind)

    def train(self, rows, init: str | Path, out: str | Path, work_dir: str | Path | None = None) -> TrainResult:
        """:func:`train_grpo` with this config (what :mod:`.launch` calls, in process or launched)."""
        return train_grpo(rows, init, out, self, work_dir=work_dir)


GRPO_TRL = TRLMapping(
    renames={"warmup_ratio": "warmup_steps"},  # transformers 5: warmup_steps < 1 is a ratio of the steps
    computed=frozenset({"bf16", "deepspeed"}),  # the device check's decision; the resolved JSON path
    ours_only=frozenset({
        "world_size",  # validates batch divisibility only; the launcher sets the real process count
        "iou_threshold", "format_mode", "iou_kind",  # the reward functions (make_reward_funcs)
        "image_min_pixels", "image_max_pixels",  # the processor's pixel limits (set_pixel_limits)
        "determinism",  # apply_determinism() before any model is built
        "save_steps", "resume_steps",  # our checkpoint callback publishes steps; TRL's saving stays off
    }),
)
"""How :class:`GRPOStageConfig` reaches TRL's ``GRPOConfig`` (:mod:`.trl_args`)."""


def grpo_trl_kwargs(cfg: GRPOStageConfig, output_dir: str | Path, *, bf16: bool) -> dict[str, Any]:
    """The ``GRPOConfig`` keyword arguments of a run: every mapped field of ``cfg`` plus the values
    the stage fixes (``bf16`` as the device check decided, no fp16, TRL's own saving off, data
    order seeded by ``seed``, loading in the main process, no tqdm bars in the run log)."""
    from trl import GRPOConfig

    from deepperception.training.common import resolve_deepspeed

    return GRPO_TRL.kwargs(cfg, GRPOConfig, output_dir=str(output_dir), bf16=bf16, fp16=False,
                           deepspeed=resolve_deepspeed(cfg.deepspeed), data_seed=cfg.seed, save_strategy="no",
                           dataloader_num_workers=0, disable_tqdm=True)


def _dataset(rows, stage: str = "grpo"):
    require_columns(rows, GRPO_COLUMNS, stage=stage, allow_empty=False)
    prompts, images, solutions, qids = [], [], [], []
    for r in rows.to_pylist():
        qid = r["question_id"]
        if not isinstance(r["problem"], str) or not r["problem"]:
            raise InputDataError("empty problem", stage=stage, row=qid, field="problem")
        if not isinstance(r["solution"], str) or not r["solution"]:
            raise InputDataError("empty solution", stage=stage, row=qid, field="solution")
        require_box(r["solution"], stage=stage, row=qid, field="solution")
        prompts.append(grounding_messages(r["problem"], "r1"))
        images.append(decode_image(r["image"], stage=stage, row=qid, field="image"))
        solutions.append(r["solution"])
        qids.append(qid)
    return in_memory_dataset({"prompt": prompts, "image": images, "solution": solutions, "question_id": qids}), qids, \
        prompts, [[im] for im in images]


def _position_limit(ckpt_dir: str | Path) -> int | None:
    """The model's ``max_position_embeddings`` (text config), if recorded."""
    import json

    cfg = json.loads((Path(ckpt_dir) / "config.json").read_text())
    v = (cfg.get("text_config") or {}).get("max_position_embeddings", cfg.get("max_position_embeddings"))
    return int(v) if v else None


def train_grpo(rows, ckpt_dir: str | Path, out_dir: str | Path, cfg: GRPOStageConfig | None = None,
               work_dir: str | Path | None = None, *, monitors: bool = True) -> TrainResult:
    """GRPO-train ``ckpt_dir`` (the stage-1 checkpoint) on ``rows``; save a reloadable checkpoint in
    ``out_dir`` with ``train_stage.json`` (config, reward config, metrics) and ``monitors.json``
    (the health table and summary of :mod:`.monitors`). Pre-flight checks run before step 1;
    ``work_dir`` holds resume points and published steps (see :func:`.sft.train_sft`).
    ``monitors=False`` trains without the completion statistics and the health callback (they
    never touch rewards or the loss: same weights either way, see the tests)."""
    from trl import GRPOConfig, GRPOTrainer

    from deepperception.model.loading import load_model, load_processor, read_size, save_processor, set_pixel_limits
    from deepperception.training.checkpoints import (
        fingerprint, make_checkpoint_callback, prepare_work_dir, published_steps, resumable, tidy_work_dir,
    )
    from deepperception.training.monitors import (
        Thresholds, grpo_rows, make_health_callback, monitored_reward_funcs, public_rows, summarize,
    )

    cfg = cfg or GRPOStageConfig()
    apply_determinism(cfg.determinism)  # before any model or processor is built
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_class = check_model_class(ckpt_dir)
    device = check_device(bf16=cfg.bf16, use_cpu=cfg.use_cpu, deepspeed=cfg.deepspeed)
    processes = world_size(cfg.world_size)
    completions_per_step = check_generation_batch(cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps,
                                                  cfg.num_generations, processes)
    ds, qids, prompts, images = _dataset(rows)
    processor = set_pixel_limits(load_processor(ckpt_dir), cfg.image_min_pixels, cfg.image_max_pixels)
    # TRL 1.16 never cuts GRPO prompts; the bound that matters is the model's context.
    pos = _position_limit(ckpt_dir)
    lengths = check_lengths(qids, token_counts(processor, prompts, images, add_generation_prompt=True),
                            None if pos is None else pos - cfg.max_completion_length + 1, stage="grpo", field="problem")
    work = prepare_work_dir(Path(work_dir) if work_dir else default_work_dir(out), fingerprint(
        stage="grpo", config=cfg.model_dump(mode="json"), init=str(ckpt_dir), rows=qids))
    # Arguments before the model: with a DeepSpeed ZeRO-3 config this makes from_pretrained load
    # the weights already partitioned across ranks instead of whole in every process.
    args = GRPOConfig(**grpo_trl_kwargs(cfg, work / "trainer", bf16=device["bf16"]))
    dtype = train_dtype(cfg.bf16, cfg.use_cpu)
    model = load_model(ckpt_dir, device="cpu", dtype=dtype)
    model.train()
    reward_funcs = make_reward_funcs(cfg.reward)
    reward_names = [f.__name__ for f in reward_funcs]
    thresholds = Thresholds()
    callbacks = [make_checkpoint_callback(work, cfg.save_steps, cfg.resume_steps, processor)]
    if monitors:
        reward_funcs = monitored_reward_funcs(reward_funcs, thresholds)
        callbacks.append(make_health_callback(reward_names, thresholds))
    trainer = resumable(GRPOTrainer)(model=model, reward_funcs=reward_funcs, args=args, train_dataset=ds,
                                     processing_class=processor, callbacks=callbacks)
    with Timer() as t:
        resumed_from = train_resumable(trainer, work, "grpo")
    trainer.save_model(str(out))
    main_process = trainer.is_world_process_zero()  # under accelerate/torchrun only rank 0 writes files
    if main_process:
        save_processor(processor, out)
        tidy_work_dir(work)
    hist = trainer.state.log_history
    steps = trainer.state.global_step
    steps_run = steps - (resumed_from or 0)

    def series(key: str) -> list[float]:
        return [h[key] for h in hist if key in h]

    rows_ = grpo_rows(hist, reward_names)
    health = summarize(rows_, thresholds)
    step_dirs = published_steps(work)
    metrics: dict[str, Any] = {
        **loss_metrics(hist), "steps": steps, "runtime_s": round(t.seconds, 3),
        "s_per_step": round(t.seconds / steps_run, 4) if steps_run else None, "n_rows": len(ds),
        "reward": series("reward"), "reward_iou": series(f"rewards/{reward_names[0]}/mean"),
        "reward_format": series("rewards/format_reward/mean"), "kl": series("kl"),
        "completion_mean_length": series("completions/mean_length"),
        "pixel_limits": read_size(processor.image_processor), "resumed_from_step": resumed_from,
        "health_flags": health["flags"], "checkpoints": sorted(step_dirs),
        "preflight": {"model_class": model_class, "device": device["device"], "bf16": device["bf16"],
                      "notes": device["notes"], "processes": processes,
                      "completions_per_step": completions_per_step, **lengths},
    }
    if main_process:
        write_stage_json(out, "monitors.json", {"stage": "grpo", "rows": public_rows(rows_), "summary": health})
        write_stage_json(out, "train_stage.json", {"stage": "grpo", "base_checkpoint": str(ckpt_dir),
                                               "config": cfg.model_dump(), "metrics": metrics})
    return TrainResult(out, metrics, step_dirs)


if __name__ == "__main__":  # a launched training process (deepperception.training.launch)
    from deepperception.training.launch import main

    main(GRPOStageConfig)
