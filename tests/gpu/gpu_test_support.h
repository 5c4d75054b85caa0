// What the GPU test files share: a fixture that skips without a CUDA device and holds a GPU context
// beside a CPU one, seeded random inputs, the relative difference the parity tests compare, and
// where MNIST is (the tests that train on it skip without it).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/cuda_support.h"
#include "core/device_context.h"
#include "io/config.h"
#include "train/runtime.h"

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

}  // namespace dptrain::gpu_test
