"""GPU smoke test: the tiny Qwen2-VL through SFT, GRPO and the ``hf`` eval backend on one device.

Run (on the GPU host, after ``infra/gpu/smoke.sh`` installed the wheels):

    python infra/gpu/smoke.py --device cuda            # the 15-minute H200 check
    python infra/gpu/smoke.py --device cpu --quick     # the same logic on a CPU (tests/infra)

One line per check, ``PASS|FAIL <check> <throughput> <details>``; the exit status is non-zero when
any check failed (a check whose input failed is a FAIL too, ``needs <check>``). Checks:

* ``env``: torch sees the device (CUDA with bf16 support for ``--device cuda``); versions.
* ``tiny-model``: build the tiny random-init Qwen2-VL (``build_tiny_qwen2vl``) and reload it.
* ``sft``: a few SFT steps of the project's own stage (:mod:`deepperception.training.launch`,
  TRL's ``SFTTrainer``) under ``accelerate launch --num_processes 1``, bf16 on CUDA (fp32 on a
  CPU): the steps ran, the losses are finite, the stage ran where asked, the checkpoint was saved.
* ``grpo``: the same for a few GRPO steps from the SFT checkpoint (TRL's ``GRPOTrainer``, HF
  generate rollouts, the released rewards).
* ``eval-parity``: the ``hf`` eval backend on the device in float32 (TF32 off), the whole bench in one
  batch vs one question at a time: every decoded output identical (padding, masks and positions
  are right on this device).
* ``eval-bf16`` (CUDA only): the same in bf16, the eval stage's GPU dtype; bf16 kernels round
  differently at different batch shapes, so a share of identical outputs of at least
  ``--bf16-agreement`` passes (the line gives the share).

No network: everything is built locally (``HF_HUB_OFFLINE=1``). Uses only torch, transformers,
accelerate, trl, datasets, pyarrow, pydantic and pillow, never DeepSpeed or vLLM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Check:
    """One check's outcome: ``PASS|FAIL <name> <throughput> <details>``."""

    name: str
    ok: bool = False
    throughput: str = "-"
    details: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """
        >>> Check("sft", True, "12.5 samples/s", "4 steps").line()
        'PASS sft 12.5 samples/s | 4 steps'
        >>> Check("grpo", False, details="needs sft").line()
        'FAIL grpo - | needs sft'
        """
        tail = f" | {self.details}" if self.details else ""
        return f"{'PASS' if self.ok else 'FAIL'} {self.name} {self.throughput}{tail}"


class CheckFailed(Exception):
    """A check's condition did not hold (the message says which)."""


def require(cond: bool, message: str) -> None:
    """Fail the running check with ``message`` unless ``cond``.

    >>> require(True, "fine")
    >>> require(False, "loss is NaN")
    Traceback (most recent call last):
    ...
    smoke.CheckFailed: loss is NaN
    """
    if not cond:
        raise CheckFailed(message)


class Runner:
    """Runs checks in order, prints each line as it finishes, remembers which passed."""

    def __init__(self, out=None):
        self.checks: list[Check] = []
        self.out = out or sys.stdout

    def passed(self, name: str) -> bool:
        return any(c.name == name and c.ok for c in self.checks)

    def run(self, name: str, fn: Callable[[Check], None], needs: tuple[str, ...] = ()) -> Check:
        """Run ``fn(check)``; any exception makes the check a FAIL with the error as its details."""
        c = Check(name)
        missing = [n for n in needs if not self.passed(n)]
        if missing:
            c.details = "needs " + ", ".join(missing)
        else:
            t0 = time.perf_counter()
            try:
                fn(c)
                c.ok = True
            except Exception as e:  # noqa: BLE001 - every failure becomes a FAIL line, never a crash
                c.details = (f"{type(e).__name__}: {e}" if not isinstance(e, CheckFailed) else str(e)).splitlines()[0][:400]
            c.data["wall_s"] = round(time.perf_counter() - t0, 2)
        self.checks.append(c)
        print(c.line(), file=self.out, flush=True)
        return c

    @property
    def exit_code(self) -> int:
        return 0 if self.checks and all(c.ok for c in self.checks) else 1


def accelerate_command() -> list[str]:
    """``accelerate launch`` (the console script beside this Python, else the module)."""
    exe = Path(sys.executable).with_name("accelerate")
    if exe.is_file():
        return [str(exe), "launch"]
    found = shutil.which("accelerate")
    return [found, "launch"] if found else [sys.executable, "-m", "accelerate.commands.launch"]


def launch_stage(stage: str, rows, init: Path, out: Path, cfg, device: str, log: Path,
                 launcher: str = "accelerate", timeout: float = 900) -> dict[str, Any]:
    """Train ``stage`` through :mod:`deepperception.training.launch` in a fresh process (under
    ``accelerate launch --num_processes 1`` unless ``launcher="python"``); returns its metrics."""
    import pyarrow.parquet as pq

    work = out.parent / f"{out.name}-inputs"
    work.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows, work / "rows.parquet")
    (work / "config.json").write_text(cfg.model_dump_json())
    args = ["-m", "deepperception.training.launch", stage, "--rows", str(work / "rows.parquet"), "--init", str(init),
            "--out", str(out), "--config", str(work / "config.json"), "--work", str(out.parent / f"{out.name}-work")]
    if launcher == "accelerate":
        cmd = [*accelerate_command(), "--num_processes", "1", "--num_machines", "1", "--dynamo_backend", "no",
               "--mixed_precision", "bf16" if device == "cuda" else "no", *(["--cpu"] if device == "cpu" else []),
               *args]
    else:
        cmd = [sys.executable, *args]
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        print("\n".join(f"    {line}" for line in tail), file=sys.stderr)
        raise CheckFailed(f"{stage} exited {proc.returncode} (log {log})")
    result = out / "launch_result.json"
    require(result.is_file(), f"{stage} wrote no {result}")
    return json.loads(result.read_text())["metrics"]


def check_training(metrics: dict[str, Any], steps: int, device: str, want_bf16: bool) -> None:
    """The stage ran ``steps`` steps on ``device`` with finite losses.

    >>> check_training({"steps": 2, "train_losses": [1.0, 0.5], "preflight": {"device": "cpu", "bf16": False}}, 2, "cpu", False)
    >>> check_training({"steps": 2, "train_losses": [1.0, float("nan")], "preflight": {"device": "cpu", "bf16": False}}, 2, "cpu", False)
    Traceback (most recent call last):
    ...
    smoke.CheckFailed: non-finite loss in [1.0, nan]
    """
    require(metrics.get("steps") == steps, f"ran {metrics.get('steps')} steps, asked {steps}")
    losses = metrics.get("train_losses") or []
    require(bool(losses), "no loss was logged")
    require(all(math.isfinite(float(x)) for x in losses), f"non-finite loss in {losses}")
    pre = metrics.get("preflight") or {}
    require(pre.get("device") == device, f"trained on {pre.get('device')}, asked {device}")
    require(bool(pre.get("bf16")) == want_bf16, f"bf16={pre.get('bf16')}, asked {want_bf16}")


def read_outputs(path: Path) -> dict[str, str]:
    return {r["question_id"]: r["output"] for r in map(json.loads, path.read_text().splitlines()) if r}


def agreement(a: dict[str, str], b: dict[str, str]) -> float:
    """Share of questions whose outputs are identical (1.0 = parity).

    >>> agreement({"q1": "x", "q2": "y"}, {"q1": "x", "q2": "z"})
    0.5
    """
    keys = set(a) | set(b)
    return sum(a.get(k) == b.get(k) for k in keys) / len(keys) if keys else 0.0


def eval_pair(bench, ckpt: Path, out: Path, device: str, dtype: str, max_new_tokens: int) -> dict[str, Any]:
    """The ``hf`` backend over the whole bench in one batch and one question at a time."""
    from deepperception.eval.inference import run_inference

    res: dict[str, Any] = {}
    for label, bs in (("batched", bench.num_rows), ("unbatched", 1)):
        t0 = time.perf_counter()
        path = run_inference(bench, ckpt, out / f"{dtype}-{label}", batch_size=bs, max_new_tokens=max_new_tokens,
                             device=device, dtype=dtype, stale="recreate")
        res[label] = {"outputs": read_outputs(path), "s": time.perf_counter() - t0}
    res["agreement"] = agreement(res["batched"]["outputs"], res["unbatched"]["outputs"])
    res["samples_per_s"] = bench.num_rows / res["batched"]["s"]
    res["speedup"] = res["unbatched"]["s"] / res["batched"]["s"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a new temp dir)")
    ap.add_argument("--quick", action="store_true", help="the smallest sizes (the CPU test)")
    ap.add_argument("--sft-steps", type=int, default=None, help="default 8 (quick: 2)")
    ap.add_argument("--grpo-steps", type=int, default=None, help="default 4 (quick: 1)")
    ap.add_argument("--eval-n", type=int, default=None, help="bench questions (default 32, quick: 3)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="eval and rollout tokens (default 64, quick: 8)")
    ap.add_argument("--bf16-agreement", type=float, default=0.75,
                    help="eval-bf16 passes when at least this share of outputs agree batched vs unbatched")
    ap.add_argument("--launcher", choices=["accelerate", "python"], default="accelerate",
                    help="how the training stages start (accelerate: `accelerate launch --num_processes 1`)")
    ap.add_argument("--json", type=Path, default=None, help="also write every check as JSON here")
    a = ap.parse_args(argv)
    quick = a.quick
    sft_steps = a.sft_steps or (2 if quick else 8)
    grpo_steps = a.grpo_steps or (1 if quick else 4)
    eval_n = a.eval_n or (3 if quick else 32)
    new_tokens = a.max_new_tokens or (8 if quick else 64)
    cuda = a.device == "cuda"
    work = a.work or Path(tempfile.mkdtemp(prefix="dp-gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# deepperception GPU smoke: device {a.device}, work dir {work}", flush=True)
    r = Runner()
    state: dict[str, Any] = {}

    def env(c: Check) -> None:
        import torch
        import transformers
        import trl

        versions = f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"
        if cuda:
            require(torch.cuda.is_available(), "torch sees no CUDA device")
            require(torch.cuda.is_bf16_supported(), "this GPU has no bf16 support")
            c.throughput = torch.cuda.get_device_name(0).replace(" ", "_")
            versions += f", CUDA {torch.version.cuda}"
        else:
            c.throughput = "cpu"
        c.details = versions

    def tiny(c: Check) -> None:
        from deepperception.model.loading import load_model, load_processor
        from deepperception.model.synthetic import tiny_corpus
        from deepperception.model.tiny import build_tiny_qwen2vl

        t0 = time.perf_counter()
        state["base"] = build_tiny_qwen2vl(work / "base", tiny_corpus(), seed=0)
        model = load_model(state["base"], device=a.device)
        load_processor(state["base"])
        c.throughput = f"{time.perf_counter() - t0:.1f}s"
        c.details = f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params on {next(model.parameters()).device}"

    def train_cfgs():
        from deepperception.config import load_profile

        toy = load_profile("toy")
        dev = {"bf16": cuda, "use_cpu": not cuda}
        sft = toy.sft.model_copy(update={**dev, "max_steps": sft_steps, "save_steps": 0})
        grpo = toy.grpo.model_copy(update={**dev, "max_steps": grpo_steps, "max_completion_length": new_tokens,
                                           "save_steps": 0})
        return sft, grpo

    def sft(c: Check) -> None:
        from deepperception.model.synthetic import synthetic_sft_rows

        cfg, _ = train_cfgs()
        n = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * sft_steps
        out = work / "sft"
        t0 = time.perf_counter()
        m = launch_stage("sft", synthetic_sft_rows(n), state["base"], out, cfg, a.device, work / "sft.log", a.launcher)
        check_training(m, sft_steps, a.device, cuda)
        require((out / "config.json").is_file(), f"no checkpoint in {out}")
        state["sft"] = out
        c.throughput = f"{n / m['runtime_s']:.2f} samples/s"
        c.details = (f"{sft_steps} steps, {m['s_per_step']:.3f} s/step, loss {m['train_losses'][0]:.3f} -> "
                     f"{m['train_losses'][-1]:.3f}, process {time.perf_counter() - t0:.0f}s")

    def grpo(c: Check) -> None:
        from deepperception.model.synthetic import synthetic_grpo_rows

        _, cfg = train_cfgs()
        completions = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * grpo_steps
        out = work / "grpo"
        t0 = time.perf_counter()
        m = launch_stage("grpo", synthetic_grpo_rows(completions // cfg.num_generations), state["sft"], out, cfg,
                         a.device, work / "grpo.log", a.launcher)
        check_training(m, grpo_steps, a.device, cuda)
        require(len(m.get("reward") or []) == grpo_steps, f"rewards logged for {len(m.get('reward') or [])} steps")
        require((out / "config.json").is_file(), f"no checkpoint in {out}")
        state["grpo"] = out
        c.throughput = f"{completions / m['runtime_s']:.2f} completions/s"
        c.details = (f"{grpo_steps} steps x {completions // grpo_steps} completions, {m['s_per_step']:.3f} s/step, "
                     f"reward {m['reward']}, process {time.perf_counter() - t0:.0f}s")

    def bench():
        from deepperception.model.synthetic import synthetic_bench

        return synthetic_bench(eval_n, seed=0)

    def parity(c: Check) -> None:
        import torch

        # True float32: cuDNN's default TF32 convolutions (the vision tower's patch embedding)
        # would round differently at different batch shapes, which is not what this check tests.
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            res = eval_pair(bench(), state["grpo"], work / "eval", a.device, "float32", new_tokens)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        bad = [q for q in res["batched"]["outputs"] if res["batched"]["outputs"][q] != res["unbatched"]["outputs"].get(q)]
        c.throughput = f"{res['samples_per_s']:.2f} samples/s"
        c.details = f"{eval_n} questions, batched {res['speedup']:.1f}x unbatched, agreement {res['agreement']:.2f}"
        require(res["agreement"] == 1.0, f"{len(bad)} of {eval_n} outputs differ batched vs unbatched (e.g. {bad[:2]})")

    def bf16(c: Check) -> None:
        res = eval_pair(bench(), state["grpo"], work / "eval", a.device, "bfloat16", new_tokens)
        c.throughput = f"{res['samples_per_s']:.2f} samples/s"
        c.details = f"{eval_n} questions, batched {res['speedup']:.1f}x unbatched, agreement {res['agreement']:.2f}"
        require(res["agreement"] >= a.bf16_agreement,
                f"bf16 agreement {res['agreement']:.2f} < {a.bf16_agreement} ({c.details})")

    r.run("env", env)
    r.run("tiny-model", tiny, needs=("env",))
    r.run("sft", sft, needs=("tiny-model",))
    r.run("grpo", grpo, needs=("sft",))
    r.run("eval-parity", parity, needs=("grpo",))
    if cuda:
        r.run("eval-bf16", bf16, needs=("grpo",))
    n_fail = sum(not c.ok for c in r.checks)
    print(f"# {len(r.checks) - n_fail} of {len(r.checks)} checks passed" + (f", {n_fail} FAILED" if n_fail else ""),
          flush=True)
    if a.json:
        a.json.write_text(json.dumps([{"name": c.name, "ok": c.ok, "throughput": c.throughput, "details": c.details,
                                       **c.data} for c in r.checks], indent=2))
    return r.exit_code


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
