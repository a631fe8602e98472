"""SFT, GRPO and RL filtering on the tiny model (seconds each)."""

import json

import pytest

from deepperception.config import load_profile, profile
from deepperception.errors import ConfigError, InputDataError


def test_sft_loss_decreases_and_checkpoint_reloads(tiny_ckpt, tmp_path):
    from deepperception.eval.inference import run_inference
    from deepperception.model.loading import load_model, load_processor, read_pixel_limits
    from deepperception.model.synthetic import synthetic_bench, synthetic_sft_rows
    from deepperception.training.sft import train_sft

    cfg = load_profile("toy", {"sft": {"max_steps": 6}}).sft
    res = train_sft(synthetic_sft_rows(8), tiny_ckpt, tmp_path / "sft", cfg)
    m = res.metrics
    assert m["steps"] == 6 and len(m["train_losses"]) == 6
    assert m["train_loss_last"] < m["train_loss_first"] - 0.3
    assert m["params_trainable"] < m["params_total"]  # vision tower + projector frozen
    d = res.checkpoint_dir
    load_model(d), load_processor(d)
    assert read_pixel_limits(d) == read_pixel_limits(tiny_ckpt)
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["top_k"] == 1 and gen["repetition_penalty"] == 1.05  # base decoding kept
    stage = json.loads((d / "train_stage.json").read_text())
    assert stage["stage"] == "sft" and stage["config"]["learning_rate"] == cfg.learning_rate
    out = run_inference(synthetic_bench(2), d, tmp_path / "eval", max_new_tokens=4)
    assert len(out.read_text().splitlines()) == 2


def test_sft_frozen_vision_weights_unchanged(tiny_ckpt, tmp_path):
    import torch

    from deepperception.model.loading import load_model
    from deepperception.model.synthetic import synthetic_sft_rows
    from deepperception.training.sft import train_sft

    res = train_sft(synthetic_sft_rows(4), tiny_ckpt, tmp_path / "sft", load_profile("toy", {"sft": {"max_steps": 1}}).sft)
    a, b = load_model(tiny_ckpt).state_dict(), load_model(res.checkpoint_dir).state_dict()
    vis = [k for k in a if ".visual." in k or k.startswith("visual.") or "model.visual" in k]
    assert vis and all(torch.equal(a[k], b[k]) for k in vis)
    assert any(not torch.equal(a[k], b[k]) for k in a if k not in vis)


def test_sft_rejects_bad_rows(tiny_ckpt, tmp_path):
    import pyarrow as pa

    from deepperception.training.sft import train_sft
    t = pa.Table.from_pylist([{"question_id": "a", "messages": "{not json", "images": [b""]}])
    with pytest.raises(InputDataError, match="row=a field=messages"):
        train_sft(t, tiny_ckpt, tmp_path, profile("toy").sft)


def test_grpo_two_steps(tiny_ckpt, tmp_path):
    from deepperception.model.loading import load_model
    from deepperception.model.synthetic import synthetic_grpo_rows
    from deepperception.training.grpo import train_grpo

    cfg = load_profile("toy", {"grpo": {"max_steps": 2, "beta": 0.04}}).grpo
    res = train_grpo(synthetic_grpo_rows(4), tiny_ckpt, tmp_path / "grpo", cfg)
    m = res.metrics
    assert m["steps"] == 2 and len(m["reward"]) == 2 and len(m["kl"]) == 2
    load_model(res.checkpoint_dir)
    stage = json.loads((res.checkpoint_dir / "train_stage.json").read_text())
    assert stage["config"]["iou_threshold"] == 0.8 and stage["config"]["format_mode"] == "released"


def test_grpo_config_validation_names_fields():
    with pytest.raises(ValueError, match="per_device_train_batch_size.*gradient_accumulation_steps.*num_generations"):
        load_profile("toy", {"grpo": {"per_device_train_batch_size": 2, "num_generations": 4}})
    p = profile("paper").grpo
    assert (p.learning_rate, p.num_generations, p.max_completion_length, p.beta, p.image_max_pixels) == (
        1e-6, 4, 512, 0.04, 401408)
    from deepperception.training.common import resolve_deepspeed

    assert p.deepspeed and json.load(open(resolve_deepspeed(p.deepspeed)))["zero_optimization"]["stage"] == 3
    with pytest.raises(ConfigError):
        load_profile("nope")


def test_sft_paper_profile():
    p = profile("paper").sft
    assert (p.learning_rate, p.num_train_epochs, p.lr_scheduler_type, p.warmup_ratio, p.bf16,
            p.per_device_train_batch_size, p.freeze_vision_tower, p.freeze_projector) == (
        5e-6, 1.0, "cosine", 0.1, True, 2, True, True)


def test_rl_filter_counts_and_policies():
    from deepperception.model.synthetic import synthetic_grpo_rows
    from deepperception.training.rl_filter import RLFilterEmptyError, rl_filter

    rows = synthetic_grpo_rows(4)
    qids = rows.column("question_id").to_pylist()
    gt = "<answer>(0,0),(100,120)</answer>"  # == row 0's box
    wrong = "<answer>(900,900),(999,999)</answer>"
    samples = {qids[0]: [gt, gt, wrong, wrong], qids[1]: [wrong] * 4, qids[2]: [wrong] * 4,
               qids[3]: [wrong] * 4}
    kept, stats = rl_filter(rows, None, samples=samples)
    assert kept.column("question_id").to_pylist() == [qids[0]]
    assert kept.column("n_correct").to_pylist() == [2]
    assert stats["count_histogram"] == {0: 3, 2: 1} and stats["policy_applied"] == "filter"
    samples[qids[0]] = [wrong] * 4
    with pytest.raises(RLFilterEmptyError):
        rl_filter(rows, None, samples=samples)
    kept, stats = rl_filter(rows, None, samples=samples, on_empty="keep_all")
    assert kept.num_rows == 4 and stats["policy_applied"] == "keep_all"
    with pytest.raises(ConfigError):
        rl_filter(rows, None, keep_min=3, keep_max=1, samples=samples)


def test_rl_filter_samples_with_the_model(tiny_ckpt):
    from deepperception.model.synthetic import synthetic_grpo_rows
    from deepperception.training.rl_filter import rl_filter

    kept, stats = rl_filter(synthetic_grpo_rows(3), tiny_ckpt, n_samples=2, keep_min=1, keep_max=1,
                            on_empty="keep_all", max_new_tokens=8, batch_size=3)
    assert stats["n_in"] == 3 and sum(stats["count_histogram"].values()) == 3
    assert all(len(x) == 2 for x in kept.column("sample_ious").to_pylist())
