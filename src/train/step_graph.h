// StepGraph: one training step captured as a CUDA graph and replayed for every later step with the
// same shape. Nothing a step needs is a launch argument that changes (the data position, dropout
// keys and optimizer scalars come from the device-resident StepState), so one graph serves a run.
#pragma once

#include <cuda_runtime_api.h>

#include "cuda/raii.h"

namespace dptrain {

class StepGraph {
 public:
  /// Begins capturing the work queued on `stream` from this thread.
  StepGraph(cudaStream_t stream, int count, float grad_scale);
  /// Ends the capture and instantiates the graph.
  void end_capture();
  void launch();
  bool matches(int count, float grad_scale) const { return ready_ && count == count_ && grad_scale == grad_scale_; }

 private:
  cudaStream_t stream_;
  int count_;
  float grad_scale_;
  bool ready_ = false;
  CudaGraph graph_;
  CudaGraphExec exec_;
};

}  // namespace dptrain
