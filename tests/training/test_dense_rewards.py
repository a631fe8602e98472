"""The dense box rewards (continuous IoU, IoU², GIoU): one class per reward, properties checked
with hypothesis over coordinate frames, reversed / zero-area / out-of-frame boxes, several boxes
in one answer, and unparsable or empty completions."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepperception import boxes
from deepperception.training.rewards import (
    continuous_iou_reward,
    continuous_iou_score,
    giou_reward,
    giou_score,
    iou_reward,
    iou_squared_reward,
    iou_squared_score,
    make_reward_funcs,
    predicted_box,
)

EXAMPLES = int(os.environ.get("DP_PROPERTY_EXAMPLES", "200"))
coord = st.integers(0, 1000)


@st.composite
def valid_box(draw):
    """A valid 0-1000 box. Coordinates summing to < 4 are left out: the released parser reads such
    a box as a 0-1 normalised one and multiplies it by 1000 (official-code.md §2.6), a convention
    these rewards inherit on purpose."""
    x1, x2 = sorted(draw(st.lists(coord, min_size=2, max_size=2, unique=True)))
    y1, y2 = sorted(draw(st.lists(coord, min_size=2, max_size=2, unique=True)))
    if x1 + y1 + x2 + y2 < 4:
        x2, y2 = x2 + 4, y2 + 4
    return (x1, y1, x2, y2)


def answer(box) -> str:
    return f"<think>look</think><answer><|object_ref_start|>E<|object_ref_end|>({box[0]},{box[1]}),({box[2]},{box[3]})</answer>"


def solution(box) -> str:
    return f"<answer> <|object_ref_start|>E<|object_ref_end|><|box_start|>({box[0]},{box[1]}),({box[2]},{box[3]})<|box_end|> </answer>"


BAD_COMPLETIONS = ["", "no answer at all", "<answer></answer>", "<answer>(12, 40)</answer>",
                   "<think>x</think><answer>the second one</answer>", "(1,2),(3,4) without tags"]


class TestContinuousIoUReward:
    @settings(max_examples=EXAMPLES, deadline=None)
    @given(valid_box(), valid_box())
    def test_bounded_symmetric_and_equal_to_the_box_iou(self, a, b):
        r = continuous_iou_score(answer(a), solution(b))
        assert 0.0 <= r <= 1.0
        assert r == pytest.approx(continuous_iou_score(answer(b), solution(a)), abs=1e-6)
        assert r == pytest.approx(max(0.0, boxes.box_iou(a, b)), abs=1e-6)

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(valid_box())
    def test_exact_box_is_one_and_beats_the_released_threshold_reward_below_it(self, b):
        assert continuous_iou_score(answer(b), solution(b)) == 1.0
        x1, y1, x2, y2 = b
        half = (x1, y1, x1 + max(1, (x2 - x1) // 2), y2) if x2 - x1 >= 2 else b
        dense = continuous_iou_reward([answer(half)], [solution(b)])[0]
        released = iou_reward([answer(half)], [solution(b)])[0]
        assert dense >= released  # the released reward pays nothing below 0.8; this one pays the IoU

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(valid_box(), valid_box(), st.integers(1, 4), st.integers(1, 4))
    def test_the_frame_does_not_matter_scaled_boxes_score_the_same(self, a, b, sx, sy):
        """IoU is invariant to scaling x and y separately: 0-1000 vs a pixel frame gives one reward
        (coordinates kept inside the frame, since out-of-frame ones are clipped)."""
        scale = lambda box: (box[0] // 4 * sx, box[1] // 4 * sy, box[2] // 4 * sx, box[3] // 4 * sy)  # noqa: E731
        a4, b4 = (v // 4 * 4 for v in a), (v // 4 * 4 for v in b)
        a4, b4 = tuple(a4), tuple(b4)
        if not all(boxes.is_valid_box(x) and sum(scale(x)) >= 4 and sum(x) >= 4 for x in (a4, b4)):
            return
        assert continuous_iou_score(answer(scale(a4)), solution(scale(b4))) == pytest.approx(
            continuous_iou_score(answer(a4), solution(b4)), abs=1e-5)

    @pytest.mark.parametrize("text", BAD_COMPLETIONS)
    def test_unusable_completions_score_zero(self, text):
        assert continuous_iou_reward([text], [solution((0, 0, 100, 100))]) == [0.0]

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(valid_box())
    def test_reversed_and_zero_area_predictions_score_zero(self, b):
        x1, y1, x2, y2 = b
        assert continuous_iou_score(answer((x2, y1, x1, y2)), solution(b)) == 0.0
        assert continuous_iou_score(answer((x1, y1, x1, y2)), solution(b)) == 0.0

    def test_out_of_frame_coordinates_are_clipped_and_the_last_box_counts(self):
        sol = solution((0, 0, 1000, 500))
        assert continuous_iou_score(answer((0, 0, 1500, 500)), sol) == 1.0
        # Several boxes in one answer: the released parser takes the last hit, and so do these rewards.
        two = "<answer>maybe (0,500),(1000,1000), no: (0,0),(1000,500)</answer>"
        assert predicted_box(two) == (0.0, 0.0, 1000.0, 500.0) and continuous_iou_score(two, sol) == 1.0

    def test_conversational_completions(self):
        c = [[{"role": "assistant", "content": answer((0, 0, 10, 10))}]]
        assert continuous_iou_reward(c, [solution((0, 0, 10, 10))]) == [1.0]


class TestIoUSquaredReward:
    @settings(max_examples=EXAMPLES, deadline=None)
    @given(valid_box(), valid_box())
    def test_is_the_square_and_never_above_the_iou(self, a, b):
        r, iou = iou_squared_score(answer(a), solution(b)), continuous_iou_score(answer(a), solution(b))
        assert r == pytest.approx(iou * iou, abs=1e-9) and 0.0 <= r <= iou <= 1.0

    @pytest.mark.parametrize("text", BAD_COMPLETIONS)
    def test_unusable_completions_score_zero(self, text):
        assert iou_squared_reward([text], [solution((0, 0, 100, 100))]) == [0.0]


class TestGIoUReward:
    @settings(max_examples=EXAMPLES, deadline=None)
    @given(valid_box(), valid_box())
    def test_bounded_by_minus_one_and_the_iou(self, a, b):
        g, iou = giou_score(answer(a), solution(b)), continuous_iou_score(answer(a), solution(b))
        assert -1.0 <= g <= iou + 1e-6
        assert g == pytest.approx(giou_score(answer(b), solution(a)), abs=1e-9)

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(st.integers(0, 400), st.integers(1, 100), st.integers(1, 300))
    def test_disjoint_boxes_still_rank_by_distance(self, x, w, gap):
        """Where IoU is 0 for both, GIoU still prefers the nearer prediction: a gradient to follow."""
        target = (x, 100, x + w, 200)
        near = (x + w + gap, 100, x + 2 * w + gap, 200)
        far = (x + w + 2 * gap, 100, x + 2 * w + 2 * gap, 200)
        if far[2] > 1000:
            return
        g_near, g_far = giou_score(answer(near), solution(target)), giou_score(answer(far), solution(target))
        assert continuous_iou_score(answer(near), solution(target)) == 0.0
        assert -1.0 < g_far < g_near < 0.0

    def test_identical_box_is_one(self):
        assert giou_reward([answer((5, 5, 50, 60))], [solution((5, 5, 50, 60))]) == [1.0]

    @pytest.mark.parametrize("text", BAD_COMPLETIONS)
    def test_unusable_completions_score_minus_one(self, text):
        assert giou_reward([text], [solution((0, 0, 100, 100))]) == [-1.0]

    def test_reversed_prediction_scores_minus_one(self):
        assert giou_score(answer((50, 0, 10, 40)), solution((10, 0, 50, 40))) == -1.0


class TestRewardSelection:
    @pytest.mark.parametrize("kind,name,want", [("released", "iou_reward", 0.0), ("continuous", "continuous_iou_reward", 0.5),
                                                ("squared", "iou_squared_reward", 0.25), ("giou", "giou_reward", 0.5)])
    def test_grpo_config_picks_the_box_reward_and_it_pickles(self, kind, name, want):
        import pickle

        from deepperception.config import load_profile

        iou, fmt = make_reward_funcs(load_profile("toy", {"grpo": {"iou_kind": kind}}).grpo.reward)
        assert (iou.__name__, fmt.__name__) == (name, "format_reward")
        half = answer((0, 0, 100, 50))
        assert iou([half], [solution((0, 0, 100, 100))]) == pytest.approx([want], abs=1e-6)
        assert pickle.loads(pickle.dumps(iou))([half], [solution((0, 0, 100, 100))]) == iou([half], [solution((0, 0, 100, 100))])
