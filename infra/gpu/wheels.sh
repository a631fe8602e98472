#!/usr/bin/env bash
# Build the GPU smoke's wheelhouse on a machine WITH the package index (the GPU host has none):
#
#   bash infra/gpu/wheels.sh [WHEELHOUSE]        # default infra/gpu/wheelhouse
#
# Downloads every wheel of infra/gpu/wheels.txt with --no-deps for the GPU image's Python and
# platform (GPU_PYTHON, default 3.11; GPU_PLATFORM, default x86_64 manylinux), binary wheels only,
# slims pyarrow (infra/gpu/slim_wheel.py: no Flight, S3, headers or tests), and fails if they exceed
# GPU_WHEELS_MAX_MIB (default 64). Copy the directory to the GPU host
# beside the checkout, then run infra/gpu/smoke.sh there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/wheelhouse}"
py="${GPU_PYTHON:-3.11}"
arch="${GPU_ARCH:-x86_64}"
max_mib="${GPU_WHEELS_MAX_MIB:-64}"
pip_cmd=(${PIP:-python3 -m pip})
mkdir -p "$out"
platforms=()
for p in ${GPU_PLATFORM:-manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014}; do
  platforms+=(--platform "${p}_${arch}")
done
"${pip_cmd[@]}" download --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  "${platforms[@]}" -d "$out" -r "$here/wheels.txt"
# pyarrow's wheel alone is ~52 MiB; drop what the pipeline never loads (slim_wheel.py says why).
for whl in "$out"/pyarrow-*.whl; do
  [ -e "$whl" ] || continue
  grep -q "^pyarrow/_s3fs" <(python3 -m zipfile -l "$whl" | awk '{print $1}') || continue  # already slim
  python3 "$here/slim_wheel.py" "$whl" 'pyarrow/libarrow_flight.so*' 'pyarrow/libarrow_python_flight.so*' \
    'pyarrow/_flight.cpython-*' 'pyarrow/libarrow_s3.so*' 'pyarrow/_s3fs.cpython-*' \
    'pyarrow/_pyarrow_cpp_tests.cpython-*' 'pyarrow/include/*' 'pyarrow/includes/*' 'pyarrow/tests/*' \
    'pyarrow/*.pyx' 'pyarrow/*.pxd' 'pyarrow/*.pxi' 'pyarrow/src/*'
done
bytes=$(du -cb "$out"/*.whl | tail -1 | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
ls -l "$out"/*.whl | awk '{printf "%8.1f MiB  %s\n", $5/1048576, $NF}'
echo "wheelhouse $out: $(ls "$out"/*.whl | wc -l) wheels, ${mib} MiB (limit ${max_mib} MiB)"
if (( bytes > max_mib * 1048576 )); then
  echo "FAIL wheelhouse is ${mib} MiB, over the ${max_mib} MiB limit" >&2
  exit 1
fi
