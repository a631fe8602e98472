"""Run a training stage in its own process(es): one Python process, or ``accelerate launch``
across the GPUs of a worker (DeepSpeed ZeRO-3 for the paper's 8-GPU runs).

The same ``train_sft`` / ``train_grpo`` functions run either way; this module only moves their
inputs (rows as Parquet, config as JSON) to the launched processes and the result back::

    accelerate launch --config_file infra/accelerate/zero3.yaml --num_processes 8 \\
        -m deepperception.training.sft --rows rows.parquet --init CKPT --out OUT --config cfg.json

It knows no stage: the stage config says which stage it is (``STAGE``), how it trains
(``cfg.train``) and which module a launched process runs (``ENTRY``, whose ``__main__`` block
calls :func:`main`). So SFT's code version never reaches GRPO (its rewards, the evaluator's
parser) through here. ``python -m deepperception.training.launch sft|grpo ...`` still works.
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


def _check_stage(stage: str, cfg) -> None:
    if getattr(cfg, "STAGE", None) != stage:
        raise PipelineError(f"{stage} training was given a {type(cfg).__name__} (stage {getattr(cfg, 'STAGE', None)!r})")


def command(entry: str, work: Path, init: str | Path, out: str | Path, launch: LaunchConfig,
            work_dir: str | Path | None = None) -> list[str]:
    """The command line that runs module ``entry`` (a stage config's ``ENTRY``) on the inputs
    staged in ``work`` (``work_dir``: the stage's persistent checkpoint directory, see
    :mod:`deepperception.training.checkpoints`)."""
    args = ["-m", entry, "--rows", str(work / "rows.parquet"),
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
    """Train ``stage`` (``cfg``'s stage) as ``launch`` says and return the rank-0 result. A
    ``work_dir`` that a killed run of the same stage left checkpoints in is resumed from."""
    _check_stage(stage, cfg)
    launch = launch or LaunchConfig()
    if launch.kind == "inprocess":
        return cfg.train(rows, init, out, work_dir=work_dir)
    with tempfile.TemporaryDirectory(prefix=f"dp-launch-{stage}-") as tmp:
        work = Path(tmp)
        pq.write_table(rows, work / "rows.parquet")
        (work / "config.json").write_text(cfg.model_dump_json())
        cmd = command(cfg.ENTRY, work, init, out, launch, work_dir)
        proc = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if proc.returncode != 0:
            raise PipelineError(f"{stage} training exited with code {proc.returncode}: {' '.join(cmd)}")
    result = Path(out) / "launch_result.json"
    if not result.is_file():
        raise PipelineError(f"{stage} training finished but wrote no {result}")
    data = json.loads(result.read_text())
    result.unlink()  # a launch detail, not part of the checkpoint
    return TrainResult.from_dict(data)


def main(config_class, argv: list[str] | None = None) -> None:
    """A launched process's body (a stage module's ``__main__`` block): read the staged inputs,
    train with a ``config_class`` config, and on rank 0 leave the result for :func:`run_training`."""
    p = argparse.ArgumentParser(description=f"{config_class.STAGE} training in a launched process")
    p.add_argument("--rows", required=True, help="Parquet file of training rows.")
    p.add_argument("--init", required=True, help="Checkpoint directory to start from.")
    p.add_argument("--out", required=True, help="Directory for the trained checkpoint.")
    p.add_argument("--config", required=True, help="JSON of the stage config.")
    p.add_argument("--work", default=None, help="Persistent work directory (resume points, published steps).")
    a = p.parse_args(argv)
    cfg = config_class.model_validate_json(Path(a.config).read_text())
    result = cfg.train(pq.read_table(a.rows), a.init, a.out, work_dir=a.work)
    if int(os.environ.get("RANK", "0")) == 0:
        (Path(a.out) / "launch_result.json").write_text(json.dumps(result.to_dict(), default=str))


if __name__ == "__main__":  # the older form: python -m deepperception.training.launch sft|grpo --rows ...
    import importlib

    if len(sys.argv) < 2 or sys.argv[1] not in ("sft", "grpo"):
        sys.exit("usage: python -m deepperception.training.launch sft|grpo --rows R --init I --out O --config C")
    _module = importlib.import_module(f"deepperception.training.{sys.argv[1]}")
    main(_module.SFTStageConfig if sys.argv[1] == "sft" else _module.GRPOStageConfig, sys.argv[2:])
