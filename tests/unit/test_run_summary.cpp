// train.eval_every and summary.json, through the dptrain binary on a small synthetic dataset: the
// test pass runs every eval_every epochs and always at the run's end (0: only then), epochs
// without one have no test_* fields in metrics.jsonl (and `plot` still draws the run), and the
// run folder's summary.json holds the final result and the time-to-accuracy figure
// (train_eval_seconds: model build, training and test passes, without the data upload).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "command_runner.h"
#include "tiny_dataset.h"

namespace dptrain {
namespace {

namespace fs = std::filesystem;

class RunSummary : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dptrain_summary_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    test_support::write_tiny_run(dir_, /*train=*/64, /*test=*/20, /*epochs=*/5);
  }
  void TearDown() override { fs::remove_all(dir_); }

  test_support::CommandResult train(const std::string& extra) const {
    return test_support::run_dptrain("train --device cpu --threads 1 --no-progress --config " +
                                     (dir_ / "tiny.yaml").string() + " --data " + (dir_ / "data").string() +
                                     " --out " + (dir_ / "run").string() + " " + extra);
  }
  std::vector<nlohmann::json> metrics() const {
    std::vector<nlohmann::json> lines;
    std::ifstream in(dir_ / "run" / "metrics.jsonl");
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
    return lines;
  }
  fs::path dir_;
};

TEST_F(RunSummary, EvalEveryTwoTestsEpochsTwoAndFourAndTheLast) {
  const auto r = train("--set train.eval_every=2");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto lines = metrics();
  ASSERT_EQ(lines.size(), 5u);
  for (size_t i = 0; i < lines.size(); ++i) {
    const bool tested = i == 1 || i == 3 || i == 4;  // epochs 2, 4 and 5 (the last)
    EXPECT_EQ(lines[i].contains("test_accuracy"), tested) << lines[i].dump();
    EXPECT_EQ(lines[i].contains("test_loss"), tested) << lines[i].dump();
    EXPECT_TRUE(lines[i].contains("train_loss")) << lines[i].dump();
  }
  EXPECT_NE(r.output.find("epoch 1  step 4  train_loss"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("no test pass"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(dir_ / "run" / "curves.png"));
  const auto plot = test_support::run_dptrain("plot " + (dir_ / "run").string() + " --out " + (dir_ / "p.png").string());
  EXPECT_EQ(plot.status, 0) << plot.output;
  EXPECT_TRUE(fs::exists(dir_ / "p.png"));
}

TEST_F(RunSummary, EvalEveryZeroRunsOnlyTheFinalTestPassAndTheSummarySaysWhatItGot) {
  const auto r = train("--set train.eval_every=0");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto lines = metrics();
  ASSERT_EQ(lines.size(), 5u);
  for (size_t i = 0; i + 1 < lines.size(); ++i) EXPECT_FALSE(lines[i].contains("test_accuracy")) << lines[i].dump();
  ASSERT_TRUE(lines.back().contains("test_accuracy"));
  std::ifstream in(dir_ / "run" / "summary.json");
  ASSERT_TRUE(in) << "no summary.json";
  const nlohmann::json s = nlohmann::json::parse(in);
  EXPECT_EQ(s.at("test_accuracy").get<double>(), lines.back().at("test_accuracy").get<double>());
  EXPECT_EQ(s.at("test_loss").get<double>(), lines.back().at("test_loss").get<double>());
  EXPECT_EQ(s.at("steps").get<int64_t>(), 20);  // 5 epochs of 64 / 16
  EXPECT_EQ(s.at("epochs_completed").get<int>(), 5);
  EXPECT_GT(s.at("test_accuracy").get<double>(), 0.5);  // the squares are easy
  const double train_eval = s.at("train_eval_seconds").get<double>();
  EXPECT_GT(train_eval, 0.0);
  EXPECT_GE(train_eval, s.at("training_seconds").get<double>() * 0.999);  // the steps are inside it
  EXPECT_GT(s.at("eval_seconds").get<double>(), 0.0);
  EXPECT_GE(s.at("upload_seconds").get<double>(), 0.0);
  EXPECT_TRUE(s.contains("startup"));
}

TEST_F(RunSummary, ANegativeEvalEveryIsRefusedNamingTheKey) {
  const auto r = train("--set train.eval_every=-1");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("train.eval_every"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("must be >= 0"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace dptrain
