// GradientHook: the model's callback to whoever exchanges gradients (Caffe's
// Solver::Callback::on_gradients_ready). Backward calls it after each parameterised layer with that
// layer's slice of the flat gradient buffer; slices arrive in reverse buffer order and together
// cover the buffer, so a reducer can launch a bucket's all-reduce as soon as the bucket is complete.
#pragma once

#include <cstddef>

#include "core/device_context.h"

namespace dptrain {

class GradientHook {
 public:
  virtual ~GradientHook() = default;
  /// Elements [begin, end) of the flat gradient buffer are final for this step (their producing
  /// work is queued on ctx's stream).
  virtual void on_gradients_ready(DeviceContext& ctx, size_t begin, size_t end) = 0;
  /// Backward has finished queueing; the optimizer runs after this returns.
  virtual void on_backward_done(DeviceContext& ctx) = 0;
};

}  // namespace dptrain
