#include "train/step_graph.h"

#include "cuda/check.h"

namespace dptrain {

StepGraph::StepGraph(cudaStream_t stream, int count, float grad_scale)
    : stream_(stream), count_(count), grad_scale_(grad_scale) {
  CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
}

void StepGraph::end_capture() {
  cudaGraph_t g = nullptr;
  CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
  graph_ = CudaGraph(g);
  cudaGraphExec_t e = nullptr;
  // Each kernel keeps the priority of the stream it was captured on (cuda/cuda_context.h).
  CUDA_CHECK(cudaGraphInstantiate(&e, graph_, cudaGraphInstantiateFlagUseNodePriority));
  exec_ = CudaGraphExec(e);
  ready_ = true;
}

void StepGraph::launch() { CUDA_CHECK(cudaGraphLaunch(exec_, stream_)); }

}  // namespace dptrain
