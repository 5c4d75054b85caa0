// A block's sum of one double per thread in a fixed tree order (deterministic): for kernels whose
// blocks each reduce one quantity (BatchNorm's channel statistics, the reference convolution's
// weight gradients).
#pragma once

namespace dptrain::kernels {

/// The block's sum of `v` (one value per thread), in a fixed tree order; valid in every thread.
/// `shared` holds blockDim.x doubles (a power of two); it may be reused once this returns.
__device__ __forceinline__ double block_sum(double v, double* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  const double total = shared[0];
  __syncthreads();  // shared may be reused by the caller's next block_sum
  return total;
}

}  // namespace dptrain::kernels
