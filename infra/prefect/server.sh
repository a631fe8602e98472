#!/usr/bin/env bash
# Self-hosted Prefect server on loopback. The UI ships inside the prefect wheel (works offline).
# `make up` starts one itself (with SeaweedFS, pools, workers and deployments: infra/stack/).
set -euo pipefail
PORT="${PREFECT_PORT:-4200}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec prefect server start --host "${PREFECT_HOST:-127.0.0.1}" --port "$PORT"
