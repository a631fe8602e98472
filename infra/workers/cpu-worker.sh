#!/usr/bin/env bash
set -euo pipefail
exec prefect worker start --pool cpu --type process --limit "${CPU_WORKER_LIMIT:-2}"
