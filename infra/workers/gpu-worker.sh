#!/usr/bin/env bash
# One worker per GPU host for the `gpu` pool (SFT, RL filter, GRPO, evaluation). The process worker
# passes its environment to each flow run, so the GPUs this worker may use are fixed here (e.g.
# CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7), and so is the store: PREFECT_API_URL, DP_STORE_URI
# (+ DP_STORE_S3_ENDPOINT_URL and AWS_* for an S3-compatible server), DP_REPO_DIR (this checkout).
# DP_STACK_ENV=<file> reads them from a stack's `env` file. `make up` starts a local one itself.
set -euo pipefail
if [[ -n "${DP_STACK_ENV:-}" ]]; then set -a; source "$DP_STACK_ENV"; set +a; fi
: "${CUDA_VISIBLE_DEVICES:?set CUDA_VISIBLE_DEVICES for this worker}"
: "${PREFECT_API_URL:?set PREFECT_API_URL (the Prefect server this worker serves)}"
: "${DP_STORE_URI:?point DP_STORE_URI at the shared s3:// store}"
export DP_REPO_DIR="${DP_REPO_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
exec prefect worker start --pool gpu --type process --limit 1 --name "${WORKER_NAME:-gpu-$(hostname)}"
