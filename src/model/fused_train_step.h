// FusedTrainStep: a whole training pass (forward, loss, and backward to every parameter's gradient)
// of one network in a few launches, where the layered pass, one layer at a time, is bound by its
// launches' latency (kernels/lenet5_step.h: LeNet-5's, 4 launches where the layered pass runs 27).
// The model builds one when its layer list is exactly the pattern (model/model.h), and its planner
// times it against the layered pass at each training batch size, after checking that both give the
// same gradients; the faster runs. It reads the model's parameter buffer and writes its gradient
// buffer, so the optimizer, the gradient exchange and checkpoints see no difference.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "core/device_context.h"
#include "core/step_gather.h"
#include "io/config.h"
#include "model/param_store.h"

namespace dptrain {

class FusedTrainStep {
 public:
  virtual ~FusedTrainStep() = default;
  /// The network's name in plan records and the planner's log lines ("lenet5").
  virtual const char* name() const = 0;
  /// Whether it serves a batch of n samples.
  virtual bool fits(int n) const = 0;
  /// The pass over n samples, queued on the compute stream (no sync, no allocation: a step that runs
  /// it can be captured): writes every parameter's gradient into `grads` (the model's layout),
  /// sums[0] += the loss and sums[1] += the correct count (SoftmaxCrossEntropy's contract).
  /// `gather` null: input and labels hold the batch. Else the pass first takes the batch from the
  /// dataset itself (core/step_gather.h; gather->x and gather->y are input and labels, written with
  /// the bits the gather kernel gives), so the step needs no gather launch.
  virtual void run(DeviceContext& ctx, const float* params, const float* input, const int32_t* labels, int n,
                   float grad_scale, float* grads, double* sums, const StepGather* gather) = 0;
};

/// Whether the model is LeNet-5 as configs/lenet5.yaml has it: 1x28x28 input, 10 classes, and the
/// layers conv 6@5x5 padding 2, ReLU, max pool 2, conv 16@5x5, ReLU, max pool 2, flatten, linear 120,
/// ReLU, linear 84, ReLU, linear 10 (names free; strides and paddings as given or left default).
bool is_lenet5(const ModelConfig& config);

/// The fused pass for this model on ctx's device, or null where there is none (the CPU, or a layer
/// list no fused pass serves). `params`: the model's parameter entries (offsets into its buffers).
std::unique_ptr<FusedTrainStep> make_fused_train_step(const ModelConfig& config, const std::vector<ParamEntry>& params,
                                                      DeviceContext& ctx, int max_batch, double label_smoothing);

/// The layered pass over a batch (the model's forward, loss and backward), as the planner runs it:
/// the gradients into the model's buffer, the loss sums into `sums`.
using LayeredPass = std::function<void(const float* input, const int32_t* labels, double* sums)>;

/// Plans a training batch of n samples: true where the fused pass is to run it, false for the
/// layered pass (which must be planned for n already). A choice in ctx's plan book is used, else
/// made and recorded there. First, unless the book says layered, one run of each on the same
/// seeded batch checks that they give the same gradients (each tensor within 1e-3 of the layered
/// pass's, relative; 2e-2 with TF32): a fused pass that disagrees is dropped with one warning line.
/// Then, with train.cudnn_benchmark, both are timed as the step runs them (in a CUDA graph) and the
/// faster is chosen (one line in the context's choices); without it the fused pass is. The planning
/// overwrites the gradient buffer. In model/cuda/fused_pass_planner.cpp.
bool plan_fused_pass(DeviceContext& ctx, FusedTrainStep& fused, int n, Dims input, const float* params, float* grads,
                     std::span<const ParamEntry> entries, const LayeredPass& layered);

/// LeNet-5's, or null on a GPU without thread block clusters (before sm_90)
/// (model/cuda/lenet5_train_step.cpp; refused in a build without CUDA).
std::unique_ptr<FusedTrainStep> make_lenet5_train_step(const std::vector<ParamEntry>& params, int max_batch,
                                                       double label_smoothing);

}  // namespace dptrain
