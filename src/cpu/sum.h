// Sum of a contiguous run with sixteen independent partial sums: the adds pipeline and vectorise
// where a single accumulator would wait on each previous add. The order is fixed by the length
// alone, so the result never depends on threads or on where the run sits in memory.
#pragma once

namespace dptrain::cpu {

template <typename T>
T sum(const T* x, long n) {
  constexpr int kLanes = 16;
  T lanes[kLanes] = {};
  long i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] += x[i + j];
  T acc = 0;
  for (int j = 0; j < kLanes; ++j) acc += lanes[j];
  for (; i < n; ++i) acc += x[i];
  return acc;
}

}  // namespace dptrain::cpu
