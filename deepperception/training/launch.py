"""Run a training stage in its own process(es): one Python process, or ``accelerate launch``
across the GPUs of a worker (DeepSpeed ZeRO-3 for the paper's 8-GPU runs).

The same ``train_sft`` / ``train_grpo`` functions run either way; this module only moves their
inputs (rows as Parquet, config as JSON) to the launched processes and the result back::

    accelerate launch --config_file infra/accelerate/zero3.yaml --num_processes 8 \\
        -m deepperception.training.launch sft --rows rows.parquet --init CKPT --out OUT --config cfg.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from deepperception.errors import PipelineError
from deepperception.training.common import TrainResult

Stage = Literal["sft", "grpo"]


class LaunchConfig(BaseModel):
    """How a training stage's processes are started on the worker that runs it."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["inprocess", "subprocess", "accelerate"] = Field(
        "inprocess", description="inprocess: call the trainer here (CPU demo); subprocess: one fresh Python "
        "process; accelerate: `accelerate launch` with the config below (multi-GPU).")
    accelerate_config: str = Field("infra/accelerate/zero3.yaml", description="accelerate config file (kind=accelerate).")
    num_processes: int = Field(8, ge=1, description="Processes (GPUs) for kind=accelerate.")


def _config_class(stage: Stage):
    if stage == "sft":
        from deepperception.training.sft import SFTStageConfig

        return SFTStageConfig
    from deepperception.training.grpo import GRPOStageConfig

    return GRPOStageConfig


def _train(stage: Stage, rows: pa.Table, init: str | Path, out: str | Path, cfg,
           work: str | Path | None = None) -> TrainResult:
    if stage == "sft":
        from deepperception.training.sft import train_sft

        return train_sft(rows, init, out, cfg, work_dir=work)
    from deepperception.training.grpo import train_grpo

    return train_grpo(rows, init, out, cfg, work_dir=work)


def command(stage: Stage, work: Path, init: str | Path, out: str | Path, launch: LaunchConfig,
            work_dir: str | Path | None = None) -> list[str]:
    """The command line that trains ``stage`` from the inputs staged in ``work`` (``work_dir``: the
    stage's persistent checkpoint directory, see :mod:`deepperception.training.checkpoints`)."""
    args = ["-m", "deepperception.training.launch", stage, "--rows", str(work / "rows.parquet"),
            "--init", str(init), "--out", str(out), "--config", str(work / "config.json")]
    if work_dir is not None:
        args += ["--work", str(work_dir)]
    if launch.kind == "accelerate":
        accelerate = shutil.which("accelerate") or "accelerate"
        return [accelerate, "launch", "--config_file", launch.accelerate_config,
                "--num_processes", str(launch.num_processes), *args]
    return [sys.executable, *args]


def run_training(stage: Stage, rows: pa.Table, init: str | Path, out: str | Path, cfg,
                 launch: LaunchConfig | None = None, work_dir: str | Path | None = None) -> TrainResult:
    """Train ``stage`` as ``launch`` says and return the rank-0 result. A ``work_dir`` that a killed
    run of the same stage left checkpoints in is resumed from."""
    launch = launch or LaunchConfig()
    if launch.kind == "inprocess":
        return _train(stage, rows, init, out, cfg, work_dir)
    with tempfile.TemporaryDirectory(prefix=f"dp-launch-{stage}-") as tmp:
        work = Path(tmp)
        pq.write_table(rows, work / "rows.parquet")
        (work / "config.json").write_text(cfg.model_dump_json())
        cmd = command(stage, work, init, out, launch, work_dir)
        proc = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if proc.returncode != 0:
            raise PipelineError(f"{stage} training exited with code {proc.returncode}: {' '.join(cmd)}")
    result = Path(out) / "launch_result.json"
    if not result.is_file():
        raise PipelineError(f"{stage} training finished but wrote no {result}")
    data = json.loads(result.read_text())
    result.unlink()  # a launch detail, not part of the checkpoint
    return TrainResult.from_dict(data)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=["sft", "grpo"])
    p.add_argument("--rows", required=True, help="Parquet file of training rows.")
    p.add_argument("--init", required=True, help="Checkpoint directory to start from.")
    p.add_argument("--out", required=True, help="Directory for the trained checkpoint.")
    p.add_argument("--config", required=True, help="JSON of the stage config.")
    p.add_argument("--work", default=None, help="Persistent work directory (resume points, published steps).")
    a = p.parse_args(argv)
    cfg = _config_class(a.stage).model_validate_json(Path(a.config).read_text())
    result = _train(a.stage, pq.read_table(a.rows), a.init, a.out, cfg, a.work)
    if int(os.environ.get("RANK", "0")) == 0:
        (Path(a.out) / "launch_result.json").write_text(json.dumps(result.to_dict(), default=str))


if __name__ == "__main__":
    main()
