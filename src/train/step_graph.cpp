#include "train/step_graph.h"

#if DPTRAIN_HAVE_CUDA
#include "core/cuda_check.h"
#include "core/step_state_kernels.h"
#endif

namespace dptrain {

#if DPTRAIN_HAVE_CUDA

StepGraph::StepGraph(cudaStream_t stream, int count, float grad_scale, uint64_t workspace_generation)
    : stream_(stream), count_(count), grad_scale_(grad_scale), generation_(workspace_generation) {
  CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
}

void StepGraph::mark_step_state() {
  cudaStreamCaptureStatus status{};
  const cudaGraphNode_t* last = nullptr;
  size_t count = 0;
  CUDA_CHECK(cudaStreamGetCaptureInfo(stream_, &status, nullptr, nullptr, &last, nullptr, &count));
  if (status != cudaStreamCaptureStatusActive || count != 1)
    throw CudaError("StepGraph: the step state's write is not the last captured work");
  step_state_ = last[0];
}

void StepGraph::end_capture() {
  cudaGraph_t g = nullptr;
  CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
  graph_ = CudaGraph(g);
  cudaGraphExec_t e = nullptr;
  // Each kernel keeps the priority of the stream it was captured on (core/cuda_context.h).
  CUDA_CHECK(cudaGraphInstantiate(&e, graph_, cudaGraphInstantiateFlagUseNodePriority));
  exec_ = CudaGraphExec(e);
  ready_ = true;
}

void StepGraph::launch() { CUDA_CHECK(cudaGraphLaunch(exec_, stream_)); }

void StepGraph::launch(const StepState& state) {
  if (step_state_ == nullptr) throw CudaError("StepGraph: no step state node was marked");
  kernels::set_captured_step_state(exec_, step_state_, state);
  launch();
}

#else  // a CPU-only build: the trainer captures only on CUDA, which such a build refuses

StepGraph::StepGraph(cudaStream_t stream, int count, float grad_scale, uint64_t workspace_generation)
    : stream_(stream), count_(count), grad_scale_(grad_scale), generation_(workspace_generation) {
  throw_built_without_cuda();
}
void StepGraph::mark_step_state() { throw_built_without_cuda(); }
void StepGraph::end_capture() { throw_built_without_cuda(); }
void StepGraph::launch() { throw_built_without_cuda(); }
void StepGraph::launch(const StepState&) { throw_built_without_cuda(); }

#endif

}  // namespace dptrain
