#!/usr/bin/env bash
# The main job: sets up (launch/setup.sh), then trains the default config (configs/mnist_cnn.yaml)
# on whatever this machine has: every GPU through mpirun (one rank per GPU), one GPU, or the CPU.
# Extra arguments go to `dptrain train`, e.g.  launch/train.sh --epochs 2 --out runs/try
set -euo pipefail
# dptrain names this script (as it was typed) in its resume hint after a stop.
DPTRAIN_LAUNCHER="${DPTRAIN_LAUNCHER:-$(printf '%q' "$0")}"
export DPTRAIN_LAUNCHER
cd "$(dirname "$0")/.."
launch/setup.sh
# Run again, the same command continues a stopped run (and says when there is nothing left to do).
args=("$@")
[[ " $* " == *" --resume"* ]] || args=(--resume auto "$@")
gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
# A CPU-only build (no CUDA toolkit: launch/setup.sh said so) trains on the CPU whatever GPUs are here.
grep -q '^DPTRAIN_CUDA:BOOL=OFF' build/CMakeCache.txt 2>/dev/null && gpus=0
if [ "$gpus" -gt 1 ]; then
  exec launch/train_mpi.sh "${args[@]}"
elif [ "$gpus" -eq 1 ]; then
  exec build/dptrain train --device cuda "${args[@]}"
else
  exec build/dptrain train --device cpu "${args[@]}"
fi
