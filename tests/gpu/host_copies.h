// Copies between host vectors and device buffers for the GPU tests.
#pragma once

#include <vector>

#include "core/buffer.h"

namespace dptrain {

inline std::vector<float> to_host(const Buffer<float>& b) {
  std::vector<float> h(b.size());
  b.copy_to_host(h);
  return h;
}

inline Buffer<float> to_device(const std::vector<float>& h) {
  Buffer<float> b(Device::Cuda, h.size());
  b.copy_from_host(h);
  return b;
}

}  // namespace dptrain
