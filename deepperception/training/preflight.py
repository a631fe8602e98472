"""Checks a training stage runs before its first step, so a bad setting or row fails in seconds
with a message naming it instead of hours later (or never, as a silently wrong run).

* :func:`check_model_class`: the model class comes from the checkpoint's ``config.json``
  (``model_type`` and ``architectures``), never from its path (the official GRPO trainer's bug,
  official-code.md §4.4).
* :func:`check_device`: dtype and device sanity. bf16 asked on the CPU is a *documented
  downgrade* to float32 (the model is loaded in float32 there anyway, and CPU bf16 autocast is
  slower and not reproducible); everything else that cannot run is a :class:`ConfigError`.
* :func:`world_size` / :func:`check_generation_batch`: GRPO's batch x accumulation x processes
  must be divisible by G, with the process count the launcher really started (``WORLD_SIZE``).
* :func:`token_counts` / :func:`check_lengths`: every row's text + image tokens against the
  cutoff, image tokens computed from the processor's own resize (``get_number_of_image_patches``
  with the stage's min/max pixels). A row over the cutoff fails naming it: truncating it would
  cut image tokens (or the answer) silently.
* :func:`require_box`: an SFT answer or GRPO solution the released box parser cannot read fails
  naming the row (missing/undecodable images already fail in
  :func:`~deepperception.images.decode_image`).

Every failure of a row is an :class:`~deepperception.errors.InputDataError` with stage, row and
field; every bad setting a :class:`~deepperception.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from deepperception.errors import ConfigError, InputDataError

EXPECTED_CLASS = {"qwen2_vl": "Qwen2VLForConditionalGeneration",
                  "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}


def check_model_class(ckpt_dir: str | Path) -> str:
    """The model class a checkpoint loads as, from ``config.json`` alone; a ``model_type`` we do not
    support, or ``architectures`` naming another class than ``model_type``'s, is a ConfigError.

    >>> import tempfile, json, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())  # a path without "Qwen2-VL" in it
    >>> _ = (d / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    >>> check_model_class(d)
    'Qwen2VLForConditionalGeneration'
    >>> _ = (d / "config.json").write_text(json.dumps({"model_type": "qwen2_vl", "architectures": ["Qwen2ForCausalLM"]}))
    >>> check_model_class(d)
    Traceback (most recent call last):
    ...
    deepperception.errors.ConfigError: checkpoint ...: config.json architectures ['Qwen2ForCausalLM'] ...
    """
    from deepperception.model.loading import model_type

    mt = model_type(ckpt_dir)  # ConfigError for a missing config.json or an unsupported model_type
    expected = EXPECTED_CLASS[mt]
    archs = json.loads((Path(ckpt_dir) / "config.json").read_text()).get("architectures") or []
    if archs and expected not in archs:
        raise ConfigError(f"checkpoint {ckpt_dir}: config.json architectures {archs} do not match model_type "
                          f"{mt!r} ({expected}); refusing to guess the model class")
    return expected


def check_device(*, bf16: bool, use_cpu: bool, deepspeed: str | None = None,
                 cuda_available: bool | None = None, bf16_supported: bool | None = None) -> dict[str, Any]:
    """What the stage will really run in: ``{"device", "bf16", "notes"}``.

    >>> check_device(bf16=True, use_cpu=True)["bf16"]
    False
    >>> check_device(bf16=True, use_cpu=False, cuda_available=False)
    Traceback (most recent call last):
    ...
    deepperception.errors.ConfigError: use_cpu=false but no CUDA device is visible; set use_cpu=true to train on the CPU
    >>> check_device(bf16=False, use_cpu=True, deepspeed="zero3.json")
    Traceback (most recent call last):
    ...
    deepperception.errors.ConfigError: deepspeed='zero3.json' needs CUDA; set deepspeed=null for a CPU run
    """
    notes: list[str] = []
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if deepspeed and (use_cpu or not cuda_available):
        raise ConfigError(f"deepspeed={deepspeed!r} needs CUDA; set deepspeed=null for a CPU run")
    if use_cpu:
        if bf16:
            notes.append("bf16 requested on the CPU: training in float32 instead (documented downgrade)")
        return {"device": "cpu", "bf16": False, "notes": notes}
    if not cuda_available:
        raise ConfigError("use_cpu=false but no CUDA device is visible; set use_cpu=true to train on the CPU")
    if bf16:
        if bf16_supported is None:
            import torch

            bf16_supported = torch.cuda.is_bf16_supported()
        if not bf16_supported:
            raise ConfigError("bf16=true but this GPU has no bf16 support; set bf16=false")
    return {"device": "cuda", "bf16": bf16, "notes": notes}


def world_size(configured: int, env: Mapping[str, str] | None = None) -> int:
    """Processes training together: the launcher's ``WORLD_SIZE`` when launched, else the config's.

    >>> world_size(8, {}), world_size(8, {"WORLD_SIZE": "2"})
    (8, 2)
    """
    env = os.environ if env is None else env
    return int(env["WORLD_SIZE"]) if env.get("WORLD_SIZE") else configured


def check_generation_batch(per_device: int, accumulation: int, num_generations: int, processes: int) -> int:
    """Completions per optimizer step, which must be a whole number of groups of G.

    >>> check_generation_batch(4, 2, 4, 8)
    64
    >>> check_generation_batch(2, 1, 4, 1)
    Traceback (most recent call last):
    ...
    deepperception.errors.ConfigError: grpo: per_device_train_batch_size (2) x gradient_accumulation_steps (1) x processes (1) = 2 completions is not divisible by num_generations (4)
    """
    total = per_device * accumulation * processes
    if total % num_generations:
        raise ConfigError(f"grpo: per_device_train_batch_size ({per_device}) x gradient_accumulation_steps "
                          f"({accumulation}) x processes ({processes}) = {total} completions is not divisible by "
                          f"num_generations ({num_generations})")
    return total


def image_tokens(image_processor, width: int, height: int) -> int:
    """LLM tokens one image becomes after the processor's resize (its pixel limits included)."""
    patches = image_processor.get_number_of_image_patches(height, width, {})
    return int(patches) // int(image_processor.merge_size) ** 2


def token_counts(processor, messages: Sequence[list[dict]], images: Sequence[Sequence[Any]],
                 *, add_generation_prompt: bool = False) -> list[tuple[int, int]]:
    """``(text tokens, image tokens)`` per row: the chat template's tokens (each image's single
    ``<|image_pad|>`` placeholder excluded) and the image tokens the processor expands it to."""
    tok = processor.tokenizer
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    texts = [processor.apply_chat_template(m, tokenize=False, add_generation_prompt=add_generation_prompt)
             for m in messages]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    out = []
    for row_ids, imgs in zip(ids, images, strict=True):
        n_img = sum(image_tokens(processor.image_processor, *im.size) for im in imgs)
        out.append((len(row_ids) - sum(1 for t in row_ids if t == pad), n_img))
    return out


def check_lengths(qids: Sequence[Any], counts: Sequence[tuple[int, int]], max_length: int | None,
                  *, stage: str, field: str = "messages") -> dict[str, int]:
    """Fail on the first row whose text + image tokens exceed ``max_length`` (None: no cutoff);
    return the longest row's counts for the run record.

    >>> check_lengths(["a", "b"], [(10, 64), (12, 64)], 75, stage="sft")
    Traceback (most recent call last):
    ...
    deepperception.errors.InputDataError: [stage=sft row=b field=messages] 12 text + 64 image tokens = 76 exceed max_length 75 ...
    >>> check_lengths(["a"], [(10, 64)], None, stage="sft")
    {'max_tokens': 74, 'max_image_tokens': 64, 'max_text_tokens': 10}
    """
    limit = max_length
    if limit is not None:
        limit -= 1  # room for the EOS token TRL appends when a template does not end with it
    for qid, (n_text, n_img) in zip(qids, counts, strict=True):
        if limit is not None and n_text + n_img > limit:
            raise InputDataError(
                f"{n_text} text + {n_img} image tokens = {n_text + n_img} exceed max_length {max_length} (minus 1 "
                f"for EOS); the trainer would cut this row, image tokens included. Raise max_length or lower "
                f"image_max_pixels", stage=stage, row=qid, field=field)
    if not counts:
        return {"max_tokens": 0, "max_image_tokens": 0, "max_text_tokens": 0}
    return {"max_tokens": max(a + b for a, b in counts), "max_image_tokens": max(b for _, b in counts),
            "max_text_tokens": max(a for a, _ in counts)}


def require_box(text: str, *, stage: str, row: Any, field: str) -> None:
    """Fail unless the released parser reads a usable box in ``text`` (an SFT answer or a GRPO
    solution): a target without a box teaches nothing but the format, and scores 0 forever.

    >>> require_box("<answer>(1,2),(30,40)</answer>", stage="sft", row="q1", field="messages")
    >>> require_box("<answer>no box</answer>", stage="grpo", row="q2", field="solution")
    Traceback (most recent call last):
    ...
    deepperception.errors.InputDataError: [stage=grpo row=q2 field=solution] no (x1,y1),(x2,y2) box the released parser can read
    """
    from deepperception.eval.parsing import grpo_bbox
    from deepperception.boxes import is_valid_box

    box, match_type = grpo_bbox(text)
    if not match_type or not is_valid_box(box):
        raise InputDataError("no (x1,y1),(x2,y2) box the released parser can read", stage=stage, row=row,
                             field=field)
