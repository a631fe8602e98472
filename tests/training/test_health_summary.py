"""Health summary flags and the monitor's reward wrapper (pure, no training)."""

from __future__ import annotations

import math

from deepperception.training.monitors import (
    Thresholds, completion_stats, grpo_rows, monitored_reward_funcs, summarize,
)
from deepperception.training.rewards import make_reward_funcs

SOL = "<answer> <|object_ref_start|>X<|object_ref_end|><|box_start|>(100,100),(400,400)<|box_end|> </answer>"


def _log(step, iou, fmt, **kw):
    return {"step": step, "reward": iou + fmt, "rewards/iou_reward/mean": iou, "rewards/format_reward/mean": fmt,
            "frac_reward_zero_std": kw.get("zero", 0.2), "completions/mean_length": kw.get("length", 80.0),
            "completions/clipped_ratio": kw.get("clipped", 0.0), "monitor/parse_rate": kw.get("parse", 0.8),
            "monitor/whole_image_share": kw.get("whole", 0.0), "loss": 0.1}


def test_healthy_run_has_no_flags():
    rows = grpo_rows([_log(i, 0.1 + 0.02 * i, 0.3 + 0.01 * i) for i in range(1, 11)], ["iou_reward", "format_reward"])
    assert summarize(rows)["flags"] == []


def test_format_up_iou_down_is_flagged_as_reward_hacking():
    rows = grpo_rows([_log(i, 0.5 - 0.03 * i, 0.1 + 0.05 * i) for i in range(1, 11)], ["iou_reward", "format_reward"])
    assert rows[-1]["format_iou_divergence"] > 0.2
    assert summarize(rows)["flags"] == ["reward_hacking_format_up_iou_down"]


def test_collapse_flags():
    names = ["iou_reward", "format_reward"]
    zero = grpo_rows([_log(i, 0.0, 0.0, zero=1.0) for i in range(1, 6)], names)
    assert "collapse_zero_std" in summarize(zero)["flags"]
    short = grpo_rows([_log(i, 0.0, 0.0, length=1.0) for i in range(1, 6)], names)
    assert "collapse_length_zero" in summarize(short)["flags"]
    long = grpo_rows([_log(i, 0.0, 0.0, clipped=1.0) for i in range(1, 6)], names)
    assert "collapse_length_max" in summarize(long)["flags"]
    lost = grpo_rows([_log(i, 0.0, 0.0, parse=0.9 if i < 5 else 0.0) for i in range(1, 12)], names)
    assert "parse_collapse" in summarize(lost)["flags"]
    whole = grpo_rows([_log(i, 0.3, 0.5, whole=0.7) for i in range(1, 6)], names)
    assert summarize(whole, Thresholds(whole_image_share=0.5))["flags"] == ["reward_hacking_whole_image"]


def test_whole_image_boxes_and_areas():
    s = completion_stats(["<think>a</think><answer>(0,0),(999,999)</answer>", "<answer>(0,0),(500,1000)</answer>"])
    assert s == {"parse_rate": 1.0, "whole_image_share": 0.5, "mean_box_area": (0.998001 + 0.5) / 2}
    assert math.isnan(completion_stats(["no box"])["mean_box_area"])


def test_the_wrapper_keeps_rewards_and_names_and_logs_stats():
    funcs = make_reward_funcs()
    wrapped = monitored_reward_funcs(funcs)
    assert [f.__name__ for f in wrapped] == ["iou_reward", "format_reward"]
    completions = [[{"role": "assistant", "content": "<think>t</think><answer>(100,100),(400,400)</answer>"}],
                   [{"role": "assistant", "content": "<answer>(0,0),(1000,1000)</answer>"}],
                   [{"role": "assistant", "content": "nothing"}]]
    logged: dict[str, float] = {}
    kw = dict(prompts=[None] * 3, completions=completions, completion_ids=[[1]] * 3, solution=[SOL] * 3,
              log_metric=lambda k, v: logged.__setitem__(k, v), log_extra=lambda *a: None, trainer_state=None)
    assert wrapped[0](**kw) == funcs[0](**kw) == [1.0, 0.0, 0.0]
    assert wrapped[1] is funcs[1]
    assert logged["monitor/parse_rate"] == 2 / 3 and logged["monitor/whole_image_share"] == 1 / 3
    assert abs(logged["monitor/mean_box_area"] - (0.09 + 1.0) / 2) < 1e-9
