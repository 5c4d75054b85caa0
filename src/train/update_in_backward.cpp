#include "train/update_in_backward.h"

#include "core/cuda_support.h"
#if DPTRAIN_HAVE_CUDA
#include "core/cuda_context.h"
#endif

namespace dptrain {

#if DPTRAIN_HAVE_CUDA

void UpdateInBackward::on_gradients_ready(DeviceContext& ctx, size_t begin, size_t end) {
  if (held_end_ > held_begin_) {
    if (end != held_begin_) {  // not neighbours: the held update goes alone
      optimizer_.step_part(ctx, params_, grads_, scalars_, held_begin_, held_end_, ctx.cuda().queue_update());
    } else {
      end = held_end_;
    }
    held_begin_ = held_end_ = 0;
  }
  if (end - begin < kSmallUpdate) {
    held_begin_ = begin, held_end_ = end;
    return;
  }
  // After the layer's whole backward: its weight gradient (side stream), its bias gradient and its
  // input gradient, which still reads the weights about to change (compute stream).
  optimizer_.step_part(ctx, params_, grads_, scalars_, begin, end, ctx.cuda().queue_update());
}

void UpdateInBackward::on_backward_done(DeviceContext& ctx) {
  if (held_end_ == held_begin_) return;
  optimizer_.step_part(ctx, params_, grads_, scalars_, held_begin_, held_end_, ctx.cuda().stream());
  held_begin_ = held_end_ = 0;
}

#else  // a CPU-only build: the trainer updates during backward only on CUDA, which it refuses

void UpdateInBackward::on_gradients_ready(DeviceContext&, size_t, size_t) { throw_built_without_cuda(); }
void UpdateInBackward::on_backward_done(DeviceContext&) { throw_built_without_cuda(); }

#endif

}  // namespace dptrain
