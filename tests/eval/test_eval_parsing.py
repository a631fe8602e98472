"""Parser parity: the 20 golden rollouts, the released GRPO reward, and adversarial texts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import official_reference as ref
from deepperception.boxes import box_iou_many, parse_gt_box
from deepperception.eval.parsing import (
    grpo_bbox,
    is_inside_answer,
    official_bbox,
    official_parse,
)

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "kvg_samples.json"  # see tests/data/README.md
RECORDS = json.loads(SAMPLES.read_text())["records"]


def released_grpo_rewards(completion: str, solution: str) -> tuple[float, float]:
    """iou_reward and format_reward of MaxyLee/R1-V @ a84b874, as our rewards module computes them."""
    from deepperception.training.rewards import format_score, iou_score

    return iou_score(completion, solution), format_score(completion, "released")


def test_golden_file_present():
    assert len(RECORDS) == 20, f"kvg_samples.json not found at {SAMPLES}"


@pytest.mark.parametrize("i", range(20))
def test_golden_official(i):
    r = RECORDS[i]
    exp = r["official_eval_recomputed"]
    box, pattern = official_bbox(r["rollout_text"])
    assert box == exp["pred_bbox"]
    assert pattern == exp["match_pattern"]
    ref_box, ref_pattern = ref.get_bbox(r["rollout_text"])
    assert [float(v) for v in ref_box] == box and ref_pattern == pattern
    gt = parse_gt_box(r["solution"])
    assert list(gt) == r["gt_bbox_0_1000_xyxy"]
    iou = float(box_iou_many(np.array([box]), np.array([gt]))[0])
    assert round(iou, 6) == exp["iou"]
    assert (iou >= 0.5) == exp["correct_iou_ge_0_5"]


@pytest.mark.parametrize("i", range(20))
def test_golden_released_grpo_reward(i):
    r = RECORDS[i]
    exp = r["released_grpo_reward_recomputed"]
    iou_r, fmt = released_grpo_rewards(r["rollout_text"], r["solution"])
    assert round(iou_r, 4) == round(exp["iou_reward_threshold_0_8"], 4)
    assert fmt == exp["format_reward"]


def test_golden_records_cover_the_parser_paths():
    assert {r["official_eval_recomputed"]["match_pattern"] for r in RECORDS} == {0, 1, 3, 4, 5, 6, 7, 8}


def test_grpo_match_type_is_i_plus_2():
    sol = "<answer> <|object_ref_start|>X<|object_ref_end|><|box_start|>(519,608),(986,768)<|box_end|> </answer>"
    assert grpo_bbox(sol) == ([519.0, 608.0, 986.0, 768.0], 2)
    assert grpo_bbox("[1, 2, 3, 4]")[1] == 3
    assert grpo_bbox("(1, 2, 3, 4)")[1] == 4
    assert grpo_bbox("(1, 2)\n(3, 4)")[1] == 5
    # so the released box-format half of format_reward never fires:
    assert released_grpo_rewards(f"<think>t</think><answer>{sol}</answer>", sol) == (1.0, 0.5)


# (text, expected box, expected 1-based pattern): one or more per regex path and per quirk.
ADVERSARIAL = [
    # 1: the proper single-line answer
    ("<think>t</think>\n<answer>E(10,20),(300,400)</answer>", [10.0, 20.0, 300.0, 400.0], 1),
    # 1 beats a better-looking box elsewhere; last hit of #1 wins
    ("(1,1),(2,2) <answer>(5,6),(7,8)</answer> <answer>(9,10),(11,12)</answer>", [9.0, 10.0, 11.0, 12.0], 1),
    # 2: "So the answer is" precedes #3 even though #3 would take a later box
    ("So the answer is E (10,20),(300,400). Later: (50,60),(70,80)", [10.0, 20.0, 300.0, 400.0], 2),
    # 3: trailing space before </answer> makes #1 fail; #3 takes the LAST box anywhere
    ("<answer>E(10,20),(300,400) </answer>", [10.0, 20.0, 300.0, 400.0], 3),
    ("<think>(1,2),(3,4)</think><answer>(5,6),(7,8) </answer>", [5.0, 6.0, 7.0, 8.0], 3),
    # 3: newline inside the answer tags
    ("<answer>\nE(10,20),(300,400)\n</answer>", [10.0, 20.0, 300.0, 400.0], 3),
    # 3: box only inside <think>
    ("<think>E(505,23),(993,481) is it</think>\n<answer> <strong>2</strong> </answer>", [505.0, 23.0, 993.0, 481.0], 3),
    # 3: y1 group skips junk: (12,3.5) gives y1 = 5
    ("<think>(12,3.5),(20,30)</think>", [12.0, 5.0, 20.0, 30.0], 3),
    # 3 + x1000: four numbers summing below 4 are "normalized"
    ("(0,0),(1,2)", [0.0, 0.0, 1000.0, 2000.0], 3),
    # 4: "(a, b) - (c, d)"
    ("<answer>The box is (499, 501) - (999, 978). </answer>", [499.0, 501.0, 999.0, 978.0], 4),
    # 4: placeholder text -> float() fails -> zeros, still pattern 4
    ("<answer>(x1, y1) to (x2, y2)</answer>", [0.0, 0.0, 0.0, 0.0], 4),
    # 4: the 'x' quirk strips a leading x from the first group only
    ("from (x100, 200) to (300, 400)", [100.0, 200.0, 300.0, 400.0], 4),
    # 4: normalized pair form, rescaled
    ("from (0.12, 0.15) to (0.48, 0.35)", [120.0, 150.0, 480.0, 350.0], 4),
    # 5
    ("<answer>[250, 250, 500, 500]</answer>", [250.0, 250.0, 500.0, 500.0], 5),
    # 6: normalized floats scaled x1000
    ("<answer> [0.3, 0.2, 0.6, 0.4] </answer>", [300.0, 200.0, 600.0, 400.0], 6),
    # 6: float cast fails -> zeros under 6
    ("<answer>[a, b, c, d]</answer>", [0.0, 0.0, 0.0, 0.0], 6),
    # 7: spaced 4-tuple
    ("<answer>\nThe box is (36, 541, 447, 699).\n</answer>", [36.0, 541.0, 447.0, 699.0], 7),
    # 8: two spaced pairs on consecutive lines
    ("- Top-left corner: (500, 150)\n- Bottom-right corner: (650, 300)</think>\n<answer>500, 150</answer>",
     [500.0, 150.0, 650.0, 300.0], 8),
    # 0: unspaced 4-tuple matches nothing
    ("<answer>(438,471,800,762)</answer>", [0.0, 0.0, 0.0, 0.0], 0),
    ("<answer>31700</answer>", [0.0, 0.0, 0.0, 0.0], 0),
    ("", [0.0, 0.0, 0.0, 0.0], 0),
]


@pytest.mark.parametrize("text,box,pattern", ADVERSARIAL)
def test_adversarial(text, box, pattern):
    assert official_bbox(text) == (box, pattern)
    ref_box, ref_pattern = ref.get_bbox(text)
    assert [float(v) for v in ref_box] == box and ref_pattern == pattern


def test_every_path_has_an_adversarial_case():
    assert {p for _, _, p in ADVERSARIAL} == set(range(9))


def test_hit_location():
    t = "<think>E(505,23),(993,481)</think>\n<answer> two </answer>"
    m = official_parse(t)
    assert t[m.span[0] - 1 : m.span[1] + 1] == "(505,23),(993,481)"
    assert not is_inside_answer(m.span, t)
    t = "<think>x</think><answer>\n(5,6),(7,8)\n</answer>"
    assert is_inside_answer(official_parse(t).span, t)
