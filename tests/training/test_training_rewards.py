"""Rewards against the 20 golden records recomputed with the released reward code."""

import json
from pathlib import Path

import pytest

from deepperception.training.rewards import (
    RewardConfig, format_reward, format_score, iou_reward, iou_score, make_reward_funcs,
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
