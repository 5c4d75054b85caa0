// The divergence case on CUDA: mnist_cnn at lr 1e4 through the dptrain binary ends with
// exit status 1 and one line naming the step, at a progress line, a mid-epoch checkpoint or the
// epoch's end, and writes no checkpoint after the blow-up: the same checks as the CPU's
// (tests/unit/divergence_run.h). The loss is read only where the loop already reads it, so the
// CUDA graph of the step is unchanged. Skipped without a GPU.
#include <gtest/gtest.h>

#include "../unit/divergence_run.h"
#include "core/cuda_context.h"

namespace dptrain {
namespace {

using namespace test_support;

class CudaDivergence : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    if (!have_mnist_data()) GTEST_SKIP() << "MNIST not found in " << DPTRAIN_TEST_DATA_DIR;
  }
};

TEST_F(CudaDivergence, RunStopsAtProgressLine) { expect_divergence_stops_at_progress_line("cuda"); }

TEST_F(CudaDivergence, RunStopsAtCheckpoint) { expect_divergence_stops_at_checkpoint("cuda"); }

TEST_F(CudaDivergence, RunStopsAtEpochEnd) { expect_divergence_stops_at_epoch_end("cuda"); }

TEST_F(CudaDivergence, RunNamesACheckpointWriteThatFailedBeforeIt) {
  expect_divergence_names_a_failed_checkpoint_write("cuda");
}

}  // namespace
}  // namespace dptrain
