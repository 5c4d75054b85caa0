// Central finite-difference gradient checks in double precision (Caffe's GradientChecker idea):
// for a layer the objective is L = sum(out * r) for a fixed random r, so dL/dout = r, and every
// analytic gradient (input and parameters) is compared with (L(x + h) - L(x - h)) / 2h; for a whole
// model the objective is its training loss.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "layers/layer.h"
#include "model/model.h"

namespace dptrain::testing {

inline std::vector<double> random_vector(size_t n, uint32_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(n);
  for (double& x : v) x = dist(gen);
  return v;
}

/// Relative error |a - b| / max(|a|, |b|, floor).
inline double rel_error(double a, double b, double floor = 1e-3) {
  return std::abs(a - b) / std::max({std::abs(a), std::abs(b), floor});
}

/// d objective / d v by central differences, (objective() at v + h - objective() at v - h) / 2h;
/// v is left as it was.
template <typename Objective>
double central_difference(double& v, double h, const Objective& objective) {
  const double keep = v;
  v = keep + h;
  const double up = objective();
  v = keep - h;
  const double down = objective();
  v = keep;
  return (up - down) / (2 * h);
}

/// Checks input and parameter gradients of `layer` (CPU, double) at input `x` of batch n.
inline void check_layer_gradients(Layer<double>& layer, std::vector<double> x, int n, Phase phase = Phase::Train,
                                  double tolerance = 1e-6, double h = 1e-5) {
  DeviceContext ctx;
  const Dims in = layer.input_dims(), od = layer.output_dims();
  std::vector<ParamView<double>> views;
  std::vector<std::vector<double>> values, grads;
  const std::vector<ParamSpec> specs = layer.param_specs();
  for (size_t k = 0; k < specs.size(); ++k) {
    values.push_back(random_vector(static_cast<size_t>(element_count(specs[k].shape)), 100 + static_cast<uint32_t>(k), -0.5, 0.5));
    grads.emplace_back(values.back().size(), 0.0);
  }
  for (size_t k = 0; k < specs.size(); ++k) views.push_back({values[k], grads[k]});
  layer.bind(views);
  layer.reserve(ctx, n);
  const StepInfo step{7, 1, 5};
  std::vector<double> out(static_cast<size_t>(n * od.count()));
  const std::vector<double> r = random_vector(out.size(), 99);
  auto objective = [&]() {
    layer.forward(ctx, TensorView<const double>{x.data(), n, in}, TensorView<double>{out.data(), n, od}, phase, step);
    double l = 0;
    for (size_t i = 0; i < out.size(); ++i) l += out[i] * r[i];
    return l;
  };
  objective();
  std::vector<double> dx(x.size(), 0.0);
  layer.backward(ctx, TensorView<const double>{x.data(), n, in}, TensorView<const double>{out.data(), n, od},
                 TensorView<const double>{r.data(), n, od}, TensorView<double>{dx.data(), n, in});
  const std::vector<std::vector<double>> analytic = grads;
  for (size_t i = 0; i < x.size(); ++i) {
    const double numeric = central_difference(x[i], h, objective);
    ASSERT_LT(rel_error(dx[i], numeric), tolerance) << layer.type() << " input " << i << ": analytic " << dx[i]
                                                    << " numeric " << numeric;
  }
  for (size_t k = 0; k < values.size(); ++k)
    for (size_t i = 0; i < values[k].size(); ++i) {
      const double numeric = central_difference(values[k][i], h, objective);
      ASSERT_LT(rel_error(analytic[k][i], numeric), tolerance)
          << layer.type() << " " << specs[k].suffix << "[" << i << "]: analytic " << analytic[k][i] << " numeric "
          << numeric;
    }
}

/// Checks a whole model's parameter gradients (forward, loss and backward on the batch x of
/// labels.size() samples at `dims`, in `step`) against central differences of its training loss:
/// `picks` elements of each tensor drawn with seed offset + seed, or every element where picks is
/// 0. Returns how many it checked.
inline int check_model_gradients(DeviceContext& ctx, Model<double>& model, const std::vector<double>& x,
                                 const Dims& dims, const std::vector<int32_t>& labels, const StepInfo& step,
                                 size_t picks, uint32_t seed = 0) {
  const TensorView<const double> input{x.data(), static_cast<int>(labels.size()), dims};
  const auto loss_value = [&] {
    double sums[2] = {0, 0};
    model.forward(ctx, input, Phase::Train, step);
    model.loss(ctx, labels.data(), 1.0, sums, false, nullptr);
    return sums[0];
  };
  double sums[2] = {0, 0};
  model.forward(ctx, input, Phase::Train, step);
  model.backward(ctx, labels.data(), 1.0, sums, nullptr);
  double* values = model.params().values().data();
  const std::vector<double> grads(model.params().grads().data(), model.params().grads().data() + model.params().size());
  int checked = 0;
  for (const ParamEntry& e : model.params().entries()) {
    std::vector<size_t> at;
    if (picks == 0)
      for (size_t i = e.offset; i < e.offset + e.count; ++i) at.push_back(i);
    for (double u : random_vector(picks, static_cast<uint32_t>(e.offset) + seed, 0, 1))
      at.push_back(e.offset + static_cast<size_t>(u * static_cast<double>(e.count - 1)));
    for (const size_t i : at) {
      const double numeric = central_difference(values[i], 1e-6, loss_value);
      EXPECT_LT(rel_error(grads[i], numeric, 1e-4), 1e-4) << e.name << "[" << i - e.offset << "]: analytic "
                                                          << grads[i] << " numeric " << numeric;
      ++checked;
    }
  }
  return checked;
}

}  // namespace dptrain::testing
