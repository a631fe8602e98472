"""TRL's SFTConfig/GRPOConfig built from our typed configs by one generic mapping
(deepperception.training.trl_args): every field of ours is passed, renamed, computed or declared
ours-only, and the keyword arguments equal the field-by-field copy the stages used before."""

from __future__ import annotations

import pytest
from pydantic import Field, create_model
from trl import GRPOConfig, SFTConfig

from deepperception.config import profile
from deepperception.errors import ConfigError
from deepperception.training.grpo import GRPO_TRL, GRPOStageConfig, grpo_trl_kwargs
from deepperception.training.sft import SFT_TRL, SFTStageConfig, sft_trl_kwargs
from deepperception.training.trl_args import trl_field_names

PROFILES = ("toy", "demo", "paper")


def _resolve(path):
    from deepperception.training.common import resolve_deepspeed

    return resolve_deepspeed(path)


def _sft_before(cfg, out, bf16):
    """The field-by-field SFTConfig call of train_sft before the mapping (frozen copy)."""
    return dict(
        output_dir=str(out), learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps, per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay, bf16=bf16, fp16=False,
        use_cpu=cfg.use_cpu, activation_checkpointing=cfg.activation_checkpointing, max_length=cfg.max_length,
        assistant_only_loss=cfg.assistant_only_loss, deepspeed=_resolve(cfg.deepspeed), seed=cfg.seed,
        data_seed=cfg.seed, logging_steps=cfg.logging_steps, dataloader_num_workers=cfg.dataloader_num_workers,
        report_to=cfg.report_to, save_strategy="no", disable_tqdm=True,
    )


def _grpo_before(cfg, out, bf16):
    """The field-by-field GRPOConfig call of train_grpo before the mapping (frozen copy)."""
    return dict(
        output_dir=str(out), learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps, per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, top_k=cfg.top_k,
        top_p=cfg.top_p, beta=cfg.beta, loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards,
        use_bias_correction_kl=cfg.use_bias_correction_kl,
        use_vllm=cfg.use_vllm, bf16=bf16, fp16=False, use_cpu=cfg.use_cpu,
        activation_checkpointing=cfg.activation_checkpointing, lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay, deepspeed=_resolve(cfg.deepspeed),
        seed=cfg.seed, data_seed=cfg.seed, logging_steps=cfg.logging_steps, report_to=cfg.report_to,
        save_strategy="no", dataloader_num_workers=0, disable_tqdm=True,
    )


@pytest.mark.parametrize("name", PROFILES)
@pytest.mark.parametrize("bf16", [False, True])
def test_the_mapping_passes_what_the_field_by_field_copy_passed(name, bf16, tmp_path):
    """Same keyword arguments (values and types) as before for every shipped profile: the
    change is bit-identical. A field added later may only add a passed-through key."""
    cfg = profile(name)
    for new, old, trl in ((sft_trl_kwargs(cfg.sft, tmp_path, bf16=bf16), _sft_before(cfg.sft, tmp_path, bf16), SFTConfig),
                          (grpo_trl_kwargs(cfg.grpo, tmp_path, bf16=bf16), _grpo_before(cfg.grpo, tmp_path, bf16),
                           GRPOConfig)):
        assert {k: new[k] for k in old} == old
        assert {k: type(new[k]) for k in old} == {k: type(v) for k, v in old.items()}
        assert set(new) - set(old) <= trl_field_names(trl)


@pytest.mark.parametrize("cfg_cls,mapping,trl", [(SFTStageConfig, SFT_TRL, SFTConfig),
                                                 (GRPOStageConfig, GRPO_TRL, GRPOConfig)])
def test_every_field_of_ours_has_a_place(cfg_cls, mapping, trl):
    """Each field is passed under its own name, renamed, computed at run time, or declared
    ours-only; ``classify`` raises for any other, so a new field cannot be lost silently."""
    roles = mapping.classify(cfg_cls, trl)
    assert set(roles) == set(cfg_cls.model_fields)
    trl_names = trl_field_names(trl)
    for field, (role, target) in roles.items():
        if role == "ours-only":
            assert target is None
        else:
            assert target in trl_names, field
    # Fields TRL also has but that are ours on purpose stay ours (our callback publishes steps).
    assert roles["save_steps"] == ("ours-only", None)
    assert roles["warmup_ratio"] == ("renamed", "warmup_steps")


def test_a_new_field_without_a_place_is_refused(tmp_path):
    new_cls = create_model("SFTStageConfig", __base__=SFTStageConfig,
                           label_smoothing_typo=(float, Field(0.1, description="a field TRL has no such name for")))
    with pytest.raises(ConfigError, match=r"\['label_smoothing_typo'\] are not fields of SFTConfig"):
        SFT_TRL.classify(new_cls, SFTConfig)
    with pytest.raises(ConfigError, match="label_smoothing_typo"):
        SFT_TRL.kwargs(new_cls(), SFTConfig, output_dir=str(tmp_path), bf16=False, deepspeed=None)
    # A new field whose name TRL knows passes through with no edit anywhere.
    passing = create_model("SFTStageConfig", __base__=SFTStageConfig,
                           max_grad_norm=(float, Field(0.5, description="clip")))
    kw = SFT_TRL.kwargs(passing(), SFTConfig, output_dir=str(tmp_path), bf16=False, deepspeed=None)
    assert kw["max_grad_norm"] == 0.5


def test_computed_fields_must_be_given_and_set_once(tmp_path):
    cfg = SFTStageConfig()
    with pytest.raises(ConfigError, match=r"computed fields \['bf16'\] need a value"):
        SFT_TRL.kwargs(cfg, SFTConfig, output_dir=str(tmp_path), deepspeed=None)
    with pytest.raises(ConfigError, match=r"\['seed'\] set both by the config and by the stage"):
        SFT_TRL.kwargs(cfg, SFTConfig, output_dir=str(tmp_path), bf16=False, deepspeed=None, seed=1)


def test_trl_accepts_the_toy_configs(tmp_path):
    cfg = profile("toy")
    sft = SFTConfig(**sft_trl_kwargs(cfg.sft, tmp_path / "s", bf16=False))
    grpo = GRPOConfig(**grpo_trl_kwargs(cfg.grpo, tmp_path / "g", bf16=False))
    assert (sft.max_steps, sft.learning_rate, sft.save_strategy) == (cfg.sft.max_steps, cfg.sft.learning_rate, "no")
    assert (grpo.num_generations, grpo.beta, grpo.data_seed) == (cfg.grpo.num_generations, cfg.grpo.beta, cfg.grpo.seed)
