// NumericsChecker: the --check-numerics debug mode (train.check_numerics). It checks, in execution
// order, every layer's forward output, the loss, every layer's input gradient and gradient slice,
// and every parameter tensor after the optimizer (then every state tensor), and at the step's end reports the FIRST
// non-finite (NaN or Inf) one as a NumericsError naming the step, the layer and the quantity.
//
// Each check point owns one slot of a small int array in the context's memory, assigned the first
// time the point is reached, so slot order is execution order. On CUDA a kernel sets a slot when
// its span holds a non-finite value; end_step() reads the whole array once (one host sync per step:
// this is a debug mode). On the CPU the span is scanned in place. Without --check-numerics no
// checker exists and the model skips its observer call: the hot path pays nothing.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/buffer.h"
#include "model/layer_observer.h"
#include "model/model.h"

namespace dptrain {

/// What was non-finite, in the order a step computes them.
enum class NumericsCheck { ForwardOutput, Loss, InputGradient, WeightGradient, ParametersAfterUpdate, StateAfterStep };

/// "forward output", "loss", "gradient of input", "weight gradient", "parameters after update",
/// "state after the step".
const char* to_string(NumericsCheck check);

/// A numerical blow-up during training: a failure of the run (exit status 1), not bad input.
class NumericsError : public std::runtime_error {
 public:
  NumericsError(int64_t step, int epoch, NumericsCheck check, std::string layer, const std::string& what)
      : std::runtime_error(what), step_(step), epoch_(epoch), check_(check), layer_(std::move(layer)) {}
  int64_t step() const { return step_; }    ///< global step, counted from 1
  int epoch() const { return epoch_; }      ///< counted from 1
  NumericsCheck check() const { return check_; }
  const std::string& layer() const { return layer_; }  ///< config name; empty for the loss

 private:
  int64_t step_;
  int epoch_;
  NumericsCheck check_;
  std::string layer_;
};

class NumericsChecker final : public LayerObserver<float> {
 public:
  /// Sized for `model`'s check points; the model must outlive the checker.
  NumericsChecker(DeviceContext& ctx, const Model<float>& model);

  void forward_done(DeviceContext& ctx, const Layer<float>& layer, TensorView<const float> out) override;
  void loss_done(DeviceContext& ctx, std::span<const double> sums) override;
  void backward_done(DeviceContext& ctx, const Layer<float>& layer, TensorView<const float> din,
                     std::span<const float> grads) override;
  /// Checks each parameter tensor after the optimizer's update (queued after it).
  void parameters_updated(DeviceContext& ctx, const ParamStore<float>& params);
  /// Checks each state tensor (batchnorm's running statistics) after the step moved it.
  void state_updated(DeviceContext& ctx, const StateStore<float>& state);

  /// Throws NumericsError for the first flagged check of the step that just ran (`global_step`
  /// and `epoch` counted from 0, as the trainer does). Waits for the device. A step without a
  /// flag leaves them all clear, so there is nothing to reset between steps.
  void end_step(DeviceContext& ctx, int64_t global_step, int epoch);

 private:
  struct Point {
    NumericsCheck check;
    std::string layer;        // config name, empty for the loss
    std::string description;  // e.g. "forward output of conv2 (conv2d, layer 2)"
  };
  /// The slot of (check, key), assigned on first use; `key` is a layer or parameter index.
  size_t slot(NumericsCheck check, size_t key, const std::string& layer, const std::string& where);
  template <typename T>
  void check(DeviceContext& ctx, size_t slot, std::span<const T> data);

  std::map<std::pair<NumericsCheck, size_t>, size_t> slots_;
  std::vector<Point> points_;    // by slot
  std::vector<int32_t> host_flags_;
  Buffer<int32_t> flags_;        // by slot: 1 if the point saw a non-finite value this step
  const Model<float>& model_;
};

}  // namespace dptrain
