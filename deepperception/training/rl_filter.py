"""RL data filtering between the stages (paper §data engine step 5, official-code.md §4.1).

The stage-1 model answers each GRPO item ``n_samples`` times (sampled); an answer is *correct* when
the official KVG-Bench parser (:func:`~deepperception.eval.parsing.official_bbox`, run over the
whole output) gives a box with IoU >= 0.5 against the GT box in ``solution``. Items answered
correctly ``keep_min..keep_max`` times are kept (paper: 1-3 of 4; always-right and never-right items
carry no GRPO signal, since every group advantage would be 0).

``on_empty`` is the explicit, recorded policy for when nothing survives (the tiny random-weight model
is never correct): ``"error"`` raises :class:`RLFilterEmptyError`; ``"keep_all"`` returns every item
and says so in ``stats["policy_applied"]``.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from deepperception.boxes import box_iou, parse_gt_box
from deepperception.tables import require_columns
from deepperception.errors import ConfigError, InputDataError, PipelineError
from deepperception.eval.parsing import official_bbox

OnEmpty = Literal["error", "keep_all"]
CORRECT_IOU = 0.5


class RLFilterEmptyError(PipelineError):
    """No item survived RL filtering and ``on_empty="error"``."""


def answer_iou(text: str, gt: tuple[float, float, float, float] | list[float]) -> float:
    """IoU of the official parser's box in ``text`` against ``gt`` (NaN -> 0).

    >>> answer_iou("<answer>(0,0),(10,10)</answer>", (0, 0, 10, 10))
    1.0
    >>> answer_iou("no box", (0, 0, 10, 10))
    0.0
    """
    pred, _ = official_bbox(text)
    iou = box_iou(pred, gt)
    return 0.0 if math.isnan(iou) else max(0.0, float(iou))


def count_correct(samples: list[str], gt, threshold: float = CORRECT_IOU) -> tuple[int, list[float]]:
    """``(number of samples with IoU >= threshold, their IoUs)``.

    >>> count_correct(["<answer>(0,0),(10,10)</answer>", "x", "(0,0),(10,5)"], (0, 0, 10, 10))
    (2, [1.0, 0.0, 0.5])
    """
    ious = [answer_iou(s, gt) for s in samples]
    return sum(i >= threshold for i in ious), ious


def rl_filter(
    grpo_rows,
    ckpt_dir: str | Path | None,
    n_samples: int = 4,
    keep_min: int = 1,
    keep_max: int = 3,
    *,
    on_empty: OnEmpty = "error",
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_new_tokens: int = 512,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
    samples: dict[str, list[str]] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Filter GRPO rows (``question_id, image, problem, solution``) by stage-1 success counts.

    Returns ``(kept, stats)``. ``kept`` is the input table restricted to kept items (input order) with
    two added columns: ``n_correct`` (int) and ``sample_ious`` (list<float>, one per sample).
    ``stats``: ``n_in``, ``n_kept``, ``count_histogram`` ({n_correct: items}), ``policy_applied``
    (``"filter"`` or ``"keep_all"``), and every parameter. ``samples`` (qid -> answers) skips sampling
    (precomputed answers); otherwise :func:`~deepperception.eval.inference.sample_answers` runs
    ``ckpt_dir`` with the given decoding.
    """
    import pyarrow as pa

    if not 0 <= keep_min <= keep_max <= n_samples:
        raise ConfigError(f"need 0 <= keep_min ({keep_min}) <= keep_max ({keep_max}) <= n_samples ({n_samples})")
    if on_empty not in ("error", "keep_all"):
        raise ConfigError(f"on_empty must be 'error' or 'keep_all', got {on_empty!r}")
    table = grpo_rows if isinstance(grpo_rows, pa.Table) else pa.Table.from_pylist(list(grpo_rows))
    # No item in, nothing to keep: say so instead of committing an empty GRPO dataset.
    require_columns(table, ("question_id", "solution"), stage="rl_filter", allow_empty=False)
    qids = table.column("question_id").to_pylist()
    sols = table.column("solution").to_pylist()
    gts = []
    for q, s in zip(qids, sols):
        gt = parse_gt_box(s or "")
        if gt is None:
            raise InputDataError("solution has no <|box_start|>(x1,y1),(x2,y2)<|box_end|>", stage="rl_filter", row=q,
                                 field="solution")
        gts.append(gt)
    if samples is None:
        if ckpt_dir is None:
            raise ConfigError("rl_filter needs ckpt_dir or precomputed samples")
        from deepperception.eval.inference import sample_answers
        samples = sample_answers(table, ckpt_dir, n=n_samples, temperature=temperature, max_new_tokens=max_new_tokens,
                                 seed=seed, batch_size=batch_size, top_k=top_k, top_p=top_p, device=device)
    counts, ious_all = [], []
    for q, gt in zip(qids, gts):
        got = samples.get(q)
        if got is None or len(got) != n_samples:
            raise InputDataError(f"expected {n_samples} samples, got {0 if got is None else len(got)}",
                                 stage="rl_filter", row=q)
        c, ious = count_correct(got, gt)
        counts.append(c)
        ious_all.append(ious)
    keep = [keep_min <= c <= keep_max for c in counts]
    policy = "filter"
    if not any(keep):
        if on_empty == "error":
            raise RLFilterEmptyError(
                f"no item has {keep_min}..{keep_max} of {n_samples} correct (histogram {dict(Counter(counts))}); "
                "pass on_empty='keep_all' to train on every item anyway")
        keep = [True] * len(counts)
        policy = "keep_all"
    annotated = table.append_column("n_correct", pa.array(counts, pa.int32())).append_column(
        "sample_ious", pa.array(ious_all, pa.list_(pa.float32())))
    kept = annotated.filter(pa.array(keep))
    stats = {
        "n_in": table.num_rows, "n_kept": kept.num_rows, "count_histogram": {int(k): v for k, v in sorted(Counter(counts).items())},
        "policy_applied": policy, "on_empty": on_empty, "n_samples": n_samples, "keep_min": keep_min,
        "keep_max": keep_max, "correct_iou": CORRECT_IOU, "temperature": temperature, "top_k": top_k, "top_p": top_p,
        "max_new_tokens": max_new_tokens, "seed": seed, "checkpoint": None if ckpt_dir is None else str(ckpt_dir),
    }
    return kept, stats
