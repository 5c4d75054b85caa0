#include "kernels/conv_reference.h"

#include <climits>
#include <string>

#include "core/cuda_check.h"
#include "kernels/block_sum.cuh"
#include "kernels/grid_stride.cuh"

namespace dptrain::kernels {

namespace {

constexpr int kThreads = 256;
/// Elementwise kernels stride over the rest: enough blocks to fill any GPU.
constexpr size_t kMaxBlocks = size_t{1} << 16;

unsigned blocks_for(size_t n) { return grid_stride_blocks(n, kThreads, kMaxBlocks); }

__global__ void forward_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                               float* __restrict__ y, bool relu, ConvGeometry g) {
  const size_t total = size_t(g.n) * g.oc * g.oh * g.ow;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
    const float v = static_cast<float>(reference_conv_output(x, w, b, g, i));
    y[i] = relu ? fmaxf(v, 0.0f) : v;
  }
}

__global__ void backward_data_kernel(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                                     ConvGeometry g) {
  const size_t total = size_t(g.n) * g.c * g.h * g.w;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x)
    dx[i] = static_cast<float>(reference_conv_input_grad(dy, w, g, i));
}

/// One block per weight: the sum over samples and output positions of dy * x.
__global__ void filter_grad_kernel(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dw,
                                   ConvGeometry g) {
  __shared__ double shared[kThreads];
  const size_t positions = size_t(g.n) * g.oh * g.ow;
  double acc = 0;
  for (size_t j = threadIdx.x; j < positions; j += kThreads)
    acc += reference_conv_weight_grad_term(x, dy, g, blockIdx.x, j);
  const double sum = block_sum(acc, shared);
  if (threadIdx.x == 0) dw[blockIdx.x] = static_cast<float>(sum);
}

/// One block per output channel: the sum of dy over samples and positions.
__global__ void bias_grad_kernel(const float* __restrict__ dy, float* __restrict__ db, ConvGeometry g) {
  __shared__ double shared[kThreads];
  const size_t positions = size_t(g.n) * g.oh * g.ow;
  double acc = 0;
  for (size_t j = threadIdx.x; j < positions; j += kThreads)
    acc += reference_conv_bias_grad_term(dy, g, static_cast<int>(blockIdx.x), j);
  const double sum = block_sum(acc, shared);
  if (threadIdx.x == 0) db[blockIdx.x] = static_cast<float>(sum);
}

void require_fits(const ConvGeometry& g, const char* what) {
  if (!reference_conv_fits(g))
    throw CudaError(std::string(what) + ": the reference convolution does not serve this geometry");
}

}  // namespace

bool reference_conv_fits(const ConvGeometry& g) {
  if (g.n < 1 || g.c < 1 || g.h < 1 || g.w < 1 || g.oc < 1 || g.k < 1 || g.stride < 1 || g.pad < 0) return false;
  if (g.h + 2 * g.pad < g.k || g.w + 2 * g.pad < g.k) return false;
  if (g.oh != (g.h + 2 * g.pad - g.k) / g.stride + 1 || g.ow != (g.w + 2 * g.pad - g.k) / g.stride + 1) return false;
  const std::uint64_t weights = std::uint64_t(g.oc) * g.c * g.k * g.k;
  return weights <= INT_MAX && conv_multiply_adds(g) <= kReferenceConvMaxMultiplyAdds;
}

void reference_conv_forward(const float* x, const float* w, const float* b, float* y, bool relu, const ConvGeometry& g,
                            cudaStream_t stream) {
  require_fits(g, "reference_conv_forward");
  forward_kernel<<<blocks_for(size_t(g.n) * g.oc * g.oh * g.ow), kThreads, 0, stream>>>(x, w, b, y, relu, g);
  CUDA_CHECK_LAUNCH();
}

void reference_conv_backward_data(const float* dy, const float* w, float* dx, const ConvGeometry& g,
                                  cudaStream_t stream) {
  require_fits(g, "reference_conv_backward_data");
  backward_data_kernel<<<blocks_for(size_t(g.n) * g.c * g.h * g.w), kThreads, 0, stream>>>(dy, w, dx, g);
  CUDA_CHECK_LAUNCH();
}

void reference_conv_filter_grad(const float* x, const float* dy, float* dw, float* db, const ConvGeometry& g,
                                cudaStream_t stream) {
  require_fits(g, "reference_conv_filter_grad");
  filter_grad_kernel<<<static_cast<unsigned>(std::uint64_t(g.oc) * g.c * g.k * g.k), kThreads, 0, stream>>>(x, dy, dw,
                                                                                                            g);
  CUDA_CHECK_LAUNCH();
  bias_grad_kernel<<<static_cast<unsigned>(g.oc), kThreads, 0, stream>>>(dy, db, g);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
