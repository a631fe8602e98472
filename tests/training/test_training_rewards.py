"""Rewards against the 20 golden records recomputed with the released reward code."""

import json
import math
import re
from pathlib import Path

import pytest

from deepperception.eval.parsing import grpo_first_answer
from deepperception.training.rewards import (
    RewardConfig, completion_text, format_reward, format_score, iou_reward, iou_score, make_reward_funcs,
)

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "kvg_samples.json"  # see tests/data/README.md


def _records():
    return json.loads(SAMPLES.read_text())["records"]


def test_golden_records():
    recs = _records()
    assert len(recs) == 20
    conv = [[{"role": "assistant", "content": r["rollout_text"]}] for r in recs]
    sols = [r["solution"] for r in recs]
    ious = iou_reward(conv, sols)
    fmts = format_reward(conv, sols)
    for r, i, f in zip(recs, ious, fmts):
        want = r["released_grpo_reward_recomputed"]
        assert round(i, 4) == pytest.approx(want["iou_reward_threshold_0_8"], abs=1e-4), r["rollout_text"][:80]
        assert f == want["format_reward"]
    # plain-string completions give the same
    assert iou_reward([r["rollout_text"] for r in recs], sols) == ious


def test_threshold_and_intended_mode():
    sol = "<answer> <|object_ref_start|>X<|object_ref_end|><|box_start|>(0,0),(100,100)<|box_end|> </answer>"
    txt = "<think>t</think> <answer>(0,0),(100,85)</answer>"
    assert iou_score(txt, sol) == pytest.approx(0.85)
    assert iou_score(txt, sol, threshold=0.9) == 0.0
    assert format_score(txt, "released") == 0.5
    assert format_score(txt, "intended") == 1.0
    assert format_score("<think>t</think><answer>[1, 2, 3, 4]</answer>", "intended") == 0.5  # not a Qwen box
    iou, fmt = make_reward_funcs(RewardConfig(iou_threshold=0.9, format_mode="intended"))
    assert iou([txt], [sol]) == [0.0] and fmt([txt], [sol]) == [1.0]
    # only the FIRST answer counts; multi-line answers are fine
    assert iou_score("<answer>none</answer><answer>(0,0),(100,100)</answer>", sol) == 0.0
    assert iou_score("<answer>\n(0,0),(100,100)\n</answer>", sol) == 1.0
    with pytest.raises(ValueError):
        format_score("x", "other")  # type: ignore[arg-type]


SOL = "<answer> <|object_ref_start|>X<|object_ref_end|><|box_start|>(0,0),(100,100)<|box_end|> </answer>"


def _ans(y2: int, think: str = "<think>t</think>") -> str:
    """An answer whose box (0,0),(100,y2) has IoU exactly y2/100 (in float32) with SOL's box."""
    return f"{think}<answer>(0,0),(100,{y2})</answer>"


class TestIoUReward:
    """Released ``iou_reward`` (official-code.md §4.5): IoU if IoU > threshold (strict), else 0."""

    def test_threshold_is_strict(self):
        assert iou_score(_ans(50), SOL, threshold=0.5) == 0.0  # IoU == threshold: not paid
        assert iou_score(_ans(50), SOL, threshold=0.49) == 0.5
        assert iou_score(_ans(100), SOL, threshold=1.0) == 0.0  # a perfect box is not > 1.0
        assert iou_score(_ans(100), SOL, threshold=0.99) == 1.0

    def test_released_default_threshold_is_0_8(self):
        assert RewardConfig().iou_threshold == 0.8
        assert iou_score(_ans(79), SOL) == 0.0
        assert iou_score(_ans(81), SOL) == pytest.approx(0.81)
        # float32(0.8) = 0.800000011920929 > 0.8, as in the released `iou.item() > 0.8`
        assert iou_score(_ans(80), SOL) == pytest.approx(0.800000011920929, abs=1e-12)
        assert iou_reward([_ans(79), _ans(81)], [SOL, SOL]) == [0.0, pytest.approx(0.81)]
        iou, _ = make_reward_funcs()
        assert iou([_ans(79), _ans(81)], [SOL, SOL]) == [0.0, pytest.approx(0.81)]
        iou, _ = make_reward_funcs(RewardConfig(iou_threshold=0.85))
        assert iou([_ans(81), _ans(86)], [SOL, SOL]) == [0.0, pytest.approx(0.86)]

    def test_pays_the_iou_not_one(self):
        assert iou_score(_ans(90), SOL) == pytest.approx(0.9)
        assert iou_score(_ans(90), SOL, threshold=0.0) == pytest.approx(0.9)
        assert iou_score(_ans(30), SOL, threshold=0.0) == pytest.approx(0.3)

    def test_no_answer_or_no_box_is_zero(self):
        assert iou_score("(0,0),(100,100)", SOL, threshold=0.0) == 0.0  # no answer tag
        assert iou_score("<answer>(0,0),(100,100)", SOL, threshold=0.0) == 0.0  # unclosed
        assert iou_score("<answer>the left one</answer>", SOL, threshold=0.0) == 0.0
        # a box only inside <think> does not count here (unlike the KVG-Bench evaluator)
        assert iou_score("<think>(0,0),(100,100)</think><answer>it</answer>", SOL, threshold=0.0) == 0.0

    def test_empty_union_is_zero_not_nan(self):
        sol = "<|box_start|>(5,5),(5,5)<|box_end|>"
        got = iou_score("<answer>(5,5),(5,5)</answer>", sol, threshold=-1.0)
        assert got == 0.0 and not math.isnan(got)

    def test_gt_comes_from_the_solution(self):
        sol = "<|box_start|>(0,0),(100,50)<|box_end|>"
        assert iou_score("<answer>(0,0),(100,50)</answer>", sol) == 1.0
        assert iou_score("<answer>(0,0),(100,100)</answer>", sol, threshold=0.0) == 0.5

    def test_batch_signature(self):
        conv = [[{"role": "assistant", "content": _ans(100)}], _ans(50)]
        assert iou_reward(conv, [SOL, SOL], threshold=0.4, prompts=["p", "p"]) == [1.0, 0.5]  # extra TRL kwargs
        with pytest.raises(ValueError):
            iou_reward([_ans(100)], [SOL, SOL])  # one solution per completion


class TestFormatReward:
    """``format_reward``: 0.5 for the anchored think/answer structure; the box half is dead code in
    the released mode (``match_type == 1`` never happens) and +0.5 for a (x1,y1),(x2,y2) box in
    ``intended`` mode."""

    GOOD = "<think>a\nb</think>\n<answer>(1,2),(3,4)</answer>"

    def test_released_mode_is_structure_only(self):
        assert format_score(self.GOOD) == 0.5
        assert format_score(self.GOOD, "released") == 0.5
        assert format_score("<answer>(1,2),(3,4)</answer>", "released") == 0.0  # box alone earns nothing
        assert RewardConfig().format_mode == "released"
        _, fmt = make_reward_funcs()
        assert fmt([self.GOOD]) == [0.5]

    def test_intended_mode_adds_the_box_half(self):
        assert format_score(self.GOOD, "intended") == 1.0
        assert format_score("<answer>(1,2),(3,4)</answer>", "intended") == 0.5  # box half without structure
        assert format_score("<think>a</think><answer>no box</answer>", "intended") == 0.5
        # other box formats match other regexes (types 3, 4), not the Qwen2-VL one (type 2)
        assert format_score("<think>a</think><answer>[1, 2, 3, 4]</answer>", "intended") == 0.5
        assert format_score("<think>a</think><answer>(1, 2, 3, 4)</answer>", "intended") == 0.5
        # only the first answer is looked at
        assert format_score("<think>a</think><answer>x</answer><answer>(1,2),(3,4)</answer>", "intended") == 0.5

    def test_structure_rules(self):
        assert format_score("<think>a</think><answer>b</answer>") == 0.5
        assert format_score("<think>a</think> \n\t <answer>b</answer>") == 0.5  # \s* between the blocks
        assert format_score("<think>a</think><answer>b</answer> trailing text") == 0.5  # match, not fullmatch
        assert format_score(" <think>a</think><answer>b</answer>") == 0.0  # anchored at the start
        assert format_score("x<think>a</think><answer>b</answer>") == 0.0
        assert format_score("<think>a</think>x<answer>b</answer>") == 0.0  # only whitespace between
        assert format_score("<answer>b</answer>") == 0.0
        assert format_score("<think>a</think>") == 0.0
        assert format_score("<think>a</think><answer>b") == 0.0
        assert format_score("") == 0.0

    # The released regexes, written out here (official-code.md §4.5), as the oracle for edge texts.
    RELEASED_FORMAT = re.compile(r"<think>[\S\n\t\v ]*?</think>\s*<answer>[\S\n\t\v ]*?</answer>")
    RELEASED_ANSWER = re.compile(r"<answer>([\S\n\t\v ]*?)</answer>")
    EDGE_TEXTS = [
        "<think></think><answer></answer>",
        "<think>a</think>x</think><answer>b</answer>",  # lazy think body runs to a later </think>
        "<think>a</think>x</think> \n<answer>b</answer>",
        "<think>a</think>x</think>y</think><answer>b</answer>",
        "<think>a</think>x<answer>b</answer>",
        "<think>\r</think><answer>b</answer>",  # \r is outside [\S\n\t\v ]: first body char
        "<think>a\rb</think><answer>c</answer>",
        "<think>a\xa0b</think><answer>c</answer>",  # no-break space: whitespace, not in the class
        "<think>a\u2028b</think><answer>c</answer>",
        "<think>a</think><answer>b\rc</answer>",
        "<think>a</think><answer>b\x0cc</answer>",
        "<think>a</think><answer>b\rc</answer></think><answer>d</answer>",
        "<think>a</think><answer>b</answer></think><answer>c\rd</answer>",
        "<think>a\r</think>b</think><answer>c</answer>",
        "<think>a</think>\r\x0c\x1c<answer>b</answer>",  # \s between the blocks takes \r, \f, \x1c
        "<think>a</think>\xa0<answer>b</answer>",
        "<think>a</think><answer>b</answer>\r trailing",
        "<think>a</think><answer>b</answer></answer>",
        "<think>a</think><answer>b</answe></answer>",
        "<think>a</think><answer>b",
        "<think>a</think></think>",
        "<think>a</think>\n<answer>(1,2),(3,4)</answer>",
        "<think>x</think><answer>a\rb</answer><answer>c</answer>",
        " <think>a</think><answer>b</answer>",
        "<think><think>a</think></think><answer><answer>b</answer>",
    ]
    ANSWER_TEXTS = EDGE_TEXTS + [
        "<answer>a\rb</answer><answer>c</answer>",  # the first block cannot span \r: the second one wins
        "<answer>\r</answer>",
        "<answer><answer>a</answer>",
        "<answer>a</answer</answer>",
        "x<answer>\n(1,2),(3,4)\n</answer>y",
        "<answer>a\r</answer>b</answer><answer>c</answer>",
        "</answer><answer>a</answer>",
        "<answer></answer>",
    ]

    @pytest.mark.parametrize("text", EDGE_TEXTS)
    def test_structure_equals_the_released_regex(self, text):
        want = 0.5 if self.RELEASED_FORMAT.match(text) else 0.0
        assert format_score(text, "released") == want

    @pytest.mark.parametrize("text", ANSWER_TEXTS)
    def test_first_answer_equals_the_released_regex(self, text):
        m = self.RELEASED_ANSWER.search(text)
        assert grpo_first_answer(text) == (m.group(1) if m else None)

    def test_batch_signature_and_modes(self):
        conv = [[{"role": "assistant", "content": self.GOOD}], "no"]
        assert format_reward(conv) == [0.5, 0.0]
        assert format_reward(conv, None, mode="intended") == [1.0, 0.0]
        assert format_reward(conv, ["ignored", "ignored"], prompts=["p", "p"]) == [0.5, 0.0]
        _, fmt = make_reward_funcs(RewardConfig(format_mode="intended"))
        assert fmt(conv, ["s", "s"]) == [1.0, 0.0]
        with pytest.raises(ValueError, match="released"):
            format_reward(["x"], mode="strict")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            RewardConfig(format_mode="strict")  # type: ignore[arg-type]


class TestCompletionText:
    def test_forms(self):
        assert completion_text("plain") == "plain"
        assert completion_text({"role": "assistant", "content": "one dict"}) == "one dict"
        assert completion_text([{"role": "assistant", "content": "first"}, {"content": "second"}]) == "first"
        assert completion_text([]) == ""
        assert completion_text([{"role": "assistant"}]) == ""
        parts = [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": None}, "raw", {"text": "b"}]
        assert completion_text([{"role": "assistant", "content": parts}]) == "ab"

    def test_reward_funcs_are_named_for_trl_logs(self):
        iou, fmt = make_reward_funcs(RewardConfig(iou_threshold=0.3, format_mode="intended"))
        assert (iou.__name__, fmt.__name__) == ("iou_reward", "format_reward")
        assert iou([_ans(40)], [SOL]) == [pytest.approx(0.4)]
        assert fmt([_ans(40)]) == [1.0]

    def test_config_bounds(self):
        with pytest.raises(ValueError):
            RewardConfig(iou_threshold=1.5)
        with pytest.raises(ValueError):
            RewardConfig(iou_threshold=-0.1)
        RewardConfig(iou_threshold=0.0)
        RewardConfig(iou_threshold=1.0)
