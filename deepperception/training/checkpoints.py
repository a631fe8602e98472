"""Intermediate and resume checkpoints of a training stage.

Two kinds of saves, one mechanism (the HF ``Trainer``'s own ``_save_checkpoint``, triggered by
:class:`CheckpointCallback`):

* **Resume points** (``resume_steps``; default: every ``save_steps``): the trainer's full
  checkpoint (weights, optimizer, scheduler, RNG states, ``trainer_state.json``) in the stage's
  *work directory*, which outlives a killed process. Only the newest *complete* one is kept
  (a checkpoint is complete once ``on_save`` has run and written :data:`COMPLETE`; a process
  killed while saving leaves one without it, which is ignored). A rerun of the same stage version
  calls ``trainer.train(resume_from_checkpoint=...)``, so the optimizer step count continues.
* **Published steps** (``save_steps``, official GRPO 100 with ``--save_only_model``, SFT 3000):
  a model-only copy (weights, config, generation config, processor) under
  ``published/step-000100/``; the task publishes each as ``checkpoints/step-000100/`` of the
  stage's store version, selectable with :func:`parse_step_ref`'s ``#step=N`` suffix.

Layout of a work directory::

    fingerprint.json        what the checkpoints belong to (a mismatch wipes the directory)
    trainer/checkpoint-N/   the newest complete resume point (HF Trainer layout + COMPLETE)
    published/step-00000N/  model-only copies of the save_steps multiples (renamed into place whole)

The work directory is keyed by the stage's artifact version in the task (same inputs, config
and code), and :func:`prepare_work_dir` additionally refuses checkpoints of anything else.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from deepperception.errors import ConfigError

log = logging.getLogger(__name__)

COMPLETE = ".complete"
"""Marker written into ``checkpoint-N`` once the whole save (all ranks) has finished."""

STEP_PREFIX = "checkpoints"
"""Top-level folder of a checkpoint artifact version holding the published steps (outside
``files/``, so materialising the final checkpoint never downloads them)."""

# Files of an HF trainer checkpoint that are resume state, not the model.
_RESUME_ONLY = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|trainer_state\.json|training_args\.bin|"
                          r"rng_state.*\.pth|latest|zero_to_fp32\.py|\.complete|global_step.*)$")


def step_name(step: int) -> str:
    """Folder name of a published step.

    >>> step_name(100)
    'step-000100'
    """
    return f"step-{int(step):06d}"


def step_prefix(step: int) -> str:
    """Prefix of a published step's files inside a checkpoint artifact version.

    >>> step_prefix(100)
    'checkpoints/step-000100/'
    """
    return f"{STEP_PREFIX}/{step_name(step)}/"


def parse_step_ref(text: str) -> tuple[str, int | None]:
    """Split ``name@version#step=N`` into ``("name@version", N)``; no suffix -> ``None`` (the final
    checkpoint). The one place that reads the step syntax (CLI, flows and tasks call it).

    >>> parse_step_ref("grpo-checkpoint@abc123#step=100")
    ('grpo-checkpoint@abc123', 100)
    >>> parse_step_ref("grpo-checkpoint@latest")
    ('grpo-checkpoint@latest', None)
    >>> parse_step_ref("grpo-checkpoint@abc#step=x")
    Traceback (most recent call last):
    ...
    deepperception.errors.ConfigError: checkpoint reference 'grpo-checkpoint@abc#step=x': expected ...
    """
    ref, sep, suffix = text.partition("#")
    if not sep:
        return text, None
    m = re.fullmatch(r"step=(\d+)", suffix)
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"checkpoint reference {text!r}: expected name@version#step=N with N >= 1")
    return ref, int(m.group(1))


def save_schedule(step: int, save_steps: int | None, resume_steps: int | None) -> tuple[bool, bool]:
    """``(resume point, published)`` for optimizer step ``step``. ``resume_steps=None`` resumes at
    the ``save_steps`` multiples; 0/None disables either.

    >>> [save_schedule(s, 4, 2) for s in (2, 4, 5)]
    [(True, False), (True, True), (False, False)]
    >>> save_schedule(100, 100, None), save_schedule(100, None, None)
    ((True, True), (False, False))
    """
    publish = bool(save_steps) and step % save_steps == 0
    every = resume_steps if resume_steps is not None else save_steps
    resume = bool(every) and step % every == 0
    return resume or publish, publish


def fingerprint(**parts: Any) -> dict[str, Any]:
    """JSON-able identity of a training run (config, input checkpoint, rows) for its work dir."""
    return json.loads(json.dumps(parts, sort_keys=True, default=str))


def prepare_work_dir(work: Path, ident: dict[str, Any]) -> Path:
    """Create ``work`` for the run ``ident``; a directory left by a *different* run is wiped
    (its checkpoints would resume the wrong optimisation)."""
    work = Path(work)
    fp = work / "fingerprint.json"
    if fp.is_file():
        try:
            same = json.loads(fp.read_text()) == ident
        except (OSError, json.JSONDecodeError):
            same = False
        if not same:
            log.warning("work dir %s belongs to another run; starting over", work)
            shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    if not fp.is_file():
        tmp = fp.with_suffix(".tmp")
        tmp.write_text(json.dumps(ident, sort_keys=True))
        os.replace(tmp, fp)
    return work


def _step_of(p: Path) -> int | None:
    m = re.fullmatch(r"checkpoint-(\d+)", p.name)
    return int(m.group(1)) if m else None


def last_complete_checkpoint(trainer_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` under ``trainer_dir`` holding :data:`COMPLETE`, else ``None``."""
    d = Path(trainer_dir)
    if not d.is_dir():
        return None
    done = [(s, p) for p in d.iterdir() if (s := _step_of(p)) is not None and (p / COMPLETE).is_file()]
    return max(done)[1] if done else None


def checkpoint_step(ckpt: Path) -> int:
    """Optimizer step a trainer checkpoint was saved at (its ``trainer_state.json``)."""
    return int(json.loads((Path(ckpt) / "trainer_state.json").read_text())["global_step"])


def published_steps(work: Path) -> dict[int, Path]:
    """Published step directories of a work dir, by step."""
    d = Path(work) / "published"
    if not d.is_dir():
        return {}
    out = {}
    for p in d.iterdir():
        m = re.fullmatch(r"step-(\d+)", p.name)
        if m and p.is_dir():
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def publish_model_copy(ckpt: Path, dest: Path, processor=None) -> Path:
    """Model-only copy of a trainer checkpoint (hard links where the filesystem allows), reloadable
    with :func:`~deepperception.model.loading.load_model` / ``load_processor``."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for p in sorted(Path(ckpt).iterdir()):
        if p.is_file() and not _RESUME_ONLY.match(p.name):
            # Weights are linked (no second copy of 15 GB); small files are copied, because
            # save_processor below rewrites some in place and must not edit the resume point's.
            if p.suffix in (".safetensors", ".bin"):
                _link_or_copy(p, tmp / p.name)
            else:
                shutil.copy2(p, tmp / p.name)
    if processor is not None:
        from deepperception.model.loading import save_processor

        save_processor(processor, tmp)
    shutil.rmtree(dest, ignore_errors=True)  # the rename below makes a step directory appear whole
    os.replace(tmp, dest)
    return dest


def _barrier() -> None:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def make_checkpoint_callback(work: Path, save_steps: int | None, resume_steps: int | None, processor=None):
    """A ``TrainerCallback`` that asks the trainer to save at :func:`save_schedule`'s steps, marks
    each finished save complete, publishes the ``save_steps`` multiples and keeps only the newest
    resume point. Used with ``save_strategy="no"`` so nothing else saves."""
    from transformers import TrainerCallback

    work = Path(work)

    class CheckpointCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if save_schedule(state.global_step, save_steps, resume_steps)[0]:
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kwargs):
            _barrier()  # every rank has written its shard of checkpoint-N
            if state.is_world_process_zero:
                step = state.global_step
                ckpt = Path(args.output_dir) / f"checkpoint-{step}"
                if ckpt.is_dir():
                    (ckpt / COMPLETE).write_text("")
                    if save_schedule(step, save_steps, resume_steps)[1]:
                        publish_model_copy(ckpt, work / "published" / step_name(step), processor)
                    for old in Path(args.output_dir).iterdir():
                        s = _step_of(old)
                        if s is not None and s != step:
                            shutil.rmtree(old, ignore_errors=True)
                    log.info("checkpoint at step %d saved in %s", step, ckpt)
            _barrier()
            return control

    return CheckpointCallback()


def tidy_work_dir(work: Path) -> None:
    """Remove a work dir that holds nothing worth keeping (no resume point, no published step)."""
    work = Path(work)
    trainer = work / "trainer"
    if trainer.is_dir() and not any(trainer.iterdir()):
        trainer.rmdir()
    if not trainer.exists() and not published_steps(work):
        shutil.rmtree(work, ignore_errors=True)


class ResumeWeightsMixin:
    """Trainer mixin: resume the *weights* through ``from_pretrained``.

    transformers 5.23's ``Trainer._load_from_checkpoint`` loads ``model.safetensors`` with a bare
    ``load_state_dict(strict=False)``, but Qwen2-VL saves its weights under the legacy key names
    (``visual.*``, ``model.layers.*``; ``save_pretrained`` applies the checkpoint conversion
    mapping) while the live module has ``model.visual.*``, ``model.language_model.*``: *no* key
    matches, a warning is logged, and the run silently continues from the pre-crash initial
    weights with the restored optimizer. Loading the checkpoint with
    :func:`~deepperception.model.loading.load_model` applies the mapping; its state dict then
    loads strictly. DeepSpeed and FSDP runs resume through their own checkpoint formats, untouched.
    """

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):  # noqa: D401 (HF hook)
        if getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)  # type: ignore[misc]
        from deepperception.model.loading import load_model

        target = model if model is not None else self.model  # type: ignore[attr-defined]
        dtype = next(target.parameters()).dtype
        saved = load_model(resume_from_checkpoint, dtype=dtype).state_dict()
        target.load_state_dict(saved, strict=True)
        log.info("resumed weights from %s (%d tensors)", resume_from_checkpoint, len(saved))

    def _get_train_sampler(self, *args, **kwargs):
        return replay_epochs(super()._get_train_sampler(*args, **kwargs))  # type: ignore[misc]


def replay_epochs(sampler):
    """Give a shuffling sampler without ``set_epoch`` (TRL 1.16's ``RepeatSampler``: one seeded
    generator, one ``randperm`` per epoch) a ``set_epoch`` that draws the permutations of the
    epochs a resumed run skipped, so epoch k of a resumed run sees the order an uninterrupted run
    sees. Uninterrupted runs draw exactly as before (``set_epoch(k)`` after k iterations is a
    no-op). Without this a GRPO run resumed in its second epoch trains on the first epoch's order.

    >>> import torch
    >>> class S:  # the shape of TRL's RepeatSampler
    ...     def __init__(self): self.shuffle, self.num_samples, self.generator = True, 5, torch.Generator().manual_seed(0)
    ...     def __iter__(self): yield from torch.randperm(self.num_samples, generator=self.generator).tolist()
    >>> a = replay_epochs(S()); first, second = list(a), list(a)
    >>> b = replay_epochs(S()); b.set_epoch(1); list(b) == second
    True
    """
    import torch

    if hasattr(sampler, "set_epoch") or not getattr(sampler, "shuffle", False) or not hasattr(sampler, "generator"):
        return sampler
    base = type(sampler)

    class EpochReplay(base):  # type: ignore[misc, valid-type]
        _drawn = 0

        def __iter__(self):
            self._drawn += 1
            return base.__iter__(self)

        def set_epoch(self, epoch: int) -> None:
            for _ in range(epoch - self._drawn):
                torch.randperm(self.num_samples, generator=self.generator)
            self._drawn = max(self._drawn, epoch)

    EpochReplay.__name__ = base.__name__
    sampler.__class__ = EpochReplay
    return sampler


def resumable(trainer_cls: type) -> type:
    """``trainer_cls`` with :class:`ResumeWeightsMixin` (same name, for logs and model cards)."""
    return type(trainer_cls.__name__, (ResumeWeightsMixin, trainer_cls), {})
