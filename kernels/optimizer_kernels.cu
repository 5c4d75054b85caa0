// Optimizer kernels: one thread per element, grid-stride; compiled with --fmad=false (see
// CMakeLists.txt) so they reproduce the CPU updates bit for bit.
#include "core/cuda_check.h"
#include "kernels/grid_stride.cuh"
#include "kernels/optimizer_kernels.h"

namespace dptrain::kernels {

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(size_t n) { return grid_stride_blocks(n, kThreads, 65535 * 8); }

__global__ void sgd_kernel(float* p, const float* g, float* buf, size_t n, rules::SgdHyper h, const StepScalars* s) {
  const StepScalars sc = *s;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    float dummy = 0.0f;
    rules::sgd(p[i], g[i], buf != nullptr ? buf[i] : dummy, h, sc);
  }
}

__global__ void adam_kernel(float* p, const float* g, float* m, float* v, size_t n, rules::AdamHyper h,
                            const StepScalars* s) {
  const StepScalars sc = *s;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    rules::adam(p[i], g[i], m[i], v[i], h, sc);
}

__global__ void adadelta_kernel(float* p, const float* g, float* sq, float* acc, size_t n, rules::AdadeltaHyper h,
                                const StepScalars* s) {
  const StepScalars sc = *s;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    rules::adadelta(p[i], g[i], sq[i], acc[i], h, sc);
}

}  // namespace

void sgd_step(float* p, const float* g, float* buf, size_t n, const rules::SgdHyper& h, const StepScalars* s,
              cudaStream_t stream) {
  sgd_kernel<<<blocks_for(n), kThreads, 0, stream>>>(p, g, buf, n, h, s);
  CUDA_CHECK_LAUNCH();
}

void adam_step(float* p, const float* g, float* m, float* v, size_t n, const rules::AdamHyper& h, const StepScalars* s,
               cudaStream_t stream) {
  adam_kernel<<<blocks_for(n), kThreads, 0, stream>>>(p, g, m, v, n, h, s);
  CUDA_CHECK_LAUNCH();
}

void adadelta_step(float* p, const float* g, float* sq, float* acc, size_t n, const rules::AdadeltaHyper& h,
                   const StepScalars* s, cudaStream_t stream) {
  adadelta_kernel<<<blocks_for(n), kThreads, 0, stream>>>(p, g, sq, acc, n, h, s);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
