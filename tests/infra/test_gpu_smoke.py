"""The GPU smoke script's logic, on this CPU (no GPU result is ever claimed here).

``infra/gpu/smoke.py --device cpu`` runs the very checks the H200 run does (tiny model, SFT and
GRPO under ``accelerate launch --num_processes 1``, the hf eval backend's batched-vs-unbatched
parity), only in fp32 on the CPU; a failing check must make the exit status non-zero; the
wheelhouse's pins must be the versions this suite runs; the pyarrow slimming keeps a valid wheel.
"""

from __future__ import annotations

import csv
import doctest
import importlib.metadata as md
import importlib.util
import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "infra" / "gpu"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, GPU / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


smoke = _load("smoke")
slim_wheel = _load("slim_wheel")


def test_doctests():
    for mod in (smoke, slim_wheel):
        res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert res.attempted and not res.failed, mod.__name__


def test_a_failed_check_fails_its_dependants_and_the_exit_status():
    out = io.StringIO()
    r = smoke.Runner(out)

    def ok(c):
        c.throughput = "3.0 samples/s"

    def boom(c):
        smoke.require(False, "loss is NaN")

    r.run("a", ok)
    r.run("b", boom, needs=("a",))
    r.run("c", ok, needs=("b",))
    r.run("d", lambda c: 1 / 0)
    assert out.getvalue().splitlines() == [
        "PASS a 3.0 samples/s", "FAIL b - | loss is NaN", "FAIL c - | needs b", "FAIL d - | ZeroDivisionError: division by zero"]
    assert r.exit_code == 1
    good = smoke.Runner(io.StringIO())
    good.run("a", ok)
    assert good.exit_code == 0
    assert smoke.Runner(io.StringIO()).exit_code == 1  # no check ran: not a pass


def test_training_checks_catch_wrong_device_steps_and_dtype():
    m = {"steps": 3, "train_losses": [1.0], "preflight": {"device": "cpu", "bf16": False}}
    smoke.check_training(m, 3, "cpu", False)
    for steps, device, bf16, msg in ((2, "cpu", False, "ran 3 steps"), (3, "cuda", False, "trained on cpu"),
                                     (3, "cpu", True, "bf16=False")):
        with pytest.raises(smoke.CheckFailed, match=msg):
            smoke.check_training(m, steps, device, bf16)
    with pytest.raises(smoke.CheckFailed, match="no loss"):
        smoke.check_training({**m, "train_losses": []}, 3, "cpu", False)


def test_cuda_asked_on_a_cpu_host_fails_loudly(tmp_path):
    if _cuda():
        pytest.skip("this host has a GPU")
    p = subprocess.run([sys.executable, str(GPU / "smoke.py"), "--device", "cuda", "--work", str(tmp_path)],
                       capture_output=True, text=True, env=ENV, timeout=300)
    lines = [x for x in p.stdout.splitlines() if x.startswith(("PASS", "FAIL"))]
    assert p.returncode == 1, p.stdout + p.stderr
    assert lines[0] == "FAIL env - | torch sees no CUDA device"
    assert all(x.startswith("FAIL") and "needs" in x for x in lines[1:]) and len(lines) == 6


def test_smoke_sh_without_a_wheelhouse_fails_before_anything_runs(tmp_path):
    p = subprocess.run(["bash", str(GPU / "smoke.sh")], capture_output=True, text=True, timeout=60,
                       env={**ENV, "WHEELHOUSE": str(tmp_path / "none"), "SMOKE_VENV": "none"})
    assert p.returncode == 1
    assert p.stdout.startswith("FAIL install - | no wheelhouse at")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (GPU / "wheels.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name] = version
    return pins


def test_the_wheelhouse_pins_are_the_versions_this_suite_runs():
    pins = _pins()
    for core in ("trl", "datasets", "pyarrow", "pandas", "pydantic", "pydantic-core", "pillow", "httpx"):
        assert core in pins, core
    installed = {}
    for name in pins:
        try:
            installed[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    assert {k: v for k, v in pins.items() if k in installed} == installed
    # what the image provides is never in the wheelhouse
    assert not {"torch", "transformers", "accelerate", "deepspeed", "vllm"} & {k.lower() for k in pins}


def test_slimming_keeps_a_valid_wheel(tmp_path):
    whl = tmp_path / "demo-1.0-py3-none-any.whl"
    files = {"demo/__init__.py": b"x = 1\n", "demo/big/blob.bin": b"\0" * 1000, "demo/tests/test_x.py": b"",
             "demo-1.0.dist-info/METADATA": b"Name: demo\nVersion: 1.0\n", "demo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\n"}
    with zipfile.ZipFile(whl, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("demo-1.0.dist-info/RECORD", "")
    before, after, removed = slim_wheel.slim(str(whl), ["demo/big/*", "demo/tests/*"])
    assert sorted(removed) == ["demo/big/blob.bin", "demo/tests/test_x.py"]
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        rows = list(csv.reader(io.StringIO(z.read("demo-1.0.dist-info/RECORD").decode())))
        assert names == {"demo/__init__.py", "demo-1.0.dist-info/METADATA", "demo-1.0.dist-info/WHEEL",
                         "demo-1.0.dist-info/SLIMMED.txt", "demo-1.0.dist-info/RECORD"}
        for name, digest, size in rows:
            if name.endswith("RECORD"):
                assert (digest, size) == ("", "")
                continue
            data = z.read(name)
            assert (digest, size) == (slim_wheel.record_hash(data), str(len(data))), name
        assert {r[0] for r in rows} == names
        assert b"demo/big/blob.bin" in z.read("demo-1.0.dist-info/SLIMMED.txt")
    with pytest.raises(SystemExit, match="metadata"):
        slim_wheel.slim(str(whl), ["demo-1.0.dist-info/*"])


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
def test_every_check_passes_on_the_cpu_under_accelerate_launch(tmp_path):
    """The whole smoke at its smallest (about a minute on 2 free cores: two launched training processes)."""
    report = tmp_path / "checks.json"
    p = subprocess.run([sys.executable, str(GPU / "smoke.py"), "--device", "cpu", "--quick", "--work",
                        str(tmp_path / "w"), "--json", str(report)], capture_output=True, text=True, env=ENV,
                       timeout=900)
    lines = [x for x in p.stdout.splitlines() if x.startswith(("PASS", "FAIL"))]
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    assert [x.split()[:2] for x in lines] == [["PASS", n] for n in ("env", "tiny-model", "sft", "grpo", "eval-parity")]
    assert re.search(r"^PASS sft [\d.]+ samples/s \| 2 steps", lines[2])
    assert re.search(r"^PASS grpo [\d.]+ completions/s \| 1 steps", lines[3])
    assert "agreement 1.00" in lines[4]
    assert (tmp_path / "w" / "sft.log").is_file() and (tmp_path / "w" / "grpo" / "config.json").is_file()
    assert '"ok": true' in report.read_text()
