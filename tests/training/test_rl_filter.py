"""RL filter boundaries (paper §3.3, official-code.md §4.1): keep items the stage-1 model answers
correctly 1-3 times out of 4; drop 0/4 (no signal) and 4/4 (every group advantage is 0).

Rows are plain dicts with the two columns the filter reads; answers are precomputed (``samples=``),
so every count below is exact and known in advance.
"""

from __future__ import annotations

import inspect
import math

import pyarrow as pa
import pytest
from pydantic import ValidationError

from deepperception.config import RLFilterConfig
from deepperception.errors import ConfigError, InputDataError
from deepperception.training.rl_filter import (
    CORRECT_IOU, RLFilterEmptyError, answer_iou, count_correct, rl_filter,
)

GT = "<answer> <|object_ref_start|>X<|object_ref_end|><|box_start|>(0,0),(100,100)<|box_end|> </answer>"
RIGHT = "<think>t</think><answer>(0,0),(100,100)</answer>"  # IoU 1.0
HALF = "<answer>(0,0),(100,50)</answer>"  # IoU exactly 0.5 (float32-exact): correct, >= is inclusive
WRONG = "<answer>(900,900),(999,999)</answer>"  # IoU 0.0


def _rows(n: int) -> list[dict]:
    return [{"question_id": f"q{i}", "solution": GT} for i in range(n)]


def _answers(n_correct: int, n: int = 4, right: str = RIGHT) -> list[str]:
    return [right] * n_correct + [WRONG] * (n - n_correct)


def _one_item_per_count(n: int = 4) -> tuple[list[dict], dict[str, list[str]]]:
    """Item ``q{c}`` has exactly ``c`` correct answers out of ``n``, for c = 0..n."""
    rows = _rows(n + 1)
    return rows, {f"q{c}": _answers(c, n) for c in range(n + 1)}


def _kept_counts(**kw) -> list[int]:
    rows, samples = _one_item_per_count(kw.get("n_samples", 4))
    kept, _ = rl_filter(rows, None, samples=samples, **kw)
    return kept.column("n_correct").to_pylist()


class TestPaperBoundaries:
    """The defaults are the paper's: keep 1, 2, 3 of 4; drop 0 and 4."""

    @pytest.mark.parametrize("n_correct, kept", [(0, False), (1, True), (2, True), (3, True), (4, False)])
    def test_each_count_of_four(self, n_correct, kept):
        rows = _rows(2)
        # q1 is always kept (2/4), so the filter never falls into the empty policy.
        samples = {"q0": _answers(n_correct), "q1": _answers(2)}
        out, stats = rl_filter(rows, None, samples=samples)
        assert ("q0" in out.column("question_id").to_pylist()) is kept
        assert stats["policy_applied"] == "filter"

    def test_all_counts_at_once(self):
        rows, samples = _one_item_per_count()
        kept, stats = rl_filter(rows, None, samples=samples)
        assert kept.column("question_id").to_pylist() == ["q1", "q2", "q3"]
        assert kept.column("n_correct").to_pylist() == [1, 2, 3]
        assert stats["count_histogram"] == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}
        assert (stats["n_in"], stats["n_kept"]) == (5, 3)
        assert (stats["n_samples"], stats["keep_min"], stats["keep_max"]) == (4, 1, 3)

    def test_always_right_items_alone_are_not_kept(self):
        # Only 4/4 and 0/4 items: nothing has a GRPO signal, so the (default) policy errors.
        rows = _rows(2)
        with pytest.raises(RLFilterEmptyError, match="1..3 of 4"):
            rl_filter(rows, None, samples={"q0": _answers(4), "q1": _answers(0)})

    def test_function_and_config_defaults_are_the_papers(self):
        params = inspect.signature(rl_filter).parameters
        assert (params["n_samples"].default, params["keep_min"].default, params["keep_max"].default) == (4, 1, 3)
        assert params["on_empty"].default == "error"
        cfg = RLFilterConfig()
        assert (cfg.n_samples, cfg.keep_min, cfg.keep_max, cfg.on_empty) == (4, 1, 3, "error")

    def test_config_drives_the_filter(self):
        cfg = RLFilterConfig()
        assert _kept_counts(n_samples=cfg.n_samples, keep_min=cfg.keep_min, keep_max=cfg.keep_max) == [1, 2, 3]


class TestConfigurableEdges:
    """``keep_min..keep_max`` is inclusive at both ends for any setting."""

    @pytest.mark.parametrize("keep_min, keep_max, want", [
        (0, 4, [0, 1, 2, 3, 4]),
        (0, 0, [0]),
        (4, 4, [4]),
        (2, 2, [2]),
        (1, 4, [1, 2, 3, 4]),
        (0, 3, [0, 1, 2, 3]),
        (3, 4, [3, 4]),
        (1, 1, [1]),
        (3, 3, [3]),
    ])
    def test_inclusive_range(self, keep_min, keep_max, want):
        assert _kept_counts(keep_min=keep_min, keep_max=keep_max) == want

    def test_other_sample_counts(self):
        assert _kept_counts(n_samples=2, keep_min=1, keep_max=1) == [1]
        assert _kept_counts(n_samples=8, keep_min=1, keep_max=7) == [1, 2, 3, 4, 5, 6, 7]

    @pytest.mark.parametrize("kw", [
        {"keep_min": 3, "keep_max": 1},
        {"keep_min": 2, "keep_max": 5},            # keep_max > n_samples
        {"keep_min": -1, "keep_max": 3},
        {"n_samples": 2, "keep_min": 1, "keep_max": 3},
    ])
    def test_invalid_ranges_raise(self, kw):
        rows, samples = _one_item_per_count()
        with pytest.raises(ConfigError):
            rl_filter(rows, None, samples=samples, **kw)

    @pytest.mark.parametrize("kw", [{"keep_min": 0, "keep_max": 4}, {"keep_min": 4, "keep_max": 4},
                                    {"keep_min": 0, "keep_max": 0}])
    def test_valid_extremes_accepted(self, kw):
        rows, samples = _one_item_per_count()
        rl_filter(rows, None, samples=samples, **kw)
        RLFilterConfig(**kw)

    @pytest.mark.parametrize("kw", [{"keep_min": 3, "keep_max": 2}, {"keep_max": 5}, {"keep_min": -1},
                                    {"n_samples": 0}, {"n_samples": 2}])
    def test_config_rejects_invalid_ranges(self, kw):
        with pytest.raises(ValidationError):
            RLFilterConfig(**kw)


class TestCorrectness:
    """A sample is correct iff the official parser's box has IoU >= 0.5 (inclusive) with the GT."""

    def test_threshold_is_half_and_inclusive(self):
        assert CORRECT_IOU == 0.5
        gt = (0, 0, 100, 100)
        assert answer_iou(HALF, gt) == 0.5
        assert count_correct([HALF], gt) == (1, [0.5])
        below = "<answer>(0,0),(100,49)</answer>"  # 0.49
        n, ious = count_correct([below], gt)
        assert n == 0 and ious[0] == pytest.approx(0.49)
        above = "<answer>(0,0),(100,51)</answer>"
        assert count_correct([above], gt)[0] == 1

    def test_custom_threshold(self):
        gt = (0, 0, 100, 100)
        assert count_correct([HALF, RIGHT], gt, threshold=0.9)[0] == 1
        assert count_correct([HALF, RIGHT], gt, threshold=0.5)[0] == 2
        assert count_correct([HALF, RIGHT, WRONG], gt, threshold=0.0) == (3, [0.5, 1.0, 0.0])

    def test_half_iou_answers_count_in_the_filter(self):
        rows = _rows(2)
        samples = {"q0": [HALF] * 4, "q1": [HALF] + [WRONG] * 3}  # 4/4 (dropped) and 1/4 (kept)
        kept, stats = rl_filter(rows, None, samples=samples)
        assert kept.column("question_id").to_pylist() == ["q1"]
        assert stats["count_histogram"] == {1: 1, 4: 1} and stats["correct_iou"] == 0.5

    def test_no_box_and_empty_union_are_zero(self):
        gt = (0, 0, 100, 100)
        assert answer_iou("nothing here", gt) == 0.0  # parser's zero box vs a real GT: 0
        assert answer_iou("<answer>(5,5),(5,5)</answer>", (5, 5, 5, 5)) == 0.0  # 0/0 -> NaN -> 0
        assert not math.isnan(answer_iou("<answer>(5,5),(5,5)</answer>", (5, 5, 5, 5)))

    def test_negative_iou_becomes_zero(self):
        # A reversed prediction box has negative area; its intersection is then 0, so the raw IoU is
        # 0/negative = -0.0 at worst, reported as 0.
        gt = (0, 0, 10, 10)
        assert answer_iou("<answer>(10,10),(0,0)</answer>", gt) == 0.0
        assert answer_iou("<answer>(20,0),(0,10)</answer>", gt) >= 0.0

    def test_box_in_think_only_still_counts(self):
        # The official parser searches the whole text (official-code.md §2.7).
        text = "<think>it is at (0,0),(100,100)</think><answer>the left one</answer>"
        assert answer_iou(text, (0, 0, 100, 100)) == 1.0


class TestOutputsAndPolicies:
    def test_kept_rows_keep_input_order_columns_and_annotations(self):
        rows = [{"question_id": f"q{i}", "solution": GT, "problem": f"p{i}"} for i in range(4)]
        samples = {"q0": _answers(3), "q1": _answers(0), "q2": [HALF, WRONG, WRONG, WRONG], "q3": _answers(4)}
        kept, stats = rl_filter(pa.Table.from_pylist(rows), None, samples=samples)
        assert kept.column_names == ["question_id", "solution", "problem", "n_correct", "sample_ious", "n_correct_eval",
                                     "n_correct_reward", "sample_rewards", "zero_std"]
        assert kept.column("question_id").to_pylist() == ["q0", "q2"]
        assert kept.column("problem").to_pylist() == ["p0", "p2"]
        assert kept.column("n_correct").to_pylist() == [3, 1]
        assert kept.schema.field("n_correct").type == pa.int32()
        assert kept.column("sample_ious").to_pylist() == [[1.0, 1.0, 1.0, 0.0], [0.5, 0.0, 0.0, 0.0]]
        assert stats["count_histogram"] == {0: 1, 1: 1, 3: 1, 4: 1}
        assert list(stats["count_histogram"]) == [0, 1, 3, 4]  # sorted by count

    def test_empty_error_and_keep_all(self):
        rows = _rows(3)
        samples = {"q0": _answers(0), "q1": _answers(4), "q2": _answers(0)}
        with pytest.raises(RLFilterEmptyError):
            rl_filter(rows, None, samples=samples)
        kept, stats = rl_filter(rows, None, samples=samples, on_empty="keep_all")
        assert kept.column("question_id").to_pylist() == ["q0", "q1", "q2"]
        assert kept.column("n_correct").to_pylist() == [0, 4, 0]
        assert (stats["policy_applied"], stats["on_empty"], stats["n_kept"]) == ("keep_all", "keep_all", 3)

    def test_keep_all_is_not_applied_when_something_survives(self):
        rows = _rows(2)
        kept, stats = rl_filter(rows, None, samples={"q0": _answers(1), "q1": _answers(4)}, on_empty="keep_all")
        assert kept.column("question_id").to_pylist() == ["q0"] and stats["policy_applied"] == "filter"

    def test_stats_record_every_parameter(self):
        rows, samples = _one_item_per_count()
        _, stats = rl_filter(rows, None, samples=samples, temperature=0.7, top_k=5, top_p=0.9,
                             max_new_tokens=64, seed=3)
        assert {k: stats[k] for k in ("temperature", "top_k", "top_p", "max_new_tokens", "seed", "checkpoint")} == {
            "temperature": 0.7, "top_k": 5, "top_p": 0.9, "max_new_tokens": 64, "seed": 3, "checkpoint": None}
        _, stats = rl_filter(rows, "some/ckpt", samples=samples)
        assert stats["checkpoint"] == "some/ckpt"

    def test_bad_inputs_name_the_row(self):
        rows = _rows(2)
        with pytest.raises(InputDataError, match="expected 4 samples, got 3"):
            rl_filter(rows, None, samples={"q0": _answers(1), "q1": _answers(1)[:3]})
        with pytest.raises(InputDataError, match="got 0"):
            rl_filter(rows, None, samples={"q0": _answers(1)})
        with pytest.raises(InputDataError, match="solution"):
            rl_filter([{"question_id": "q0", "solution": "<answer>no box</answer>"}], None,
                      samples={"q0": _answers(1)})
        with pytest.raises(InputDataError):
            rl_filter([{"question_id": "q0"}], None, samples={"q0": _answers(1)})
        with pytest.raises(ConfigError, match="ckpt_dir"):
            rl_filter(rows, None)
        with pytest.raises(ConfigError, match="on_empty"):
            rl_filter(rows, None, samples={"q0": _answers(1), "q1": _answers(1)}, on_empty="drop")  # type: ignore[arg-type]


class TestErrorDetailsAndSampling:
    """What a failed run shows (stage, row, field, message) and what reaches the sampler."""

    def test_errors_name_stage_row_and_field(self):
        rows = _rows(2)
        with pytest.raises(InputDataError) as e:
            rl_filter(rows, None, samples={"q0": _answers(1), "q1": _answers(1)[:3]})
        assert (e.value.stage, e.value.row, e.value.field) == ("rl_filter", "q1", None)
        assert str(e.value) == "[stage=rl_filter row=q1] expected 4 samples, got 3"
        with pytest.raises(InputDataError) as e:
            rl_filter([{"question_id": "q0", "solution": "<answer>no box</answer>"}, {"question_id": "q1", "solution": None}],
                      None, samples={"q0": _answers(1)})
        assert (e.value.stage, e.value.row, e.value.field) == ("rl_filter", "q0", "solution")
        assert e.value.message == "solution has no <|box_start|>(x1,y1),(x2,y2)<|box_end|>"
        with pytest.raises(InputDataError) as e:
            rl_filter([{"question_id": "q1", "solution": None}], None, samples={"q1": _answers(1)})
        assert (e.value.row, e.value.field) == ("q1", "solution")
        with pytest.raises(InputDataError) as e:
            rl_filter([{"question_id": "q0"}], None, samples={"q0": _answers(1)})
        assert (e.value.stage, e.value.field) == ("rl_filter", "solution")

    def test_an_empty_input_is_an_error_not_an_empty_dataset(self):
        empty = pa.table({"question_id": pa.array([], pa.string()), "solution": pa.array([], pa.string())})
        with pytest.raises(InputDataError) as e:
            rl_filter(empty, None, samples={}, on_empty="keep_all")
        assert e.value.stage == "rl_filter" and "no rows" in str(e.value)

    def test_config_error_messages(self):
        rows, samples = _one_item_per_count()
        with pytest.raises(ConfigError, match=r"need 0 <= keep_min \(3\) <= keep_max \(1\) <= n_samples \(4\)"):
            rl_filter(rows, None, keep_min=3, keep_max=1, samples=samples)
        with pytest.raises(ConfigError, match="^rl_filter needs ckpt_dir or precomputed samples$"):
            rl_filter(rows, None)

    def test_empty_error_message_gives_the_histogram_and_the_way_out(self):
        rows = _rows(3)
        samples = {"q0": _answers(0), "q1": _answers(4), "q2": _answers(0)}
        with pytest.raises(RLFilterEmptyError) as e:
            rl_filter(rows, None, samples=samples)
        assert str(e.value) == ("no item has 1..3 of 4 correct (histogram {0: 2, 4: 1}); "
                                "pass on_empty='keep_all' to train on every item anyway")

    def test_sample_ious_are_float32_lists(self):
        rows, samples = _one_item_per_count()
        kept, _ = rl_filter(rows, None, samples=samples)
        assert kept.schema.field("sample_ious").type == pa.list_(pa.float32())

    def test_decoding_defaults_match_the_config(self):
        params = inspect.signature(rl_filter).parameters
        cfg = RLFilterConfig()
        for name in ("max_new_tokens", "batch_size", "device", "seed"):
            assert params[name].default == getattr(cfg, name), name
        assert params["temperature"].default == cfg.sampling()["temperature"] == 1.0
        assert (cfg.max_new_tokens, cfg.batch_size, cfg.device, cfg.seed) == (512, 8, "cpu", 0)
        # the library function samples plainly unless asked; the stage config samples as GRPO does
        assert (params["top_k"].default, params["top_p"].default) == (0, 1.0)
        assert cfg.sampling() == {"temperature": 1.0, "top_k": 50, "top_p": 1.0}

    def test_sampler_gets_the_table_checkpoint_and_every_decoding_setting(self, monkeypatch):
        from deepperception.model import sampling

        calls = []

        def fake_sample_answers(rows, ckpt_dir, **kw):
            calls.append((rows, ckpt_dir, kw))
            qids = rows.column("question_id").to_pylist()
            return {q: _answers(int(q[1:]) % 4, kw["n"]) for q in qids}

        monkeypatch.setattr(sampling, "sample_answers", fake_sample_answers)
        rows, _ = _one_item_per_count()
        kept, stats = rl_filter(rows, "ckpt/stage1", n_samples=4, temperature=0.7, top_k=5, top_p=0.9,
                                max_new_tokens=64, seed=3, batch_size=2, device="cuda:1")
        (table, ckpt, kw), = calls
        assert isinstance(table, pa.Table) and table.column("question_id").to_pylist() == [f"q{i}" for i in range(5)]
        assert ckpt == "ckpt/stage1"
        assert kw == {"n": 4, "temperature": 0.7, "max_new_tokens": 64, "seed": 3, "batch_size": 2, "top_k": 5,
                      "top_p": 0.9, "device": "cuda:1"}
        assert kept.column("question_id").to_pylist() == ["q1", "q2", "q3"]  # q4: 4 % 4 = 0 correct
        assert stats["checkpoint"] == "ckpt/stage1"
        calls.clear()
        rl_filter(rows, "ckpt/stage1")
        assert calls[0][2] == {"n": 4, "temperature": 1.0, "max_new_tokens": 512, "seed": 0, "batch_size": 8,
                               "top_k": 0, "top_p": 1.0, "device": "cpu"}


# ---- correct = "reward" and the zero-advantage stats --------------------------------------------

FMT_RIGHT = "<think>t</think><answer>(0,0),(100,100)</answer>"   # IoU 1.0, format 0.5 -> reward 1.5
FMT_SIXTY = "<think>t</think><answer>(0,0),(100,60)</answer>"    # IoU 0.6: eval-correct, no box reward at 0.8
FMT_NINETY = "<think>t</think><answer>(0,0),(100,90)</answer>"   # IoU 0.9: correct under both
BARE_SIXTY = "<answer>(0,0),(100,60)</answer>"                    # IoU 0.6, no <think>: reward 0.0
BOX_IN_THINK = "<think>(0,0),(100,100)</think><answer>left</answer>"  # eval-correct (whole text), reward 0.5


class TestRewardRule:
    """``correct="reward"``: a sample counts when GRPO's own box reward is > 0, which the two rules
    can disagree on (IoU 0.6 is eval-correct but earns nothing past the 0.8 threshold)."""

    def test_iou_sixty_is_correct_for_eval_not_for_reward(self):
        rows = _rows(2)
        samples = {"q0": [FMT_SIXTY] * 2 + [WRONG] * 2, "q1": [FMT_NINETY, WRONG, WRONG, WRONG]}
        ev, ev_stats = rl_filter(rows, None, samples=samples)
        rw, rw_stats = rl_filter(rows, None, samples=samples, correct="reward")
        assert ev.column("question_id").to_pylist() == ["q0", "q1"]
        assert ev.column("n_correct").to_pylist() == [2, 1]
        assert rw.column("question_id").to_pylist() == ["q1"]
        assert rw.column("n_correct").to_pylist() == [1]
        assert (ev_stats["correct"], rw_stats["correct"]) == ("eval", "reward")
        assert rw_stats["count_histogram"] == {0: 1, 1: 1} and ev_stats["count_histogram"] == {1: 1, 2: 1}
        # both counts are always recorded, whichever rule filtered
        assert rw.column("n_correct_eval").to_pylist() == [1] and rw.column("n_correct_reward").to_pylist() == [1]

    def test_threshold_comes_from_the_reward_config(self):
        from deepperception.training.rewards import RewardConfig

        rows = _rows(1)
        samples = {"q0": [FMT_SIXTY, WRONG, WRONG, WRONG]}
        with pytest.raises(RLFilterEmptyError):  # 0.6 is not > 0.8 (released)
            rl_filter(rows, None, samples=samples, correct="reward")
        kept, stats = rl_filter(rows, None, samples=samples, correct="reward",
                                reward=RewardConfig(iou_threshold=0.5))
        assert kept.column("n_correct").to_pylist() == [1]
        assert stats["reward"]["iou_threshold"] == 0.5
        # dense kinds: any overlap pays (continuous IoU 0.6 > 0)
        kept, _ = rl_filter(rows, None, samples=samples, correct="reward", reward=RewardConfig(iou_kind="continuous"))
        assert kept.column("n_correct").to_pylist() == [1]

    def test_reward_reads_the_first_answer_eval_reads_the_whole_text(self):
        rows = _rows(1)
        kept, _ = rl_filter(rows, None, samples={"q0": [BOX_IN_THINK, WRONG, WRONG, WRONG]}, on_empty="keep_all",
                            correct="reward")
        assert kept.column("n_correct_eval").to_pylist() == [1]
        assert kept.column("n_correct_reward").to_pylist() == [0]
        assert kept.column("sample_rewards").to_pylist() == [[0.5, 0.0, 0.0, 0.0]]  # format half only

    def test_sample_rewards_are_grpos_full_reward(self):
        from deepperception.training.rewards import make_reward_funcs

        texts = [FMT_RIGHT, FMT_SIXTY, BARE_SIXTY, WRONG]
        kept, _ = rl_filter(_rows(1), None, samples={"q0": texts})
        want = [sum(f([t], [GT])[0] for f in make_reward_funcs()) for t in texts]
        assert kept.column("sample_rewards").to_pylist() == [pytest.approx(want)]
        assert want == pytest.approx([1.5, 0.5, 0.0, 0.0])

    def test_unknown_rule_is_refused(self):
        with pytest.raises(ConfigError, match="correct must be one of"):
            rl_filter(_rows(1), None, samples={"q0": [WRONG] * 4}, correct="strict")  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            RLFilterConfig(correct="strict")

    def test_config_reward_defaults_to_the_released_one(self):
        from deepperception.training.grpo import GRPOStageConfig

        cfg = RLFilterConfig()
        assert cfg.correct == "eval" and cfg.reward is None
        assert cfg.reward_config() == GRPOStageConfig().reward
        from deepperception.training.rewards import RewardConfig

        assert RLFilterConfig(reward={"iou_threshold": 0.85}).reward_config() == RewardConfig(iou_threshold=0.85)


class TestZeroAdvantageStats:
    """Each item's samples as one GRPO group under the full reward: zero std = no gradient. The
    stats give that share for the pool and for what each rule keeps, whichever rule ran."""

    def _pool(self):
        rows = _rows(4)
        samples = {
            "q0": [FMT_SIXTY] * 4,                               # eval 4/4 (dropped); rewards all 0.5 -> zero std
            "q1": [FMT_SIXTY, FMT_SIXTY, BARE_SIXTY, WRONG],     # eval 3/4 kept; rewards .5 .5 0 0 -> signal
            "q2": [FMT_SIXTY, FMT_SIXTY, FMT_SIXTY, FMT_RIGHT],  # eval 4/4 dropped; reward 1/4 kept; signal
            "q3": [BARE_SIXTY, WRONG, WRONG, WRONG],             # eval 1/4 kept; rewards all 0 -> zero std
        }
        return rows, samples

    def test_pool_and_kept_shares_under_both_rules(self):
        rows, samples = self._pool()
        kept, stats = rl_filter(rows, None, samples=samples)
        assert kept.column("question_id").to_pylist() == ["q1", "q3"]
        assert kept.column("zero_std").to_pylist() == [False, True]
        z = stats["zero_advantage"]
        assert (z["applied"], z["group_size"]) == ("eval", 4)
        assert z["pool"] == {"groups": 4, "zero_std": 2, "fraction": 0.5}
        assert z["kept"]["eval"] == {"policy": "filter", "n_kept": 2, "zero_std": 1, "fraction": 0.5,
                                     "count_histogram": {1: 1, 3: 1, 4: 2}}
        assert z["kept"]["reward"] == {"policy": "filter", "n_kept": 1, "zero_std": 0, "fraction": 0.0,
                                       "count_histogram": {0: 3, 1: 1}}
        # the other rule's run reports the very same comparison, only `applied` changes
        kept_r, stats_r = rl_filter(rows, None, samples=samples, correct="reward")
        assert kept_r.column("question_id").to_pylist() == ["q2"]
        assert {**stats_r["zero_advantage"], "applied": "eval"} == z
        assert "pool 50%; kept by eval (applied) 2 items, 50%; kept by reward 1 items, 0%" in \
            rlf_describe(stats)

    def test_a_rule_that_keeps_nothing_is_reported_not_raised(self):
        rows = _rows(2)
        samples = {"q0": [FMT_SIXTY, WRONG, WRONG, WRONG], "q1": [FMT_SIXTY] * 2 + [WRONG] * 2}
        _, stats = rl_filter(rows, None, samples=samples)  # eval keeps both; reward keeps none
        k = stats["zero_advantage"]["kept"]["reward"]
        assert (k["policy"], k["n_kept"], k["zero_std"], k["fraction"]) == ("empty", 0, None, None)
        _, stats = rl_filter(rows, None, samples=samples, on_empty="keep_all")
        assert stats["zero_advantage"]["kept"]["reward"]["policy"] == "keep_all"
        assert stats["zero_advantage"]["kept"]["reward"]["n_kept"] == 2

    def test_a_group_of_one_has_no_std(self):
        kept, stats = rl_filter(_rows(1), None, samples={"q0": [FMT_RIGHT]}, n_samples=1, keep_min=1, keep_max=1)
        assert kept.column("zero_std").to_pylist() == [None]
        assert stats["zero_advantage"]["pool"] == {"groups": 1, "zero_std": None, "fraction": None}
        assert "pool n/a" in rlf_describe(stats)

    def test_equal_rewards_within_float32_are_zero_std(self):
        from deepperception.training.rl_filter import zero_std

        assert zero_std([0.1 + 0.2, 0.3, 0.3])  # float64-different, float32-equal: TRL sees std 0
        assert not zero_std([0.0, 0.0, 0.0, 1e-3])


def rlf_describe(stats):
    from deepperception.training.rl_filter import describe_zero_advantage

    return describe_zero_advantage(stats)
