"""Batched generation for Qwen2-VL grounding prompts, numerically identical to one-at-a-time.

Why this exists: the official evaluator generates one question at a time (``inference.py``), which
wastes >90% of a GPU (and of the CPU demo's budget). Batching with *left* padding is only safe if
every row decodes exactly as it would alone. Two things break that naively:

1. **Repetition penalty sees the pad tokens.** ``RepetitionPenaltyLogitsProcessor`` penalises
   every id present in ``input_ids``, pads included; a left-padded row therefore also penalises
   ``<|endoftext|>`` (pad == one of Qwen2-VL's EOS ids) and an unpadded row does not. We build the
   processor ourselves with a per-row ``prompt_ignore_length`` equal to that row's pad count.
2. **Position ids.** Qwen2-VL's M-RoPE index is computed from the attention mask, so pads get no
   positions and the real tokens keep the positions they have alone (checked by the tests).

Decoding follows the checkpoint's ``generation_config.json`` (see :func:`decoding_from_generation_config`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

from PIL import Image

from deepperception.errors import InputDataError
from deepperception.prompts import PromptMode, grounding_messages

# qwen_vl_utils 0.0.10 defaults (the version the official evaluator pins).
QWEN_VL_UTILS_FACTOR = 28
QWEN_VL_UTILS_MIN_PIXELS = 4 * 28 * 28
QWEN_VL_UTILS_MAX_PIXELS = 16384 * 28 * 28
QWEN_VL_UTILS_MAX_RATIO = 200


def qwen_vl_utils_smart_resize(height: int, width: int, factor: int = QWEN_VL_UTILS_FACTOR,
                               min_pixels: int = QWEN_VL_UTILS_MIN_PIXELS,
                               max_pixels: int = QWEN_VL_UTILS_MAX_PIXELS) -> tuple[int, int]:
    """``qwen_vl_utils.smart_resize`` (0.0.10): sides rounded to multiples of ``factor``, pixel
    count clamped to ``[min_pixels, max_pixels]``. Returns ``(height, width)``.

    >>> qwen_vl_utils_smart_resize(100, 150)
    (112, 140)
    >>> qwen_vl_utils_smart_resize(10, 10)
    (56, 56)
    """
    if max(height, width) / min(height, width) > QWEN_VL_UTILS_MAX_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {QWEN_VL_UTILS_MAX_RATIO}, got {max(height, width) / min(height, width)}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def official_fetch_image(img: Image.Image) -> Image.Image:
    """What the official evaluator's ``process_vision_info`` does to an image before the processor
    sees it: convert to RGB and resize (PIL default resampling) with qwen_vl_utils' smart_resize.
    The processor then applies its own ``min_pixels``/``max_pixels`` resize on top."""
    img = img.convert("RGB")
    w, h = img.size
    rh, rw = qwen_vl_utils_smart_resize(h, w)
    return img.resize((rw, rh))


@dataclass(frozen=True)
class DecodingSpec:
    """Resolved decoding settings, recorded in ``run.json``."""

    greedy: bool
    max_new_tokens: int
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_token_id: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decoding_from_generation_config(gen: dict[str, Any], max_new_tokens: int) -> DecodingSpec:
    """Map a checkpoint's ``generation_config.json`` to the decoding the official HF evaluator got.

    The official ``model.generate(**inputs, max_new_tokens=1500)`` passes nothing else, so decoding
    is whatever the file says. Qwen2-VL-7B-Instruct's file says ``do_sample=true, top_k=1,
    top_p=0.001, temperature=0.1, repetition_penalty=1.05``: sampling from a distribution that top-k=1
    has cut to a single token, i.e. **greedy with repetition penalty 1.05** (temperature and top-p
    cannot change which token survives top-1). We run that as ``do_sample=False`` so that no RNG is
    consumed and batched decoding is bit-reproducible. (Exact ties between two logits are the only
    difference: top-k keeps both and samples; argmax takes the lower id.) A file with
    ``do_sample=false`` is greedy too; any other sampling setup is kept as sampling.

    >>> s = decoding_from_generation_config({"do_sample": True, "top_k": 1, "top_p": 0.001,
    ...     "temperature": 0.1, "repetition_penalty": 1.05, "eos_token_id": [2, 0], "pad_token_id": 0}, 1500)
    >>> (s.greedy, s.repetition_penalty, s.max_new_tokens, s.eos_token_id)
    (True, 1.05, 1500, [2, 0])
    >>> decoding_from_generation_config({}, 8).greedy
    True
    >>> decoding_from_generation_config({"do_sample": True, "top_k": 50}, 8).greedy
    False
    """
    eos = gen.get("eos_token_id")
    eos_list = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    do_sample = bool(gen.get("do_sample", False))
    top_k = gen.get("top_k")
    rp = float(gen.get("repetition_penalty") or 1.0)
    if not do_sample:
        return DecodingSpec(True, max_new_tokens, rp, eos_token_id=eos_list, pad_token_id=gen.get("pad_token_id"),
                            source="generation_config: do_sample=false -> greedy")
    if top_k == 1:
        return DecodingSpec(True, max_new_tokens, rp, eos_token_id=eos_list, pad_token_id=gen.get("pad_token_id"),
                            source="generation_config: do_sample=true with top_k=1 -> greedy (equivalent)")
    return DecodingSpec(
        False, max_new_tokens, rp, temperature=float(gen.get("temperature") or 1.0),
        top_k=int(top_k if top_k is not None else 50), top_p=float(gen.get("top_p") or 1.0),
        eos_token_id=eos_list, pad_token_id=gen.get("pad_token_id"),
        source="generation_config: sampling",
    )


def render_prompt(processor, question: str, mode: PromptMode) -> str:
    """The official prompt text: one user turn (image, then question + suffix) through the chat
    template with ``add_generation_prompt=True``; the template adds the default system prompt."""
    return processor.apply_chat_template(grounding_messages(question, mode), tokenize=False, add_generation_prompt=True)


def normalize_rows(rows: Any, required: Sequence[str], *, stage: str) -> list[dict]:
    """A list of row dicts from a ``pyarrow.Table`` or an iterable of dicts, checking columns and
    unique ``question_id``\\ s (raises :class:`InputDataError` naming the row and field).

    >>> normalize_rows([{"question_id": "a", "question": "q"}], ("question_id", "question"), stage="s")[0]["question"]
    'q'
    >>> normalize_rows([{"question_id": "a"}, {"question_id": "a"}], ("question_id",), stage="s")
    Traceback (most recent call last):
    ...
    deepperception.errors.InputDataError: [stage=s row=1 field=question_id] duplicate question_id 'a'
    """
    import pyarrow as pa

    from deepperception.tables import require_columns

    if isinstance(rows, pa.Table):
        require_columns(rows, required, stage=stage)
        rows = rows.to_pylist()
    out: list[dict] = []
    seen: set[str] = set()
    for i, r in enumerate(rows):
        for c in required:
            if c not in r:
                raise InputDataError("missing column", stage=stage, row=i, field=c)
        qid = r["question_id"]
        if not isinstance(qid, str) or not qid:
            raise InputDataError(f"question_id must be a non-empty string, got {qid!r}", stage=stage, row=i, field="question_id")
        if qid in seen:
            raise InputDataError(f"duplicate question_id {qid!r}", stage=stage, row=i, field="question_id")
        seen.add(qid)
        out.append(dict(r))
    return out


def batches(seq: Sequence[dict], n: int) -> Iterator[list[dict]]:
    """Consecutive slices of ``n`` (the last one shorter).

    >>> [len(b) for b in batches([{}] * 5, 2)]
    [2, 2, 1]
    """
    for i in range(0, len(seq), n):
        yield list(seq[i:i + n])


def prepare_batch(rows: Sequence[dict], processor, mode: PromptMode, preresize: bool):
    """``(prompts, images, hws)`` of rows with ``question_id``, ``image``, ``question``: each image
    decoded (errors name the row), pre-resized as the official evaluator does when ``preresize``
    (else converted to RGB), its original ``[height, width]``, and the rendered prompt."""
    from deepperception.images import decode_image

    prompts, images, hws = [], [], []
    for r in rows:
        img = decode_image(r["image"], row=r["question_id"])
        w, h = img.size
        hws.append([int(h), int(w)])
        img = official_fetch_image(img) if preresize else img.convert("RGB")
        images.append(img)
        prompts.append(render_prompt(processor, r["question"], mode))
    return prompts, images, hws


@dataclass
class Generated:
    text: str
    n_prompt_tokens: int
    n_output_tokens: int
    stop: str  # "eos" or "length"


def _eos_ids(model, spec: DecodingSpec) -> list[int]:
    if spec.eos_token_id:
        return list(spec.eos_token_id)
    e = model.generation_config.eos_token_id
    return [e] if isinstance(e, int) else list(e or [])


def generate_batch(
    model,
    processor,
    prompts: Sequence[str],
    images: Sequence[Image.Image],
    spec: DecodingSpec,
    *,
    num_return_sequences: int = 1,
    suppress_image_token: bool = False,
) -> list[Generated]:
    """Generate for a batch of rendered prompts (one image each), left-padded.

    Returns ``len(prompts) * num_return_sequences`` results, grouped by prompt. Greedy results are
    identical to calling this with one prompt at a time (tested). Sampling uses the global torch RNG;
    seed it before calling.
    """
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    tok = processor.tokenizer
    tok.padding_side = "left"
    inputs = processor(text=list(prompts), images=list(images), padding=True, return_tensors="pt")
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    attn = inputs["attention_mask"]
    n_pad = (attn == 0).sum(dim=1)
    seq_len = inputs["input_ids"].shape[1]

    eos = _eos_ids(model, spec)
    pad_id = spec.pad_token_id if spec.pad_token_id is not None else tok.pad_token_id
    gen_kwargs: dict[str, Any] = dict(
        max_new_tokens=spec.max_new_tokens, eos_token_id=eos, pad_token_id=pad_id,
        # Explicit values: generate() fills every None from the checkpoint's generation_config,
        # which would re-enable its repetition penalty / top_k=1.
        repetition_penalty=1.0, num_return_sequences=num_return_sequences,
    )
    if spec.greedy:
        gen_kwargs.update(do_sample=False, temperature=1.0, top_k=50, top_p=1.0)  # inert under greedy
    else:
        gen_kwargs.update(do_sample=True, temperature=spec.temperature, top_k=spec.top_k, top_p=spec.top_p)
    if suppress_image_token:
        gen_kwargs["suppress_tokens"] = [model.config.image_token_id]
    processors = LogitsProcessorList()
    if spec.repetition_penalty != 1.0:
        # Per-row prompt_ignore_length = that row's left-pad count (see module docstring).
        ignore = n_pad.repeat_interleave(num_return_sequences).to(model.device)
        processors.append(RepetitionPenaltyLogitsProcessor(float(spec.repetition_penalty), prompt_ignore_length=ignore))
    with torch.inference_mode():
        out = model.generate(**inputs, generation_config=GenerationConfig(**gen_kwargs), logits_processor=processors)
    new = out[:, seq_len:]
    results: list[Generated] = []
    eos_t = torch.tensor(eos, device=new.device)
    for i in range(new.shape[0]):
        row = new[i]
        is_eos = torch.isin(row, eos_t)
        if is_eos.any():
            end = int(is_eos.nonzero()[0, 0]) + 1
            stop = "eos"
        else:
            end = row.shape[0]
            stop = "length"
        ids = row[:end]
        text = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        results.append(Generated(text, int(seq_len - n_pad[i // num_return_sequences]), int(end), stop))
    return results
