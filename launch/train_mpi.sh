#!/usr/bin/env bash
# Data-parallel training on this host: one dptrain rank per visible GPU under Open MPI's mpirun,
# every argument passed through to `dptrain train`.
#
#   launch/train_mpi.sh --config configs/lenet.yaml [more dptrain train flags]
#
# Environment:
#   DPTRAIN_BIN          the dptrain binary (default: <repo>/build/dptrain)
#   DPTRAIN_NP           number of ranks (default: one per visible GPU, counted from
#                        CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`; 1 when there is no GPU)
#   DPTRAIN_MPIRUN_ARGS  extra mpirun arguments (word-split), e.g. "--hostfile hosts --oversubscribe"
#   NCCL_NVLS_ENABLE     defaults to 0: NVLink SHARP (multicast) must stay off on the lent machines
#
# Preemption: SIGTERM or SIGINT to this script stops the job gracefully (every rank stops at the
# same step, rank 0 writes a checkpoint, exit 0; continue with --resume auto). mpirun itself treats
# SIGTERM as an abort (it forwards it, then exits 1 and SIGKILLs the ranks after
# odls_base_sigkill_timeout), so the script sends SIGUSR1 instead, which dptrain takes as the same
# request: to the local ranks directly (mpirun's children; Open MPI 4.1.6 on Ubuntu 24.04 was seen
# not to forward it) and to mpirun, which forwards it to ranks on other hosts. A rank that hears it
# twice stops once. The kill timeout is raised to 60 s so that a SIGTERM sent to mpirun directly
# still leaves the ranks time to write their checkpoint.
#
# Ranks map to GPUs inside dptrain (local rank % visible GPUs), so the script does no GPU binding;
# it binds no cores either (--bind-to none): a rank's data-loading threads need more than the one
# core Open MPI would pin it to by default.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
bin="${DPTRAIN_BIN:-$repo/build/dptrain}"
if [[ ! -x "$bin" ]]; then
  echo "train_mpi.sh: $bin is missing or not executable: build it (cmake --build build) or set DPTRAIN_BIN" >&2
  exit 2
fi
if ! command -v mpirun >/dev/null 2>&1; then
  echo "train_mpi.sh: mpirun not found (install Open MPI)" >&2
  exit 2
fi

count_gpus() {
  if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
    # Set but empty (or -1) hides every GPU.
    if [[ -z "$CUDA_VISIBLE_DEVICES" || "$CUDA_VISIBLE_DEVICES" == -1* ]]; then
      echo 0
      return
    fi
    local ids
    IFS=, read -ra ids <<<"$CUDA_VISIBLE_DEVICES"
    echo "${#ids[@]}"
    return
  fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
    return
  fi
  echo 0
}

np="${DPTRAIN_NP:-$(count_gpus)}"
if ! [[ "$np" =~ ^[0-9]+$ ]] || ((np < 1)); then
  np=1
fi

export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"
# dptrain names the launcher (this script, or launch/train.sh that ran it) in its resume hint.
DPTRAIN_LAUNCHER="${DPTRAIN_LAUNCHER:-$(printf '%q' "$0")}"
export DPTRAIN_LAUNCHER

args=(-np "$np" --bind-to none --map-by slot -x NCCL_NVLS_ENABLE -x DPTRAIN_LAUNCHER)
# Forward the other NCCL_*/CUDA_* settings to remote ranks too (a local launch inherits them anyway).
while IFS='=' read -r name _; do
  [[ "$name" == NCCL_NVLS_ENABLE ]] && continue
  args+=(-x "$name")
done < <(env | grep -E '^(NCCL|CUDA|OMP)_[A-Za-z0-9_]*=' || true)
if [[ "$(id -u)" == 0 ]]; then
  # Containers run as root; Open MPI refuses that unless told twice.
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
if [[ -n "${DPTRAIN_MPIRUN_ARGS:-}" ]]; then
  read -ra extra <<<"$DPTRAIN_MPIRUN_ARGS"
  args+=("${extra[@]}")
fi

export OMPI_MCA_odls_base_sigkill_timeout="${OMPI_MCA_odls_base_sigkill_timeout:-60}"

echo "train_mpi.sh: $np rank(s): mpirun ${args[*]} $bin train $*" >&2
mpirun "${args[@]}" "$bin" train "$@" &
pid=$!
trap 'pkill -USR1 -P "$pid" 2>/dev/null; kill -USR1 "$pid" 2>/dev/null || true' TERM INT
status=0
# `wait` returns early when a trapped signal arrives; wait again until mpirun has really ended.
while kill -0 "$pid" 2>/dev/null; do
  wait "$pid" && status=0 || status=$?
done
exit "$status"
