// StepGraph: one training step captured as a CUDA graph and replayed for every later step with the
// same shape. Nothing a step needs is a launch argument that changes (the data position, dropout
// keys and optimizer scalars come from the device-resident StepState), so one graph serves a run.
// The StepState's write is the graph's first node, given each launch's state: one launch per step.
// A CPU-only build (core/cuda_support.h) captures nothing: its StepGraph cannot be made.
#pragma once

#include <cstdint>

#include "core/cuda_support.h"
#include "core/step_state.h"
#if DPTRAIN_HAVE_CUDA
#include "core/cuda_raii.h"
#endif

namespace dptrain {

class StepGraph {
 public:
  /// Begins capturing the work queued on `stream` from this thread. `workspace_generation`:
  /// CudaContext::workspace_generation() now; the graph serves only while it is unchanged.
  StepGraph(cudaStream_t stream, int count, float grad_scale, uint64_t workspace_generation);
  /// The work captured last was the StepState's write (DeviceContext::set_step).
  void mark_step_state();
  /// Ends the capture and instantiates the graph.
  void end_capture();
  /// Launches the step as captured (the state it was captured with).
  void launch();
  /// Launches the step for `state`.
  void launch(const StepState& state);
  /// Whether a replay computes a step of `count` samples scaled by `grad_scale`, with the workspaces
  /// it was captured with (a reallocated workspace would leave it pointing into freed memory).
  bool matches(int count, float grad_scale, uint64_t workspace_generation) const {
    return ready_ && count == count_ && grad_scale == grad_scale_ && workspace_generation == generation_;
  }

 private:
  cudaStream_t stream_;
  int count_;
  float grad_scale_;
  uint64_t generation_;
  bool ready_ = false;
#if DPTRAIN_HAVE_CUDA
  CudaGraph graph_;
  CudaGraphExec exec_;
  cudaGraphNode_t step_state_ = nullptr;  // a node of graph_
#endif
};

}  // namespace dptrain
