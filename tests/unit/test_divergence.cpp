// Divergence (train/divergence.h): the monitor's rule on its own (non-finite or above 1000 x ln C
// is an error naming the step; 100x growth to above chance is one warning; a checkpoint with a NaN
// is refused), and the case end to end on the CPU: mnist_cnn at lr 1e4 ends with exit
// status 1 and one line at whichever read point comes first, and writes no checkpoint after it.
// tests/gpu/test_divergence_gpu.cpp runs the same end-to-end checks on CUDA.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "divergence_run.h"
#include "train/divergence.h"

namespace dptrain {
namespace {

using namespace test_support;

/// The message of the DivergenceError `f` throws ("" if none), and its step.
template <typename F>
std::string divergence_message(F f, int64_t* step = nullptr) {
  try {
    f();
  } catch (const DivergenceError& e) {
    if (step != nullptr) *step = e.step();
    return e.what();
  }
  return "";
}

TEST(Divergence, NonFiniteLossIsAnErrorNamingTheStep) {
  for (double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    DivergenceMonitor m(10);
    EXPECT_FALSE(m.check_training_loss(2.3, 50, 1).has_value());
    int64_t step = -1;
    const std::string what = divergence_message([&] { m.check_training_loss(bad, 100, 1); }, &step);
    EXPECT_EQ(step, 100);
    EXPECT_EQ(what, std::string("training diverged at step 100 (epoch 1): the mean training loss is ") +
                        (std::isnan(bad) ? "nan" : "inf") + "; no checkpoint written");
  }
}

TEST(Divergence, LimitIsAThousandTimesTheLossOfGuessing) {
  DivergenceMonitor m(10);
  EXPECT_NEAR(m.limit(), 1000 * std::log(10.0), 1e-9);
  EXPECT_NEAR(DivergenceMonitor(100).limit(), 1000 * std::log(100.0), 1e-9);
  m.set_last_checkpoint(40, "runs/x/ckpt-00000040.safetensors");
  EXPECT_EQ(divergence_message([&] { m.check_training_loss(1.9e10, 200, 1); }),
            "training diverged at step 200 (epoch 1): the mean training loss 1.9e+10 is above 2303 (1000 x ln 10, "
            "the loss of guessing among 10 classes); last checkpoint: step 40 (runs/x/ckpt-00000040.safetensors)");
  // Just under the limit is not an error.
  EXPECT_EQ(divergence_message([&] { m.check_training_loss(2300, 10, 1); }), "");
  // The test loss has the same limit; ranks other than 0 know the step of the checkpoint only.
  m.set_last_checkpoint(60, "");
  EXPECT_EQ(divergence_message([&] { m.check_test_loss(std::numeric_limits<double>::quiet_NaN(), 70, 2); }),
            "training diverged at step 70 (epoch 2): the test loss is nan; last checkpoint: step 60");
  EXPECT_NE(divergence_message([&] { m.check_test_loss(5000, 70, 2); }).find("the test loss 5000 is above 2303"),
            std::string::npos);
  EXPECT_EQ(divergence_message([&] { m.check_test_loss(19.3, 70, 2); }), "");
}

TEST(Divergence, GrowthByOrdersOfMagnitudeWarnsOnce) {
  DivergenceMonitor m(10);
  EXPECT_FALSE(m.check_training_loss(2.3, 10, 1).has_value());
  EXPECT_FALSE(m.check_training_loss(0.01, 20, 1).has_value());
  EXPECT_FALSE(m.check_training_loss(0.9, 30, 1).has_value()) << "90x: not yet two orders of magnitude";
  // 150x the lowest but still below chance (ln 10 = 2.30): the noise of a converged run.
  EXPECT_FALSE(m.check_training_loss(1.5, 40, 1).has_value());
  const auto w = m.check_training_loss(25, 50, 2);
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(*w, "the mean training loss 25 at step 50 is 2500x the lowest so far (0.01 at step 20): the run may be "
                "diverging");
  EXPECT_FALSE(m.check_training_loss(250, 60, 2).has_value()) << "once per run";
  EXPECT_FALSE(m.check_training_loss(0.005, 70, 2).has_value());
  EXPECT_FALSE(m.check_training_loss(2000, 80, 2).has_value()) << "once per run";
}

TEST(Divergence, CheckpointWithNonFiniteValuesIsRefused) {
  const DivergenceMonitor m(10);
  std::vector<float> good{1, 2, 3}, bad{0, std::numeric_limits<float>::quiet_NaN(), 1}, inf{-std::numeric_limits<float>::infinity()};
  EXPECT_EQ(divergence_message([&] { m.require_finite({{"fc1.weight", {3}, good}}, 5, "checkpoint"); }), "");
  EXPECT_EQ(divergence_message([&] { m.require_finite({{"fc1.weight", {3}, good}, {"fc1.bias", {3}, bad}}, 5, "checkpoint"); }),
            "training diverged at step 5: fc1.bias holds a NaN or Inf, so the checkpoint was not written; no checkpoint "
            "written");
  EXPECT_NE(divergence_message([&] { m.require_finite({{"optimizer.fc2.bias.square_avg", {1}, inf}}, 9, "checkpoint"); })
                .find("optimizer.fc2.bias.square_avg holds a NaN or Inf"),
            std::string::npos);
}

// The case on the CPU, at each of the read points the loop already has.
TEST(Divergence, CpuRunStopsAtProgressLine) {
  if (!have_mnist_data()) GTEST_SKIP() << "MNIST not found in " << DPTRAIN_TEST_DATA_DIR;
  expect_divergence_stops_at_progress_line("cpu");
}

TEST(Divergence, CpuRunStopsAtCheckpoint) {
  if (!have_mnist_data()) GTEST_SKIP() << "MNIST not found in " << DPTRAIN_TEST_DATA_DIR;
  expect_divergence_stops_at_checkpoint("cpu");
}

TEST(Divergence, CpuRunNamesACheckpointWriteThatFailedBeforeIt) {
  if (!have_mnist_data()) GTEST_SKIP() << "MNIST not found in " << DPTRAIN_TEST_DATA_DIR;
  expect_divergence_names_a_failed_checkpoint_write("cpu");
}

TEST(Divergence, CpuRunStopsAtEpochEnd) {
  if (!have_mnist_data()) GTEST_SKIP() << "MNIST not found in " << DPTRAIN_TEST_DATA_DIR;
  expect_divergence_stops_at_epoch_end("cpu");
}

// At lr 50 the loss of step 2 is 1712 (739x step 1's 2.32, below the limit of 2303): one warning
// line, and the run goes on and ends normally.
TEST(Divergence, CpuRunWarnsOnceWhenTheLossGrows) {
  if (!have_mnist_data()) GTEST_SKIP() << "MNIST not found in " << DPTRAIN_TEST_DATA_DIR;
  const TrainRun r = train_run("cpu", "warn", "50", "--max-steps 4 --set train.log_every=1");
  EXPECT_EQ(r.status, 0) << r.output;
  const std::vector<std::string> warnings = lines_starting(r.output, "dptrain: warning: ");
  ASSERT_EQ(warnings.size(), 1u) << r.output;
  EXPECT_EQ(warnings[0], "dptrain: warning: the mean training loss 1712 at step 2 is 739x the lowest so far "
                         "(2.316 at step 1): the run may be diverging");
  if (!::testing::Test::HasFailure()) std::filesystem::remove_all(r.out);
}

}  // namespace
}  // namespace dptrain
