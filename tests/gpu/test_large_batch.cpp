// Large batches on the GPU, as a user first tries them: the shipped configs at batch 1024 to 8192,
// trained past the epoch's short last batch (whose planning once grew a workspace under the
// captured step: an illegal memory access at the next full step) and evaluated, in float32 and
// tf32, with timed planning. The planner must warn about nothing (a warning means it dropped an
// implementation that disagreed with the reference). Every case plans afresh
// (train.plan_cache=off): recorded plans would skip the timing, and a plan cache left by another
// build would add its own (harmless) warning. Also: a workspace reallocation is seen by the
// captured step. Skipped without a GPU.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "../unit/command_runner.h"
#include "core/cuda_context.h"

namespace dptrain {
namespace {

const std::string kData = DPTRAIN_TEST_DATA_DIR;

class LargeBatch : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    if (!std::filesystem::exists(kData + "/train-images-idx3-ubyte.gz") &&
        !std::filesystem::exists(kData + "/train-images-idx3-ubyte"))
      GTEST_SKIP() << "MNIST not in " << kData;
  }
};

struct Case {
  const char* config;
  int batch;
  const char* precision;
  int steps;  // past the first epoch's last (short) batch
};

TEST_F(LargeBatch, ShippedConfigsTrainPastTheEpochTailAndEvaluate) {
  const Case cases[] = {{"mnist_cnn", 1024, "float32", 60},
                        {"lenet5", 4096, "float32", 17},
                        {"lenet5", 2048, "tf32", 31},
                        {"mnist_cnn", 8192, "tf32", 9}};
  for (const Case& c : cases) {
    const std::filesystem::path out =
        std::filesystem::temp_directory_path() /
        ("dptrain_large_batch_" + std::string(c.config) + "_" + std::to_string(c.batch) + "_" + c.precision);
    std::filesystem::remove_all(out);
    const test_support::CommandResult r = test_support::run_dptrain(
        "train --device cuda --config " + std::string(DPTRAIN_SOURCE_DIR) + "/configs/" + c.config + ".yaml --data " +
        kData + " --no-progress --out " + out.string() + " --max-steps " + std::to_string(c.steps) +
        " --set train.batch_size=" + std::to_string(c.batch) + " --set train.precision=" + c.precision +
        " --set train.plan_cache=off");
    const std::string& log = r.output;
    const std::string what = std::string(c.config) + " batch " + std::to_string(c.batch) + " " + c.precision;
    EXPECT_EQ(r.status, 0) << what << "\n" << log;
    EXPECT_EQ(log.find("dptrain: warning:"), std::string::npos) << what << "\n" << log;
    EXPECT_TRUE(std::filesystem::exists(out / "final.safetensors")) << what << "\n" << log;
  }
}

TEST_F(LargeBatch, WorkspaceGrowthIsCountedForTheCapturedStep) {
  CudaContext ctx(CudaOptions{});
  const uint64_t before = ctx.workspace_generation();
  ctx.workspace(ctx.workspace_size() + 1);
  EXPECT_GT(ctx.workspace_generation(), before);
  const uint64_t grown = ctx.workspace_generation();
  ctx.workspace(1);  // already large enough: no reallocation
  EXPECT_EQ(ctx.workspace_generation(), grown);
  ctx.side_workspace(ctx.workspace_size() + (1 << 20));
  EXPECT_GT(ctx.workspace_generation(), grown);
}

}  // namespace
}  // namespace dptrain
