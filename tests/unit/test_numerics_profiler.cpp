// The --check-numerics checker (first non-finite check point in execution order, named by step,
// layer and quantity) and the --profile mode's promise not to change results, on the CPU backend.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>

#include "comm/communicator.h"
#include "data/dataset.h"
#include "numerics_probe.h"
#include "train/trainer.h"

namespace dptrain {
namespace {

using test_support::checked_pass;
using test_support::PoisonWhen;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(NumericsChecker, CleanPassPasses) {
  DeviceContext cpu;
  EXPECT_FALSE(checked_pass(cpu, "fc1.weight", 0, 0.5f, PoisonWhen::Never).has_value());
}

// A NaN weight in fc1 first shows as fc1's forward output, at the step the trainer was on.
TEST(NumericsChecker, NamesFirstLayerAndStep) {
  DeviceContext cpu;
  const auto e = checked_pass(cpu, "fc1.weight", 5, kNaN, PoisonWhen::BeforeForward, /*step=*/6);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->layer(), "fc1");
  EXPECT_EQ(e->check(), NumericsCheck::ForwardOutput);
  EXPECT_EQ(e->step(), 7);  // reported counted from 1
  EXPECT_EQ(e->epoch(), 1);
  const std::string what = e->what();
  EXPECT_NE(what.find("step 7 (epoch 1)"), std::string::npos) << what;
  EXPECT_NE(what.find("forward output of layer fc1"), std::string::npos) << what;
}

// The first conv's weights feed everything, but the earliest point is still conv1's own output.
TEST(NumericsChecker, InfInFirstLayerIsReportedThere) {
  DeviceContext cpu;
  const auto e = checked_pass(cpu, "conv1.weight", 0, kInf, PoisonWhen::BeforeForward);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->layer(), "conv1");
  EXPECT_EQ(e->check(), NumericsCheck::ForwardOutput);
}

// A bias that is only non-finite after the update: forward and backward were clean.
TEST(NumericsChecker, ParametersAfterUpdate) {
  DeviceContext cpu;
  const auto e = checked_pass(cpu, "fc2.bias", 3, kNaN, PoisonWhen::AfterUpdate, 41);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->layer(), "fc2");
  EXPECT_EQ(e->check(), NumericsCheck::ParametersAfterUpdate);
  EXPECT_NE(std::string(e->what()).find("parameters after update of fc2.bias"), std::string::npos) << e->what();
}

const std::string kData = DPTRAIN_TEST_DATA_DIR;
bool have_mnist() {
  return std::filesystem::exists(kData + "/train-labels-idx1-ubyte.gz") ||
         std::filesystem::exists(kData + "/train-labels-idx1-ubyte");
}

std::vector<float> train_params(const MnistData& data, int steps, bool profile, const std::string& out) {
  const Config config = load_config(std::string(DPTRAIN_SOURCE_DIR) + "/configs/mnist_cnn.yaml");
  DeviceContext cpu;
  SingleRankCommunicator comm;
  TrainOptions options;
  options.show_progress = false;
  options.profile = profile;
  options.out_dir = out;
  Trainer trainer(config, options, data, cpu, comm);
  for (int s = 0; s < steps; ++s) trainer.step(0, s, s);
  const auto& p = trainer.model().params();
  return {p.values().data(), p.values().data() + p.size()};
}

// Profiling records clock readings only: the trained parameters are bit for bit the same.
TEST(Profiler, DoesNotChangeResults) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  const std::string out = (std::filesystem::temp_directory_path() / "dptrain_profiler_test").string();
  EXPECT_EQ(train_params(data, 8, true, out), train_params(data, 8, false, out));
}

}  // namespace
}  // namespace dptrain
