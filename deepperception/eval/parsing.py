"""Box parsers, transcribed from the released DeepPerception code.

Two parsers live here because they are *different* in the released code and both matter:

* :func:`official_bbox` is ``get_bbox`` from ``deepperception/eval/evaluate.py`` (thunlp/DeepPerception
  @ ae5e8a8), the KVG-Bench scorer. It runs 8 regexes over the *whole* decoded output
  (think + answer), the first regex with any hit wins and its **last** hit is used.
* :func:`grpo_bbox` is ``get_bbox`` from the released GRPO reward (MaxyLee/R1-V @ a84b874,
  ``src/open-r1-multimodal/src/open_r1/grpo.py``): only 4 of those regexes, and it returns
  ``i + 2`` as the match type (see its docstring for why that matters).

Both keep every quirk on purpose (number-for-number parity is the point): groups are cast with
``float(g0.replace('[', '').replace('x', ''))``, ``float(g1)``, ... and *any* exception gives
``[0, 0, 0, 0]`` that is still reported under the pattern that matched; a box whose four numbers
sum to less than 4 is taken as 0-1 normalized and multiplied by 1000. Boxes are never clamped,
reordered or validated (that is :mod:`deepperception.eval.strict`'s job).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# evaluate.py @ ae5e8a8, `bbox_patterns`, verbatim and in order. `.` does not match newlines.
OFFICIAL_BBOX_REGEXES: tuple[str, ...] = (
    r"<answer>.*?\((\d*?),.*?(\d*?)\),\((\d*?),(\d*?)\)</answer>",
    r"So the answer is.*?\((\d*?),.*?(\d*?)\),\((\d*?),(\d*?)\)",
    r"\((\d*?),.*?(\d*?)\),\((\d*?),(\d*?)\)",
    r"\((.*?),.*?(.*?)\).*?\((.*?),.*?(.*?)\)",
    r"\[(\d*?), (\d*?), (\d*?), (\d*?)\]",
    r"\[(.*?), (.*?), (.*?), (.*?)\]",
    r"\((\d*?), (\d*?), (\d*?), (\d*?)\)",
    r"\((\d*?), (\d*?)\)\n?.*?\((\d*?), (\d*?)\)",
)
OFFICIAL_BBOX_PATTERNS: tuple[re.Pattern[str], ...] = tuple(re.compile(r) for r in OFFICIAL_BBOX_REGEXES)

# grpo.py @ a84b874, `bbox_patterns`: official #3, #5, #7, #8 in that order.
GRPO_BBOX_REGEXES: tuple[str, ...] = (
    OFFICIAL_BBOX_REGEXES[2],
    OFFICIAL_BBOX_REGEXES[4],
    OFFICIAL_BBOX_REGEXES[6],
    OFFICIAL_BBOX_REGEXES[7],
)
GRPO_BBOX_PATTERNS: tuple[re.Pattern[str], ...] = tuple(re.compile(r) for r in GRPO_BBOX_REGEXES)
# grpo.py @ a84b874, `answer_pattern`: spans newlines; the reward uses only the FIRST block.
GRPO_ANSWER_RE = re.compile(r"<answer>([\S\n\t\v ]*?)</answer>")
# The think/answer structure check of the released format reward (anchored with re.match).
GRPO_FORMAT_RE = re.compile(r"<think>[\S\n\t\v ]*?</think>\s*<answer>[\S\n\t\v ]*?</answer>")

# Any complete answer block, across newlines; used to say whether a hit lies inside an answer.
ANSWER_BLOCK_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

NO_MATCH_BOX: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class BoxMatch:
    """One parser result.

    ``pattern`` is the 1-based official regex number (0 = nothing matched) for
    :func:`official_parse`; ``span`` is where the four captured groups of the hit that was used
    lie in the text (``None`` when nothing matched), so callers can tell a box stated inside
    ``<answer>`` from one the lenient scorer picked up in ``<think>``.
    """

    box: tuple[float, float, float, float]
    pattern: int
    span: tuple[int, int] | None


def _cast_groups(groups: tuple[str, ...]) -> tuple[float, float, float, float]:
    """The official float cast, quirks included.

    >>> _cast_groups(("x1", "2", "3", "4"))
    (1.0, 2.0, 3.0, 4.0)
    >>> _cast_groups(("[0.3", "0.2", "0.6", "0.4"))
    (300.0, 200.0, 600.0, 400.0)
    >>> _cast_groups(("x1", " y1", "x2", " y2"))
    (0.0, 0.0, 0.0, 0.0)
    """
    try:
        box: tuple[float, ...] = (
            float(groups[0].replace("[", "").replace("x", "")),
            float(groups[1]),
            float(groups[2]),
            float(groups[3]),
        )
    except Exception:  # the official code uses a bare `except:`; ValueError is what occurs
        box = (0.0, 0.0, 0.0, 0.0)
    if sum(box) < 4:
        box = tuple(c * 1000 for c in box)
    return box  # type: ignore[return-value]


def _parse_with(patterns: tuple[re.Pattern[str], ...], text: str) -> tuple[tuple[float, float, float, float], int, tuple[int, int] | None]:
    for i, pattern in enumerate(patterns):
        last = None
        # finditer yields exactly the matches re.findall returns (same scan); we keep the last.
        for last in pattern.finditer(text):
            pass
        if last is not None:
            return _cast_groups(last.groups()), i, (last.start(1), last.end(4))
    return NO_MATCH_BOX, -1, None


def official_parse(text: str) -> BoxMatch:
    """The official KVG-Bench ``get_bbox`` plus where its hit lies.

    >>> official_parse("<think>(1,2),(3,4)</think><answer>none</answer>")
    BoxMatch(box=(1.0, 2.0, 3.0, 4.0), pattern=3, span=(8, 17))
    >>> official_parse("no box")
    BoxMatch(box=(0.0, 0.0, 0.0, 0.0), pattern=0, span=None)
    """
    box, i, span = _parse_with(OFFICIAL_BBOX_PATTERNS, text)
    return BoxMatch(box=box, pattern=i + 1, span=span)


def official_bbox(text: str) -> tuple[list[float], int]:
    """``evaluate.get_bbox``: ``(box, pattern)`` with ``pattern`` 1-8 (1-based regex number) or 0.

    >>> official_bbox("<answer>(10,20),(30,40)</answer>")
    ([10.0, 20.0, 30.0, 40.0], 1)
    >>> official_bbox("<answer>(10,20),(30,40) </answer>")   # trailing space: #1 fails, #3 hits
    ([10.0, 20.0, 30.0, 40.0], 3)
    >>> official_bbox("(438,471,800,762)")                    # no regex accepts this
    ([0.0, 0.0, 0.0, 0.0], 0)
    >>> official_bbox("(12,3.5),(20,30)")                      # y1 group skips junk: y1 = 5
    ([12.0, 5.0, 20.0, 30.0], 3)
    """
    m = official_parse(text)
    return list(m.box), m.pattern


def grpo_bbox(text: str) -> tuple[list[float], int]:
    """The released GRPO reward's ``get_bbox``: 4 regexes, match type ``i + 2`` (0 = no match).

    Quirk kept on purpose: in MaxyLee/R1-V ``e9f96a2`` type 1 meant a Qwen2.5-VL JSON box and
    the ``(x1,y1),(x2,y2)`` regex became type 2; the JSON branch was removed but ``i + 2`` stayed,
    so the format reward's ``match_type == 1`` test can never be true in the released code.
    Callers that want the *intended* "box is in Qwen2-VL format" signal should test ``== 2``.

    >>> grpo_bbox(" <|object_ref_start|>X<|object_ref_end|><|box_start|>(5,106),(496,335)<|box_end|> ")
    ([5.0, 106.0, 496.0, 335.0], 2)
    >>> grpo_bbox("[1, 2, 3, ]")            # empty last group: float('') fails -> zeros, type 3
    ([0.0, 0.0, 0.0, 0.0], 3)
    >>> grpo_bbox("[0.1, 0.2, 0.3, 0.4]")   # no `[.*?]` regex in the reward: no match at all
    ([0.0, 0.0, 0.0, 0.0], 0)
    >>> grpo_bbox("nothing")
    ([0.0, 0.0, 0.0, 0.0], 0)
    """
    box, i, _ = _parse_with(GRPO_BBOX_PATTERNS, text)
    return list(box), (i + 2 if i >= 0 else 0)


def grpo_first_answer(text: str) -> str | None:
    """Content of the first ``<answer>…</answer>`` (newlines allowed), as the GRPO reward takes it.

    >>> grpo_first_answer("<answer>\\n(1,2),(3,4)\\n</answer><answer>x</answer>")
    '\\n(1,2),(3,4)\\n'
    >>> grpo_first_answer("<answer>unclosed") is None
    True
    """
    m = GRPO_ANSWER_RE.search(text)
    return m.group(1) if m else None


def answer_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the *contents* of every complete ``<answer>…</answer>`` block.

    >>> answer_spans("a<answer>xy</answer>b<answer>\\nz</answer>")
    [(9, 11), (29, 31)]
    """
    return [m.span(1) for m in ANSWER_BLOCK_RE.finditer(text)]


def is_inside_answer(span: tuple[int, int], text: str) -> bool:
    """Whether ``span`` lies entirely inside the contents of one answer block.

    >>> t = "<think>(1,2),(3,4)</think><answer>(5,6),(7,8)</answer>"
    >>> is_inside_answer(official_parse(t).span, t)
    True
    >>> t = "<think>(1,2),(3,4)</think><answer>two</answer>"
    >>> is_inside_answer(official_parse(t).span, t)
    False
    """
    start, end = span
    return any(s <= start and end <= e for s, e in answer_spans(text))
