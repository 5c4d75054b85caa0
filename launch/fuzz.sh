#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz: checkpoint loader, IDX reader, config loader, plan cache) with
# clang and runs each for SECONDS (default 20) over its seed corpus in tests/fuzz/corpus. Fails on
# the first crash, sanitizer report or uncaught exception; the input that caused it is left in
# build-fuzz/ (crash-*). Installs clang and its fuzzer runtime with apt-get when missing.
#
#   launch/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
build="${FUZZ_BUILD_DIR:-build-fuzz}"

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
if ! command -v clang++ >/dev/null 2>&1; then
  echo "fuzz: installing clang"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends clang
fi
# The fuzzer runtime ships in libclang-rt-<major>-dev, which clang only recommends.
major="$(clang++ -dumpversion | cut -d. -f1)"
if ! echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' |
    clang++ -x c++ -fsanitize=fuzzer -o /dev/null - 2>/dev/null; then
  echo "fuzz: installing libclang-rt-$major-dev"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "libclang-rt-$major-dev"
fi

cmake -S tests/fuzz -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j "$(nproc)"
for target in checkpoint idx config plan_cache; do
  echo "fuzz: fuzz_$target for ${seconds}s"
  work="$(mktemp -d)"  # new inputs go here; the committed seed corpus stays unchanged
  status=0
  "$build/fuzz_$target" -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$build/" "$work" "tests/fuzz/corpus/$target" >"$build/fuzz_$target.log" 2>&1 || status=$?
  grep -E '^(Done|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY)' "$build/fuzz_$target.log" || true
  rm -rf "$work"
  [ "$status" -eq 0 ] || { tail -n 40 "$build/fuzz_$target.log" >&2; echo "fuzz: fuzz_$target failed" >&2; exit 1; }
done
echo "fuzz: all targets ran clean"
