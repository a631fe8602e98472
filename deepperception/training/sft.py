"""Stage 1: CoT-SFT with TRL's ``SFTTrainer``.

The official stage is LLaMA-Factory full fine-tuning of Qwen2-VL-7B-Instruct
(``qwen2vl_cot_sft.yaml``, official-code.md §4.2): lr 5e-6, 1 epoch, cosine, warmup 0.1, bf16,
batch 2 per device x 8 GPUs, ZeRO-3, vision tower and projector frozen, ``image_max_pixels``
401408, ``cutoff_len`` 4096. Those are the field defaults of :class:`SFTStageConfig`; the ``paper``
profile (``deepperception/profiles/paper.yaml``) adds ZeRO-3, ``toy``/``demo`` the tiny model's CPU settings.

Input rows (``pyarrow.Table``): ``question_id``, ``messages`` (JSON string of TRL conversational
messages whose user turn has a ``{"type": "image"}`` part), ``images`` (``list<binary>`` PNG bytes,
one per image part). Output: a checkpoint directory that reloads with
:func:`~deepperception.model.loading.load_model` / ``load_processor`` (weights, config,
generation config of the base, tokenizer, processor incl. pixel limits), plus ``train_stage.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from deepperception.chat import completion_text
from deepperception.determinism import DeterminismConfig, apply_determinism
from deepperception.errors import InputDataError
from deepperception.images import decode_image
from deepperception.tables import require_columns
from deepperception.training.targets import SFTTarget, apply_target
from deepperception.training.common import (
    train_dtype, default_work_dir, train_resumable,
    Timer, TrainResult, freeze_vision, loss_metrics, write_stage_json,
)
from deepperception.training.preflight import (
    check_device, check_lengths, check_model_class, require_box, token_counts,
)
from deepperception.training.trl_args import TRLMapping
from deepperception.training.trl_data import in_memory_dataset

SFT_COLUMNS = ("question_id", "messages", "images")


class SFTStageConfig(BaseModel):
    """CoT-SFT settings (a typed subset of TRL's ``SFTConfig`` plus the freezing options; how each
    field reaches TRL: :data:`SFT_TRL`)."""

    model_config = ConfigDict(extra="forbid")
    STAGE: ClassVar[str] = "sft"
    ENTRY: ClassVar[str] = "deepperception.training.sft"
    """The module a launched process runs (``python -m``; its ``__main__`` block)."""

    learning_rate: float = Field(5e-6, gt=0, description="Peak LR (official 5e-6).")
    num_train_epochs: float = Field(1.0, gt=0, description="Epochs (official 1). Ignored when max_steps > 0.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    per_device_train_batch_size: int = Field(2, ge=1, description="Per device (official 2 x 8 GPUs).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Official 1.")
    lr_scheduler_type: str = Field("cosine", description="Official cosine.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps spent warming up (official 0.1).")
    weight_decay: float = Field(0.0, ge=0, description="LLaMA-Factory default 0.")
    bf16: bool = Field(True, description="bf16 mixed precision (official true). False on CPU for determinism.")
    use_cpu: bool = Field(False, description="Force CPU training (CI/demo).")
    activation_checkpointing: bool = Field(True, description="Recompute activations (saves memory on 7B; off for tiny).")
    freeze_vision_tower: bool = Field(True, description="Freeze the ViT (official true).")
    freeze_projector: bool = Field(True, description="Freeze the visual merger/projector (official true).")
    max_length: int | None = Field(4096, description="Token cutoff (official cutoff_len 4096). None: never cut (tiny).")
    assistant_only_loss: bool = Field(True, description="Loss on assistant tokens only (LLaMA-Factory's default for sft).")
    image_min_pixels: int | None = Field(None, description="Override the processor's min_pixels (None: keep).")
    image_max_pixels: int | None = Field(401408, description="Override max_pixels (official 401408 = 512 visual tokens).")
    deepspeed: str | None = Field(None, description="DeepSpeed JSON path (paper: infra/deepspeed/zero3.json). GPU only.")
    seed: int = Field(42, description="Trainer seed (data order, init of nothing else).")
    logging_steps: int = Field(1, ge=1, description="Log every N steps (loss curve in metrics).")
    dataloader_num_workers: int = Field(0, ge=0, description="0 on CPU.")
    report_to: str = Field("none", description="'none', 'wandb', 'tensorboard', ...")
    determinism: DeterminismConfig = Field(
        default_factory=DeterminismConfig, description="Thread count, deterministic kernels and seeding of this "
        "stage's process (part of its version: another thread count is another computation).")
    save_steps: int | None = Field(3000, ge=0, description=(
        "Publish a model-only checkpoint every N optimizer steps as checkpoints/step-N/ of the sft-checkpoint "
        "version (LLaMA-Factory save_steps 3000, the official value); None/0: the final checkpoint only."))
    resume_steps: int | None = Field(None, ge=0, description=(
        "Write a full trainer checkpoint (optimizer, scheduler, RNG) every N steps in the stage's work directory so "
        "a killed run resumes there; None: at the save_steps multiples; 0: never (a rerun starts over)."))
    target: SFTTarget = Field("cot", description="cot: reasoning then answer (CoT-SFT); direct: the answer alone, "
                              "the paper's direct fine-tuning ablation on the same rows.")

    def train(self, rows, init: str | Path, out: str | Path, work_dir: str | Path | None = None) -> TrainResult:
        """:func:`train_sft` with this config (what :mod:`.launch` calls, in process or launched)."""
        return train_sft(rows, init, out, self, work_dir=work_dir)


SFT_TRL = TRLMapping(
    renames={"warmup_ratio": "warmup_steps"},  # transformers 5: warmup_steps < 1 is a ratio of the steps
    computed=frozenset({"bf16", "deepspeed"}),  # the device check's decision; the resolved JSON path
    ours_only=frozenset({
        "freeze_vision_tower", "freeze_projector",  # freeze_vision() before the trainer is built
        "image_min_pixels", "image_max_pixels",  # the processor's pixel limits (set_pixel_limits)
        "determinism",  # apply_determinism() before any model is built
        "save_steps", "resume_steps",  # our checkpoint callback publishes steps; TRL's saving stays off
        "target",  # which assistant turn the rows train on (apply_target)
    }),
)
"""How :class:`SFTStageConfig` reaches TRL's ``SFTConfig`` (:mod:`.trl_args`)."""


def sft_trl_kwargs(cfg: SFTStageConfig, output_dir: str | Path, *, bf16: bool) -> dict[str, Any]:
    """The ``SFTConfig`` keyword arguments of a run: every mapped field of ``cfg`` plus the values
    the stage fixes (``bf16`` as the device check decided, no fp16, TRL's own saving off, data
    order seeded by ``seed``, no tqdm bars in the run log)."""
    from trl import SFTConfig

    from deepperception.training.common import resolve_deepspeed

    return SFT_TRL.kwargs(cfg, SFTConfig, output_dir=str(output_dir), bf16=bf16, fp16=False,
                          deepspeed=resolve_deepspeed(cfg.deepspeed), data_seed=cfg.seed, save_strategy="no",
                          disable_tqdm=True)


def _dataset(rows, stage: str = "sft", target: SFTTarget = "cot"):
    require_columns(rows, SFT_COLUMNS, stage=stage, allow_empty=False)
    messages, images, qids = [], [], []
    for r in rows.to_pylist():
        qid = r["question_id"]
        try:
            msgs = json.loads(r["messages"]) if isinstance(r["messages"], str) else r["messages"]
        except json.JSONDecodeError as e:
            raise InputDataError(f"messages is not JSON: {e}", stage=stage, row=qid, field="messages") from e
        n_parts = sum(1 for m in msgs if isinstance(m.get("content"), list)
                      for p in m["content"] if isinstance(p, dict) and p.get("type") == "image")
        imgs = [decode_image(b, stage=stage, row=qid, field="images") for b in (r["images"] or [])]
        if n_parts != len(imgs):
            raise InputDataError(f"{n_parts} image parts in messages but {len(imgs)} images", stage=stage, row=qid,
                                 field="images")
        if not msgs or msgs[-1].get("role") != "assistant":
            raise InputDataError("last message must be the assistant's answer", stage=stage, row=qid, field="messages")
        msgs = apply_target(msgs, target, row=qid)
        require_box(completion_text(msgs[-1]), stage=stage, row=qid, field="messages")
        messages.append(msgs)
        images.append(imgs)
        qids.append(qid)
    return in_memory_dataset({"messages": messages, "images": images}), qids, messages, images


def _image_counting_trainer():
    """TRL's ``SFTTrainer`` plus an ``image_tokens`` log: the ``<|image_pad|>`` tokens of each
    micro-batch, counted in ``training_step`` (main process, after collation) and averaged over
    the logging window by TRL's own ``_metrics`` (beside ``mean_token_accuracy``). Counting
    reads the batch only, so the loss and the weights are unchanged."""
    from trl import SFTTrainer

    from deepperception.training.checkpoints import resumable

    class ImageCountingSFTTrainer(resumable(SFTTrainer)):
        image_token_id: int | None = None

        def training_step(self, *args, **kwargs):
            inputs = args[1] if len(args) > 1 else kwargs.get("inputs")
            ids = inputs.get("input_ids") if isinstance(inputs, dict) or hasattr(inputs, "get") else None
            if ids is not None and self.image_token_id is not None:
                self._metrics["train"]["image_tokens"].append(float((ids == self.image_token_id).sum().item()))
            return super().training_step(*args, **kwargs)

    return ImageCountingSFTTrainer


def train_sft(rows, base_ckpt_dir: str | Path, out_dir: str | Path, cfg: SFTStageConfig | None = None,
              work_dir: str | Path | None = None, *, monitors: bool = True) -> TrainResult:
    """Fine-tune ``base_ckpt_dir`` on ``rows`` and save a reloadable checkpoint in ``out_dir``.

    Model and processor come from :mod:`deepperception.model.loading` (class from ``model_type``;
    image-only processor without torchvision) and the processor is passed as ``processing_class``
    so TRL never calls ``AutoProcessor`` itself. Pre-flight checks (:mod:`.preflight`) run before
    step 1. ``work_dir`` holds resume points and published steps (:mod:`.checkpoints`); a rerun
    with the same work dir, inputs and config resumes from its newest complete checkpoint.
    ``monitors=False`` drops the image-token count (it only reads batches: same weights either way).
    """
    from trl import SFTConfig

    from deepperception.model.loading import load_model, load_processor, read_size, save_processor, set_pixel_limits
    from deepperception.training.checkpoints import (
        fingerprint, make_checkpoint_callback, prepare_work_dir, published_steps, tidy_work_dir,
    )
    from deepperception.training.monitors import sft_rows

    cfg = cfg or SFTStageConfig()
    apply_determinism(cfg.determinism)  # before any model or processor is built
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_class = check_model_class(base_ckpt_dir)
    device = check_device(bf16=cfg.bf16, use_cpu=cfg.use_cpu, deepspeed=cfg.deepspeed)
    ds, qids, messages, images = _dataset(rows, target=cfg.target)
    processor = set_pixel_limits(load_processor(base_ckpt_dir), cfg.image_min_pixels, cfg.image_max_pixels)
    lengths = check_lengths(qids, token_counts(processor, messages, images), cfg.max_length, stage="sft")
    work = prepare_work_dir(Path(work_dir) if work_dir else default_work_dir(out), fingerprint(
        stage="sft", config=cfg.model_dump(mode="json"), init=str(base_ckpt_dir), rows=qids))
    # Arguments before the model: with a DeepSpeed ZeRO-3 config this makes from_pretrained load
    # the weights already partitioned across ranks instead of whole in every process.
    args = SFTConfig(**sft_trl_kwargs(cfg, work / "trainer", bf16=device["bf16"]))
    dtype = train_dtype(cfg.bf16, cfg.use_cpu)
    model = load_model(base_ckpt_dir, device="cpu", dtype=dtype)
    model.train()
    counts = freeze_vision(model, vision_tower=cfg.freeze_vision_tower, projector=cfg.freeze_projector)
    from trl import SFTTrainer

    from deepperception.training.checkpoints import resumable

    trainer_cls = _image_counting_trainer() if monitors else resumable(SFTTrainer)
    trainer = trainer_cls(
        model=model, args=args, train_dataset=ds, processing_class=processor,
        callbacks=[make_checkpoint_callback(work, cfg.save_steps, cfg.resume_steps, processor)])
    if monitors:
        trainer.image_token_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    with Timer() as t:
        resumed_from = train_resumable(trainer, work, "sft")
    trainer.save_model(str(out))
    main_process = trainer.is_world_process_zero()  # under accelerate/torchrun only rank 0 writes files
    if main_process:
        save_processor(processor, out)
        tidy_work_dir(work)
    steps = trainer.state.global_step
    monitor = sft_rows(trainer.state.log_history)
    steps_run = steps - (resumed_from or 0)
    metrics: dict[str, Any] = {
        **loss_metrics(trainer.state.log_history), "steps": steps, "runtime_s": round(t.seconds, 3),
        "s_per_step": round(t.seconds / steps_run, 4) if steps_run else None, "n_rows": len(ds), **counts,
        "pixel_limits": read_size(processor.image_processor), "resumed_from_step": resumed_from,
        "mean_token_accuracy": [r["mean_token_accuracy"] for r in monitor if r["mean_token_accuracy"] is not None],
        "image_tokens": [r["image_tokens"] for r in monitor if r["image_tokens"] is not None],
        "preflight": {"model_class": model_class, "device": device["device"], "bf16": device["bf16"],
                      "notes": device["notes"], **lengths},
    }
    step_dirs = published_steps(work)
    metrics["checkpoints"] = sorted(step_dirs)
    if main_process:
        write_stage_json(out, "monitors.json", {"stage": "sft", "rows": monitor})
        write_stage_json(out, "train_stage.json", {"stage": "sft", "base_checkpoint": str(base_ckpt_dir),
                                               "config": cfg.model_dump(), "metrics": metrics})
    return TrainResult(out, metrics, step_dirs)


if __name__ == "__main__":  # a launched training process (deepperception.training.launch)
    from deepperception.training.launch import main

    main(SFTStageConfig)
