// Issue 23's schedule, loss and layers as a user runs them (configs/mnist_onecycle.yaml: Adam under
// onecycle with beta1 cycled, label smoothing, avgpool2d and global_avgpool): a run stopped
// mid-epoch and resumed is bit for bit the run that never stopped (the schedule's rate and beta1
// are functions of the step), on the CPU and on one GPU (CUDA graphs on); --check-numerics and
// --profile run it.
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "core/cuda_support.h"  // cuda_device_count: 0 in a CPU-only build
#include "e2e_support.h"

namespace dptrain::e2e {
namespace {

std::string onecycle_args(const std::string& device, const fs::path& out, int steps) {
  return "train --device " + device + (device == "cpu" ? " --threads 2" : "") + " --no-progress --config " +
         source_dir() + "/configs/mnist_onecycle.yaml --data " + mnist_dir() + " --out " + out.string() +
         " --max-steps " + std::to_string(steps) + (device == "cuda" ? " --set train.cudnn_benchmark=false" : "");
}

class OneCycleAvgPool : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_mnist()) GTEST_SKIP() << "MNIST not found in " << mnist_dir() << " (launch/get_mnist.sh)";
  }
  void resume_is_bitwise(const std::string& device, const std::string& name, int half) {
    const fs::path d = fresh_dir(name);
    const Result whole = run_dptrain(onecycle_args(device, d / "whole", 2 * half));
    ASSERT_EQ(whole.status, 0) << whole.output;
    const Result first = run_dptrain(onecycle_args(device, d / "split", half));
    ASSERT_EQ(first.status, 0) << first.output;
    const Result second = run_dptrain(onecycle_args(device, d / "split", 2 * half) + " --resume auto");
    ASSERT_EQ(second.status, 0) << second.output;
    const LoadedCheckpoint a = latest_checkpoint(d / "whole"), b = latest_checkpoint(d / "split");
    EXPECT_EQ(b.state.global_step, 2 * half);
    EXPECT_TRUE(same_tensors(a, b)) << "parameters or optimizer state differ, relative " << relative_difference(a, b);
    EXPECT_EQ(a.state.scheduler_json, b.state.scheduler_json);
    EXPECT_NE(a.state.scheduler_json.find("onecycle"), std::string::npos) << a.state.scheduler_json;
    EXPECT_NE(a.state.scheduler_json.find("next_momentum"), std::string::npos) << a.state.scheduler_json;
  }
};

TEST_F(OneCycleAvgPool, StopAndResumeIsBitForBitOnTheCpu) { resume_is_bitwise("cpu", "onecycle_cpu", 20); }

TEST_F(OneCycleAvgPool, StopAndResumeIsBitForBitOnOneGpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no GPU";
  resume_is_bitwise("cuda", "onecycle_gpu", 200);
}

TEST_F(OneCycleAvgPool, CheckNumericsAndProfileCoverTheNewLayers) {
  for (const std::string device : {"cpu", "cuda"}) {
    if (device == "cuda" && cuda_device_count() == 0) continue;
    const fs::path d = fresh_dir("onecycle_checks_" + device);
    const Result checked = run_dptrain(onecycle_args(device, d / "checked", 6) + " --check-numerics");
    EXPECT_EQ(checked.status, 0) << checked.output;
    const Result profiled = run_dptrain(onecycle_args(device, d / "profiled", 12) + " --profile");
    ASSERT_EQ(profiled.status, 0) << profiled.output;
    // The profile's table has a row per layer, the new ones among them.
    for (const char* layer : {"avgpool2d1", "avgpool2d2", "global_avgpool1"})
      EXPECT_NE(profiled.output.find(layer), std::string::npos) << device << ": " << layer << "\n" << profiled.output;
  }
}

}  // namespace
}  // namespace dptrain::e2e
