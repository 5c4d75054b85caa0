// The divergence case of the issue as a user meets it: `dptrain train` of mnist_cnn at lr 1e4 (its
// Adadelta moves every weight by ~30 in the first update, so the loss of step 2 is ~1e12), on a
// device named by the caller. Shared by the CPU unit test (tests/unit/test_divergence.cpp) and the
// GPU one (tests/gpu/test_divergence_gpu.cpp), so both backends pass the same checks: exit status
// 1, one error line naming the step, and no checkpoint written after the blow-up (`latest` names
// the last one before it, whose values are all finite).
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "io/checkpoint_dir.h"
#include "io/checkpoint_format.h"
#include "command_runner.h"

namespace dptrain::test_support {

namespace divergence_fs = std::filesystem;

inline bool have_mnist_data() {
  return divergence_fs::exists(divergence_fs::path(DPTRAIN_TEST_DATA_DIR) / "train-labels-idx1-ubyte.gz") ||
         divergence_fs::exists(divergence_fs::path(DPTRAIN_TEST_DATA_DIR) / "train-labels-idx1-ubyte");
}

struct TrainRun {
  int status = -1;          ///< exit status, or 128 + signal
  std::string output;       ///< stdout and stderr together (not a terminal: plain progress lines)
  divergence_fs::path out;  ///< the run folder
};

/// `dptrain train --device <device>` of configs/mnist_cnn.yaml at learning rate `lr` into a fresh
/// folder named after `name`, with `extra` flags.
inline TrainRun train_run(const std::string& device, const std::string& name, const std::string& lr,
                          const std::string& extra) {
  TrainRun r;
  r.out = divergence_fs::temp_directory_path() / ("dptrain_divergence_" + device + "_" + name + "_" +
                                                  std::to_string(getpid()));
  divergence_fs::remove_all(r.out);
  const test_support::CommandResult run = test_support::run_dptrain(
      "train --device " + device + " --threads 2 --config " + DPTRAIN_SOURCE_DIR + "/configs/mnist_cnn.yaml --data " +
      DPTRAIN_TEST_DATA_DIR + " --set train.optimizer.lr=" + lr + " --out " + r.out.string() + " " + extra);
  r.status = run.status;
  r.output = run.output;
  return r;
}

/// The lines of `text` that start with `prefix`.
inline std::vector<std::string> lines_starting(const std::string& text, const std::string& prefix) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(prefix, 0) == 0) lines.push_back(line);
  return lines;
}

/// The run ended with exit status 1 and exactly one error line, which starts with `head` and ends
/// with `tail`; no success line, no final weights.
inline void expect_one_divergence_line(const TrainRun& r, const std::string& head, const std::string& tail) {
  EXPECT_EQ(r.status, 1) << r.output;
  const std::vector<std::string> errors = lines_starting(r.output, "dptrain: error: ");
  ASSERT_EQ(errors.size(), 1u) << r.output;
  const std::string& line = errors[0];
  EXPECT_EQ(line.rfind(head, 0), 0u) << line;
  EXPECT_TRUE(line.size() >= tail.size() && line.compare(line.size() - tail.size(), tail.size(), tail) == 0)
      << "expected the line to end with '" << tail << "': " << line;
  EXPECT_EQ(r.output.find("done:"), std::string::npos) << r.output;
  EXPECT_FALSE(divergence_fs::exists(r.out / "final.safetensors"));
  EXPECT_FALSE(divergence_fs::exists(r.out / "best.safetensors"));
}

/// `latest` names ckpt-<step>, the only checkpoint in the folder, and every tensor in it (model and
/// optimizer state) is finite.
inline void expect_only_good_checkpoint(const divergence_fs::path& out, int64_t step) {
  const CheckpointDir dir(out.string(), 3);
  ASSERT_EQ(dir.list_steps().size(), 1u) << "no checkpoint after the blow-up";
  EXPECT_EQ(dir.list_steps()[0].first, step);
  std::ifstream latest(dir.latest_path());
  std::string named;
  std::getline(latest, named);
  EXPECT_EQ(out / named, divergence_fs::path(dir.step_path(step)));
  const LoadedCheckpoint ck = load_checkpoint(dir.step_path(step));
  EXPECT_EQ(ck.state.global_step, step);
  ASSERT_FALSE(ck.file.tensors.empty());
  for (const SafeTensor& t : ck.file.tensors) {
    const std::vector<float> v = ck.tensor(t.name, t.shape);
    size_t bad = 0;
    for (float x : v) bad += std::isfinite(x) ? 0 : 1;
    EXPECT_EQ(bad, 0u) << t.name;
  }
}

inline const std::string kDivergedAtStep2 =
    "dptrain: error: training diverged at step 2 (epoch 1): the mean training loss ";

/// Caught at a progress line (train.log_every = 1): step 1 is still at chance, step 2 has blown up.
/// The checkpoint of step 1 stays the last one.
inline void expect_divergence_stops_at_progress_line(const std::string& device) {
  const TrainRun r = train_run(device, "progress", "1e4",
                               "--max-steps 20 --set train.log_every=1 --set checkpoint.every_steps=1");
  expect_one_divergence_line(r, kDivergedAtStep2,
                             "; last checkpoint: step 1 (" + (r.out / "ckpt-00000001.safetensors").string() + ")");
  EXPECT_EQ(lines_starting(r.output, "step 1/20 epoch 1 loss 2.3").size(), 1u) << r.output;
  expect_only_good_checkpoint(r.out, 1);
  if (!::testing::Test::HasFailure()) divergence_fs::remove_all(r.out);
}

/// The checkpoint of step 1 fails to write (injected) on the writer's thread, and the run diverges
/// at step 2 before anything else reports that failure: the one error line says no checkpoint was
/// written (never the failed one's name) and names the failed write too; no second line.
inline void expect_divergence_names_a_failed_checkpoint_write(const std::string& device) {
  const TrainRun r = train_run(device, "failedwrite", "1e4",
                               "--max-steps 20 --set train.log_every=1 --set checkpoint.every_steps=1 "
                               "--inject-write-failure 1");
  expect_one_divergence_line(r, kDivergedAtStep2,
                             "; no checkpoint written; a later checkpoint write failed: " +
                                 (r.out / "ckpt-00000001.safetensors").string() +
                                 ": cannot write: injected failure (--inject-write-failure)");
  EXPECT_TRUE(lines_starting(r.output, "dptrain: warning:").empty()) << r.output;
  EXPECT_FALSE(divergence_fs::exists(r.out / "latest"));
  EXPECT_TRUE(CheckpointDir(r.out.string(), 3).list_steps().empty());
  if (!::testing::Test::HasFailure()) divergence_fs::remove_all(r.out);
}

/// Without progress lines, caught where the next checkpoint reads the loss: not written.
inline void expect_divergence_stops_at_checkpoint(const std::string& device) {
  const TrainRun r = train_run(device, "checkpoint", "1e4", "--max-steps 20 --no-progress --set checkpoint.every_steps=1");
  expect_one_divergence_line(r, kDivergedAtStep2,
                             "; last checkpoint: step 1 (" + (r.out / "ckpt-00000001.safetensors").string() + ")");
  expect_only_good_checkpoint(r.out, 1);
  if (!::testing::Test::HasFailure()) divergence_fs::remove_all(r.out);
}

/// Without progress lines or mid-epoch checkpoints, caught at the epoch's end (here --max-steps),
/// before the evaluation, the metrics line and the checkpoint.
inline void expect_divergence_stops_at_epoch_end(const std::string& device) {
  const TrainRun r = train_run(device, "epoch", "1e4", "--max-steps 5 --no-progress");
  expect_one_divergence_line(r, "dptrain: error: training diverged at step 5 (epoch 1): the mean training loss ",
                             "; no checkpoint written");
  EXPECT_FALSE(divergence_fs::exists(r.out / "latest"));
  EXPECT_TRUE(CheckpointDir(r.out.string(), 3).list_steps().empty());
  std::ifstream metrics(r.out / "metrics.jsonl");
  std::string line;
  EXPECT_FALSE(std::getline(metrics, line)) << "no metrics line for a diverged epoch: " << line;
  if (!::testing::Test::HasFailure()) divergence_fs::remove_all(r.out);
}

}  // namespace dptrain::test_support
