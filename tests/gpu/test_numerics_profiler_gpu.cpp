// The CUDA numerics checker (flag kernel, one read per step) against the CPU one: the same first
// non-finite check point, for poisoned parameters and for a real blow-up in training; and the CUDA
// profiler (events per layer, graph off) leaves the trained parameters bit for bit unchanged.
// Skipped without a GPU.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <limits>

#include "../unit/numerics_probe.h"
#include "gpu_test_support.h"
#include "comm/communicator.h"
#include "core/cuda_context.h"
#include "data/dataset.h"
#include "train/runtime.h"
#include "train/trainer.h"

namespace dptrain {
namespace {

using gpu_test::have_mnist;
using gpu_test::kData;
using gpu_test::params_after_steps;
using gpu_test::shipped_config;
using test_support::checked_pass;
using test_support::PoisonWhen;

class CudaNumerics : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
  // A context as `dptrain train --check-numerics` makes it: ReLUs stay layers of their own (not
  // absorbed by the layer before), so every layer's output is a check point, as on the CPU.
  static DeviceContext gpu(bool cudnn_benchmark = true) {
    TrainConfig t;
    t.cudnn_benchmark = cudnn_benchmark;
    t.check_numerics = true;
    return make_device_context(Device::Cuda, t);
  }
};

void expect_same(const std::optional<NumericsError>& gpu, const std::optional<NumericsError>& cpu) {
  ASSERT_TRUE(cpu.has_value());
  ASSERT_TRUE(gpu.has_value()) << "CPU found: " << cpu->what();
  EXPECT_EQ(gpu->layer(), cpu->layer()) << gpu->what() << " vs " << cpu->what();
  EXPECT_EQ(gpu->check(), cpu->check()) << gpu->what() << " vs " << cpu->what();
  EXPECT_EQ(gpu->step(), cpu->step());
  EXPECT_STREQ(gpu->what(), cpu->what());
}

TEST_F(CudaNumerics, PoisonedParametersFoundWhereTheCpuFindsThem) {
  DeviceContext cpu;
  DeviceContext cuda = gpu();
  EXPECT_FALSE(checked_pass(cuda, "fc1.weight", 0, 0.5f, PoisonWhen::Never).has_value());
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  expect_same(checked_pass(cuda, "fc1.weight", 5, nan, PoisonWhen::BeforeForward, 6),
              checked_pass(cpu, "fc1.weight", 5, nan, PoisonWhen::BeforeForward, 6));
  expect_same(checked_pass(cuda, "conv1.weight", 0, inf, PoisonWhen::BeforeForward),
              checked_pass(cpu, "conv1.weight", 0, inf, PoisonWhen::BeforeForward));
  expect_same(checked_pass(cuda, "fc2.bias", 3, -inf, PoisonWhen::AfterUpdate, 41),
              checked_pass(cpu, "fc2.bias", 3, -inf, PoisonWhen::AfterUpdate, 41));
}

/// Trains mnist_cnn at a learning rate of 1e30 with the checker on; returns what stops it.
std::optional<NumericsError> blow_up(DeviceContext& ctx, const MnistData& data) {
  const Config config = load_config(std::string(DPTRAIN_SOURCE_DIR) + "/configs/mnist_cnn.yaml",
                                    {"train.optimizer.lr=1e30", "train.check_numerics=true"});
  SingleRankCommunicator comm;
  TrainOptions options;
  options.show_progress = false;
  Trainer trainer(config, options, data, ctx, comm);
  try {
    for (int s = 0; s < 5; ++s) trainer.step(0, s, s);
  } catch (const NumericsError& e) {
    return e;
  }
  return std::nullopt;
}

// The first update makes weights of ~1e27; conv2's output then overflows by tens of orders of
// magnitude on either backend, so both stop at the same point whatever their rounding.
TEST_F(CudaNumerics, TrainingBlowUpFoundAtTheSameStepAndLayer) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  DeviceContext cpu;
  DeviceContext cuda = gpu();
  const auto c = blow_up(cpu, data);
  expect_same(blow_up(cuda, data), c);
  EXPECT_EQ(c->layer(), "conv2");
  EXPECT_EQ(c->step(), 2);
}

std::vector<float> train_params(DeviceContext& ctx, const MnistData& data, int steps, bool profile) {
  TrainOptions options;
  options.profile = profile;
  options.out_dir = (std::filesystem::temp_directory_path() / "dptrain_gpu_profile_test").string();
  std::filesystem::create_directories(options.out_dir);
  return params_after_steps(ctx, data, shipped_config("mnist_cnn", /*graph=*/false), steps, options);
}

// Events only: with the same (heuristic, so identical) cuDNN algorithms, eager steps with and
// without the profiler give the same parameters bit for bit.
TEST_F(CudaNumerics, ProfilerDoesNotChangeResults) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  DeviceContext a = gpu(/*cudnn_benchmark=*/false), b = gpu(/*cudnn_benchmark=*/false);
  EXPECT_EQ(train_params(a, data, 12, true), train_params(b, data, 12, false));
}

std::string run_binary(const std::string& args, int& status) {
  FILE* p = popen((std::string(DPTRAIN_BINARY) + " " + args + " 2>&1").c_str(), "r");
  std::string out;
  if (p == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  status = pclose(p);
  return out;
}

// The table from CUDA events, and the checker's line from the flag kernel, as the user sees them.
TEST_F(CudaNumerics, CliProfileAndCheckNumericsOnCuda) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  // Each run its own fresh folder: a fresh run refuses a folder that holds another run's checkpoints.
  const auto common = [](const std::string& name) {
    const std::filesystem::path out = std::filesystem::temp_directory_path() / ("dptrain_gpu_cli_" + name);
    std::filesystem::remove_all(out);
    return "train --device cuda --config " + std::string(DPTRAIN_SOURCE_DIR) + "/configs/mnist_cnn.yaml --data " +
           kData + " --no-progress --out " + out.string();
  };
  int status = -1;
  std::string out = run_binary(common("profile") + " --max-steps 12 --profile", status);
  std::printf("%s\n", out.c_str());
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("profile: 7 steps timed after 5 warm-up step(s), 1 rank(s), cuda"), std::string::npos) << out;
  EXPECT_NE(out.find("\nconv2 "), std::string::npos) << out;
  out = run_binary(common("numerics") + " --max-steps 5 --set train.optimizer.lr=1e30 --check-numerics", status);
  EXPECT_NE(out.find("non-finite value (NaN or Inf) at step 2 (epoch 1): forward output of layer conv2"),
            std::string::npos) << out;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << out;
}

}  // namespace
}  // namespace dptrain
