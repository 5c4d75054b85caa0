#!/usr/bin/env bash
# The whole test suite: sets up (packages, MNIST, build), then runs every CTest test. GPU tests
# skip themselves on a machine without a GPU; MPI tests start their own ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j "$(nproc)" "$@"
