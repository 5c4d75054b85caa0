#include "train/update_in_backward.h"

#include "cuda/cuda_context.h"

namespace dptrain {

void UpdateInBackward::on_gradients_ready(DeviceContext& ctx, size_t begin, size_t end) {
  // After the layer's whole backward: its weight gradient (side stream), its bias gradient and its
  // input gradient, which still reads the weights about to change (compute stream).
  optimizer_.step_part(ctx, params_, grads_, scalars_, begin, end, ctx.cuda().queue_update());
}

}  // namespace dptrain
