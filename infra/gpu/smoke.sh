#!/usr/bin/env bash
# GPU smoke test for a host with no internet whose image has torch, transformers and accelerate
# (no trl, deepspeed or vllm). Sized for 15 minutes on one H200; the checks themselves take a few.
#
#   # 1. on a machine WITH the package index (once per version bump):
#   bash infra/gpu/wheels.sh                      # -> infra/gpu/wheelhouse/ (<= 64 MiB)
#   # 2. on the GPU host, from the repository root, the wheelhouse beside it:
#   bash infra/gpu/smoke.sh                       # WHEELHOUSE=..., SMOKE_ARGS="--sft-steps 8 ..."
#
# Installs into a venv that sees the image's packages (--system-site-packages; SMOKE_VENV=none
# installs into the current environment instead): every wheelhouse wheel whose distribution the
# image lacks, --no-index --no-deps, then this checkout --no-deps. Then runs infra/gpu/smoke.py,
# which prints one `PASS|FAIL <check> <throughput> | <details>` line per check. Exits non-zero
# when the install or any check fails. DEVICE=cpu runs the same on a CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
wheelhouse="${WHEELHOUSE:-$root/infra/gpu/wheelhouse}"
venv="${SMOKE_VENV:-${TMPDIR:-/tmp}/dp-gpu-smoke-venv}"
base_python="${PYTHON:-python3}"
device="${DEVICE:-cuda}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export TOKENIZERS_PARALLELISM=false

fail() { echo "FAIL $1 - | $2"; exit 1; }

[ -d "$wheelhouse" ] || fail install "no wheelhouse at $wheelhouse (build it with infra/gpu/wheels.sh on a machine with the index)"
if [ "$venv" = "none" ]; then
  python="$base_python"
else
  if [ ! -x "$venv/bin/python" ]; then
    "$base_python" -m venv --system-site-packages "$venv" \
      || fail install "cannot create a venv with $base_python (install python3-venv, or SMOKE_VENV=none)"
  fi
  python="$venv/bin/python"
fi
"$python" -c "import torch, transformers, accelerate" \
  || fail install "the image must provide torch, transformers and accelerate"

# Wheels whose distribution is missing here (the image may already have some, e.g. pillow).
mapfile -t missing < <("$python" - "$wheelhouse" <<'PY'
import importlib.metadata as md, pathlib, re, sys
for whl in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", whl.name.split("-")[0]).lower()
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(whl)
PY
)
t0=$SECONDS
if [ "${#missing[@]}" -gt 0 ]; then
  "$python" -m pip install --quiet --no-index --no-deps "${missing[@]}" \
    || fail install "pip could not install the wheelhouse's wheels"
fi
# Built from a copy, so the build leaves nothing in the checkout.
src="$(mktemp -d)/src"
mkdir -p "$src" && cp -r "$root/pyproject.toml" "$root/README.md" "$root/deepperception" "$root/tasks" "$root/flows" "$src/"
"$python" -m pip install --quiet --no-index --no-deps --no-build-isolation "$src" \
  || fail install "pip could not install this checkout (--no-deps --no-build-isolation)"
"$python" -c "import trl, datasets, pyarrow, pydantic, PIL, deepperception.training.launch" \
  || fail install "the installed packages do not import"
echo "PASS install $(( SECONDS - t0 ))s | ${#missing[@]} wheels from $wheelhouse + deepperception (--no-deps) into ${venv}"

# The smoke itself runs from a scratch directory so it imports the installed package, not the checkout.
cd "${TMPDIR:-/tmp}"
exec "$python" "$root/infra/gpu/smoke.py" --device "$device" ${SMOKE_ARGS:-}
