#!/usr/bin/env bash
# The GPU check in one command, set-up included: bash tools/gpu_check.sh OUT_DIR
# On a GPU machine without a package registry the wheels of /work/shared/device (or
# $MMDP_WHEELS_SETUP) are installed first; tools/gpu_check.py does the rest, starting no step
# after 420 s less the set-up's time (the last step and the set-up fill the 9 minutes).
set -euo pipefail
start=$SECONDS
if [ $# -ne 1 ]; then echo "usage: bash tools/gpu_check.sh OUT_DIR" >&2; exit 2; fi
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: no NVIDIA GPU here (nvidia-smi finds none); the GPU check needs one" >&2
    exit 1
fi
PY=${PYTHON:-python}
if ! "$PY" -c 'import mmdet3d' >/dev/null 2>&1; then
    setup=${MMDP_WHEELS_SETUP:-.device/setup.sh}
    if [ ! -f "$setup" ]; then
        echo "error: mmdet3d does not import and there is no $setup to install it from" \
             "(copy /work/shared/device there, or set MMDP_WHEELS_SETUP)" >&2
        exit 1
    fi
    echo "[gpu_check] set-up: $setup"
    bash "$setup"
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
budget=$(( 420 - (SECONDS - start) ))
"$PY" tools/gpu_check.py "$1" --budget-s $(( budget > 0 ? budget : 0 ))
