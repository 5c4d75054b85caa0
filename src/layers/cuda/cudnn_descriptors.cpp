#include "layers/cuda/cudnn_descriptors.h"

#include "core/cuda_check.h"

namespace dptrain {

CudnnTensorDesc make_tensor_desc(int n, int c, int h, int w) {
  cudnnTensorDescriptor_t d = nullptr;
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&d));
  CudnnTensorDesc owned(d);
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(d, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, c, h, w));
  return owned;
}

cudnnTensorDescriptor_t TensorDescCache::get(int n) {
  for (auto& [size, desc] : cache_)
    if (size == n) return desc;
  cache_.emplace_back(n, make_tensor_desc(n, dims_.c, dims_.h, dims_.w));
  return cache_.back().second;
}

}  // namespace dptrain
