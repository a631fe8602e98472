"""Sampling several answers per question from a checkpoint: the RL filter's sampler
(official-code.md §4.1 step 5: keep GRPO items the stage-1 model solves sometimes).

It lives with the model code, not with the evaluator: it shares the prompt preparation and the
batched generation (:mod:`deepperception.model.generation`) with inference, and nothing of the
evaluator (its parser and scorer stay out of what the sampler runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepperception.errors import ConfigError
from deepperception.prompts import PromptMode


def sample_answers(
    rows: Any,
    ckpt_dir: str | Path,
    n: int = 4,
    temperature: float = 1.0,
    max_new_tokens: int = 512,
    seed: int = 0,
    batch_size: int = 8,
    *,
    prompt_mode: PromptMode = "r1",
    top_k: int = 0,
    top_p: float = 1.0,
    device: str = "cpu",
    dtype: str | None = None,
    official_preresize: bool = False,
    loaded: tuple[Any, Any] | None = None,
) -> dict[str, list[str]]:
    """``n`` sampled answers per question.

    Rows need ``question_id``, ``image`` and either ``problem`` (GRPO schema) or ``question``.
    Sampling ignores the checkpoint's ``top_k=1`` (which would make every sample the greedy one):
    it uses ``temperature`` / ``top_k`` (0 = off) / ``top_p`` as given, no repetition penalty.
    Reproducible for the same ``(rows, seed, batch_size)``: batch ``b`` runs under
    ``torch.manual_seed(seed + b)`` inside a forked RNG, so the caller's RNG is untouched.
    ``official_preresize`` defaults to False: GRPO training feeds images to the processor directly.
    ``loaded`` is an already loaded ``(processor, model)`` of ``ckpt_dir`` (a shard worker keeps one
    per process instead of loading the checkpoint for every shard).
    """
    import torch

    from deepperception.model.generation import DecodingSpec, batches, generate_batch, normalize_rows, prepare_batch
    from deepperception.model.loading import load_model, load_processor

    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    rows = list(rows.to_pylist()) if hasattr(rows, "to_pylist") else list(rows)
    for i, r in enumerate(rows):
        if "question" not in r and "problem" in r:
            r = dict(r, question=r["problem"])
            rows[i] = r
    rows = normalize_rows(rows, ("question_id", "question", "image"), stage="sample_answers")
    if loaded is not None:
        processor, model = loaded
    else:
        ckpt = Path(ckpt_dir)
        processor = load_processor(ckpt)
        model = load_model(ckpt, device=device, dtype=dtype or ("float32" if device == "cpu" else "bfloat16"))
    spec = DecodingSpec(False, max_new_tokens, 1.0, temperature=temperature, top_k=top_k, top_p=top_p,
                        source="sample_answers")
    result: dict[str, list[str]] = {}
    for b, batch in enumerate(batches(rows, batch_size)):
        prompts, images, _ = prepare_batch(batch, processor, prompt_mode, official_preresize)
        with torch.random.fork_rng(devices=[] if device == "cpu" else None):
            torch.manual_seed(seed + b)
            gens = generate_batch(model, processor, prompts, images, spec, num_return_sequences=n,
                                  suppress_image_token=True)
        for j, r in enumerate(batch):
            result[r["question_id"]] = [g.text for g in gens[j * n:(j + 1) * n]]
    return result
