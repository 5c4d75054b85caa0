#!/usr/bin/env bash
# The whole test suite: sets up (packages, MNIST, build), then runs every CTest test, then each
# libFuzzer target briefly (launch/fuzz.sh; DPTRAIN_FUZZ_SECONDS, default 20, 0 skips). GPU tests
# skip themselves on a machine without a GPU; MPI tests start their own ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j "$(nproc)" "$@"
fuzz_seconds="${DPTRAIN_FUZZ_SECONDS:-20}"
if [ "$fuzz_seconds" -gt 0 ]; then
  launch/fuzz.sh "$fuzz_seconds"
fi
