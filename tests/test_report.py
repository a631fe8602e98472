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
