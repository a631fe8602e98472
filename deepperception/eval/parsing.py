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

The official regexes are kept (``OFFICIAL_BBOX_REGEXES``, ``GRPO_BBOX_REGEXES``) as the
definition, but not run: they backtrack for seconds to hours on some outputs (``"(1," * 84``
takes a second under #4). The parsers run linear-time equivalents that give the same hits
(same box, pattern number and span); see the comment above ``_LINEAR_PATTERNS`` for why each is
exact and ``tests/eval/test_parsing_bounded.py`` for the property tests against ``re``.
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

# ---------------------------------------------------------------------------------------------
# Linear-time equivalents of the official regexes.
#
# Python's backtracking `re` needs super-linear (for #4 about quartic) time on some model outputs:
# `"(1," * 84` (250 chars) takes ~1 s under #4, 500 chars ~15 s, 20 KB does not finish. The
# patterns below give the SAME `finditer` hits (start, groups, end) as the official ones, but
# every quantifier is possessive or bounded by a character class that excludes what follows it,
# so one attempt never re-scans text, and an attempt that fails consumes the rest of its line so
# the search never retries the same line from a later start. Why that is exact, pattern by
# pattern (`.` excludes only "\n", so #1-#7 each live on one line):
#
# * #4 ``\((.*?),.*?(.*?)\).*?\((.*?),.*?(.*?)\)`` from a "(" at s: whatever follows each lazy
#   group begins with `.*?`, so taking the earliest next terminator leaves the most room: g1 ends
#   at the first ",", g2 at the first ")", then the first "(", g3 ends at the first ",", g4 at the
#   first ")" (all on the line). If that chain of first occurrences fails from s, the tokens are
#   not a subsequence of the rest of the line, so every later start on the line fails too: the
#   alternative ``\([^\n]*`` then consumes the line and marks a non-hit.
# * #6 ``\[(.*?), (.*?), (.*?), (.*?)\]``: the same with ", " (two chars: a tempered token
#   "any char but \n, not where ', ' starts") and "]".
# * #3 ``\((\d*?),.*?(\d*?)\),\((\d*?),(\d*?)\)``: the head ``\(\d*,`` is deterministic (its
#   comma at k). The tail T = ``\),\(\d*,\d*\)`` is deterministic at each position, and the
#   backtracking order (outer `.*?` shortest first, then g2 shortest first) picks the FIRST position
#   u >= k+1 on the line where T matches, with g2 = the digits that end at u, clipped at k+1
#   (a digit run cannot cross u, whose char is ")"); e.g. "(12,3.5),(20,30)" gives g2 = "5". We
#   capture text[k+1:u] ("region") and take its digit suffix afterwards. No u on the line: every
#   later head on the line (they start after k) fails too, so the line is consumed.
# * #1 / #2: a literal prefix, `.*?`, then #3's body (for #1 with "</answer>" appended to T). The
#   body is tried at the first viable head after the prefix; if it fails there it fails at every
#   later head on the line (same argument), so the prefix's `.*?` is "up to the first viable head".
# * #5 and #7 are kept as they are: each group is a digit run followed by a fixed non-digit
#   separator, so an attempt is deterministic and attempts from different "["/"(" scan disjoint
#   text; linear already (test_parsing_bounded.py::test_long_adversarial_outputs runs them on
#   20 KB of "[1, 2, 3, ", "(1, 2, 3, " and one long digit run).
# * #8 ``\((\d*?), (\d*?)\)\n?.*?\((\d*?), (\d*?)\)``: the head P = ``\(\d*, \d*\)`` is
#   deterministic; the greedy `\n?` takes a newline if one follows (giving it back never helps:
#   `.*?` cannot pass that newline and "(" is not one), then the first P at or after that point on
#   that line. If none, no later head on the line can match either (it would itself be that P),
#   so a plain `finditer` of the possessive form is already linear.
#
# `\d` is used throughout, so digits mean exactly what they mean to `re` (Unicode decimal, e.g.
# "٣", which float() also accepts). tests/eval/test_parsing_bounded.py proves hit-for-hit
# equality with the official patterns by property tests wherever the official `re` finishes.


def _upto(stop: str) -> str:
    """Possessive "characters of this line up to the first place where ``stop`` matches"."""
    return rf"(?:(?!{stop})[^\n])*+"


_HEAD = r"\(\d*,"  # "(x1," of #1-#3
_TAIL3 = r"\),\(\d*,\d*\)"  # "),(x2,y2)" of #2-#3
_BODY3 = r"\((\d*+),(" + _upto(_TAIL3) + r")\),\((\d*+),(\d*+)\)"
_BODY1 = r"\((\d*+),(" + _upto(_TAIL3 + "</answer>") + r")\),\((\d*+),(\d*+)\)</answer>"
_PAIR8 = r"\(\d*, \d*\)"
_COMMA_SP = _upto(", ")

# One compiled pattern per official regex. Where the official regex needs it, a second
# alternative (no groups) consumes the rest of the line after a failed start, so group 1 is
# None for it; see _hits.
_LINEAR_PATTERNS: tuple[re.Pattern[str], ...] = tuple(re.compile(r) for r in (
    r"<answer>" + _upto(_HEAD) + _BODY1 + r"|<answer>[^\n]*",
    r"So the answer is" + _upto(_HEAD) + _BODY3 + r"|So the answer is[^\n]*",
    _BODY3 + r"|\(\d*,[^\n]*",
    r"\(([^,\n]*+),([^)\n]*+)\)[^(\n]*+\(([^,\n]*+),([^)\n]*+)\)|\([^\n]*",
    OFFICIAL_BBOX_REGEXES[4],
    r"\[(" + _COMMA_SP + "), (" + _COMMA_SP + "), (" + _COMMA_SP + r"), ([^\]\n]*+)\]|\[[^\n]*",
    OFFICIAL_BBOX_REGEXES[6],
    r"\((\d*+), (\d*+)\)\n?+" + _upto(_PAIR8) + r"\((\d*+), (\d*+)\)",
))
# Official patterns whose group 2 is captured as the "region" before the tail (see #3 above).
_REGION_G2 = frozenset({0, 1, 2})
_DIGITS = re.compile(r"\d*")
# Which official patterns each parser tries, in order (GRPO_BBOX_PATTERNS = official #3, #5, #7, #8).
_OFFICIAL_INDICES: tuple[int, ...] = tuple(range(len(OFFICIAL_BBOX_REGEXES)))
_GRPO_INDICES: tuple[int, ...] = (2, 4, 6, 7)

Hit = tuple[tuple[str, str, str, str], tuple[int, int]]


def _hit(k: int, m: re.Match[str]) -> Hit:
    """Groups and group span (start of 1, end of 4) of a real hit of official pattern ``k`` (0-based)."""
    g1, g2, g3, g4 = m.group(1, 2, 3, 4)
    if k in _REGION_G2:
        # g2 is the run of digits that ends the region (reversing makes it a prefix match).
        g2 = g2[len(g2) - _DIGITS.match(g2[::-1]).end():]
    return (g1, g2, g3, g4), (m.start(1), m.end(4))


def _hits(k: int, text: str) -> list[Hit]:
    """Every hit ``OFFICIAL_BBOX_PATTERNS[k].finditer(text)`` yields, in linear time.

    >>> _hits(2, "(1,2),(3,4) x (12,3.5),(20,30)")
    [(('1', '2', '3', '4'), (1, 10)), (('12', '5', '20', '30'), (15, 29))]
    >>> _hits(3, "(1," * 10_000)   # the official #4 does not finish on this
    []
    """
    return [_hit(k, m) for m in _LINEAR_PATTERNS[k].finditer(text) if m.start(1) >= 0]


def _last_hit(k: int, text: str) -> Hit | None:
    """The last hit only (the only one ``get_bbox`` uses); groups are post-processed once."""
    last = None
    for m in _LINEAR_PATTERNS[k].finditer(text):
        if m.start(1) >= 0:  # -1: the line-skipping alternative matched, not the official pattern
            last = m
    return None if last is None else _hit(k, last)


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


def _parse_with(indices: tuple[int, ...], text: str) -> tuple[tuple[float, float, float, float], int, tuple[int, int] | None]:
    for i, k in enumerate(indices):
        hit = _last_hit(k, text)
        if hit is not None:
            return _cast_groups(hit[0]), i, hit[1]
    return NO_MATCH_BOX, -1, None


def official_parse(text: str) -> BoxMatch:
    """The official KVG-Bench ``get_bbox`` plus where its hit lies.

    >>> official_parse("<think>(1,2),(3,4)</think><answer>none</answer>")
    BoxMatch(box=(1.0, 2.0, 3.0, 4.0), pattern=3, span=(8, 17))
    >>> official_parse("no box")
    BoxMatch(box=(0.0, 0.0, 0.0, 0.0), pattern=0, span=None)
    """
    box, i, span = _parse_with(_OFFICIAL_INDICES, text)
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
    box, i, _ = _parse_with(_GRPO_INDICES, text)
    return list(box), (i + 2 if i >= 0 else 0)


# The characters GRPO_ANSWER_RE's class [\S\n\t\v ] leaves out (\f, \r, \x1c-\x1f, \x85, \xa0,
# U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000): a lazy scan stops at them.
_NOT_ANSWER_CHAR = re.compile(r"[^\S\n\t\v ]")
_SPACES = re.compile(r"\s*")
_OPEN, _CLOSE = "<answer>", "</answer>"


def grpo_first_answer(text: str) -> str | None:
    """Content of the first ``<answer>…</answer>`` (newlines allowed), as the GRPO reward takes it.

    Same result as ``GRPO_ANSWER_RE.search(text).group(1)``, in linear time: the regex re-scans
    the rest of the text from every ``<answer>`` when no ``</answer>`` follows (0.4 s on 20 KB of
    ``<answer>``). From an ``<answer>`` its lazy body reaches the first ``</answer>`` unless one of
    the excluded whitespace characters comes first, and then no ``<answer>`` before that
    character can match either.

    >>> grpo_first_answer("<answer>\\n(1,2),(3,4)\\n</answer><answer>x</answer>")
    '\\n(1,2),(3,4)\\n'
    >>> grpo_first_answer("<answer>unclosed") is None
    True
    >>> grpo_first_answer("<answer>a\\rb</answer><answer>c</answer>")   # \\r is not in [\\S\\n\\t\\v ]
    'c'
    """
    pos, close = 0, -1
    while True:
        s = text.find(_OPEN, pos)
        if s < 0:
            return None
        body = s + len(_OPEN)
        if close < body:  # the first </answer> after the previous body is still the first after this one
            close = text.find(_CLOSE, body)
            if close < 0:
                return None
        bad = _NOT_ANSWER_CHAR.search(text, body, close)
        if bad is None:
            return text[body:close]
        pos = bad.end()


def grpo_format_match(text: str) -> bool:
    """``bool(GRPO_FORMAT_RE.match(text))`` in linear time (the released format check).

    The regex retries every later ``</think>`` and re-scans for ``</answer>`` each time (0.3 s on
    20 KB). Here each ``</think>`` is a candidate end of the think body (the body may not pass an
    excluded whitespace character); ``\\s*`` can only be followed by ``<answer>`` when it takes the
    whole whitespace run; the answer body must reach the first ``</answer>`` before an excluded
    character. The first excluded character and the first ``</answer>`` at or after a body start
    only move forward as the candidates do, so each is searched for once per region.

    >>> grpo_format_match("<think>a</think>\\n<answer>b</answer>")
    True
    >>> grpo_format_match(" <think>a</think><answer>b</answer>")   # anchored at the start
    False
    >>> grpo_format_match("<think>a</think><answer>b</think> <answer>c</answer>")
    True
    """
    if not text.startswith("<think>"):
        return False
    n = len(text)
    m = _NOT_ANSWER_CHAR.search(text, 7)
    think_limit = m.start() if m else n
    bad = close = -1  # first excluded char / first </answer> at or after the current answer body
    t = text.find("</think>", 7, think_limit)
    while t >= 0:
        a = _SPACES.match(text, t + 8).end()
        if text.startswith(_OPEN, a):
            body = a + len(_OPEN)
            if close < body:
                close = text.find(_CLOSE, body)
                if close < 0:
                    return False  # no later candidate can find a </answer> either
            if bad < body:
                m = _NOT_ANSWER_CHAR.search(text, body)
                bad = m.start() if m else n
            if close < bad:
                return True
        t = text.find("</think>", t + 1, think_limit)
    return False


def answer_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the *contents* of every complete ``<answer>…</answer>`` block.

    Same as ``[m.span(1) for m in ANSWER_BLOCK_RE.finditer(text)]`` (DOTALL, so a block ends at
    the first ``</answer>``), without the regex re-scanning to the end of the text from every
    ``<answer>`` that has no ``</answer>`` after it.

    >>> answer_spans("a<answer>xy</answer>b<answer>\\nz</answer>")
    [(9, 11), (29, 31)]
    """
    out: list[tuple[int, int]] = []
    pos = 0
    while True:
        s = text.find(_OPEN, pos)
        if s < 0:
            return out
        close = text.find(_CLOSE, s + len(_OPEN))
        if close < 0:
            return out  # no later <answer> is closed either
        out.append((s + len(_OPEN), close))
        pos = close + len(_CLOSE)


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
