"""Health monitors never change training; the KL option is wired; GRPO resumes after a crash.

A random tiny model earns 0 from the released rewards (no gradient at all), so these runs put a
reward that varies on random text (the share of digits) in the box reward's slot: the monitor
wraps whatever the first reward function is."""

from __future__ import annotations

import json

import pytest
import torch

from deepperception.config import load_profile
from deepperception.model.loading import load_model
from deepperception.model.synthetic import synthetic_grpo_rows, synthetic_sft_rows


def digit_reward(completions, **kwargs):
    from deepperception.training.rewards import completion_text

    texts = [completion_text(c) for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


@pytest.fixture
def varying_reward(monkeypatch):
    import deepperception.training.grpo as grpo

    real = grpo.make_reward_funcs
    monkeypatch.setattr(grpo, "make_reward_funcs", lambda cfg: [digit_reward, real(cfg)[1]])


def _grpo_cfg(**kw):
    base = dict(max_steps=3, beta=0.04, learning_rate=5e-3, resume_steps=1, max_completion_length=12)
    return load_profile("toy", {"grpo": {**base, **kw}}).grpo


def _weights(d):
    return load_model(d).state_dict()


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def grpo_reference(tiny_ckpt, tmp_path_factory):
    """The default run (monitors on, use_bias_correction_kl False), shared by the comparisons."""
    import deepperception.training.grpo as grpo
    from deepperception.training.grpo import train_grpo

    real = grpo.make_reward_funcs
    grpo.make_reward_funcs = lambda cfg: [digit_reward, real(cfg)[1]]
    try:
        d = tmp_path_factory.mktemp("grpo-ref")
        res = train_grpo(synthetic_grpo_rows(4), tiny_ckpt, d / "out", _grpo_cfg(), work_dir=d / "work")
    finally:
        grpo.make_reward_funcs = real
    return res


def test_grpo_monitors_record_every_step_and_leave_the_weights_alone(grpo_reference, varying_reward, tiny_ckpt,
                                                                     tmp_path):
    from deepperception.training.grpo import train_grpo

    ref = grpo_reference
    mon = json.loads((ref.checkpoint_dir / "monitors.json").read_text())
    assert [r["step"] for r in mon["rows"]] == [1, 2, 3]
    row = mon["rows"][0]
    for key in ("digit_reward_mean", "digit_reward_std", "format_reward_mean", "parse_rate", "whole_image_share",
                "zero_std_share", "completion_length", "clipped_share", "kl"):
        assert row[key] is not None, key
    assert 0 <= row["parse_rate"] <= 1 and "flags" in mon["summary"]
    assert ref.metrics["health_flags"] == mon["summary"]["flags"]

    plain = train_grpo(synthetic_grpo_rows(4), tiny_ckpt, tmp_path / "out", _grpo_cfg(), monitors=False)
    plain_rows = json.loads((plain.checkpoint_dir / "monitors.json").read_text())["rows"]
    assert all(r["parse_rate"] is None for r in plain_rows)  # the completion statistics were really off
    a, b = _weights(ref.checkpoint_dir), _weights(plain.checkpoint_dir)
    assert not _same(a, _weights(tiny_ckpt))  # the runs did learn something
    assert _same(a, b)
    assert ref.metrics["train_losses"] == plain.metrics["train_losses"]
    assert ref.metrics["reward"] == plain.metrics["reward"]


def test_use_bias_correction_kl_reaches_the_trainer(grpo_reference, varying_reward, tiny_ckpt, tmp_path):
    """Default False (the fork's plain k3 KL); TRL's True multiplies the KL by the (differentiable)
    ratio, which changes the update once the policy has left the reference."""
    from deepperception.training.grpo import GRPOStageConfig, train_grpo

    assert GRPOStageConfig().use_bias_correction_kl is False
    biased = train_grpo(synthetic_grpo_rows(4), tiny_ckpt, tmp_path / "out", _grpo_cfg(use_bias_correction_kl=True))
    assert not _same(_weights(grpo_reference.checkpoint_dir), _weights(biased.checkpoint_dir))


def test_grpo_crash_then_rerun_resumes_and_matches(grpo_reference, varying_reward, tiny_ckpt, tmp_path, monkeypatch):
    import transformers

    from deepperception.training.grpo import train_grpo

    real_step = transformers.Trainer.training_step

    def crash_at_3(self, *a, **k):
        if self.state.global_step == 2:
            raise RuntimeError("simulated crash in step 3")
        return real_step(self, *a, **k)

    monkeypatch.setattr(transformers.Trainer, "training_step", crash_at_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_grpo(synthetic_grpo_rows(4), tiny_ckpt, tmp_path / "out", _grpo_cfg(), work_dir=tmp_path / "work")
    monkeypatch.setattr(transformers.Trainer, "training_step", real_step)
    res = train_grpo(synthetic_grpo_rows(4), tiny_ckpt, tmp_path / "out", _grpo_cfg(), work_dir=tmp_path / "work")
    assert res.metrics["resumed_from_step"] == 2 and res.metrics["steps"] == 3
    assert len(res.metrics["reward"]) == 3  # steps 1-2 restored from the checkpoint's log, 3 trained now
    # Exact, across the epoch boundary (4 rows = 2 steps per epoch): the resumed run replays the
    # sampler's skipped epoch (checkpoints.replay_epochs), as well as weights, optimizer and RNG.
    assert res.metrics["reward"] == grpo_reference.metrics["reward"]
    assert res.metrics["train_losses"] == grpo_reference.metrics["train_losses"]
    assert _same(_weights(res.checkpoint_dir), _weights(grpo_reference.checkpoint_dir))


def test_sft_image_token_counts_and_same_weights_without_monitors(tiny_ckpt, tmp_path):
    from deepperception.model.loading import load_processor
    from deepperception.training.preflight import image_tokens
    from deepperception.training.sft import train_sft

    cfg = load_profile("toy", {"sft": {"max_steps": 2, "per_device_train_batch_size": 2}}).sft
    rows = synthetic_sft_rows(4)
    on = train_sft(rows, tiny_ckpt, tmp_path / "on", cfg)
    off = train_sft(rows, tiny_ckpt, tmp_path / "off", cfg, monitors=False)
    assert _same(_weights(on.checkpoint_dir), _weights(off.checkpoint_dir))
    assert on.metrics["train_losses"] == off.metrics["train_losses"]
    from PIL import Image
    import io

    proc = load_processor(tiny_ckpt)
    per_image = [image_tokens(proc.image_processor, *Image.open(io.BytesIO(r["images"][0])).size)
                 for r in rows.to_pylist()]
    assert on.metrics["image_tokens"] == [float(sum(per_image[:2])), float(sum(per_image[2:]))]
    assert len(on.metrics["mean_token_accuracy"]) == 2 and off.metrics["image_tokens"] == []
    mon = json.loads((on.checkpoint_dir / "monitors.json").read_text())
    assert [r["step"] for r in mon["rows"]] == [1, 2] and mon["rows"][0]["image_tokens"] == per_image[0] + per_image[1]
