#!/usr/bin/env bash
# The GPU kit (bench/gpu/kit.py): one prepared run, ~8 minutes on one H200, from the repository root.
# Needs only torch (the device's stock image: Python 3.12, torch 2.11, no pydantic/kopf/pyarrow/flash-attn).
# Writes $OUT/gpu_kit.json and $OUT/gpu_kit.txt. `bench/gpu/run.sh --dry` is the CPU check (< 60 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
export OUT="${OUT:-bench/out}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
exec "$PY" bench/gpu/kit.py "$@"
