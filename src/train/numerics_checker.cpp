#include "train/numerics_checker.h"

#include <algorithm>
#include <cmath>

#include "core/device_ops.h"
#if DPTRAIN_HAVE_CUDA
#include "core/cuda_context.h"
#include "kernels/numerics_kernels.h"
#endif

namespace dptrain {

const char* to_string(NumericsCheck check) {
  switch (check) {
    case NumericsCheck::ForwardOutput: return "forward output";
    case NumericsCheck::Loss: return "loss";
    case NumericsCheck::InputGradient: return "gradient of input";
    case NumericsCheck::WeightGradient: return "weight gradient";
    case NumericsCheck::ParametersAfterUpdate: return "parameters after update";
    case NumericsCheck::StateAfterStep: return "state after the step";
  }
  return "value";
}

namespace {

std::string describe(const Layer<float>& layer) {
  return "layer " + layer.name() + " (model.layers[" + std::to_string(layer.index()) + "], " +
         std::string(layer.type()) + ")";
}

}  // namespace

NumericsChecker::NumericsChecker(DeviceContext& ctx, const Model<float>& model) : model_(model) {
  // Per layer: forward output, input gradient, weight gradient; per tensor: after update; the loss.
  const size_t capacity =
      3 * model.layers().size() + model.params().entries().size() + model.state().entries().size() + 1;
  flags_ = Buffer<int32_t>(ctx.device(), capacity);
  flags_.zero();
  host_flags_.assign(capacity, 0);
  points_.reserve(capacity);
}

size_t NumericsChecker::slot(NumericsCheck check, size_t key, const std::string& layer, const std::string& where) {
  const auto [it, added] = slots_.try_emplace({check, key}, points_.size());
  if (added) points_.push_back({check, layer, std::string(to_string(check)) + " of " + where});
  return it->second;
}

template <typename T>
void NumericsChecker::check([[maybe_unused]] DeviceContext& ctx, size_t slot, std::span<const T> data) {
  int32_t* flag = flags_.data() + slot;
#if DPTRAIN_HAVE_CUDA
  if (ctx.on_cuda()) return kernels::flag_non_finite(data.data(), data.size(), flag, ctx.cuda().stream());
#endif
  if (*flag == 0 && !std::all_of(data.begin(), data.end(), [](T x) { return std::isfinite(x); })) {
    *flag = 1;
  }
}

void NumericsChecker::forward_done(DeviceContext& ctx, const Layer<float>& layer, TensorView<const float> out) {
  const size_t s = slot(NumericsCheck::ForwardOutput, static_cast<size_t>(layer.index()), layer.name(), describe(layer));
  check(ctx, s, std::span<const float>(out.data, static_cast<size_t>(out.size())));
}

void NumericsChecker::loss_done(DeviceContext& ctx, std::span<const double> sums) {
  // sums[0] accumulates over the epoch, but a non-finite sum is reported at the step that made it so.
  check(ctx, slot(NumericsCheck::Loss, 0, "", "the training batch"), sums.first(1));
}

void NumericsChecker::backward_done(DeviceContext& ctx, const Layer<float>& layer, TensorView<const float> din,
                                    std::span<const float> grads) {
  const auto index = static_cast<size_t>(layer.index());
  // The parameter gradients are final before dL/din is used by the layer below: checked first.
  if (!grads.empty()) check(ctx, slot(NumericsCheck::WeightGradient, index, layer.name(), describe(layer)), grads);
  if (din.data != nullptr)
    check(ctx, slot(NumericsCheck::InputGradient, index, layer.name(), describe(layer)),
          std::span<const float>(din.data, static_cast<size_t>(din.size())));
}

void NumericsChecker::parameters_updated(DeviceContext& ctx, const ParamStore<float>& params) {
  const auto& entries = params.entries();
  for (size_t k = 0; k < entries.size(); ++k) {
    const Layer<float>& layer = *model_.layers()[static_cast<size_t>(entries[k].layer)];
    const size_t s = slot(NumericsCheck::ParametersAfterUpdate, k, layer.name(), entries[k].name + " in " + describe(layer));
    check(ctx, s, params.values().span().subspan(entries[k].offset, entries[k].count));
  }
}

void NumericsChecker::state_updated(DeviceContext& ctx, const StateStore<float>& state) {
  const auto& entries = state.entries();
  for (size_t k = 0; k < entries.size(); ++k) {
    const Layer<float>& layer = *model_.layers()[static_cast<size_t>(entries[k].layer)];
    const size_t s = slot(NumericsCheck::StateAfterStep, k, layer.name(), entries[k].name + " in " + describe(layer));
    check(ctx, s, state.values().span().subspan(entries[k].offset, entries[k].count));
  }
}

void NumericsChecker::end_step(DeviceContext& ctx, int64_t global_step, int epoch) {
  download(ctx, std::span<const int32_t>(flags_.span()), std::span<int32_t>(host_flags_));
  for (size_t s = 0; s < points_.size(); ++s) {
    if (host_flags_[s] == 0) continue;
    const Point& p = points_[s];
    throw NumericsError(global_step + 1, epoch + 1, p.check, p.layer,
                        "non-finite value (NaN or Inf) at step " + std::to_string(global_step + 1) + " (epoch " +
                            std::to_string(epoch + 1) + "): " + p.description);
  }
  // Nothing was flagged, so every flag is still zero: nothing to clear.
}

}  // namespace dptrain
