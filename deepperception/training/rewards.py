"""GRPO rewards, transcribed from the released reward code (MaxyLee/R1-V @ a84b874, ``grpo.py``).

Pure functions with TRL's reward signature ``(completions, solution, **kwargs) -> list[float]``.
``completions`` may be plain strings or TRL's conversational form
``[[{"role": "assistant", "content": str}], ...]``. Exact logic (official-code.md §4.5):

* :func:`iou_reward`: GT box = ``grpo_bbox(solution)``; prediction = ``grpo_bbox`` of the **first**
  ``<answer>([\\S\\n\\t\\v ]*?)</answer>``; reward = IoU if IoU > threshold (strict; 0.8 released),
  else 0. No answer block -> 0.
* :func:`format_reward`: 0.5 if ``re.match`` (anchored at the start) of
  ``<think>…</think>\\s*<answer>…</answer>``, plus, in ``intended`` mode, 0.5 if the first answer
  holds a ``(x1,y1),(x2,y2)`` box. In ``released`` mode that second half is tested as the released
  code does (``match_type == 1``), which can never be true because its ``get_bbox`` returns
  ``i + 2``; so the released format reward is at most 0.5.

Beyond the released pair, the same contract (TRL signature, first ``<answer>`` block, the released
box parser for both prediction and ground truth) carries dense variants that pay for *every*
improvement instead of only past a threshold: :func:`continuous_iou_reward` (IoU),
:func:`iou_squared_reward` (IoU², sharper near a perfect box) and :func:`giou_reward` (GIoU in
[-1, 1]: still informative when prediction and target do not overlap at all). They score a
prediction as given in the 0-1000 frame, clipped to it; a missing, unparsable, reversed or
zero-area prediction gets the lowest reward (0, or -1 for GIoU).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Literal, Sequence

from pydantic import BaseModel, Field

from deepperception.boxes import box_giou, box_iou, clip_box, is_valid_box
from deepperception.chat import completion_text  # noqa: F401  (the rewards read completions with it)
from deepperception.eval.parsing import grpo_bbox, grpo_first_answer, grpo_format_match

FormatMode = Literal["released", "intended"]
IoUKind = Literal["released", "continuous", "squared", "giou"]


class RewardConfig(BaseModel):
    """Reward settings recorded with a GRPO run."""

    iou_threshold: float = Field(0.8, ge=0.0, le=1.0, description=(
        "IoU reward pays IoU only when IoU > threshold (strict). Released code: 0.8; the released "
        "model was probably trained with 0.85 (run notes); KARL uses 0.65."))
    format_mode: FormatMode = Field("released", description=(
        "'released': structure half only (max 0.5, the box half is dead code); 'intended': +0.5 "
        "when the answer holds a (x1,y1),(x2,y2) box."))
    iou_kind: IoUKind = Field("released", description=(
        "Which box reward goes beside the format reward: 'released' (IoU past iou_threshold, else 0), "
        "'continuous' (IoU), 'squared' (IoU^2) or 'giou' (GIoU in [-1, 1])."))


def iou_score(text: str, solution: str, threshold: float = 0.8) -> float:
    """The released IoU reward for one completion.

    >>> sol = "<answer> <|object_ref_start|>X<|object_ref_end|><|box_start|>(0,0),(100,100)<|box_end|> </answer>"
    >>> iou_score("<think>t</think><answer>(0,0),(100,90)</answer>", sol)
    0.8999999761581421
    >>> iou_score("<think>t</think><answer>(0,0),(100,70)</answer>", sol)   # 0.7 is not > 0.8
    0.0
    >>> iou_score("<answer>(0,0),(100,80)</answer>", sol)   # float32 0.8 > float 0.8, as released (iou.item())
    0.800000011920929
    >>> iou_score("(0,0),(100,100)", sol)                                      # no answer tag
    0.0
    """
    answer = grpo_first_answer(text)
    if answer is None:
        return 0.0
    gt, _ = grpo_bbox(solution)
    pred, _ = grpo_bbox(answer)
    iou = box_iou(gt, pred)
    if math.isnan(iou):
        return 0.0
    return float(iou) if iou > threshold else 0.0


def format_score(text: str, mode: FormatMode = "released") -> float:
    """The format reward for one completion.

    >>> format_score("<think>a</think>\\n<answer>(1,2),(3,4)</answer>")
    0.5
    >>> format_score("<think>a</think>\\n<answer>(1,2),(3,4)</answer>", "intended")
    1.0
    >>> format_score(" <think>a</think><answer>b</answer>")   # anchored: leading space fails
    0.0
    """
    if mode not in ("released", "intended"):
        raise ValueError(f"format mode must be 'released' or 'intended', got {mode!r}")
    # grpo_format_match == bool(GRPO_FORMAT_RE.match(text)), without the regex's quadratic retries.
    score = 0.5 if grpo_format_match(text) else 0.0
    answer = grpo_first_answer(text)
    if answer is not None:
        _, match_type = grpo_bbox(answer)
        # Released: `== 1`, unreachable (get_bbox returns i+2). Intended: the (x1,y1),(x2,y2) regex.
        if match_type == (1 if mode == "released" else 2):
            score += 0.5
    return score


def iou_reward(completions: Sequence[Any], solution: Sequence[str], threshold: float = 0.8, **kwargs: Any) -> list[float]:
    """TRL reward: :func:`iou_score` per completion.

    >>> sol = "<|box_start|>(0,0),(100,100)<|box_end|>"
    >>> iou_reward([[{"role": "assistant", "content": "<answer>(0,0),(100,100)</answer>"}], "x"], [sol, sol])
    [1.0, 0.0]
    """
    return [iou_score(completion_text(c), s, threshold) for c, s in zip(completions, solution, strict=True)]


def format_reward(completions: Sequence[Any], solution: Sequence[str] | None = None, mode: FormatMode = "released",
                  **kwargs: Any) -> list[float]:
    """TRL reward: :func:`format_score` per completion (``solution`` is unused, accepted for the signature).

    >>> format_reward(["<think>a</think><answer>(1,2),(3,4)</answer>", "no"], mode="intended")
    [1.0, 0.0]
    """
    return [format_score(completion_text(c), mode) for c in completions]


def predicted_box(text: str) -> tuple[float, float, float, float] | None:
    """The box of the first ``<answer>`` block (the released parser's: its last hit, and a box whose
    coordinates sum to < 4 read as 0-1 normalised), clipped to the 0-1000 frame, or ``None`` when
    there is no answer, no parsable box, or the box is reversed or has no area.

    >>> predicted_box("<think>t</think><answer>(10,20),(1200,300)</answer>")
    (10.0, 20.0, 1000.0, 300.0)
    >>> predicted_box("<answer>(50,50),(10,10)</answer>") is None, predicted_box("(1,2),(3,4)") is None
    (True, True)
    """
    answer = grpo_first_answer(text)
    if answer is None:
        return None
    box, match_type = grpo_bbox(answer)
    if match_type == 0:
        return None
    box = clip_box(box)
    return box if is_valid_box(box) else None


def _target_box(solution: str) -> tuple[float, float, float, float] | None:
    box, match_type = grpo_bbox(solution)
    return tuple(float(v) for v in box) if match_type and is_valid_box(box) else None  # type: ignore[return-value]


def continuous_iou_score(text: str, solution: str) -> float:
    """IoU of the answer's box with the target's, no threshold; 0 without a usable box.

    >>> sol = "<|box_start|>(0,0),(100,100)<|box_end|>"
    >>> round(continuous_iou_score("<answer>(0,0),(100,50)</answer>", sol), 6), continuous_iou_score("x", sol)
    (0.5, 0.0)
    """
    pred, gt = predicted_box(text), _target_box(solution)
    if pred is None or gt is None:
        return 0.0
    iou = box_iou(pred, gt)
    return 0.0 if math.isnan(iou) else max(0.0, min(1.0, float(iou)))


def iou_squared_score(text: str, solution: str) -> float:
    """:func:`continuous_iou_score` squared.

    >>> round(iou_squared_score("<answer>(0,0),(100,50)</answer>", "<|box_start|>(0,0),(100,100)<|box_end|>"), 6)
    0.25
    """
    return continuous_iou_score(text, solution) ** 2


def giou_score(text: str, solution: str) -> float:
    """GIoU of the answer's box with the target's; -1 without a usable box.

    >>> sol = "<|box_start|>(0,0),(100,100)<|box_end|>"
    >>> giou_score("<answer>(0,0),(100,100)</answer>", sol), giou_score("<answer>none</answer>", sol)
    (1.0, -1.0)
    """
    pred, gt = predicted_box(text), _target_box(solution)
    if pred is None or gt is None:
        return -1.0
    return max(-1.0, min(1.0, box_giou(pred, gt)))


def continuous_iou_reward(completions: Sequence[Any], solution: Sequence[str], **kwargs: Any) -> list[float]:
    """TRL reward: :func:`continuous_iou_score` per completion.

    >>> continuous_iou_reward(["<answer>(0,0),(10,10)</answer>"], ["<|box_start|>(0,0),(10,10)<|box_end|>"])
    [1.0]
    """
    return [continuous_iou_score(completion_text(c), s) for c, s in zip(completions, solution, strict=True)]


def iou_squared_reward(completions: Sequence[Any], solution: Sequence[str], **kwargs: Any) -> list[float]:
    """TRL reward: :func:`iou_squared_score` per completion.

    >>> iou_squared_reward(["nothing"], ["<|box_start|>(0,0),(10,10)<|box_end|>"])
    [0.0]
    """
    return [iou_squared_score(completion_text(c), s) for c, s in zip(completions, solution, strict=True)]


def giou_reward(completions: Sequence[Any], solution: Sequence[str], **kwargs: Any) -> list[float]:
    """TRL reward: :func:`giou_score` per completion.

    >>> giou_reward(["<answer>(0,0),(10,10)</answer>"], ["<|box_start|>(0,0),(10,10)<|box_end|>"])
    [1.0]
    """
    return [giou_score(completion_text(c), s) for c, s in zip(completions, solution, strict=True)]


DENSE_IOU_REWARDS: dict[str, Callable[..., list[float]]] = {
    "continuous": continuous_iou_reward, "squared": iou_squared_reward, "giou": giou_reward}
"""``RewardConfig.iou_kind`` -> its reward function (module-level, so picklable and named for TRL's logs)."""


def make_reward_funcs(cfg: RewardConfig | None = None) -> list[Callable[..., list[float]]]:
    """``[iou_reward, format_reward]`` bound to ``cfg``, named as TRL logs them
    (``rewards/iou_reward/mean``, ``rewards/format_reward/mean``).

    >>> [f.__name__ for f in make_reward_funcs()]
    ['iou_reward', 'format_reward']
    >>> [f.__name__ for f in make_reward_funcs(RewardConfig(iou_kind="giou"))]
    ['giou_reward', 'format_reward']
    """
    cfg = cfg or RewardConfig()
    if cfg.iou_kind == "released":
        iou = partial(iou_reward, threshold=cfg.iou_threshold)
        iou.__name__ = "iou_reward"  # type: ignore[attr-defined]
    else:
        iou = DENSE_IOU_REWARDS[cfg.iou_kind]
    fmt = partial(format_reward, mode=cfg.format_mode)
    fmt.__name__ = "format_reward"  # type: ignore[attr-defined]
    return [iou, fmt]
