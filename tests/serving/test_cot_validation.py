"""validate_cot_reply: one class per rule, plus the forms that must pass."""

from __future__ import annotations

import pytest

from deepperception.engine.cot_validation import REASONS, validate_cot_reply

ENTS = [
    {"name": "Aster S glider", "box": [10, 20, 300, 400]},
    {"name": "Borel T glider", "box": [500, 20, 900, 400]},
    {"name": "Cyra glider", "box": [100, 600, 400, 950]},
]
PLAIN = ("Planning: I need to find the Aster S glider.\n\nVisual analysis:\n- The glider at (500,20),(900,400): red.\n"
         "\nComparison: the one at (500,20),(900,400) is red, so it is not it.\n\n"
         "Conclusion: The Aster S glider is the glider at (10,20),(300,400).")


class TestAccepted:
    def test_plain_reasoning_like_template_teacher(self):
        v = validate_cot_reply(PLAIN, ENTS, 0)
        assert v.ok and v.reason is None and v.cot == PLAIN

    def test_tagged_reply_gives_the_think_part_as_cot(self):
        v = validate_cot_reply("<think>It has a T-tail.</think>\n<answer>Aster S glider (10,20),(300,400)</answer>", ENTS, 0)
        assert v.ok and v.cot == "It has a T-tail."

    def test_list_box_and_spaces_count_as_restated(self):
        assert validate_cot_reply("Conclusion: it is [10, 20, 300, 400].", ENTS, 0).ok
        assert validate_cot_reply("Conclusion: it is ( 10 , 20 ), ( 300 , 400 ).", ENTS, 0).ok

    def test_without_heading_the_last_paragraph_concludes(self):
        assert validate_cot_reply("The one at (500,20),(900,400) is red.\n\nSo the target is at (10,20),(300,400).", ENTS, 0).ok


class TestEmptyCot:
    @pytest.mark.parametrize("text", [None, "", "  \n\t "])
    def test_empty(self, text):
        v = validate_cot_reply(text, ENTS, 0)
        assert (v.ok, v.reason, v.cot) == (False, "empty_cot", None)


class TestBadStructure:
    @pytest.mark.parametrize("text", [
        "<think>only thinking (10,20),(300,400)",
        "<answer>(10,20),(300,400)</answer><think>late</think>",
        "<think>x</think><answer>(10,20),(300,400)</answer> trailing words",
        "<think> </think><answer>(10,20),(300,400)</answer>",
        "<think>a <think>nested</think></think><answer>(10,20),(300,400)</answer>",
        "Conclusion: at (10,20),(300,400)</answer>",
    ])
    def test_malformed_tags(self, text):
        v = validate_cot_reply(text, ENTS, 0)
        assert v.reason == "bad_structure" and not v.ok and "tags" in v.detail


class TestOtherBoxAsAnswer:
    def test_conclusion_points_at_another_entity(self):
        v = validate_cot_reply(PLAIN.replace("(10,20),(300,400).", "(100,600),(400,950)."), ENTS, 0)
        assert v.reason == "other_box_as_answer" and "Cyra glider" in v.detail

    def test_hedging_with_both_boxes_is_rejected(self):
        v = validate_cot_reply("Conclusion: (10,20),(300,400) or maybe (500,20),(900,400).", ENTS, 0)
        assert v.reason == "other_box_as_answer"

    def test_tagged_answer_with_other_box(self):
        v = validate_cot_reply("<think>t</think><answer>(500,20),(900,400)</answer>", ENTS, 0)
        assert v.reason == "other_box_as_answer"

    def test_other_boxes_outside_the_conclusion_are_fine(self):
        assert validate_cot_reply(PLAIN, ENTS, 0).ok  # PLAIN names B's box in its comparison


class TestNoTargetBox:
    def test_no_box_at_all(self):
        v = validate_cot_reply("Conclusion: it is the glider on the left.", ENTS, 0)
        assert v.reason == "no_target_box" and "[10, 20, 300, 400]" in v.detail

    def test_target_box_only_before_the_conclusion(self):
        v = validate_cot_reply("The glider at (10,20),(300,400) is white.\n\nConclusion: it is the white one.", ENTS, 0)
        assert v.reason == "no_target_box"

    def test_near_miss_box_is_not_the_target(self):
        assert validate_cot_reply("Conclusion: at (10,20),(300,401).", ENTS, 0).reason == "no_target_box"

    def test_other_target_index(self):
        assert validate_cot_reply(PLAIN, ENTS, 1).reason == "other_box_as_answer"
        assert validate_cot_reply("Conclusion: (500,20),(900,400)", ENTS, 1).ok


def test_reasons_are_the_documented_ones():
    assert REASONS == ("empty_cot", "bad_structure", "other_box_as_answer", "no_target_box")


def test_bad_target_index_is_a_caller_error():
    with pytest.raises(ValueError, match="target_index 3"):
        validate_cot_reply(PLAIN, ENTS, 3)
