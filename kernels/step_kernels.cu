#include "cuda/check.h"
#include "kernels/step_kernels.h"

namespace dptrain::kernels {

namespace {

__global__ void write_step_state_kernel(StepState* dst, StepState state) { *dst = state; }

}  // namespace

void write_step_state(StepState* dst, const StepState& state, cudaStream_t stream) {
  write_step_state_kernel<<<1, 1, 0, stream>>>(dst, state);
  CUDA_CHECK_LAUNCH();
}

}  // namespace dptrain::kernels
