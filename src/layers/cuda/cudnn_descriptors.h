// Building cuDNN descriptors, and a small cache of NCHW tensor descriptors by batch size: a layer
// sees a few batch sizes (the training batch, the epoch's short tail, the evaluation batch), each
// described once, outside the hot path.
#pragma once

#include <utility>
#include <vector>

#include "core/tensor.h"
#include "core/cuda_raii.h"

namespace dptrain {

CudnnTensorDesc make_tensor_desc(int n, int c, int h, int w);

class TensorDescCache {
 public:
  explicit TensorDescCache(Dims dims = {}) : dims_(dims) {}
  /// The descriptor of n samples; created on first sight of n.
  cudnnTensorDescriptor_t get(int n);

 private:
  Dims dims_;
  std::vector<std::pair<int, CudnnTensorDesc>> cache_;
};

}  // namespace dptrain
