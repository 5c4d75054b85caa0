// UpdateInBackward: with one rank on CUDA (no gradient exchange), each layer's parameters are
// updated as soon as backward has queued their gradients, on the low-priority update stream
// (core/cuda_context.h) after everything queued so far. The update of the last layers (fc1 holds
// 97% of mnist_cnn's parameters) then overlaps the backward of the first ones instead of waiting
// for all of it, and only the first layer's small update is left at the end of the step. The
// update rules are element-wise, so updating layer by layer gives exactly the values of one update
// after backward.
// A small layer's update (under kSmallUpdate parameters: a launch's latency, not its traffic) waits
// to be launched with the next layer's when their ranges touch, and the last one is launched on
// the compute stream once backward has joined: mnist_cnn's two convolutions are updated by one
// launch at the end of the step instead of two in a row (and fc2's goes with fc1's).
// With an exchange the gradients must be summed first: the trainer then updates after backward.
#pragma once

#include <span>

#include "model/gradient_hook.h"
#include "optim/optimizer.h"

namespace dptrain {

class UpdateInBackward final : public GradientHook {
 public:
  /// `params`/`grads`: the flat buffers; `scalars`: the device-resident step scalars. Not owned.
  UpdateInBackward(Optimizer& optimizer, std::span<float> params, std::span<const float> grads,
                   const StepScalars* scalars)
      : optimizer_(optimizer), params_(params), grads_(grads), scalars_(scalars) {}

  void on_gradients_ready(DeviceContext& ctx, size_t begin, size_t end) override;
  /// Launches the update still held back, on the compute stream (Model::backward has joined the
  /// side and update streams before calling this).
  void on_backward_done(DeviceContext& ctx) override;

  static constexpr size_t kSmallUpdate = size_t{1} << 16;

 private:
  Optimizer& optimizer_;
  std::span<float> params_;
  std::span<const float> grads_;
  const StepScalars* scalars_;
  size_t held_begin_ = 0, held_end_ = 0;  // an update not launched yet (empty: none)
};

}  // namespace dptrain
