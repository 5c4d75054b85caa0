// Augmentation as a user meets it (CPU, one process): a run with data.augment stopped mid-epoch
// and resumed ends bit for bit where the uninterrupted run does (the images are keyed by seed,
// epoch and global sample index, not by anything the process carries), and differs from the run
// without augmentation; `predict` prints the config's data.classes names; 2 ranks (mpirun) train
// the model 1 rank trains.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "core/cuda_support.h"  // cuda_device_count: 0 in a CPU-only build
#include "data/dataset.h"
#include "data/pgm.h"
#include "e2e_support.h"

namespace dptrain::e2e {
namespace {

const std::string kAugment =
    " --set 'data.augment={rotation: 15, scale: 0.15, translation: 2.8, shear: 5, erasing: 0.5, fill: 0}'"
    " --set 'data.classes=[zero, one, two, three, four, five, six, seven, eight, nine]'";

std::string train_args(const fs::path& out, int steps, bool augment = true) {
  return "train --device cpu --threads 2 --no-progress --config " + source_dir() + "/configs/mnist_cnn.yaml --data " +
         mnist_dir() + " --out " + out.string() + " --max-steps " + std::to_string(steps) + (augment ? kAugment : "");
}

TEST(Augment, StopAndResumeWithAugmentationIsBitForBitTheUninterruptedRun) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not found in " << mnist_dir() << " (launch/get_mnist.sh)";
  const fs::path d = fresh_dir("augment_resume");
  const Result whole = run_dptrain(train_args(d / "whole", 40));
  ASSERT_EQ(whole.status, 0) << whole.output;
  const Result first = run_dptrain(train_args(d / "split", 25));
  ASSERT_EQ(first.status, 0) << first.output;
  EXPECT_EQ(latest_checkpoint(d / "split").state.global_step, 25);
  // Resumed from the checkpoint's path without --config or the --set flags: the config embedded
  // in the checkpoint carries data.augment.
  std::ifstream latest(d / "split" / "latest");
  std::string name;
  std::getline(latest, name);
  std::string resume = train_args(d / "split", 40, /*augment=*/false) + " --resume " + (d / "split" / name).string();
  const std::string config = " --config " + source_dir() + "/configs/mnist_cnn.yaml";
  resume.replace(resume.find(config), config.size(), "");
  const Result second = run_dptrain(resume);
  ASSERT_EQ(second.status, 0) << second.output;
  const LoadedCheckpoint a = latest_checkpoint(d / "whole"), b = latest_checkpoint(d / "split");
  EXPECT_EQ(b.state.global_step, 40);
  EXPECT_TRUE(same_tensors(a, b)) << "parameters or optimizer state differ, relative " << relative_difference(a, b);
  EXPECT_EQ(a.state.epoch_metrics_json, b.state.epoch_metrics_json);

  // Without augmentation the same recipe ends elsewhere: the images did change.
  const Result plain = run_dptrain(train_args(d / "plain", 40, /*augment=*/false));
  ASSERT_EQ(plain.status, 0) << plain.output;
  EXPECT_GT(relative_difference(latest_checkpoint(d / "plain"), a), 1e-4);

  // predict names the classes of the config it was trained with.
  const Dataset test = load_mnist_test(mnist_dir());
  const fs::path pgm = d / "digit.pgm";
  write_pgm(pgm.string(), test.images.data(), 28, 28);
  const Result p = run_dptrain("predict --checkpoint " + (d / "whole" / "final.safetensors").string() + " " + pgm.string());
  ASSERT_EQ(p.status, 0) << p.output;
  EXPECT_NE(p.output.find("digit.pgm: class "), std::string::npos) << p.output;
  EXPECT_NE(p.output.find(" probabilities: zero:"), std::string::npos) << p.output;
  EXPECT_NE(p.output.find(" nine:"), std::string::npos) << p.output;
}

// The same on one GPU: the augmenting gather runs inside the captured step graph (algorithms by
// heuristics, as for every bitwise comparison of two GPU processes).
TEST(Augment, StopAndResumeWithAugmentationIsBitForBitOnOneGpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no GPU";
  if (!have_mnist()) GTEST_SKIP() << "MNIST not found in " << mnist_dir() << " (launch/get_mnist.sh)";
  const fs::path d = fresh_dir("augment_gpu_resume");
  const auto args = [&](const fs::path& out, int steps) {
    return "train --device cuda --no-progress --config " + source_dir() + "/configs/mnist_cnn.yaml --data " +
           mnist_dir() + " --out " + out.string() + " --max-steps " + std::to_string(steps) +
           " --set train.cudnn_benchmark=false" + kAugment;
  };
  ASSERT_EQ(run_dptrain(args(d / "whole", 1000)).status, 0);
  ASSERT_EQ(run_dptrain(args(d / "split", 500)).status, 0);
  const Result second = run_dptrain(args(d / "split", 1000) + " --resume auto");
  ASSERT_EQ(second.status, 0) << second.output;
  const LoadedCheckpoint a = latest_checkpoint(d / "whole"), b = latest_checkpoint(d / "split");
  EXPECT_EQ(b.state.global_step, 1000);
  EXPECT_TRUE(same_tensors(a, b)) << "relative " << relative_difference(b, a);
}

// The shards of two ranks see the images one rank sees: with augmentation on, mpirun with 1 and
// 2 ranks train the same model (SGD, as tests/e2e/test_ranks.cpp explains: only the order of the
// gradient sums differs, within 1e-4 at step 30), while the same run without augmentation ends
// far from it.
TEST(Augment, TwoRanksTrainTheOneRankModelWithAugmentation) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not found in " << mnist_dir() << " (launch/get_mnist.sh)";
  const fs::path d = fresh_dir("augment_ranks");
  const auto args = [&](const fs::path& out, bool augment) {
    return "train --device cpu --threads 1 --no-progress --config " + source_dir() + "/configs/mnist_cnn.yaml --data " +
           mnist_dir() + " --out " + out.string() + " --max-steps 30 --set train.batch_size=60" +
           " --set 'train.optimizer={type: sgd, lr: 0.01, momentum: 0.5}'" + (augment ? kAugment : "");
  };
  for (int n : {1, 2}) {
    const Result r = run_mpi(n, args(d / std::to_string(n), true));
    ASSERT_EQ(r.status, 0) << n << " ranks:\n" << r.output;
  }
  const Result plain = run_mpi(1, args(d / "plain", false));
  ASSERT_EQ(plain.status, 0) << plain.output;
  const LoadedCheckpoint one = latest_checkpoint(d / "1"), two = latest_checkpoint(d / "2");
  EXPECT_EQ(two.state.world_size, 2);
  EXPECT_EQ(two.state.global_step, 30);
  const double ranks = relative_difference(two, one), augmentation = relative_difference(latest_checkpoint(d / "plain"), one);
  std::printf("relative difference: 2 ranks vs 1 %.3g; without augmentation vs with %.3g\n", ranks, augmentation);
  EXPECT_LT(ranks, 1e-4) << "2 ranks vs 1 with augmentation";
  EXPECT_GT(augmentation, 100 * ranks) << "augmentation's effect (" << augmentation << ") stands far above the rank tolerance";
}

}  // namespace
}  // namespace dptrain::e2e
