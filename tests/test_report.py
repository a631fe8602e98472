from deepperception.report import EvalSummary, render_json, render_markdown


def _summary(label, acc):
    metrics = {"all": {"all": {"Acc": acc, "IoU": 0.4, "Num": 10}},
               "seen domain": {"all": {"Acc": acc, "IoU": 0.4, "Num": 6}},
               "unseen domain": {"all": {"Acc": acc, "IoU": 0.4, "Num": 4}},
               "fish": {"all": {"Acc": acc, "IoU": 0.4, "Num": 6}}}
    return EvalSummary(label=label, checkpoint=f"{label}-checkpoint@1", bench="bench@2", evaluation="evaluation@3",
                       config_hash="c", code_version="0.1.0", metrics=metrics,
                       strict={"all": {"Acc": acc / 2, "parse_rate": 0.9, "official_hits_outside_answer": 1}},
                       cis={"all": {"lo": acc - 0.1, "hi": acc + 0.1}},
                       extra={"train": {"steps": 16, "runtime_s": 3.5, "train_loss_first": 6.8, "train_loss_last": 0.08,
                                        "reward": [0.31, 0.54]}} if label == "sft" else {})


def test_markdown_has_every_checkpoint_number_and_lineage():
    md = render_markdown([_summary("base", 0.3), _summary("sft", 0.5)], {"profile": "toy"})
    assert "| all | 10 | 30.00 [20.00, 40.00] | 40.00 | 50.00 [40.00, 60.00] | 40.00 |" in md
    assert "| fish | 6 |" in md
    assert "`sft-checkpoint@1` | `bench@2` | `evaluation@3`" in md
    assert "| sft | 25.00 | 90.00 | 1 |" in md
    assert "| sft | 16 | 3.50 | 6.8000 → 0.0800 | 0.310 → 0.540 |" in md
    assert "| base | 16" not in md


def test_json_keeps_official_fractions():
    out = render_json([_summary("base", 0.3)], {"profile": "toy"})
    assert out["checkpoints"][0]["metrics"]["all"]["all"]["Acc"] == 0.3


# ---- the comparison report: arms side by side per bench, paired differences -------------------

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from deepperception.comparison import arm_order  # noqa: E402
from deepperception.report import paired_differences  # noqa: E402

ARMS = arm_order(["baseline", "r1"], True)


def _predictions(correct, seen):
    n = len(correct)
    return pd.DataFrame({"question_id": [f"q{i}" for i in range(n)], "category": ["car" if s else "dog" for s in seen],
                         "domain": ["seen" if s else "unseen" for s in seen], "correct": correct})


def _arm(label, bench_name, pred):
    acc = float(np.mean(pred["correct"]))
    s = _summary(label, acc)
    return s.model_copy(update={"bench_name": bench_name, "bench": f"bench@{bench_name}",
                                "evaluation": f"evaluation@{bench_name}-{label.replace(' ', '_')}"})


@pytest.fixture
def comparison():
    rng = np.random.default_rng(0)
    seen = rng.random(60) < 0.6
    rates = {ARMS[0]: 0.1, ARMS[1]: 0.15, "direct-sft": 0.3, "sft": 0.45, "grpo": 0.5}
    summaries, preds = [], {}
    for bench in ("composed", "kvg-bench"):
        for label in ARMS:
            p = _predictions((rng.random(60) < rates[label]).astype(float), seen)
            s = _arm(label, bench, p)
            summaries.append(s)
            preds[s.evaluation] = p
    return summaries, preds


def test_paired_differences_cover_the_papers_comparisons_per_bench_and_group(comparison):
    summaries, preds = comparison
    diffs = paired_differences(summaries, preds, n_resamples=300, seed=1)
    got = {(d.bench_name, d.a, d.b) for d in diffs}
    for bench in ("composed", "kvg-bench"):
        assert {(bench, "sft", "direct-sft"), (bench, "grpo", "sft"), (bench, "sft", "base (r1 prompt)")} <= got
    first = next(d for d in diffs if (d.bench_name, d.a, d.b, d.group) == ("composed", "sft", "direct-sft", "all"))
    a = preds["evaluation@composed-sft"]["correct"].mean()
    b = preds["evaluation@composed-direct-sft"]["correct"].mean()
    assert first.delta == pytest.approx(a - b) and first.lo <= first.delta <= first.hi and first.n == 60
    assert {d.group for d in diffs} == {"all", "seen domain", "unseen domain"}
    assert all(d.lo <= d.delta <= d.hi for d in diffs)
    # Seeded: the same inputs give the same intervals.
    again = paired_differences(summaries, preds, n_resamples=300, seed=1)
    assert [d.model_dump() for d in again] == [d.model_dump() for d in diffs]


def test_markdown_sets_five_arms_side_by_side_then_the_differences_per_bench(comparison):
    summaries, preds = comparison
    diffs = paired_differences(summaries, preds, n_resamples=300)
    md = render_markdown(summaries, {"profile": "toy", "extra benches": {"kvg-bench": "bench@kvg-bench"}}, diffs)
    assert "- **extra benches**: `kvg-bench`: `bench@kvg-bench`" in md
    composed = md.split("## Bench composed (`bench@composed`)")[1].split("## Bench kvg-bench")[0]
    side = composed.split("### Arms side by side")[1].split("###")[0].strip().splitlines()
    assert side[0].startswith("| arm | all N | all Acc\\@0.5 [95% CI] | all IoU | seen domain N")
    assert [r.split(" | ")[0] for r in side[2:]] == [
        "| base, raw question (baseline prompt)", "| base (r1 prompt)", "| direct-SFT", "| CoT-SFT", "| CoT-SFT+GRPO"]
    assert side[5].endswith("| `evaluation@composed-sft` | `sft-checkpoint@1` |")  # each row names its versions
    d = next(x for x in diffs if (x.bench_name, x.a, x.b, x.group) == ("composed", "sft", "direct-sft", "all"))
    row = (f"| CoT-SFT − direct-SFT ({d.why}) | all | 60 | {100 * d.acc_a:.2f} | {100 * d.acc_b:.2f} | "
           f"{100 * d.delta:+.2f} [{100 * d.lo:+.2f}, {100 * d.hi:+.2f}] | {d.p_value:.3f} | "
           "`evaluation@composed-sft`, `evaluation@composed-direct-sft` |")
    assert row in composed
    assert "## Bench kvg-bench (`bench@kvg-bench`)" in md and md.count("### Differences (paired bootstrap)") == 2


def test_json_carries_the_differences_and_each_arms_bench():
    preds = {f"evaluation@{k}": _predictions([1.0, 0.0, 1.0, 1.0], [True, True, False, False]) for k in ("s", "d")}
    summaries = [_arm("sft", "composed", preds["evaluation@s"]).model_copy(update={"evaluation": "evaluation@s"}),
                 _arm("direct-sft", "composed", preds["evaluation@d"]).model_copy(update={"evaluation": "evaluation@d"})]
    diffs = paired_differences(summaries, preds, n_resamples=100)
    out = render_json(summaries, {"profile": "toy"}, diffs)
    assert [c["bench_name"] for c in out["checkpoints"]] == ["composed", "composed"]
    assert [(d["a"], d["b"], d["group"], d["delta"]) for d in out["differences"]] == [
        ("sft", "direct-sft", g, 0.0) for g in ("all", "seen domain", "unseen domain")]
    assert out["differences"][0]["evaluation_a"] == "evaluation@s"
