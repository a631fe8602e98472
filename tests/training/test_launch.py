"""Training in a launched process: the same trainer, inputs handed over as Parquet + JSON."""

from deepperception.model.loading import load_model
from deepperception.model.synthetic import synthetic_sft_rows
from deepperception.training.launch import LaunchConfig, command, run_training
from deepperception.config import profile


def test_subprocess_launch_trains_and_returns_result(tiny_ckpt, tmp_path):
    cfg = profile("toy").sft  # 2 steps
    result = run_training("sft", synthetic_sft_rows(4), tiny_ckpt, tmp_path / "out", cfg, LaunchConfig(kind="subprocess"))
    assert result.metrics["steps"] == 2 and len(result.metrics["train_losses"]) == 2
    assert not (tmp_path / "out" / "launch_result.json").exists()
    load_model(result.checkpoint_dir)  # reloadable


def test_accelerate_command_line(tmp_path):
    from deepperception.training.grpo import GRPOStageConfig

    cmd = command(GRPOStageConfig.ENTRY, tmp_path, "/ckpt", "/out", LaunchConfig(kind="accelerate", num_processes=8))
    assert cmd[1:6] == ["launch", "--config_file", "infra/accelerate/zero3.yaml", "--num_processes", "8"]
    assert cmd[6:8] == ["-m", "deepperception.training.grpo"]  # the stage's own module, not a dispatcher
    assert "--config" in cmd and str(tmp_path / "rows.parquet") in cmd


def test_a_config_of_another_stage_is_refused(tmp_path):
    import pytest

    from deepperception.errors import PipelineError

    with pytest.raises(PipelineError, match="grpo training was given a SFTStageConfig"):
        run_training("grpo", synthetic_sft_rows(1), "/nowhere", tmp_path / "out", profile("toy").sft)
