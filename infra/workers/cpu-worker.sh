#!/usr/bin/env bash
# A worker for the `cpu` pool (data engine, the full-reproduction parent, report), for a host of
# its own; `make up` starts one on this machine itself (infra/stack/). The process worker passes
# its environment to every flow run, so the store is configured here, not in prefect.yaml:
# PREFECT_API_URL, DP_STORE_URI (+ DP_STORE_S3_ENDPOINT_URL and AWS_* for an S3-compatible server)
# and DP_REPO_DIR (this checkout). DP_STACK_ENV=<file> reads them from a stack's `env` file.
set -euo pipefail
if [[ -n "${DP_STACK_ENV:-}" ]]; then set -a; source "$DP_STACK_ENV"; set +a; fi
: "${PREFECT_API_URL:?set PREFECT_API_URL (the Prefect server this worker serves)}"
: "${DP_STORE_URI:?point DP_STORE_URI at the shared s3:// store}"
export DP_REPO_DIR="${DP_REPO_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
exec prefect worker start --pool cpu --type process --limit "${CPU_WORKER_LIMIT:-2}" \
    ${WORKER_NAME:+--name "$WORKER_NAME"}
