// One training pass of mnist_cnn under the NumericsChecker with one parameter element poisoned
// (set to NaN or Inf) before the forward pass or after the "update": shared by the CPU unit tests
// and the GPU test that compares the CUDA checker's verdict with the CPU one.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "core/device_ops.h"
#include "io/config.h"
#include "model/model.h"
#include "train/numerics_checker.h"

namespace dptrain::test_support {

enum class PoisonWhen { BeforeForward, AfterUpdate, Never };

/// The checker's verdict on the pass (global step `step`, epoch 0), or nullopt when it is clean.
inline std::optional<NumericsError> checked_pass(DeviceContext& ctx, const std::string& param, size_t element,
                                                 float value, PoisonWhen when, int64_t step = 0) {
  const Config config = load_config(std::string(DPTRAIN_SOURCE_DIR) + "/configs/mnist_cnn.yaml");
  constexpr int kBatch = 4;
  Model<float> model(config.model, ctx, kBatch);
  model.params().initialize(1);
  NumericsChecker checker(ctx, model);
  model.set_observer(&checker);

  std::mt19937 gen(7);
  std::uniform_real_distribution<float> pixel(-0.5f, 2.5f);
  std::vector<float> x(static_cast<size_t>(kBatch) * model.input_dims().count());
  for (float& v : x) v = pixel(gen);
  const std::vector<int32_t> y{3, 1, 4, 1};
  Buffer<float> bx(ctx.device(), x.size());
  Buffer<int32_t> by(ctx.device(), y.size());
  Buffer<double> sums(ctx.device(), 2);
  upload(ctx, bx.span(), std::span<const float>(x));
  upload(ctx, by.span(), std::span<const int32_t>(y));
  sums.zero();

  ParamStore<float>& params = model.params();
  const int entry = params.find(param);
  if (entry < 0) throw std::invalid_argument("no parameter " + param);
  const std::vector<float> poison{value};
  auto poison_now = [&] {
    upload(ctx, params.values().span().subspan(params.entries()[static_cast<size_t>(entry)].offset + element, 1),
           std::span<const float>(poison));
  };
  if (when == PoisonWhen::BeforeForward) poison_now();
  const StepInfo info{1, 0, 0};
  ctx.set_step(StepState{info, {}});
  model.forward(ctx, TensorView<const float>{bx.data(), kBatch, model.input_dims()}, Phase::Train, info);
  model.backward(ctx, by.data(), 1.0f / kBatch, sums.data(), nullptr);
  if (when == PoisonWhen::AfterUpdate) poison_now();
  checker.parameters_updated(ctx, params);
  try {
    checker.end_step(ctx, step, 0);
  } catch (const NumericsError& e) {
    return e;
  }
  return std::nullopt;
}

}  // namespace dptrain::test_support
