// BatchNorm whose result does not depend on the rank count (issue 23): a small BatchNorm network
// trained with SGD for 50 steps on 1, 2 and 4 CPU ranks (mpirun) ends with parameters and running
// statistics within 1e-5 of the one-rank run, with ghost batches, with sync statistics, and with
// both in one network. The synthetic dataset (264 images: four global batches of 64 and a tail of
// 8, one ghost group) makes every epoch end in a step where ranks are left without samples, so
// the idle ranks' exchanges (Model::idle_step) are exercised with sync layers too. No MNIST needed.
// The same on one GPU, its ranks sharing it through --comm mpi.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "core/cuda_support.h"  // cuda_device_count: 0 in a CPU-only build
#include "e2e_support.h"

namespace dptrain::e2e {
namespace {

void write_be32(std::ofstream& out, uint32_t v) {
  const char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
  out.write(b, 4);
}

/// IDX files of `count` 28x28 images whose mean brightness follows the label, so training moves.
void write_split(const fs::path& dir, const std::string& prefix, int count, uint32_t seed) {
  std::ofstream images(dir / (prefix + "-images-idx3-ubyte"), std::ios::binary);
  std::ofstream labels(dir / (prefix + "-labels-idx1-ubyte"), std::ios::binary);
  write_be32(images, 0x00000803), write_be32(images, static_cast<uint32_t>(count)), write_be32(images, 28), write_be32(images, 28);
  write_be32(labels, 0x00000801), write_be32(labels, static_cast<uint32_t>(count));
  uint32_t state = seed;
  for (int i = 0; i < count; ++i) {
    const int label = (i * 7 + 3) % 10;
    labels.put(static_cast<char>(label));
    for (int p = 0; p < 784; ++p) {
      state = state * 1664525u + 1013904223u;
      const int noise = static_cast<int>(state >> 26);  // 0..63
      const bool lit = (p / 28) % 10 == label || (p % 28) % 10 == label;
      images.put(static_cast<char>(std::min(255, (lit ? 150 : 10) + noise)));
    }
  }
}

const char* kNet = R"(name: bn_ranks
model:
  input: [1, 28, 28]
  num_classes: 10
  layers:
    - {name: conv1, type: conv2d, out_channels: 4, kernel: 3, stride: 2}
    - {name: bn1, type: batchnorm2d, group_size: 8, sync: SYNC1}
    - {type: relu}
    - {type: flatten}
    - {name: fc1, type: linear, out_features: 16}
    - {name: bn2, type: batchnorm1d, group_size: 8, sync: SYNC2}
    - {type: relu}
    - {name: fc2, type: linear, out_features: 10}
train:
  batch_size: 64
  epochs: 10
  eval_batch_size: 50
  optimizer: {type: sgd, lr: 0.01, momentum: 0.5}
  schedule: {type: constant}
)";

std::string net(const std::string& sync1, const std::string& sync2) {
  std::string s = kNet;
  s.replace(s.find("SYNC1"), 5, sync1);
  s.replace(s.find("SYNC2"), 5, sync2);
  return s;
}

/// Per tensor (parameters and state): ||a - b|| / max(||b||, 1e-6); the largest.
double worst_tensor_difference(const LoadedCheckpoint& a, const LoadedCheckpoint& b, std::string& which) {
  double worst = 0;
  for (const SafeTensor& t : b.file.tensors) {
    if (t.name.rfind("optimizer.", 0) == 0) continue;
    const std::vector<float> x = a.tensor(t.name, t.shape), y = b.tensor(t.name, t.shape);
    double diff = 0, norm = 0;
    for (size_t i = 0; i < y.size(); ++i) diff += std::pow(double(x[i]) - y[i], 2), norm += double(y[i]) * y[i];
    const double rel = std::sqrt(diff) / std::max(std::sqrt(norm), 1e-6);
    if (rel > worst) worst = rel, which = t.name;
  }
  return worst;
}

/// The network trained for 50 steps on 1, 2 and 4 ranks of `device` (cuda: the ranks share one GPU
/// through --comm mpi, the host all-reduce), ghost, sync and mixed; each within 1e-5 of one rank.
void ranks_give_the_one_rank_result(const std::string& device) {
  const fs::path d = fresh_dir("bn_ranks_" + device);
  write_split(d, "train", 264, 1);
  write_split(d, "t10k", 100, 2);
  const std::string flags = device == "cpu" ? "--device cpu --threads 1" : "--device cuda";
  for (const auto& [mode, s1, s2] : {std::tuple{"ghost", "0", "0"}, std::tuple{"sync", "1", "1"}, std::tuple{"mixed", "0", "1"}}) {
    SCOPED_TRACE(mode);
    const fs::path config = d / (std::string(mode) + ".yaml");
    std::ofstream(config) << net(s1, s2);
    for (int n : {1, 2, 4}) {
      const fs::path run = d / (std::string(mode) + std::to_string(n));
      const std::string comm = device == "cuda" && n > 1 ? " --comm mpi" : "";
      const Result r = run_mpi(n, "train " + flags + comm + " --no-progress --config " + config.string() + " --data " +
                                      d.string() + " --out " + run.string() + " --max-steps 50");
      ASSERT_EQ(r.status, 0) << n << " ranks:\n" << r.output;
    }
    const LoadedCheckpoint one = latest_checkpoint(d / (std::string(mode) + "1"));
    EXPECT_EQ(one.state.global_step, 50);
    const std::vector<float> tracked = one.tensor("bn2.num_batches_tracked", {});
    EXPECT_EQ(tracked[0], 50.0f);
    const std::vector<float> mean = one.tensor("bn1.running_mean", {4});
    EXPECT_NE(mean[0], 0.0f);  // the running statistics moved
    for (int n : {2, 4}) {
      std::string which;
      const double diff = worst_tensor_difference(latest_checkpoint(d / (std::string(mode) + std::to_string(n))), one, which);
      EXPECT_LT(diff, 1e-5) << n << " ranks vs 1, worst tensor " << which;
    }
  }
}

TEST(BatchNormRanks, OneTwoAndFourRanksGiveTheSameParametersAndRunningStatistics) { ranks_give_the_one_rank_result("cpu"); }

TEST(BatchNormRanks, OneTwoAndFourRanksOnOneGpuWithCommMpiGiveTheOneRankResult) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no GPU";
  ranks_give_the_one_rank_result("cuda");
}

// Resume with BatchNorm: the running statistics and num_batches_tracked travel in the checkpoint, so
// a run stopped at step 20 (mid-epoch and after idle-rank tail steps) and resumed ends bit for bit
// where an uninterrupted run does; resumed on 2 ranks, within rounding of it.
TEST(BatchNormRanks, ResumeIsBitForBitAndAcrossRankCounts) {
  const fs::path d = fresh_dir("bn_resume");
  write_split(d, "train", 264, 1);
  write_split(d, "t10k", 100, 2);
  std::ofstream(d / "net.yaml") << net("0", "1");
  const auto args = [&](const std::string& run, int steps) {
    return "train --device cpu --threads 1 --no-progress --config " + (d / "net.yaml").string() + " --data " + d.string() +
           " --out " + (d / run).string() + " --max-steps " + std::to_string(steps) +
           " --set checkpoint.every_steps=4 --set checkpoint.every_epoch=false";
  };
  ASSERT_EQ(run_mpi(1, args("whole", 30)).status, 0);
  ASSERT_EQ(run_mpi(1, args("cut", 22)).status, 0);
  Result r = run_mpi(1, args("cut", 30) + " --resume auto");
  ASSERT_EQ(r.status, 0) << r.output;
  const LoadedCheckpoint whole = latest_checkpoint(d / "whole");
  EXPECT_TRUE(same_tensors(latest_checkpoint(d / "cut"), whole));
  ASSERT_EQ(run_mpi(1, args("cut2", 22)).status, 0);
  r = run_mpi(2, args("cut2", 30) + " --resume auto");
  ASSERT_EQ(r.status, 0) << r.output;
  std::string which;
  EXPECT_LT(worst_tensor_difference(latest_checkpoint(d / "cut2"), whole, which), 1e-5) << which;
  EXPECT_EQ(latest_checkpoint(d / "cut2").tensor("bn1.num_batches_tracked", {})[0], 30.0f);
}

// --profile and --check-numerics see the BatchNorm layers like any other (CPU backend).
TEST(BatchNormRanks, ProfileAndCheckNumericsCoverBatchNorm) {
  const fs::path d = fresh_dir("bn_profile");
  write_split(d, "train", 264, 1);
  write_split(d, "t10k", 100, 2);
  std::ofstream(d / "net.yaml") << net("0", "0");
  const std::string common = "train --device cpu --threads 1 --no-progress --config " + (d / "net.yaml").string() +
                             " --data " + d.string() + " --max-steps 8";
  Result r = run_dptrain(common + " --out " + (d / "p").string() + " --profile");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("\nbn1 "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\nbn2 "), std::string::npos) << r.output;
  r = run_dptrain(common + " --out " + (d / "n").string() + " --check-numerics");
  EXPECT_EQ(r.status, 0) << r.output;
  r = run_dptrain(common + " --out " + (d / "x").string() + " --check-numerics --set train.optimizer.lr=1e30");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("non-finite value"), std::string::npos) << r.output;
}

// A per-rank batch that is not a multiple of the group is refused before training, naming the layer.
TEST(BatchNormRanks, APerRankBatchOffTheGroupIsNamed) {
  const fs::path d = fresh_dir("bn_group_error");
  write_split(d, "train", 264, 1);
  write_split(d, "t10k", 100, 2);
  std::ofstream(d / "net.yaml") << net("0", "0");
  const Result r = run_mpi(3, "train --device cpu --threads 1 --no-progress --config " + (d / "net.yaml").string() +
                                  " --data " + d.string() + " --out " + (d / "run").string() +
                                  " --set train.batch_size=36 --max-steps 2");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("model.layers[1] (bn1): the per-rank batch 12 is not a multiple of group_size 8"),
            std::string::npos)
      << r.output;
}

}  // namespace
}  // namespace dptrain::e2e
