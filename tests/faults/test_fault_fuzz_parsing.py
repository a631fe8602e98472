"""Hostile model output, fuzzed: every public parse / box / reward entry point on arbitrary input
gives a defined result (the documented type and range), never an exception, in bounded time.

This is the "never raises" layer; parity with the official regexes is tests/eval/test_parsing_bounded.py
and the dense rewards' properties are tests/training/test_dense_rewards.py. Each @given body counts its
examples and the ones that raised or returned an undefined result; ``reliability.record`` gets both,
then the test asserts none were lost. Hypothesis' own deadline bounds the time of every example.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from deepperception import boxes as B
from deepperception.eval import parsing as P
from deepperception.eval import strict as S
from deepperception.eval.scoring import score
from deepperception.training import rewards as R

EXAMPLES = 150
DEADLINE_MS = 500
FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE_MS, suppress_health_check=list(HealthCheck), derandomize=False)

TOKENS = ["<answer>", "</answer>", "<think>", "</think>", "<|box_start|>", "<|box_end|>", "<|object_ref_start|>",
          "<|object_ref_end|>", "(", ")", "[", "]", ",", ", ", "),(", " ", "\n", "\r", "\x00", "\ufeff", "٣", "𝟗",
          "nan", "inf", "-", ".", "1e999", "9" * 400, "0", "1", "100", "1000", "-5", "0.5"]
hostile_text = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(TOKENS), max_size=60).map("".join),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=5)), max_size=40).map("".join),
)
GOOD_SOL = "<answer> <|object_ref_start|>X<|object_ref_end|><|box_start|>(100,100),(400,400)<|box_end|> </answer>"
solution_text = st.one_of(st.just(GOOD_SOL), hostile_text)
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                   st.sampled_from([0.0, -0.0, 1e38, 3.5e38, -1e39, 1e308, float("nan"), float("inf")]))
box = st.tuples(number, number, number, number)
STRICT_REASONS = {S.OK, S.NO_ANSWER_TAG, S.UNCLOSED_ANSWER_TAG, S.MULTIPLE_ANSWER_TAGS, S.NO_BOX, S.MALFORMED,
                  S.MULTIPLE_BOXES, "normalized", "degenerate", "out_of_range"}


class Tally:
    """Examples run, and the ones that raised or returned something undefined (with the first few)."""

    def __init__(self) -> None:
        self.n, self.bad = 0, []

    def check(self, fn, *args, ok):
        self.n += 1
        try:
            out = fn(*args)
        except Exception as exc:  # the finding: any exception at all
            self.bad.append(f"{getattr(fn, '__name__', fn)}{tuple(str(a)[:60] for a in args)} raised {exc!r}")
            return None
        if not ok(out):
            self.bad.append(f"{getattr(fn, '__name__', fn)}{tuple(str(a)[:60] for a in args)} -> {out!r}")
        return out


def _finite_in(lo, hi):
    return lambda x: isinstance(x, float) and math.isfinite(x) and lo <= x <= hi


def _bbox_result(out):
    box_, kind = out
    return len(box_) == 4 and all(isinstance(v, float) for v in box_) and isinstance(kind, int) and kind >= 0


def _strict_result(out):
    ok_box = out.box is not None and len(out.box) == 4 and all(math.isfinite(v) for v in out.box)
    return out.reason in STRICT_REASONS and (ok_box if out.reason == S.OK else out.box is None)


def _finish(reliability, tally, what, started):
    reliability.record(lost=len(tally.bad), injected=tally.n, recover_s=time.monotonic() - started,
                       detail=f"{tally.n} hypothesis examples through {what}; undefined: {tally.bad[:3]}")
    assert tally.n >= EXAMPLES
    assert not tally.bad, tally.bad[:5]


@pytest.mark.fault("fuzz.answer_parser")
def test_answer_parsers_never_raise(reliability, fault_rng):
    tally, t0 = Tally(), time.monotonic()

    @FUZZ
    @seed(fault_rng.randrange(2**32))
    @given(hostile_text)
    def body(text):
        tally.check(P.official_bbox, text, ok=_bbox_result)
        tally.check(P.grpo_bbox, text, ok=_bbox_result)
        tally.check(P.grpo_first_answer, text, ok=lambda a: a is None or isinstance(a, str))
        tally.check(P.grpo_format_match, text, ok=lambda b: isinstance(b, bool))
        spans = tally.check(P.answer_spans, text, ok=lambda sp: all(0 <= a <= b <= len(text) for a, b in sp))
        tally.check(P.is_inside_answer, (0, min(3, len(text))), text, ok=lambda b: isinstance(b, bool))
        tally.check(S.strict_parse, text, ok=_strict_result)
        tally.check(B.parse_gt_box, text, ok=lambda b: b is None or len(b) == 4)
        tally.check(B.parse_object_ref, text, ok=lambda r: r is None or isinstance(r, str))
        del spans

    body()
    _finish(reliability, tally, "official/grpo/strict parsers, answer spans, gt box and object ref", t0)


@pytest.mark.fault("fuzz.boxes_iou")
def test_boxes_and_iou_on_arbitrary_numbers(reliability, fault_rng):
    tally, t0 = Tally(), time.monotonic()

    @FUZZ
    @seed(fault_rng.randrange(2**32))
    @given(box, box, st.integers(-5, 5000), st.integers(-5, 5000))
    def body(a, b, w, h):
        # box_iou mirrors torchvision: a float, NaN allowed (an empty union; callers map it to 0).
        with np.errstate(all="ignore"):
            tally.check(B.box_iou, a, b, ok=lambda x: isinstance(x, float))
            tally.check(B.box_iou_many, np.array([a, b]), np.array([b, a]),
                        ok=lambda arr: arr.shape == (2,) and bool(np.all((arr >= 0) & (arr <= 1))))
        tally.check(B.box_giou, a, b, ok=_finite_in(-1.0, 1.0))
        tally.check(B.is_valid_box, a, ok=lambda v: isinstance(v, bool))
        clipped = tally.check(B.clip_box, a, ok=lambda c: all(0.0 <= v <= 1000.0 or math.isnan(v) for v in c))
        if clipped is not None and all(math.isfinite(v) for v in a) and w > 0 and h > 0:
            tally.check(B.pixels_to_qwen, clipped, w, h, ok=lambda q: all(0 <= v <= 1000 for v in q))
            tally.check(B.qwen_to_pixels, clipped, w, h, ok=lambda q: all(math.isfinite(v) for v in q))

    body()
    _finish(reliability, tally, "box_iou, box_iou_many, box_giou, is_valid_box, clip_box, pixel<->qwen", t0)


def _conversational(text):
    return [{"role": "assistant", "content": text}]


@pytest.mark.fault("fuzz.rewards")
def test_reward_functions_on_arbitrary_completions(reliability, fault_rng):
    tally, t0 = Tally(), time.monotonic()
    funcs = R.make_reward_funcs(R.RewardConfig(format_mode="intended"))
    dense = list(R.DENSE_IOU_REWARDS.values())

    @FUZZ
    @seed(fault_rng.randrange(2**32))
    @given(hostile_text, solution_text, st.floats(0.0, 1.0), st.booleans())
    def body(text, sol, threshold, chat):
        completion = _conversational(text) if chat else text
        tally.check(R.iou_score, text, sol, threshold, ok=lambda x: x == 0.0 or _finite_in(threshold, 1.0)(x))
        tally.check(R.format_score, text, "released", ok=lambda x: x in (0.0, 0.5))
        tally.check(R.format_score, text, "intended", ok=lambda x: x in (0.0, 0.5, 1.0))
        tally.check(R.continuous_iou_score, text, sol, ok=_finite_in(0.0, 1.0))
        tally.check(R.iou_squared_score, text, sol, ok=_finite_in(0.0, 1.0))
        tally.check(R.giou_score, text, sol, ok=_finite_in(-1.0, 1.0))
        tally.check(R.predicted_box, text,
                    ok=lambda b: b is None or (B.is_valid_box(b) and all(0 <= v <= 1000 for v in b)))
        for fn in [R.iou_reward, *funcs, *dense]:
            tally.check(fn, [completion], [sol],
                        ok=lambda xs: len(xs) == 1 and isinstance(xs[0], float) and -1.0 <= xs[0] <= 1.0)

    body()
    _finish(reliability, tally, "iou/format/continuous/squared/giou scores and TRL reward funcs", t0)


# ---- oversized model outputs ------------------------------------------------------------------
BOUND_S = 8.0


def _oversized(kind: str, rng) -> str:
    if kind == "boxes":  # 1e6 boxes in one answer
        return "<think>t</think><answer>" + "(1,2),(3,4)" * 1_000_000 + "</answer>"
    if kind == "unclosed":  # 10 MB of an unclosed group with commas (the quadratic-regex shape)
        return "<answer>(" + "1," * 5_000_000
    filler = "".join(rng.choice("ab ,()[]\n0123456789") for _ in range(1000))
    return "<think>" + filler * 10_000 + "</think><answer>(10,10),(500,500)</answer>"  # 10 MB of reasoning


@pytest.mark.fault("fuzz.oversized_outputs")
def test_oversized_outputs_parse_score_and_reward_in_bounded_time(reliability, fault_rng):
    kinds = ["boxes", "unclosed", "reasoning"]
    fault_rng.shuffle(kinds)
    sol = "<|box_start|>(10,10),(500,500)<|box_end|>"
    bench = pd.DataFrame({"question_id": ["q0", "q1"], "category": ["aircraft", "car"],
                          "answer": [f"<|object_ref_start|>X<|object_ref_end|>{sol}"] * 2})
    tally, slow, t0 = Tally(), [], time.monotonic()
    for kind in kinds:
        text = _oversized(kind, fault_rng)
        assert len(text) >= 10_000_000
        for name, call, ok in [
            ("official_bbox", lambda: P.official_bbox(text), _bbox_result),
            ("grpo_bbox", lambda: P.grpo_bbox(text), _bbox_result),
            ("strict_parse", lambda: S.strict_parse(text), _strict_result),
            ("rewards", lambda: [f([text], [sol])[0] for f in [R.iou_reward, R.format_reward,
                                                                 *R.DENSE_IOU_REWARDS.values()]],
             lambda xs: all(math.isfinite(x) and -1 <= x <= 1 for x in xs)),
            ("score", lambda: score(bench, {"q0": text, "q1": "<answer>(10,10),(500,500)</answer>"},
                                     n_resamples=10, empty_groups="omit"),
             lambda r: len(r.predictions) == 2 and bool(r.predictions["iou"].between(0, 1).all())),
        ]:
            start = time.monotonic()
            tally.check(call, ok=ok)
            took = time.monotonic() - start
            if took > BOUND_S:
                slow.append(f"{name} on {kind}: {took:.1f}s")
    reliability.record(lost=len(tally.bad) + len(slow), injected=len(kinds), recover_s=time.monotonic() - t0,
                       detail=f"10 MB outputs ({', '.join(kinds)}) through parsers, rewards and score(); "
                              f"undefined: {tally.bad[:2]}; over {BOUND_S}s: {slow}")
    assert not tally.bad, tally.bad
    assert not slow, slow
