#include "core/cuda_check.h"
#include "core/step_state_kernels.h"

namespace dptrain::kernels {

namespace {

__global__ void write_step_state_kernel(StepState* dst, StepState state) { *dst = state; }

}  // namespace

void write_step_state(StepState* dst, const StepState& state, cudaStream_t stream) {
  write_step_state_kernel<<<1, 1, 0, stream>>>(dst, state);
  CUDA_CHECK_LAUNCH();
}

void set_captured_step_state(cudaGraphExec_t exec, cudaGraphNode_t node, const StepState& state) {
  cudaKernelNodeParams params{};
  CUDA_CHECK(cudaGraphKernelNodeGetParams(node, &params));
  if (params.func != reinterpret_cast<void*>(write_step_state_kernel))
    throw CudaError("set_captured_step_state: the node is not a write_step_state launch");
  StepState* dst = *static_cast<StepState**>(params.kernelParams[0]);
  StepState value = state;
  void* args[] = {&dst, &value};
  params.kernelParams = args;
  CUDA_CHECK(cudaGraphExecKernelNodeSetParams(exec, node, &params));
}

}  // namespace dptrain::kernels
