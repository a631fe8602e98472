"""Pieces shared by the SFT and GRPO stages."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deepperception.errors import ConfigError


@dataclass
class TrainResult:
    """What a training stage hands back: where the reloadable checkpoint is, and its metrics
    (``train_loss_first``/``train_loss_last``, ``steps``, ``runtime_s``, ``s_per_step`` and, for GRPO,
    reward means)."""

    checkpoint_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    step_checkpoints: dict[int, Path] = field(default_factory=dict)
    """Published intermediate checkpoints (``save_steps`` multiples), by optimizer step."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checkpoint_dir"] = str(self.checkpoint_dir)
        d["step_checkpoints"] = {str(k): str(v) for k, v in self.step_checkpoints.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainResult":
        return cls(Path(d["checkpoint_dir"]), d.get("metrics") or {},
                   {int(k): Path(v) for k, v in (d.get("step_checkpoints") or {}).items()})


def default_work_dir(out: Path) -> Path:
    """Work directory (resume points, published steps) of a stage called without one: a sibling of
    its output directory, so nothing but the checkpoint lands in ``out``."""
    out = Path(out)
    return out.with_name(out.name + ".work")


def train_resumable(trainer, work: Path, stage: str) -> int | None:
    """``trainer.train()``, resumed from the newest complete checkpoint in ``work/trainer`` if a
    killed run of the same stage left one (the optimizer, scheduler, RNG states and step count
    continue). Returns the step it resumed from, or ``None``."""
    import logging

    from deepperception.training.checkpoints import checkpoint_step, last_complete_checkpoint

    trainer.add_callback(make_progress_callback(f"train-{stage}"))
    last = last_complete_checkpoint(Path(work) / "trainer")
    if last is None:
        trainer.train()
        return None
    step = checkpoint_step(last)
    logging.getLogger(__name__).warning("%s: resuming from step %d (%s)", stage, step, last)
    trainer.train(resume_from_checkpoint=str(last))
    return step


def make_progress_callback(what: str):
    """A ``TrainerCallback`` that reports optimizer steps to :mod:`deepperception.progress`
    (a Prefect progress bar on the training run when tasks/ listens; a no-op otherwise).
    :func:`train_resumable` adds it, so SFT and GRPO both get it. A resumed run starts at its
    resumed step; only the main process of a multi-process launch reports."""
    from transformers import TrainerCallback

    from deepperception.progress import progress

    class ProgressCallback(TrainerCallback):
        tracker = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.tracker = progress(what, total=int(state.max_steps or 0), done=int(state.global_step or 0),
                                        unit="steps")

        def on_step_end(self, args, state, control, **kwargs):
            if self.tracker is not None:
                self.tracker.advance(int(state.global_step) - self.tracker.done)

        def on_train_end(self, args, state, control, **kwargs):
            if self.tracker is not None:
                self.tracker.close()

    return ProgressCallback()


def freeze_vision(model, *, vision_tower: bool, projector: bool) -> dict[str, int]:
    """Freeze Qwen2-VL's ViT (``visual`` minus ``merger``) and/or its projector (``visual.merger``),
    as LLaMA-Factory's ``freeze_vision_tower`` / ``freeze_multi_modal_projector`` do.
    Returns trainable/total parameter counts."""
    visual = getattr(getattr(model, "model", model), "visual", None)
    if visual is None:
        raise ConfigError(f"{type(model).__name__} has no .model.visual; not a Qwen-VL model?")
    for name, p in visual.named_parameters():
        is_proj = name.startswith("merger.")
        if (is_proj and projector) or (not is_proj and vision_tower):
            p.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": total, "params_trainable": trainable}


def loss_metrics(log_history: list[dict], key: str = "loss") -> dict[str, Any]:
    losses = [h[key] for h in log_history if key in h]
    out: dict[str, Any] = {"train_losses": losses}
    if losses:
        out.update(train_loss_first=losses[0], train_loss_last=losses[-1])
    return out


def write_stage_json(out_dir: Path, name: str, payload: dict[str, Any]) -> None:
    from deepperception.fileio import atomic_write_json

    atomic_write_json(out_dir / name, payload, sort_keys=True)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def remove_if_empty(d: Path) -> None:
    """Drop the trainer's scratch ``output_dir`` when it stayed empty (save_strategy="no")."""
    try:
        d.rmdir()
    except OSError:
        pass


# Relative, so configs (and the artifact versions hashed from them) do not depend on where the
# repository is checked out; resolved against the working directory, then the repository root.
DEFAULT_ZERO3 = "infra/deepspeed/zero3.json"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_deepspeed(path: str | None) -> str | None:
    """Absolute path of a DeepSpeed config named in a stage config (None stays None)."""
    if path is None:
        return None
    p = Path(path)
    for candidate in (p, Path.cwd() / p, _REPO_ROOT / p):
        if candidate.is_file():
            return str(candidate.resolve())
    raise ConfigError(f"DeepSpeed config {path!r} not found (relative paths resolve against the working "
                      f"directory and {_REPO_ROOT})")


def train_dtype(bf16: bool, use_cpu: bool) -> str:
    """bf16 on accelerators when asked; float32 on the CPU (reproducible, and fast enough for tiny models).

    >>> train_dtype(True, use_cpu=True), train_dtype(True, use_cpu=False)
    ('float32', 'bfloat16')
    """
    return "bfloat16" if bf16 and not use_cpu else "float32"
