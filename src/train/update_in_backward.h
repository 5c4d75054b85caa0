// UpdateInBackward: with one rank on CUDA (no gradient exchange), each layer's parameters are
// updated as soon as backward has queued their gradients, on the low-priority update stream
// (cuda/cuda_context.h) after everything queued so far. The update of the last layers (fc1 holds
// 97% of mnist_cnn's parameters) then overlaps the backward of the first ones instead of waiting
// for all of it, and only the first layer's small update is left at the end of the step. The
// update rules are element-wise, so updating layer by layer gives exactly the values of one update
// after backward.
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
  /// Nothing: Model::backward joins the side and update streams before calling this.
  void on_backward_done(DeviceContext&) override {}

 private:
  Optimizer& optimizer_;
  std::span<float> params_;
  std::span<const float> grads_;
  const StepScalars* scalars_;
};

}  // namespace dptrain
