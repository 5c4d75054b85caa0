#include "kernels/conv_reference.h"

#include <algorithm>
#include <climits>
#include <string>

#include "core/cuda_check.h"

namespace dptrain::kernels {

namespace {

constexpr int kThreads = 256;
/// Elementwise kernels stride over the rest: enough blocks to fill any GPU.
constexpr size_t kMaxBlocks = size_t{1} << 16;

unsigned blocks_for(size_t n) { return static_cast<unsigned>(std::min((n + kThreads - 1) / kThreads, kMaxBlocks)); }

__global__ void forward_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                               float* __restrict__ y, bool relu, ConvGeometry g) {
  const size_t total = size_t(g.n) * g.oc * g.oh * g.ow;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
    const int ox = static_cast<int>(i % g.ow), oy = static_cast<int>(i / g.ow % g.oh),
              k = static_cast<int>(i / (size_t(g.ow) * g.oh) % g.oc);
    const size_t s = i / (size_t(g.ow) * g.oh * g.oc);
    double acc = b != nullptr ? double(b[k]) : 0.0;
    for (int c = 0; c < g.c; ++c)
      for (int r = 0; r < g.k; ++r) {
        const int iy = oy * g.stride - g.pad + r;
        if (iy < 0 || iy >= g.h) continue;
        for (int q = 0; q < g.k; ++q) {
          const int ix = ox * g.stride - g.pad + q;
          if (ix < 0 || ix >= g.w) continue;
          acc += double(x[((s * g.c + c) * g.h + iy) * g.w + ix]) * double(w[((size_t(k) * g.c + c) * g.k + r) * g.k + q]);
        }
      }
    const float v = static_cast<float>(acc);
    y[i] = relu ? fmaxf(v, 0.0f) : v;
  }
}

__global__ void backward_data_kernel(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                                     ConvGeometry g) {
  const size_t total = size_t(g.n) * g.c * g.h * g.w;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
    const int ix = static_cast<int>(i % g.w), iy = static_cast<int>(i / g.w % g.h),
              c = static_cast<int>(i / (size_t(g.w) * g.h) % g.c);
    const size_t s = i / (size_t(g.w) * g.h * g.c);
    double acc = 0;
    for (int k = 0; k < g.oc; ++k)
      for (int r = 0; r < g.k; ++r) {
        const int ty = iy + g.pad - r;  // oy * stride
        if (ty < 0 || ty % g.stride != 0 || ty / g.stride >= g.oh) continue;
        const int oy = ty / g.stride;
        for (int q = 0; q < g.k; ++q) {
          const int tx = ix + g.pad - q;
          if (tx < 0 || tx % g.stride != 0 || tx / g.stride >= g.ow) continue;
          const int ox = tx / g.stride;
          acc += double(dy[((s * g.oc + k) * g.oh + oy) * g.ow + ox]) *
                 double(w[((size_t(k) * g.c + c) * g.k + r) * g.k + q]);
        }
      }
    dx[i] = static_cast<float>(acc);
  }
}

/// The block's sum of each thread's `v`, in a fixed order; valid in thread 0.
__device__ double block_sum(double v) {
  __shared__ double part[kThreads];
  part[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
    __syncthreads();
  }
  return part[0];
}

/// One block per weight: the sum over samples and output positions of dy * x.
__global__ void filter_grad_kernel(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dw,
                                   ConvGeometry g) {
  const int q = static_cast<int>(blockIdx.x % g.k), r = static_cast<int>(blockIdx.x / g.k % g.k),
            c = static_cast<int>(blockIdx.x / (g.k * g.k) % g.c), k = static_cast<int>(blockIdx.x / (g.k * g.k * g.c));
  const size_t positions = size_t(g.n) * g.oh * g.ow;
  double acc = 0;
  for (size_t j = threadIdx.x; j < positions; j += kThreads) {
    const int ox = static_cast<int>(j % g.ow), oy = static_cast<int>(j / g.ow % g.oh);
    const size_t s = j / (size_t(g.ow) * g.oh);
    const int iy = oy * g.stride - g.pad + r, ix = ox * g.stride - g.pad + q;
    if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
    acc += double(dy[((s * g.oc + k) * g.oh + oy) * g.ow + ox]) * double(x[((s * g.c + c) * g.h + iy) * g.w + ix]);
  }
  const double sum = block_sum(acc);
  if (threadIdx.x == 0) dw[blockIdx.x] = static_cast<float>(sum);
}

/// One block per output channel: the sum of dy over samples and positions.
__global__ void bias_grad_kernel(const float* __restrict__ dy, float* __restrict__ db, ConvGeometry g) {
  const int k = static_cast<int>(blockIdx.x);
  const size_t plane = size_t(g.oh) * g.ow, values = size_t(g.n) * plane;
  double acc = 0;
  for (size_t j = threadIdx.x; j < values; j += kThreads) acc += double(dy[((j / plane) * g.oc + k) * plane + j % plane]);
  const double sum = block_sum(acc);
  if (threadIdx.x == 0) db[k] = static_cast<float>(sum);
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
