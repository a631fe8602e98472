#!/usr/bin/env bash
# One worker per GPU host. The process worker passes its environment to each flow run, so the
# GPUs this worker may use are fixed here (e.g. CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7).
set -euo pipefail
: "${CUDA_VISIBLE_DEVICES:?set CUDA_VISIBLE_DEVICES for this worker}"
export DP_STORE_URI="${DP_STORE_URI:?point DP_STORE_URI at the shared s3:// store}"
exec prefect worker start --pool gpu --type process --limit 1 --name "gpu-$(hostname)"
