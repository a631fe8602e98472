"""Strict answer parsing: the box the model *committed to*, or a reason why there is none.

The official scorer is lenient (a box anywhere in ``<think>`` counts, ``[0.3, 0.2, ...]`` is
rescaled, a failed float cast still scores as ``[0,0,0,0]``). Strict scoring answers a
different question: did the model state one valid box as its final answer?

Rules (in the order they are checked; the first failing rule gives the reason code):

1. ``no_answer_tag``: there is no ``<answer>`` at all.
2. ``unclosed_answer_tag``: an ``<answer>`` is opened but never closed (typically a generation
   cut off by ``max_new_tokens``).
3. ``multiple_answer_tags``: more than one ``<answer>`` or ``</answer>`` tag. The model must commit
   to exactly one final answer; the GRPO reward would silently take the first and a reader the
   last, so neither is "the" answer.
4. Inside the single block, boxes are found in three unambiguous spellings of four numbers:
   ``(x1,y1),(x2,y2)`` (Qwen2-VL, what the model is trained on), ``[x1, y1, x2, y2]`` and
   ``(x1, y1, x2, y2)``; whitespace is free and numbers may be signed decimals.
   ``no_box``: none of those and nothing box-like; ``malformed``: something box-like
   (a bracketed, comma-separated group such as ``(x1, y1) to (x2, y2)``, ``(499, 501) - (999, 978)``
   or ``[a, b]``) but no complete box; ``multiple_boxes``: two *different* boxes (repeating the
   same box is fine).
5. ``out_of_range``: a coordinate outside [0, 1000] or not finite. Numbers are never rescaled,
   so a 0-1 normalized box is read literally (and is usually ``degenerate`` or tiny).
6. ``normalized``: all four numbers lie in [0, 1] and at least one has a fraction, i.e. a 0-1
   normalized box. The Qwen2-VL frame is 0-1000 integers; the official scorer silently rescales
   such boxes by 1000 (sum < 4), strict scoring does not guess the scale.
7. ``degenerate``: ``x1 >= x2`` or ``y1 >= y2``.

Otherwise the reason is ``ok`` and the box is returned.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

OK: Final = "ok"
NO_ANSWER_TAG: Final = "no_answer_tag"
UNCLOSED_ANSWER_TAG: Final = "unclosed_answer_tag"
MULTIPLE_ANSWER_TAGS: Final = "multiple_answer_tags"
NO_BOX: Final = "no_box"
MALFORMED: Final = "malformed"
MULTIPLE_BOXES: Final = "multiple_boxes"
OUT_OF_RANGE: Final = "out_of_range"
NORMALIZED: Final = "normalized"
DEGENERATE: Final = "degenerate"
NO_OUTPUT: Final = "no_output"  # used by the scorer for questions without any output

REASONS: Final[tuple[str, ...]] = (
    OK, NO_OUTPUT, NO_ANSWER_TAG, UNCLOSED_ANSWER_TAG, MULTIPLE_ANSWER_TAGS,
    NO_BOX, MALFORMED, MULTIPLE_BOXES, OUT_OF_RANGE, NORMALIZED, DEGENERATE,
)

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_N = rf"\s*({_NUM})\s*"
_BOX_RE = re.compile(
    rf"\({_N},{_N}\)\s*,\s*\({_N},{_N}\)"  # (x1,y1),(x2,y2)
    rf"|\[{_N},{_N},{_N},{_N}\]"  # [x1, y1, x2, y2]
    rf"|\({_N},{_N},{_N},{_N}\)"  # (x1, y1, x2, y2)
)
# Box-like leftovers: a bracketed group with a comma in it, e.g. "(x1, y1)", "[a, b]". Only
# whether it occurs is used. The first segment excludes "," so a failed attempt does not retry
# every comma (`[(\[][^()\[\]]*,[^()\[\]]*[)\]]` is quadratic in the commas of an unclosed
# group: 2 s on "(" + "a," * 10_000); it occurs in exactly the same texts.
_BOXLIKE_RE = re.compile(r"[(\[][^()\[\],]*,[^()\[\]]*[)\]]")
_OPEN = "<answer>"
_CLOSE = "</answer>"

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class StrictParse:
    """``box`` is set iff ``reason == "ok"``."""

    box: Box | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.reason == OK


def _boxes_in(answer: str) -> list[Box]:
    out: list[Box] = []
    for m in _BOX_RE.finditer(answer):
        nums = [g for g in m.groups() if g is not None]
        out.append(tuple(float(v) for v in nums))  # type: ignore[arg-type]
    return out


def strict_parse(text: str) -> StrictParse:
    """Parse the committed box, or say why there is none.

    >>> strict_parse("<think>hmm</think><answer>A(10,20),(300,400)</answer>")
    StrictParse(box=(10.0, 20.0, 300.0, 400.0), reason='ok')
    >>> strict_parse("<think>(10,20),(300,400)</think><answer>the second one</answer>").reason
    'no_box'
    >>> strict_parse("<answer>\\n[10, 20, 300, 400] \\n</answer>").box
    (10.0, 20.0, 300.0, 400.0)
    >>> strict_parse("<answer>(x1, y1) to (x2, y2)</answer>").reason
    'malformed'
    >>> strict_parse("<answer>(438,471,800,762)</answer>").box
    (438.0, 471.0, 800.0, 762.0)
    >>> strict_parse("<answer>[0.3, 0.2, 0.6, 0.4]</answer>").reason
    'normalized'
    >>> strict_parse("<answer>(300,200),(300,400)</answer>").reason
    'degenerate'
    >>> strict_parse("<answer>(10,20),(300,1200)</answer>").reason
    'out_of_range'
    >>> strict_parse("<answer>(1,2),(3,4)</answer><answer>(1,2),(3,4)</answer>").reason
    'multiple_answer_tags'
    >>> strict_parse("<think>long reasoning cut off <answer>(1,2),(3").reason
    'unclosed_answer_tag'
    """
    n_open = text.count(_OPEN)
    n_close = text.count(_CLOSE)
    if n_open == 0 and n_close == 0:
        return StrictParse(None, NO_ANSWER_TAG)
    if n_open > 1 or n_close > 1:
        return StrictParse(None, MULTIPLE_ANSWER_TAGS)
    start = text.find(_OPEN)
    end = text.find(_CLOSE)
    if n_open == 0 or n_close == 0 or end < start:
        # "</answer>" without an opening tag is a broken block as well.
        return StrictParse(None, UNCLOSED_ANSWER_TAG if n_open == 1 and n_close == 0 else NO_ANSWER_TAG)
    answer = text[start + len(_OPEN) : end]
    boxes = _boxes_in(answer)
    if not boxes:
        return StrictParse(None, MALFORMED if _BOXLIKE_RE.search(answer) else NO_BOX)
    if any(b != boxes[0] for b in boxes[1:]):
        return StrictParse(None, MULTIPLE_BOXES)
    box = boxes[0]
    if not all(math.isfinite(v) and 0.0 <= v <= 1000.0 for v in box):
        return StrictParse(None, OUT_OF_RANGE)
    if all(v <= 1.0 for v in box) and any(v != int(v) for v in box):
        return StrictParse(None, NORMALIZED)
    x1, y1, x2, y2 = box
    if not (x1 < x2 and y1 < y2):
        return StrictParse(None, DEGENERATE)
    return StrictParse(box, OK)
