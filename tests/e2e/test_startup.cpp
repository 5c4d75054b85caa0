// Start-up and epoch ends as a user meets them (CPU, one process): the first metrics.jsonl line
// carries the start-up breakdown, --profile prints it with the epoch-end times, checkpoints
// written by the background writer are byte-identical to synchronous ones, a failed checkpoint
// write stops the run with one line and keeps the previous checkpoint, and a malformed data file
// read on the loading thread is still one clear line and exit 2 (train and eval).
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "e2e_support.h"
#include "io/atomic_file.h"

namespace dptrain::e2e {
namespace {

std::string train_args(const fs::path& out, int steps) {
  return "train --device cpu --threads 2 --no-progress --config " + source_dir() + "/configs/mnist_cnn.yaml --data " +
         mnist_dir() + " --out " + out.string() + " --max-steps " + std::to_string(steps) +
         " --set checkpoint.every_steps=5";
}

nlohmann::json first_metrics_line(const fs::path& run) {
  std::ifstream in(run / "metrics.jsonl");
  std::string line;
  std::getline(in, line);
  return nlohmann::json::parse(line);
}

int count_of(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

class Startup : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_mnist()) GTEST_SKIP() << "MNIST not found in " << mnist_dir() << " (launch/get_mnist.sh)";
  }
};

TEST_F(Startup, TheFirstMetricsLineHasTheBreakdownAndProfilePrintsIt) {
  const fs::path d = fresh_dir("startup_breakdown");
  const Result r = run_dptrain(train_args(d / "run", 12) + " --profile");
  ASSERT_EQ(r.status, 0) << r.output;
  const nlohmann::json line = first_metrics_line(d / "run");
  ASSERT_TRUE(line.contains("startup")) << line.dump();
  const nlohmann::json& s = line["startup"];
  ASSERT_TRUE(s["total_s"].is_number());
  EXPECT_EQ(s["from"], "exec");
  double sum = 0;
  for (const auto& [name, seconds] : s["phases"].items()) {
    EXPECT_GE(seconds.get<double>(), 0.0) << name;
    sum += seconds.get<double>();
  }
  EXPECT_LE(sum, s["total_s"].get<double>() + 1e-6);
  EXPECT_EQ(s["order"].size(), s["phases"].size());
  for (const char* key : {"process_start", "command_line", "config", "data_read_wait", "run_folder",
                          "model_build", "data_upload", "initialise_params", "first_step"})
    EXPECT_TRUE(s["phases"].contains(key)) << key << " missing: " << s.dump();
  // Phases the CPU does not have are absent, not zero; so is mpi_init in a process no launcher
  // started (it starts no MPI: comm/bootstrap.h).
  for (const char* key : {"cuda_context", "cuda_handles", "planning", "graph_capture", "communicator", "mpi_init"})
    EXPECT_FALSE(s["phases"].contains(key)) << key << ": " << s.dump();
  EXPECT_GE(s["overlapped"]["data_read"].get<double>(), 0.0) << s.dump();
  EXPECT_GE(line["eval_seconds"].get<double>(), 0.0);

  EXPECT_NE(r.output.find("start-up (rank 0):"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("first_step"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("epoch ends (rank 0)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("checkpoint write"), std::string::npos) << r.output;
  const nlohmann::json profile = nlohmann::json::parse(read_whole_file((d / "run" / "profile.json").string()));
  EXPECT_TRUE(profile.contains("startup"));
  EXPECT_EQ(profile["epoch_ends"]["checkpoints"].get<int>(), 3) << "steps 5, 10 and the end (12)";
  EXPECT_TRUE(profile["epoch_ends"]["checkpoint_writes_async"].get<bool>());
}

TEST_F(Startup, AsynchronousCheckpointsAreByteIdenticalToSynchronousOnes) {
  const fs::path d = fresh_dir("startup_async_bytes");
  const Result a = run_dptrain(train_args(d / "async", 15));
  ASSERT_EQ(a.status, 0) << a.output;
  const Result s = run_dptrain(train_args(d / "sync", 15) + " --sync-checkpoints");
  ASSERT_EQ(s.status, 0) << s.output;
  int compared = 0;
  for (const auto& entry : fs::directory_iterator(d / "sync")) {
    const std::string name = entry.path().filename().string();
    if (!name.ends_with(".safetensors") && name != "latest") continue;
    ASSERT_TRUE(fs::exists(d / "async" / name)) << name;
    EXPECT_EQ(read_file_bytes(entry.path().string()), read_file_bytes((d / "async" / name).string())) << name;
    ++compared;
  }
  EXPECT_GE(compared, 4) << "the kept ckpt-* files, best, final and latest";
}

TEST_F(Startup, AFailedCheckpointWriteStopsTheRunAndKeepsThePreviousCheckpoint) {
  const fs::path d = fresh_dir("startup_write_failure");
  const Result r = run_dptrain(train_args(d / "run", 30) + " --inject-write-failure 10");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(count_of(r.output, "dptrain: error:"), 1) << r.output;
  EXPECT_NE(r.output.find("ckpt-00000010.safetensors: cannot write: injected failure"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(d / "run" / "ckpt-00000010.safetensors"));
  EXPECT_FALSE(fs::exists(d / "run" / "ckpt-00000015.safetensors")) << "nothing newer than the failure is written";
  EXPECT_FALSE(fs::exists(d / "run" / "final.safetensors"));
  EXPECT_EQ(latest_checkpoint(d / "run").state.global_step, 5) << "the previous good checkpoint stays";
  // And the run continues from it.
  const Result again = run_dptrain(train_args(d / "run", 30) + " --resume auto");
  EXPECT_EQ(again.status, 0) << again.output;
  EXPECT_NE(again.output.find("at step 5"), std::string::npos) << again.output;
}

TEST_F(Startup, AMalformedDataFileReadOnTheLoadingThreadIsOneLineAndExit2) {
  const fs::path d = fresh_dir("startup_bad_data");
  const fs::path data = d / "data";
  fs::create_directories(data);
  for (const auto& entry : fs::directory_iterator(mnist_dir()))
    fs::copy_file(fs::canonical(entry.path()), data / entry.path().filename());
  // Keep the train images' header but cut the pixels short, in the file the reader takes: the raw
  // one where there is one (launch/get_mnist.sh keeps both), else the .gz.
  fs::path images;
  for (const char* name : {"train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"})
    if (images.empty() && fs::exists(data / name)) images = data / name;
  ASSERT_FALSE(images.empty());
  fs::resize_file(images, 600);
  const Result r = run_dptrain("train --device cpu --no-progress --config " + source_dir() +
                               "/configs/mnist_cnn.yaml --data " + data.string() + " --out " +
                               (d / "run").string() + " --max-steps 1");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_EQ(count_of(r.output, "dptrain: error:"), 1) << r.output;
  EXPECT_NE(r.output.find(images.filename().string()), std::string::npos) << r.output;

  fs::resize_file(data / (images.extension() == ".gz" ? "t10k-labels-idx1-ubyte.gz" : "t10k-labels-idx1-ubyte"), 5);
  const fs::path weights = d / "w";
  const Result w = run_dptrain(train_args(weights, 2));
  ASSERT_EQ(w.status, 0) << w.output;
  const Result e = run_dptrain("eval --device cpu --checkpoint " + (weights / "final.safetensors").string() +
                               " --data " + data.string());
  EXPECT_EQ(e.status, 2) << e.output;
  EXPECT_EQ(count_of(e.output, "dptrain: error:"), 1) << e.output;
  EXPECT_NE(e.output.find("t10k-labels"), std::string::npos) << e.output;
}

TEST_F(Startup, EvalPredictAndBenchReportTheirBreakdowns) {
  const fs::path d = fresh_dir("startup_eval");
  const Result w = run_dptrain(train_args(d / "run", 2));
  ASSERT_EQ(w.status, 0) << w.output;
  const std::string eval = "eval --device cpu --checkpoint " + (d / "run" / "final.safetensors").string() + " --data " +
                           mnist_dir();
  const Result p = run_dptrain(eval + " --profile");
  ASSERT_EQ(p.status, 0) << p.output;
  EXPECT_NE(p.output.find("start-up until the result"), std::string::npos) << p.output;
  const Result j = run_dptrain(eval + " --json");
  ASSERT_EQ(j.status, 0) << j.output;
  const nlohmann::json out = nlohmann::json::parse(j.output.substr(j.output.find('{')));
  for (const char* key : {"weights_and_data_read_wait", "model_build", "evaluation"})
    EXPECT_TRUE(out["startup"]["phases"].contains(key)) << key << ": " << out.dump();
  EXPECT_TRUE(out["startup"]["overlapped"].contains("weights_and_data_read")) << out.dump();

  // predict --profile: the breakdown up to the first prediction.
  const fs::path pgm = d / "digit.pgm";
  {
    std::ofstream f(pgm, std::ios::binary);
    f << "P5\n28 28\n255\n" << std::string(28 * 28, '\x40');
  }
  const Result pr = run_dptrain("predict --profile --checkpoint " + (d / "run" / "final.safetensors").string() + " " +
                                pgm.string());
  ASSERT_EQ(pr.status, 0) << pr.output;
  EXPECT_NE(pr.output.find("class "), std::string::npos) << pr.output;
  EXPECT_NE(pr.output.find("start-up until the first prediction"), std::string::npos) << pr.output;
  EXPECT_NE(pr.output.find("first_prediction"), std::string::npos) << pr.output;

  // bench: the JSON carries the breakdown up to the warm-up's end.
  const Result b = run_dptrain("bench --device cpu --threads 2 --steps 1 --warmup 1 --config " + source_dir() +
                               "/configs/mnist_cnn.yaml --data " + mnist_dir());
  ASSERT_EQ(b.status, 0) << b.output;
  const nlohmann::json bj = nlohmann::json::parse(b.output.substr(b.output.find('{')));
  for (const char* key : {"config", "data_read_wait", "model_build", "first_step"})
    EXPECT_TRUE(bj["startup"]["phases"].contains(key)) << key << ": " << bj.dump();
}

}  // namespace
}  // namespace dptrain::e2e
