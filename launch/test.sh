#!/usr/bin/env bash
# The whole test suite: sets up (packages, MNIST, build), then runs every CTest test, then each
# libFuzzer target briefly (launch/fuzz.sh; DPTRAIN_FUZZ_SECONDS, default 20, 0 skips). GPU tests
# skip themselves on a machine without a GPU; MPI tests start their own ranks.
# Where that build has the CUDA backend, the CPU-only configuration (-DDPTRAIN_CUDA=OFF, what a
# machine without the CUDA toolkit builds) is built too, in build-cpu/, and its unit and MPI tests
# run (its end-to-end tests would run the same CPU code as the build above; DPTRAIN_TEST_CPU_ONLY=0
# skips it). Without the toolkit the build above is the CPU-only one, and runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j "$(nproc)" "$@"
if [ "${DPTRAIN_TEST_CPU_ONLY:-1}" != 0 ] && grep -q '^DPTRAIN_CUDA:BOOL=ON' "${BUILD_DIR:-build}/CMakeCache.txt"; then
  echo "test: the CPU-only build, in build-cpu/"
  SKIP_APT=1 BUILD_DIR=build-cpu CMAKE_ARGS="-DDPTRAIN_CUDA=OFF" launch/setup.sh
  ctest --test-dir build-cpu --output-on-failure -j "$(nproc)" -L 'unit|mpi' "$@"
fi
fuzz_seconds="${DPTRAIN_FUZZ_SECONDS:-20}"
if [ "$fuzz_seconds" -gt 0 ]; then
  launch/fuzz.sh "$fuzz_seconds"
fi
