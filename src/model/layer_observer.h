// LayerObserver<T>: hears of every stage of a training pass as the model queues it, so debugging
// and measuring tools (the numerics checker, the profiler) plug into Model the same way and
// Model::forward/loss stay free of tool-specific code. Model calls an observer only when one is set
// and only for Phase::Train passes (evaluation is not a training step).
//
// Calls arrive in execution order: forward_begin/forward_done for layers 0..L-1, loss_done, then
// backward_begin/backward_done for layers L-1..0. A last layer that computes the loss within its
// backward (Layer::backward_with_loss) has done that backward by loss_done: its backward_begin and
// backward_done follow with nothing queued between them. Views point at the context's memory (device
// memory on CUDA) and hold work that is queued, not finished: an observer that reads them must
// queue its reads on the same stream, and must not synchronise unless it is a debug mode.
#pragma once

#include <span>

#include "core/device_context.h"
#include "core/tensor.h"
#include "layers/layer.h"

namespace dptrain {

template <typename T>
class LayerObserver {
 public:
  virtual ~LayerObserver() = default;

  /// `layer`'s forward is about to be queued.
  virtual void forward_begin(DeviceContext&, const Layer<T>&) {}
  /// `layer`'s forward is queued; `out` is its output.
  virtual void forward_done(DeviceContext&, const Layer<T>&, TensorView<const T> /*out*/) {}
  /// The loss is queued; `sums` is the [loss sum, correct] accumulator it adds to (this epoch's).
  virtual void loss_done(DeviceContext&, std::span<const double> /*sums*/) {}
  /// `layer`'s backward is about to be queued.
  virtual void backward_begin(DeviceContext&, const Layer<T>&) {}
  /// `layer`'s backward is queued: `din` is dL/d(its input) (data is null for the first layer,
  /// which computes none), `grads` its slice of the flat gradient buffer (empty if it has none).
  virtual void backward_done(DeviceContext&, const Layer<T>&, TensorView<const T> /*din*/,
                             std::span<const T> /*grads*/) {}
};

}  // namespace dptrain
