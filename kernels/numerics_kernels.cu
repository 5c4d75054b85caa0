#include "core/cuda_check.h"
#include "kernels/grid_stride.cuh"
#include "kernels/numerics_kernels.h"

namespace dptrain::kernels {

namespace {

// Every writer stores the same value, so the unsynchronised writes race harmlessly; no atomics.
template <typename T>
__global__ void flag_non_finite_kernel(const T* x, size_t n, int* flag) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    if (!isfinite(x[i])) {
      *flag = 1;
      return;
    }
}

template <typename T>
void launch(const T* x, size_t n, int* flag, cudaStream_t stream) {
  if (n == 0) return;
  constexpr int kThreads = 256;
  // A grid-stride loop over at most 1024 blocks: enough to fill a GPU; a debug mode needs no more.
  flag_non_finite_kernel<<<grid_stride_blocks(n, kThreads, 1024), kThreads, 0, stream>>>(x, n, flag);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void flag_non_finite(const float* x, size_t n, int* flag, cudaStream_t stream) { launch(x, n, flag, stream); }
void flag_non_finite(const double* x, size_t n, int* flag, cudaStream_t stream) { launch(x, n, flag, stream); }

}  // namespace dptrain::kernels
