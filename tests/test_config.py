"""Profiles build, validate and hash stably; bad combinations are refused with the field named."""

import pytest

from deepperception.config import ReproductionConfig, profile, shipped_profiles
from deepperception.training.launch import LaunchConfig
from deepperception.version import config_hash


@pytest.mark.parametrize("name", sorted(shipped_profiles()))
def test_profiles_validate_and_roundtrip(name):
    cfg = profile(name)
    again = ReproductionConfig.model_validate_json(cfg.model_dump_json())
    assert config_hash(again.sft) == config_hash(cfg.sft)


def test_paper_profile_carries_no_machine_paths():
    cfg = profile("paper")
    assert cfg.sft.deepspeed == "infra/deepspeed/zero3.json" == cfg.grpo.deepspeed


def test_launch_and_grpo_world_size_must_agree():
    cfg = profile("paper").model_dump()
    cfg["launch"] = LaunchConfig(kind="accelerate", num_processes=4).model_dump()
    with pytest.raises(ValueError, match="world_size"):
        ReproductionConfig.model_validate(cfg)
