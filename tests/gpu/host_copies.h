// Copies between host vectors and device buffers for the GPU tests, and the NaN poison their outputs
// get before each call.
#pragma once

#include <cuda_runtime_api.h>

#include <vector>

#include "core/buffer.h"
#include "core/cuda_check.h"

namespace dptrain {

template <typename T>
std::vector<T> to_host(const Buffer<T>& b) {
  std::vector<T> h(b.size());
  b.copy_to_host(h);
  return h;
}

inline Buffer<float> to_device(const std::vector<float>& h) {
  Buffer<float> b(Device::Cuda, h.size());
  b.copy_from_host(h);
  return b;
}

/// Every byte 0xFF (a NaN for floats, -1 for integers), so that an output a kernel skips shows.
template <typename T>
void poison(Buffer<T>& b) {
  CUDA_CHECK(cudaMemset(b.data(), 0xFF, b.size() * sizeof(T)));
}

}  // namespace dptrain
