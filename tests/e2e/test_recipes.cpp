// Issue 24's recipes on the CPU, as CI can run them: configs/mnist_fast.yaml trains to completion
// (one epoch, about 6 s on 2 cores) and reaches the recipe's target accuracy, with only the final
// test pass; configs/mnist_best.yaml (BatchNorm, augmentation) runs a few steps, is resumed bit for
// bit, and writes what `eval` reads back with the same accuracy; both train the same model on one
// rank and on two.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

#include "e2e_support.h"

namespace dptrain::e2e {
namespace {

std::string recipe(const std::string& name, const fs::path& out) {
  return "train --device cpu --threads 2 --no-progress --config " + source_dir() + "/configs/" + name +
         ".yaml --data " + mnist_dir() + " --out " + out.string();
}

nlohmann::json summary_of(const fs::path& run) {
  std::ifstream in(run / "summary.json");
  return in ? nlohmann::json::parse(in) : nlohmann::json{};
}

class Recipes : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_mnist()) GTEST_SKIP() << "MNIST not found in " << mnist_dir() << " (launch/get_mnist.sh)";
  }
};

TEST_F(Recipes, MnistFastReachesNinetyNinePercentInOneEpochOnTheCpu) {
  const fs::path d = fresh_dir("recipe_fast");
  const Result r = run_dptrain(recipe("mnist_fast", d / "run"));
  ASSERT_EQ(r.status, 0) << r.output;
  const nlohmann::json s = summary_of(d / "run");
  ASSERT_TRUE(s.contains("test_accuracy")) << r.output;
  // The target is a mean of 99.0% with no seed below 98.9% (issue 24); seed 1 gives 99.27% here.
  EXPECT_GE(s["test_accuracy"].get<double>(), 0.989) << r.output;
  EXPECT_EQ(s["steps"].get<int64_t>(), 235);  // one epoch of 60000 at 256
  // eval_every: 0, so the one metrics line is the run's end, with the one test pass.
  std::ifstream metrics(d / "run" / "metrics.jsonl");
  std::string line, last;
  int lines = 0;
  while (std::getline(metrics, line))
    if (!line.empty()) ++lines, last = line;
  EXPECT_EQ(lines, 1);
  EXPECT_NE(last.find("test_accuracy"), std::string::npos);
  std::printf("mnist_fast on the CPU: test accuracy %.2f%%, train+eval %.2f s\n",
              100.0 * s["test_accuracy"].get<double>(), s["train_eval_seconds"].get<double>());
}

TEST_F(Recipes, MnistBestRunsResumesBitForBitAndEvalAgrees) {
  const fs::path d = fresh_dir("recipe_best");
  const Result whole = run_dptrain(recipe("mnist_best", d / "whole") + " --max-steps 6");
  ASSERT_EQ(whole.status, 0) << whole.output;
  const Result first = run_dptrain(recipe("mnist_best", d / "split") + " --max-steps 3");
  ASSERT_EQ(first.status, 0) << first.output;
  const Result second = run_dptrain(recipe("mnist_best", d / "split") + " --max-steps 6 --resume auto");
  ASSERT_EQ(second.status, 0) << second.output;
  const LoadedCheckpoint a = latest_checkpoint(d / "whole"), b = latest_checkpoint(d / "split");
  EXPECT_EQ(b.state.global_step, 6);
  EXPECT_TRUE(same_tensors(a, b)) << "relative difference " << relative_difference(a, b);
  const Result ev = run_dptrain("eval --device cpu --json --checkpoint " + (d / "whole" / "final.safetensors").string() +
                                " --data " + mnist_dir());
  ASSERT_EQ(ev.status, 0) << ev.output;
  const size_t brace = ev.output.find('{');
  ASSERT_NE(brace, std::string::npos) << ev.output;
  const nlohmann::json e = nlohmann::json::parse(ev.output.substr(brace, ev.output.rfind('}') - brace + 1));
  EXPECT_EQ(e["test_accuracy"].get<double>(), summary_of(d / "whole")["test_accuracy"].get<double>()) << ev.output;
}

// Each recipe on one rank and on two (mpirun, the CPU backend's all-reduce) trains the same model:
// the networks, augmentation, dropout and BatchNorm of both, as shipped. With SGD, as in
// tests/e2e/test_ranks.cpp: the recipes' Adam turns the rounding of another summation order into
// whole steps of lr wherever a gradient is near zero, which says nothing about the data split. A
// wrong shard, mask or statistic shows as about 1e-3 after one step (mnist_best with BatchNorm's
// sync off on 2 ranks: 3.1e-3). mnist_best's BatchNorm, augmentation and dropout grow rounding fast
// (2 ranks vs 1: 2.4e-8 after 2 steps, 5e-6 after 4, 8e-3 after 8), and the other summation order can
// flip a ReLU whose input is within rounding of zero: on a CPU where OpenBLAS picks its Cooperlake
// kernels, seed 1 flips one of conv4's 409,600 outputs at step 1 (-1.75e-7 on one rank, +1.49e-8 on
// two), 5.6e-6 after that step and 4.1e-4 after two. So it is compared after one step, at 1e-4:
// above a flip, below a wrong statistic.
TEST_F(Recipes, BothTrainTheSameModelOnOneRankAndOnTwo) {
  const std::string sgd = " --set 'train.optimizer={type: sgd, lr: 0.01, momentum: 0.5}' --set 'train.schedule={type: constant}'";
  struct Case {
    const char* name;
    int steps;
    double tolerance;
  };
  for (const Case c : {Case{"mnist_fast", 8, 1e-4}, Case{"mnist_best", 1, 1e-4}}) {
    const fs::path d = fresh_dir(std::string("recipe_ranks_") + c.name);
    for (int n : {1, 2}) {
      const Result r = run_mpi(n, recipe(c.name, d / std::to_string(n)) + " --max-steps " + std::to_string(c.steps) + sgd);
      ASSERT_EQ(r.status, 0) << c.name << ", " << n << " ranks:\n" << r.output;
    }
    const LoadedCheckpoint one = latest_checkpoint(d / "1"), two = latest_checkpoint(d / "2");
    EXPECT_EQ(two.state.world_size, 2);
    EXPECT_EQ(two.state.global_step, c.steps);
    EXPECT_LT(relative_difference(two, one), c.tolerance) << c.name << ": 2 ranks vs 1";
  }
}

}  // namespace
}  // namespace dptrain::e2e
