#!/usr/bin/env bash
# Work pools: `cpu` for the data engine and parent flows, `gpu` for training and evaluation.
# `make up` creates the same two pools itself (infra/stack/stack.py); this is for a server of
# your own. --overwrite resets a pool's base job template to the process worker's default.
set -euo pipefail
prefect work-pool create cpu --type process --overwrite
prefect work-pool create gpu --type process --overwrite
# One GPU job at a time per worker; raise with more GPU hosts (one worker per host).
prefect work-pool set-concurrency-limit gpu "${GPU_POOL_LIMIT:-1}"
