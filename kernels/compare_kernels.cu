#include "kernels/compare_kernels.h"

#include <cmath>
#include <limits>

#include "core/cuda_check.h"
#include "core/philox.h"
#include "kernels/grid_stride.cuh"

namespace dptrain::kernels {

namespace {

constexpr int kThreads = 256;

__global__ void compare_kernel(const float* a, const float* b, size_t n, Difference* out) {
  double err = 0, ref = 0;
  unsigned long long bad = 0;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float x = a[i], y = b[i];
    if (!isfinite(x)) {
      ++bad;
      continue;
    }
    const double d = static_cast<double>(x) - static_cast<double>(y);
    err += d * d;
    ref += static_cast<double>(y) * static_cast<double>(y);
  }
  __shared__ double s_err[kThreads], s_ref[kThreads];
  __shared__ unsigned long long s_bad[kThreads];
  s_err[threadIdx.x] = err;
  s_ref[threadIdx.x] = ref;
  s_bad[threadIdx.x] = bad;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      s_err[threadIdx.x] += s_err[threadIdx.x + half];
      s_ref[threadIdx.x] += s_ref[threadIdx.x + half];
      s_bad[threadIdx.x] += s_bad[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    atomicAdd(&out->squared_error, s_err[0]);
    atomicAdd(&out->squared_reference, s_ref[0]);
    atomicAdd(&out->non_finite, s_bad[0]);
  }
}

__global__ void fill_uniform_kernel(float* x, size_t n, unsigned seed) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i] = static_cast<float>(2.0 * philox::init_uniform(seed, 0, i) - 1.0);
}

}  // namespace

double Difference::relative() const {
  if (non_finite > 0 || !std::isfinite(squared_error)) return std::numeric_limits<double>::infinity();
  if (squared_reference == 0) return squared_error == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(squared_error / squared_reference);
}

void compare_outputs(const float* a, const float* b, size_t n, Difference* out, cudaStream_t stream) {
  if (n == 0) return;
  compare_kernel<<<grid_stride_blocks(n, kThreads, 4096), kThreads, 0, stream>>>(a, b, n, out);
  CUDA_CHECK_LAUNCH();
}

void fill_uniform(float* x, size_t n, unsigned seed, cudaStream_t stream) {
  if (n == 0) return;
  fill_uniform_kernel<<<grid_stride_blocks(n, kThreads, 8192), kThreads, 0, stream>>>(x, n, seed);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
