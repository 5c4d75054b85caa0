// What the GPU test files share: a fixture that skips without a CUDA device and holds a GPU context
// beside a CPU one, seeded random inputs, the relative difference the parity tests compare, and
// where MNIST is (the tests that train on it skip without it), and a few training steps of a shipped
// config on one rank.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "core/cuda_support.h"
#include "core/device_context.h"
#include "core/device_ops.h"
#include "data/dataset.h"
#include "io/config.h"
#include "train/runtime.h"
#include "train/trainer.h"

namespace dptrain::gpu_test {

/// A GPU context (gpu_) and a CPU one (cpu_); skips the test on a machine without a CUDA device.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    gpu_ = std::make_unique<DeviceContext>(make_device_context(Device::Cuda, TrainConfig{}));
  }
  std::unique_ptr<DeviceContext> gpu_;
  DeviceContext cpu_;
};

/// Skips the test on a machine without a CUDA device; holds nothing (kernel tests that make their own buffers).
class KernelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

/// n values uniform in [-1, -0.05] or [0.05, 1], the same for the same seed: never zero, so a skipped term
/// always shows.
inline std::vector<float> nonzero_randoms(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> d(0.05f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = gen() & 1 ? d(gen) : -d(gen);
  return v;
}

/// n values uniform in [lo, hi), the same for the same seed.
inline std::vector<float> randoms(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(gen);
  return v;
}

/// ||a - b|| / ||b|| (||a - b|| when b is zero).
inline double rel(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

inline const std::string kData = DPTRAIN_TEST_DATA_DIR;
inline bool have_mnist() {
  return std::filesystem::exists(kData + "/train-labels-idx1-ubyte.gz") ||
         std::filesystem::exists(kData + "/train-labels-idx1-ubyte");
}

/// configs/NAME.yaml with `sets`, and with the step graph on or off.
inline Config shipped_config(const std::string& name, bool graph, std::vector<std::string> sets = {}) {
  sets.push_back("train.cuda_graph=" + std::string(graph ? "true" : "false"));
  return load_config(std::string(DPTRAIN_SOURCE_DIR) + "/configs/" + name + ".yaml", sets);
}

/// The parameters of `trainer`'s model, on the host.
inline std::vector<float> params_of(DeviceContext& ctx, Trainer& trainer) {
  const auto& p = trainer.model().params();
  std::vector<float> h(p.size());
  download(ctx, std::span<const float>(p.values().data(), p.size()), std::span<float>(h));
  return h;
}

/// `read(trainer)` after `steps` steps of epoch 0 on one rank, from the config's seed; the
/// trainer prints no progress.
template <class Read>
auto after_steps(DeviceContext& ctx, const MnistData& data, const Config& config, int steps, Read read,
                 TrainOptions options = {}) {
  options.show_progress = false;
  SingleRankCommunicator comm;
  Trainer trainer(config, options, data, ctx, comm);
  for (int s = 0; s < steps; ++s) trainer.step(0, s, s);
  return read(trainer);
}

/// The parameters after `steps` steps of epoch 0 on one rank (after_steps).
inline std::vector<float> params_after_steps(DeviceContext& ctx, const MnistData& data, const Config& config,
                                             int steps, TrainOptions options = {}) {
  return after_steps(
      ctx, data, config, steps, [&](Trainer& t) { return params_of(ctx, t); }, std::move(options));
}

}  // namespace dptrain::gpu_test
