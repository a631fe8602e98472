"""The linear-time box parsers give hit-for-hit the same result as the official regexes.

The official patterns (``OFFICIAL_BBOX_PATTERNS``) backtrack super-linearly, so they are only run
here on short inputs where they finish quickly; there the property tests demand equality of every
``finditer`` hit (match span, the four groups, the span of groups 1-4) and of the parsed box,
pattern number and span. Long adversarial inputs (which would hang the official ``re``) are then
checked against results known by construction.
"""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deepperception.eval import parsing
from deepperception.eval import strict as strict_mod
from deepperception.eval.parsing import (
    GRPO_ANSWER_RE,
    GRPO_FORMAT_RE,
    OFFICIAL_BBOX_PATTERNS,
    answer_spans,
    grpo_bbox,
    grpo_first_answer,
    grpo_format_match,
    official_bbox,
    official_parse,
)

# Tokens the official patterns care about, plus near-misses: Unicode decimal digits ('٣' is
# Arabic-Indic 3: `\d` matches it and float() accepts it), whitespace that `.` does match but
# the GRPO answer class `[\S\n\t\v ]` does not ('\r', '\xa0'), NaN spellings for float().
TOKENS = [
    "(", ")", "[", "]", ",", ", ", " ", "  ", "0", "1", "7", "12", "345", "٣", "٠", "𝟗", ".", "x", "-",
    "\n", "\r", "\xa0", "\t", "<", ">", "/", "a", "nan", "NaN", "inf",
    "<answer>", "</answer>", "<think>", "</think>", "So the answer is", "answer",
    "),(", "(1,2)", ", 3)", "(1, 2)", "[1, ", "x1", "(x", "0.5",
]
CHARS = "()[], .x0123456789٣\n<>/a-"

# Group contents: numbers and junk, including the terminators of the lazy groups (",", ", ",
# ")", "\n", ...) so that a group's first terminator is often not the one a naive parser expects.
_num = st.one_of(st.sampled_from(["", "0", "1", "12", "345", "٣", "0.5", "1.", "x9", "nan", "a", " 7"]),
                 st.text(alphabet="0123456789", max_size=4),
                 st.sampled_from(["1,2", "a,b", ",", ", ", "(", ")", "[", "]", "\n", "),(", "1)", "(2", " \n3"]))
_BOX_TEMPLATES = [
    "({},{}),({},{})", "({}, {}) - ({}, {})", "[{}, {}, {}, {}]", "({}, {}, {}, {})", "({}, {})\n({}, {})",
    "({}, {})\n\n({}, {})", "<answer>({},{}),({},{})</answer>", "So the answer is ({},{}),({},{})",
    "<|box_start|>({},{}),({},{})<|box_end|>",
]
_box = st.builds(lambda t, a, b, c, d: t.format(a, b, c, d), st.sampled_from(_BOX_TEMPLATES), _num, _num, _num, _num)

_qwen = st.builds("({},{}),({},{})".format, _num, _num, _num, _num)  # the shape #1-#3 look for
_piece = st.one_of(_box, st.sampled_from(TOKENS), _num, _qwen)
# An answer-like frame around a few boxes/near-boxes, so the prefixes (#1, #2), the "</answer>"
# tail (#1) and line breaks between the parts (#4, #6, #8) are exercised together.
_framed = st.builds(
    lambda pre, parts, seps, post: pre + "".join(p + s for p, s in zip(parts, seps)) + post,
    st.sampled_from(["", "<answer>", "So the answer is ", "<think>", "x<answer>\n", "(1,"]),
    st.lists(st.one_of(_qwen, _piece), min_size=1, max_size=4),
    st.lists(st.sampled_from(["", " ", ",", "\n", " - ", ") (", "), (", "\n\n"]), min_size=4, max_size=4),
    st.sampled_from(["", "</answer>", " </answer>", "\n</answer>", ")</answer>", "]"]),
)


def _edit(text: str, edits: list[tuple[float, int, str]]) -> str:
    """Apply (where in [0, 1), op, token) edits: 0 insert, 1 delete one char, 2 replace one char."""
    for where, op, tok in edits:
        i = int(where * (len(text) + 1))
        text = text[:i] + (tok if op != 1 else "") + text[i + (op != 0):]
    return text


# Valid matches with a few random edits: the near misses where lazy groups and line skips differ.
_edited = st.builds(
    _edit,
    st.one_of(_framed, st.lists(_box, min_size=1, max_size=3).map(" ".join)),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 2), st.sampled_from(TOKENS + list(CHARS))),
             max_size=4),
)
# Several Qwen-style boxes after an answer prefix: which box #1/#2 take depends on which "),("
# is followed by "</answer>", and on where the first viable "(x1," is.
_digits = st.text(alphabet="0123456789٣", max_size=3)
_answer_like = st.builds(
    lambda pre, boxes, sep, post: pre + sep.join(boxes) + post,
    st.sampled_from(["<answer>", "So the answer is ", "<answer>x(", "So the answer is (a, "]),
    st.lists(st.one_of(st.builds("({},{}),({},{})".format, _digits, _digits, _digits, _digits), _qwen),
             min_size=1, max_size=3),
    st.sampled_from(["", " ", "\n", ",", " and ", "</answer>"]),
    st.sampled_from(["</answer>", " </answer>", ""]),
)
texts = st.one_of(
    _answer_like,
    _edited,
    _framed,
    st.text(alphabet=CHARS, max_size=70),
    st.lists(st.sampled_from(TOKENS), max_size=30).map("".join),
    st.lists(_piece, max_size=10).map("".join),
)

# 500 examples per test (per pattern for the finditer test) keep the file near 30 s on a shared
# CPU; DP_PROPERTY_EXAMPLES=5000 runs the deep version (see benchmarks/RESULTS.md).
PROPERTY = settings(max_examples=int(os.environ.get("DP_PROPERTY_EXAMPLES", "500")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def official_hits(k: int, text: str):
    return [(m.span(), m.groups(), (m.start(1), m.end(4))) for m in OFFICIAL_BBOX_PATTERNS[k].finditer(text)]


def linear_hits(k: int, text: str):
    out = []
    for m in parsing._LINEAR_PATTERNS[k].finditer(text):
        if m.start(1) >= 0:
            groups, span = parsing._hit(k, m)
            out.append((m.span(), groups, span))
    return out


def regex_parse(patterns, text):
    """The pre-fix implementation: the official regexes themselves (the oracle on short inputs)."""
    for i, pattern in enumerate(patterns):
        last = None
        for last in pattern.finditer(text):
            pass
        if last is not None:
            return parsing._cast_groups(last.groups()), i, (last.start(1), last.end(4))
    return parsing.NO_MATCH_BOX, -1, None


def same_box(a, b) -> bool:
    # repr: NaN == NaN and -0.0 != 0.0, i.e. bit-level agreement of what float() produced.
    return [repr(float(v)) for v in a] == [repr(float(v)) for v in b]


@pytest.mark.parametrize("k", range(8))
@PROPERTY
@given(text=texts)
@example(text="(12,3.5),(20,30)")
@example(text="(1,2)),(3,4)),(5,6)")
@example(text="),(1,2),(3,4)")
@example(text="(1,(1,(1,2),(3,4)")
@example(text="<answer>(1,(2,3),(4,5)</answer>(6,7),(8,9)</answer>")
@example(text="<answer>(1,2),(3,4)<answer>(5,6),(7,8)</answer>")
@example(text="So the answer is (1, So the answer is (2,3),(4,5)")
@example(text="(1, 2)\n(3, 4)(5, 6)")
@example(text="(1, 2)\n\n(3, 4)")
@example(text="(1, 2)\nx(3, 4)")
@example(text="[a, b, c, d] [, , , ]")
@example(text="[a,, b, c, d, e]")
@example(text="(a, (b), c) (d, e)")
@example(text="(٣,٠),(1,2)")
@example(text="<answer>(1,2),(3,4) (5,6),(7,8)</answer>")
@example(text="(a,b\nc)(d,e)")
def test_every_hit_equals_the_official_finditer(k, text):
    assert linear_hits(k, text) == official_hits(k, text)


@PROPERTY
@given(text=texts)
def test_official_parse_and_grpo_bbox_equal_the_regex_parsers(text):
    box, i, span = regex_parse(OFFICIAL_BBOX_PATTERNS, text)
    m = official_parse(text)
    assert same_box(m.box, box) and m.pattern == i + 1 and m.span == span
    b, p = official_bbox(text)
    assert same_box(b, box) and p == i + 1
    gbox, gi, _ = regex_parse(parsing.GRPO_BBOX_PATTERNS, text)
    b, p = grpo_bbox(text)
    assert same_box(b, gbox) and p == (gi + 2 if gi >= 0 else 0)


@PROPERTY
@given(text=texts)
@example(text="<answer>a\rb</answer><answer>c</answer>")
@example(text="<think>a</think> \xa0\n<answer>b\r</answer></think><answer>c</answer>")
@example(text="<think>a</think><answer>b</think> <answer>c</answer>")
@example(text="<think></think><answer></answer>")
@example(text="<think><think></think>\r<answer></answer>")
def test_answer_block_helpers_equal_their_regexes(text):
    m = GRPO_ANSWER_RE.search(text)
    assert grpo_first_answer(text) == (m.group(1) if m else None)
    assert answer_spans(text) == [m.span(1) for m in parsing.ANSWER_BLOCK_RE.finditer(text)]
    assert grpo_format_match(text) == bool(GRPO_FORMAT_RE.match(text))


@PROPERTY
@given(text=texts)
@example(text="(a,b)")
@example(text="(a,b(c,d)")
@example(text="[a,b,c")
def test_strict_boxlike_equals_the_original_regex(text):
    original = re.compile(r"[(\[][^()\[\]]*,[^()\[\]]*[)\]]")
    assert bool(strict_mod._BOXLIKE_RE.search(text)) == bool(original.search(text))


# --- long adversarial inputs: results known by construction, no official `re` run -----------------

N = 20_000


def _rep(unit: str) -> str:
    return unit * (N // len(unit))


# (text, expected official_bbox, expected grpo_bbox): each prefix makes one or more official
# regexes backtrack for minutes; the suffix (if any) decides the answer.
LONG_CASES = [
    (_rep("(1,"), ([0.0, 0.0, 0.0, 0.0], 0), ([0.0, 0.0, 0.0, 0.0], 0)),                     # #3/#4
    # #4 from the first "(": g2 runs to the first ")" (over all the junk) -> float fails -> zeros
    (_rep("(1,") + "(5, 6) - (7, 8)", ([0.0, 0.0, 0.0, 0.0], 4), ([5.0, 6.0, 7.0, 8.0], 5)),
    # #3 from the first head: y1 = the digits that end at the first "),(", i.e. 6
    (_rep("(1,") + "(5,6),(7,8)", ([1.0, 6.0, 7.0, 8.0], 3), ([1.0, 6.0, 7.0, 8.0], 2)),
    # #3 takes the digits that end at the first "),(": y1 = 9 after all the junk
    ("(1," + _rep("2.(") + "9),(7,8)", ([1.0, 9.0, 7.0, 8.0], 3), ([1.0, 9.0, 7.0, 8.0], 2)),
    (_rep("[a, "), ([0.0, 0.0, 0.0, 0.0], 0), ([0.0, 0.0, 0.0, 0.0], 0)),                    # #6
    # #6 from the first "[": g4 runs to the only "]" -> float fails -> zeros
    (_rep("[a, ") + "[0.1, 0.2, 0.3, 0.4]", ([0.0, 0.0, 0.0, 0.0], 6), ([0.0, 0.0, 0.0, 0.0], 0)),
    ("[a, b" + _rep(" ") + ", c, 0.4]" + "[0.1, 0.2, 0.3, 0.4]", ([100.0, 200.0, 300.0, 400.0], 6),
     ([0.0, 0.0, 0.0, 0.0], 0)),
    # pairs of units are hits of #4 and #8 (float(" 2") == 2.0)
    (_rep("(1, 2)"), ([1.0, 2.0, 1.0, 2.0], 4), ([1.0, 2.0, 1.0, 2.0], 5)),
    # an odd number of units: the last unit has no partner on its line, "(3, 4)" is on the next
    (_rep("(1, 2) ") + "\n(3, 4)", ([1.0, 2.0, 1.0, 2.0], 4), ([1.0, 2.0, 1.0, 2.0], 5)),
    ("(1, 2)" + _rep(" ") + "(3, 4)", ([1.0, 2.0, 3.0, 4.0], 4), ([1.0, 2.0, 3.0, 4.0], 5)),   # #8 across N chars
    (_rep("(1, 2)\n"), ([1.0, 2.0, 1.0, 2.0], 8), ([1.0, 2.0, 1.0, 2.0], 5)),                 # #8 crosses "\n"
    (_rep("(1, 2)\n\n"), ([0.0, 0.0, 0.0, 0.0], 0), ([0.0, 0.0, 0.0, 0.0], 0)),              # but only one
    (_rep("<answer>"), ([0.0, 0.0, 0.0, 0.0], 0), ([0.0, 0.0, 0.0, 0.0], 0)),                 # #1
    (_rep("<answer>(1,") + "(5,6),(7,8)</answer>", ([1.0, 6.0, 7.0, 8.0], 1), ([1.0, 6.0, 7.0, 8.0], 2)),
    (_rep("<answer>(1,") + "(5,6),(7,8) </answer>", ([1.0, 6.0, 7.0, 8.0], 3), ([1.0, 6.0, 7.0, 8.0], 2)),
    (_rep("So the answer is (1,"), ([0.0, 0.0, 0.0, 0.0], 0), ([0.0, 0.0, 0.0, 0.0], 0)),    # #2
    (_rep("So the answer is (1,") + "(5,6),(7,8)", ([1.0, 6.0, 7.0, 8.0], 2), ([1.0, 6.0, 7.0, 8.0], 2)),
    (_rep("[1, 2, 3, "), ([0.0, 0.0, 0.0, 0.0], 0), ([0.0, 0.0, 0.0, 0.0], 0)),             # #5/#6
    (_rep("(1, 2, 3, "), ([0.0, 0.0, 0.0, 0.0], 0), ([0.0, 0.0, 0.0, 0.0], 0)),             # #7/#4
    (_rep("(1,2),(3,4) "), ([1.0, 2.0, 3.0, 4.0], 3), ([1.0, 2.0, 3.0, 4.0], 2)),            # many hits
    (_rep("(1,\n"), ([0.0, 0.0, 0.0, 0.0], 0), ([0.0, 0.0, 0.0, 0.0], 0)),                   # many lines
    ("(" + _rep("1") + ",", ([0.0, 0.0, 0.0, 0.0], 0), ([0.0, 0.0, 0.0, 0.0], 0)),            # one long digit run
]


@pytest.mark.timeout(120)  # a guard only: without the fix this test never ends
@pytest.mark.parametrize("text,official,grpo", LONG_CASES, ids=[f"case{i}" for i in range(len(LONG_CASES))])
def test_long_adversarial_outputs(text, official, grpo):
    assert len(text) >= N - 20
    assert official_bbox(text) == official
    assert grpo_bbox(text) == grpo


@pytest.mark.timeout(120)
def test_long_inputs_with_many_hits_equal_the_official_finditer():
    # Long but not adversarial (every start matches quickly), so the official re finishes on these:
    # thousands of consecutive hits must agree one by one, continuation included.
    for unit in ["(1,2),(3,4) ", "(1,2),(3,4)", "<answer>(1,2),(3,4)</answer>", "[1, 2, 3, 4]", "[a, b, c, d]",
                 "(1, 2, 3, 4)", "(1, 2)\n(3, 4)\n", "So the answer is (1,2),(3,4)", "(1, 2) (3, 4)", "(1, 2)"]:
        text = unit * (N // 4 // len(unit))
        for k in range(8):
            assert linear_hits(k, text) == official_hits(k, text), (unit, k)


@pytest.mark.timeout(120)
def test_answer_helpers_and_strict_on_long_inputs():
    opens = _rep("<answer>")
    assert grpo_first_answer(opens) is None and answer_spans(opens) == []
    assert grpo_first_answer(opens + "x</answer>") == opens[8:] + "x"
    # an excluded whitespace char ends the lazy [\S\n\t\v ]*? scan of every earlier <answer>
    assert grpo_first_answer(opens + "\r<answer>y</answer>") == "y"
    think = "<think>" + _rep("</think><answer>")
    assert not grpo_format_match(think) and grpo_format_match(think + "</answer>")
    assert not grpo_format_match(think + "\r</answer>")
    assert strict_mod.strict_parse("<answer>(" + _rep("a,") + "</answer>").reason == "no_box"
    assert strict_mod.strict_parse("<answer>(" + _rep("a,") + ")</answer>").reason == "malformed"
    # _BOX_RE is linear already (every part is bounded by a separator); pinned on long inputs too
    assert strict_mod.strict_parse("<answer>" + _rep("(1,") + "</answer>").reason == "no_box"
    assert strict_mod.strict_parse("<answer>" + _rep("( 1 , 2 ) , ") + "</answer>").reason == "degenerate"
    assert strict_mod.strict_parse("<answer>" + _rep("[1, 2, 3, ") + "4]</answer>").box == (1.0, 2.0, 3.0, 4.0)
