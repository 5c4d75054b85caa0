// Optimizer: updates the one flat parameter buffer from the one flat gradient buffer, with its
// state in flat buffers of the same layout, so the update, the all-reduce and the checkpoint each
// work on one span.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/buffer.h"
#include "core/cuda_support.h"  // cudaStream_t
#include "core/device_context.h"
#include "io/config.h"
#include "core/step_scalars.h"

namespace dptrain {

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual std::string_view type() const = 0;

  /// State slot names as PyTorch's optimizer state_dict names them ("momentum_buffer", "exp_avg",
  /// "exp_avg_sq", "square_avg", "acc_delta"); checkpoints store them as optimizer.<param>.<slot>.
  virtual std::vector<std::string> slot_names() const = 0;
  /// The flat state buffer of slot i (same length and layout as the parameter buffer).
  virtual Buffer<float>& slot(size_t i) = 0;

  /// Computes this step's scalars for 1-based step count t at learning rate lr; `momentum`, when
  /// given, replaces the configured momentum (SGD) or beta1 (Adam/AdamW) for this step (a schedule
  /// cycling it: LrSchedule::momentum). Adadelta has neither and ignores it.
  virtual StepScalars scalars(double lr, int64_t t, std::optional<double> momentum = std::nullopt) const = 0;

  /// One update. Allocates nothing, never synchronises.
  void step(DeviceContext& ctx, std::span<float> params, std::span<const float> grads, const StepScalars* scalars) {
    update(ctx, params, grads, scalars, 0, params.size(), nullptr);
  }

  /// The update of elements [begin, end) only (params and grads are the whole flat buffers), on
  /// `stream` on CUDA (null: the compute stream). The rules are element-wise, so updating the
  /// buffer in parts gives exactly what step() gives.
  void step_part(DeviceContext& ctx, std::span<float> params, std::span<const float> grads, const StepScalars* scalars,
                 size_t begin, size_t end, cudaStream_t stream) {
    update(ctx, params, grads, scalars, begin, end, stream);
  }

 protected:
  virtual void update(DeviceContext& ctx, std::span<float> params, std::span<const float> grads,
                      const StepScalars* scalars, size_t begin, size_t end, cudaStream_t stream) = 0;
};

/// Throws InputError for an unknown type or a bad hyper-parameter (names the config key).
std::unique_ptr<Optimizer> make_optimizer(const OptimizerConfig& config, Device device, size_t param_count);

}  // namespace dptrain
