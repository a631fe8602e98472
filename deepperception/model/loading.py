"""Loading checkpoints (tiny or real Qwen2-VL / Qwen2.5-VL) the same way everywhere.

Why one module: two traps bite anyone who loads these checkpoints ad hoc.

* Without torchvision, transformers 5.23's ``Qwen2VLProcessor`` cannot be built (it demands a
  torchvision video processor), and ``AutoProcessor.from_pretrained`` *silently* falls back to a
  bare tokenizer. :func:`load_processor` uses an image-only subclass plus the PIL image processor
  there and always asserts an ``image_processor`` is present.
* The official GRPO trainer picks the model class from a *substring of the checkpoint path*
  (``"Qwen2-VL" in path``), so a stage-1 directory named otherwise loads as a text-only causal LM.
  :func:`load_model` reads ``config.json``'s ``model_type`` instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from deepperception.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")


def model_type(ckpt_dir: str | Path) -> str:
    """``model_type`` from ``config.json``; raises :class:`ConfigError` for anything unsupported."""
    p = Path(ckpt_dir) / "config.json"
    if not p.is_file():
        raise ConfigError(f"checkpoint {ckpt_dir} has no config.json")
    mt = json.loads(p.read_text()).get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"checkpoint {ckpt_dir}: model_type {mt!r} is not one of {SUPPORTED_MODEL_TYPES}")
    return mt


def _classes(mt: str) -> tuple[type, type]:
    if mt == "qwen2_vl":
        from transformers import Qwen2VLForConditionalGeneration, Qwen2VLProcessor
        return Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    return Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor


def torchvision_available() -> bool:
    from transformers.utils import is_torchvision_available
    return bool(is_torchvision_available())


def image_only_processor_class(base: type) -> type:
    """``base`` (a Qwen-VL processor class) minus its video slot.

    ``ProcessorMixin`` derives the processor's attributes from the ``__init__`` signature, so this
    subclass only has ``image_processor`` and ``tokenizer``. It keeps the base class *name*, so
    ``save_pretrained`` writes a portable ``"processor_class": "Qwen2VLProcessor"``.
    """
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kw):  # noqa: N807
        base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kw)
    return type(base.__name__, (base,), {"__init__": __init__, "__module__": __name__})


def make_image_processor(size: dict[str, int]):
    """The Qwen2-VL image processor for ``size = {shortest_edge: min_pixels, longest_edge: max_pixels}``
    (torchvision-backed when available, otherwise the PIL one; both save as ``Qwen2VLImageProcessor``)."""
    if torchvision_available():
        from transformers import Qwen2VLImageProcessor
        return Qwen2VLImageProcessor(size=size)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    return Qwen2VLImageProcessorPil(size=size)


def load_processor(ckpt_dir: str | Path, **kwargs: Any):
    """Processor (tokenizer + image processor + chat template) of a Qwen2-VL/Qwen2.5-VL checkpoint.

    Works on the tiny checkpoint and on a real Qwen2-VL-7B-Instruct directory, with or without
    torchvision. ``kwargs`` go to ``from_pretrained``. Raises :class:`ConfigError` if the result
    has no image processor (never silently returns a tokenizer).
    """
    mt = model_type(ckpt_dir)
    if torchvision_available():
        from transformers import AutoProcessor
        proc = AutoProcessor.from_pretrained(str(ckpt_dir), **kwargs)
    else:
        _, base = _classes(mt)
        proc = image_only_processor_class(base).from_pretrained(str(ckpt_dir), **kwargs)
    if not hasattr(proc, "image_processor") or proc.image_processor is None:
        raise ConfigError(f"{ckpt_dir}: loaded {type(proc).__name__}, which has no image_processor")
    return proc


def _resolve_dtype(dtype: Any):
    import torch
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of {sorted(names)} or 'auto'")
    return names[dtype]


def load_model(
    ckpt_dir: str | Path,
    device: str = "cpu",
    dtype: Any = "float32",
    attn_implementation: str | None = None,
):
    """The ``...ForConditionalGeneration`` model of a checkpoint, chosen from ``config.json``'s
    ``model_type`` (never from the path), in eval mode on ``device``.

    ``attn_implementation=None`` keeps transformers' default (SDPA); pass ``"flash_attention_2"``
    to match the official evaluator on a GPU.
    """
    mt = model_type(ckpt_dir)
    cls, _ = _classes(mt)
    kw: dict[str, Any] = {"dtype": _resolve_dtype(dtype)}
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    model = cls.from_pretrained(str(ckpt_dir), **kw)
    return model.to(device).eval()


def read_pixel_limits(ckpt_dir: str | Path) -> dict[str, int | None]:
    """``{"min_pixels", "max_pixels"}`` the checkpoint's image processor will use, read from
    ``preprocessor_config.json`` (or the ``image_processor`` entry of ``processor_config.json``).

    Recorded with every run because it decides the evaluation resolution (official-code.md §2.3:
    a checkpoint saved by the R1-V trainer may carry ``max_pixels=401408`` instead of Qwen's
    12,845,056). Precedence follows ``Qwen2VLImageProcessor.__init__``: explicit
    ``min_pixels``/``max_pixels`` override ``size``. Missing values are ``None`` (library default).
    """
    d = Path(ckpt_dir)
    cfg: dict[str, Any] | None = None
    pre = d / "preprocessor_config.json"
    if pre.is_file():
        cfg = json.loads(pre.read_text())
    else:
        pc = d / "processor_config.json"
        if pc.is_file():
            cfg = json.loads(pc.read_text()).get("image_processor")
    cfg = cfg or {}
    size = cfg.get("size") or {}
    lo = size.get("shortest_edge", size.get("min_pixels"))
    hi = size.get("longest_edge", size.get("max_pixels"))
    if cfg.get("min_pixels") is not None:
        lo = cfg["min_pixels"]
    if cfg.get("max_pixels") is not None:
        hi = cfg["max_pixels"]
    return {"min_pixels": None if lo is None else int(lo), "max_pixels": None if hi is None else int(hi)}


def set_pixel_limits(processor, min_pixels: int | None = None, max_pixels: int | None = None):
    """Replace ``processor.image_processor`` by one with the given pixel limits (``None`` keeps the
    current value) and return the processor. Used by training stages (official: ``max_pixels =
    401408`` for SFT and GRPO); the limits are saved with the trained checkpoint."""
    if min_pixels is None and max_pixels is None:
        return processor
    ip = processor.image_processor
    cur = read_size(ip)
    size = {"shortest_edge": int(min_pixels if min_pixels is not None else cur["min_pixels"]),
            "longest_edge": int(max_pixels if max_pixels is not None else cur["max_pixels"])}
    cfg = {k: v for k, v in ip.to_dict().items() if k not in ("min_pixels", "max_pixels", "size", "image_processor_type")}
    processor.image_processor = type(ip)(size=size, **{k: v for k, v in cfg.items() if not k.startswith("_")})
    return processor


def read_size(image_processor) -> dict[str, int]:
    """``{"min_pixels", "max_pixels"}`` of a loaded Qwen2-VL image processor."""
    s = image_processor.size
    get = (lambda k: getattr(s, k, None)) if not isinstance(s, dict) else s.get
    return {"min_pixels": int(get("shortest_edge")), "max_pixels": int(get("longest_edge"))}


def save_processor(processor, out_dir: str | Path) -> None:
    """``processor.save_pretrained`` plus the video-processor entry a torchvision venv needs to load
    it (``Qwen2VLProcessor.from_pretrained`` there fails without it), so checkpoints are portable."""
    out = Path(out_dir)
    processor.save_pretrained(str(out))
    ensure_video_entry(out, {"shortest_edge": read_size(processor.image_processor)["min_pixels"],
                             "longest_edge": read_size(processor.image_processor)["max_pixels"]})


def ensure_video_entry(out: Path, size: dict[str, int]) -> None:
    p = Path(out) / "processor_config.json"
    data = json.loads(p.read_text()) if p.exists() else {"processor_class": "Qwen2VLProcessor"}
    data.setdefault("video_processor", {
        "video_processor_type": "Qwen2VLVideoProcessor", "patch_size": 14, "temporal_patch_size": 2,
        "merge_size": 2, "size": size,
    })
    p.write_text(json.dumps(data, indent=2) + "\n")


# Small files that decide a checkpoint's outputs besides its weights.
IDENTITY_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
                  "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                  "model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def checkpoint_fingerprint(ckpt_dir: str | Path) -> dict[str, str]:
    """What identifies a checkpoint directory without hashing 15 GB of weights: the SHA-256 of
    every small file that decides outputs, and each weight file's size and modification time
    (an in-place overwrite changes it; a copy elsewhere also changes the recorded path)."""
    d = Path(ckpt_dir)
    out = {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in IDENTITY_FILES if (d / n).is_file()}
    for w in sorted(p for p in d.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        st = w.stat()
        out[w.name] = f"size={st.st_size};mtime_ns={st.st_mtime_ns}"
    return out
