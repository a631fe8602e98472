"""Bounding-box conventions shared by the data engine, rewards and the evaluator.

Qwen2-VL grounds in *relative* integer coordinates on a 0-1000 scale, ordered
``x1, y1, x2, y2`` and written ``(x1,y1),(x2,y2)`` between ``<|box_start|>`` and
``<|box_end|>``. Every box that leaves the data engine is in that frame; pixel boxes
exist only inside image rendering/composition.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

Box = tuple[float, float, float, float]

OBJECT_REF_START = "<|object_ref_start|>"
OBJECT_REF_END = "<|object_ref_end|>"
BOX_START = "<|box_start|>"
BOX_END = "<|box_end|>"

# The official evaluator's ground-truth regex (evaluate.py @ ae5e8a8): integers only, first hit.
GT_BOX_RE = re.compile(r"<\|box_start\|>\(([0-9]*?),([0-9]*?)\),\(([0-9]*?),([0-9]*?)\)<\|box_end\|>")
OBJECT_REF_RE = re.compile(r"<\|object_ref_start\|>(.*?)<\|object_ref_end\|>")


def box_iou(pred: Sequence[float], gt: Sequence[float]) -> float:
    """IoU exactly as ``torchvision.ops.box_iou`` computes it in float32 (no +1, no clamping of
    the boxes themselves; an empty union gives NaN, which callers map to 0).

    >>> round(box_iou([0, 0, 10, 10], [5, 0, 15, 10]), 6)
    0.333333
    >>> box_iou([0, 0, 1, 1], [2, 2, 3, 3])
    0.0
    """
    p = np.asarray(pred, dtype=np.float32)
    g = np.asarray(gt, dtype=np.float32)
    area_p = (p[2] - p[0]) * (p[3] - p[1])
    area_g = (g[2] - g[0]) * (g[3] - g[1])
    w = np.maximum(np.minimum(p[2], g[2]) - np.maximum(p[0], g[0]), np.float32(0))
    h = np.maximum(np.minimum(p[3], g[3]) - np.maximum(p[1], g[1]), np.float32(0))
    inter = w * h
    union = area_p + area_g - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float32(inter) / np.float32(union))


def box_iou_many(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two ``(N, 4)`` arrays, float32 like torchvision; NaN -> 0.

    >>> box_iou_many(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10]])).tolist()
    [1.0]
    """
    p = np.asarray(pred, dtype=np.float32).reshape(-1, 4)
    g = np.asarray(gt, dtype=np.float32).reshape(-1, 4)
    area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    area_g = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    w = np.clip(np.minimum(p[:, 2], g[:, 2]) - np.maximum(p[:, 0], g[:, 0]), 0, None)
    h = np.clip(np.minimum(p[:, 3], g[:, 3]) - np.maximum(p[:, 1], g[:, 1]), 0, None)
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_p + area_g - inter)
    # The official scorer keeps max(0, iou) starting from 0, so NaN and negatives become 0.
    iou = np.where(np.isnan(iou), np.float32(0), iou)
    return np.maximum(iou, np.float32(0)).astype(np.float32)


def pixels_to_qwen(box_px: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box -> Qwen2-VL 0-1000 integer box (rounded, clamped to the frame).

    >>> pixels_to_qwen((50, 25, 100, 50), 200, 100)
    (250, 250, 500, 500)
    """
    x1, y1, x2, y2 = box_px
    def q(v: float, size: int) -> int:
        return int(min(1000, max(0, round(v / size * 1000))))
    return (q(x1, width), q(y1, height), q(x2, width), q(y2, height))


def qwen_to_pixels(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """Qwen2-VL 0-1000 box -> pixel box.

    >>> qwen_to_pixels((250, 250, 500, 500), 200, 100)
    (50.0, 25.0, 100.0, 50.0)
    """
    x1, y1, x2, y2 = box
    return (x1 * width / 1000, y1 * height / 1000, x2 * width / 1000, y2 * height / 1000)


def format_box(box: Sequence[int]) -> str:
    """``(x1,y1),(x2,y2)`` as Qwen2-VL writes it (no spaces).

    >>> format_box((1, 2, 3, 4))
    '(1,2),(3,4)'
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    return f"({x1},{y1}),({x2},{y2})"


def grounding_answer(entity: str, box: Sequence[int]) -> str:
    """The KVG answer string: entity between object-ref tokens, box between box tokens.

    >>> grounding_answer("Falcon A", (1, 2, 3, 4))
    '<|object_ref_start|>Falcon A<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>'
    """
    return f"{OBJECT_REF_START}{entity}{OBJECT_REF_END}{BOX_START}{format_box(box)}{BOX_END}"


def parse_gt_box(answer: str) -> Box | None:
    """Ground truth box from a KVG ``answer`` the way the official evaluator reads it:
    the first ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``, integers only, as floats.

    >>> parse_gt_box("<|box_start|>(5,106),(496,335)<|box_end|>")
    (5.0, 106.0, 496.0, 335.0)
    >>> parse_gt_box("no box") is None
    True
    """
    m = GT_BOX_RE.search(answer)
    if m is None:
        return None
    try:
        return tuple(float(v) for v in m.groups())  # type: ignore[return-value]
    except ValueError:
        return None


def parse_object_ref(text: str) -> str | None:
    """The entity name between object-ref tokens, if any.

    >>> parse_object_ref("Find <|object_ref_start|>Falcon A<|object_ref_end|>")
    'Falcon A'
    """
    m = OBJECT_REF_RE.search(text)
    return m.group(1) if m else None


def is_valid_box(box: Sequence[float]) -> bool:
    """Four finite numbers with ``x1 < x2`` and ``y1 < y2`` (a reversed or zero-area box is not).

    >>> is_valid_box((0, 0, 10, 10)), is_valid_box((10, 0, 0, 10)), is_valid_box((0, 0, 0, 10))
    (True, False, False)
    """
    if len(box) != 4 or not all(np.isfinite(v) for v in box):
        return False
    x1, y1, x2, y2 = box
    return x1 < x2 and y1 < y2


def clip_box(box: Sequence[float], lo: float = 0.0, hi: float = 1000.0) -> tuple[float, float, float, float]:
    """Clamp every coordinate into the ``lo..hi`` frame (Qwen2-VL's 0-1000 by default).

    >>> clip_box((-5, 10, 1200, 990))
    (0.0, 10.0, 1000.0, 990.0)
    """
    x1, y1, x2, y2 = (float(min(hi, max(lo, v))) for v in box)
    return x1, y1, x2, y2


def box_giou(pred: Sequence[float], gt: Sequence[float]) -> float:
    """Generalized IoU (Rezatofighi et al. 2019) of two valid boxes: IoU minus the share of their
    enclosing box that neither covers; in ``[-1, 1]``, equal to IoU when one box encloses the
    other's enclosing box (e.g. identical boxes), and < 0 for disjoint boxes (farther apart = lower).
    Anything else (a non-finite, reversed or zero-area box) is -1, the worst score.

    >>> box_giou((0, 0, 10, 10), (0, 0, 10, 10))
    1.0
    >>> round(box_giou((0, 0, 10, 10), (20, 0, 30, 10)), 4)   # disjoint: enclosing box 30x10, union 200
    -0.3333
    """
    if not (is_valid_box(pred) and is_valid_box(gt)):
        return -1.0  # NaN/inf, reversed or zero-area: no overlap to speak of (was NaN or even 1.0)
    px1, py1, px2, py2 = (float(v) for v in pred)
    gx1, gy1, gx2, gy2 = (float(v) for v in gt)
    area_p = (px2 - px1) * (py2 - py1)
    area_g = (gx2 - gx1) * (gy2 - gy1)
    inter = max(0.0, min(px2, gx2) - max(px1, gx1)) * max(0.0, min(py2, gy2) - max(py1, gy1))
    union = area_p + area_g - inter
    enclose = (max(px2, gx2) - min(px1, gx1)) * (max(py2, gy2) - min(py1, gy1))
    if union <= 0 or enclose <= 0:
        return -1.0
    g = inter / union - (enclose - union) / enclose
    return g if math.isfinite(g) else -1.0  # huge finite boxes overflow to inf - inf
