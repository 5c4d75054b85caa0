// The dptrain binary as a user meets it: help on every subcommand, exit status 2 with one clear
// line for every kind of bad input, and a real (short) training run on MNIST whose weights file
// `eval` and `predict` then read.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "core/cuda_support.h"  // cuda_device_count, DPTRAIN_HAVE_CUDA
#include "data/dataset.h"
#include "data/pgm.h"
#include "command_runner.h"

namespace dptrain {
namespace {

namespace fs = std::filesystem;

using Result = test_support::CommandResult;

Result run(const std::string& args) { return test_support::run_dptrain(args); }

fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("dptrain_cli_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

const std::string kConfig = std::string(DPTRAIN_SOURCE_DIR) + "/configs/mnist_cnn.yaml";

bool have_mnist() { return fs::exists(fs::path(DPTRAIN_TEST_DATA_DIR) / "t10k-labels-idx1-ubyte.gz") ||
                           fs::exists(fs::path(DPTRAIN_TEST_DATA_DIR) / "t10k-labels-idx1-ubyte"); }

TEST(Cli, HelpOnEverySubcommand) {
  for (const char* sub : {"", "train ", "eval ", "predict "}) {
    const Result r = run(std::string(sub) + "--help");
    EXPECT_EQ(r.status, 0) << sub << r.output;
    EXPECT_NE(r.output.find("Usage"), std::string::npos) << sub;
  }
  EXPECT_NE(run("train --help").output.find("--max-steps"), std::string::npos);
}

TEST(Cli, BadUsageExitsTwo) {
  Result r = run("train --no-such-flag");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("--no-such-flag"), std::string::npos);
  r = run("frobnicate");
  EXPECT_EQ(r.status, 2) << r.output;
  r = run("");
  EXPECT_EQ(r.status, 2) << r.output;
  r = run("train --device tpu");
  EXPECT_EQ(r.status, 2) << r.output;
  r = run("eval");  // --checkpoint is required
  EXPECT_EQ(r.status, 2) << r.output;
}

TEST(Cli, InspectOfABadFileEndsWithOneErrorLine) {
  const fs::path d = temp_dir("inspect");
  const Result r = run("inspect " + (d / "missing.safetensors").string());
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("INVALID: " + (d / "missing.safetensors").string() + ": cannot open"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("dptrain: error: " + (d / "missing.safetensors").string() + ": cannot open"), std::string::npos)
      << r.output;
}

TEST(Cli, BadConfigNamesFileAndKey) {
  const fs::path d = temp_dir("badcfg");
  std::ofstream(d / "bad.yaml") << "model: {layers: [{type: linear, out_features: 10}]}\ntrain: {batch_sise: 3}\n";
  const Result r = run("train --device cpu --config " + (d / "bad.yaml").string() + " --data " + d.string());
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("bad.yaml: 'train.batch_sise': unknown key"), std::string::npos) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  const Result s = run("train --device cpu --config " + kConfig + " --set train.epochs=-1");
  EXPECT_EQ(s.status, 2) << s.output;
  EXPECT_NE(s.output.find("'train.epochs': must be > 0"), std::string::npos) << s.output;
  const Result t = run("train --device cpu --config " + (d / "missing.yaml").string());
  EXPECT_EQ(t.status, 2) << t.output;
  EXPECT_NE(t.output.find("missing.yaml: cannot open"), std::string::npos) << t.output;
  // The optimizer's and schedule's rules too: one line naming the config, before a run folder exists.
  for (const char* set : {"train.optimizer.lr=-1", "train.optimizer.rho=2"}) {
    const Result o = run("train --device cpu --config " + kConfig + " --set " + set + " --out " + (d / "never").string());
    EXPECT_EQ(o.status, 2) << o.output;
    EXPECT_EQ(o.output.rfind("dptrain: error: " + kConfig + ": train.optimizer.", 0), 0u) << o.output;
    EXPECT_EQ(std::count(o.output.begin(), o.output.end(), '\n'), 1) << o.output;
  }
  EXPECT_FALSE(fs::exists(d / "never"));
  // Out-of-range flags name the range, not a 309-digit double; a negative seed is refused (it wrapped).
  const Result e = run("train --device cpu --epochs 0");
  EXPECT_EQ(e.status, 2) << e.output;
  EXPECT_NE(e.output.find("--epochs: Value 0 not in range 1 to 2147483647"), std::string::npos) << e.output;
  const Result seed = run("train --device cpu --seed -1");
  EXPECT_EQ(seed.status, 2) << seed.output;
  EXPECT_NE(seed.output.find("--seed: Value -1 is negative"), std::string::npos) << seed.output;
  for (const char* steps : {"-3", "99999999999999999999"}) {  // the second was read as 2^63 - 1
    const Result r = run(std::string("train --device cpu --max-steps ") + steps);
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find(std::string("--max-steps: Value ") + steps + " is "), std::string::npos) << r.output;
  }
  const Result threads = run("train --device cpu --threads 100000");
  EXPECT_EQ(threads.status, 2) << threads.output;
  EXPECT_NE(threads.output.find("--threads: Value 100000 not in range 0 to 1024"), std::string::npos) << threads.output;
}

TEST(Cli, MissingOrMalformedDataIsNamed) {
  const fs::path d = temp_dir("baddata");
  Result r = run("train --device cpu --config " + kConfig + " --data " + d.string() + " --out " + (d / "run").string());
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("train-images-idx3-ubyte"), std::string::npos) << r.output;
  for (const char* f : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                        "t10k-labels-idx1-ubyte"})
    std::ofstream(d / f) << "not an idx file";
  r = run("train --device cpu --config " + kConfig + " --data " + d.string() + " --out " + (d / "run").string());
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find(d.string()), std::string::npos) << r.output;
}

#if DPTRAIN_HAVE_CUDA
TEST(Cli, CudaWithoutGpuIsAClearError) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present";
  const Result r = run("train --device cuda --config " + kConfig);
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("no CUDA device"), std::string::npos) << r.output;
}
#else
// A CPU-only build (core/cuda_support.h): every command that takes --device refuses cuda with one
// line and exit status 2, before reading any data; "auto" is the CPU, without a word about it.
TEST(Cli, CudaInACpuOnlyBuildIsAClearError) {
  const fs::path d = temp_dir("cpuonly");
  for (const std::string& args : {"train --device cuda --config " + kConfig + " --out " + (d / "run").string(),
                                   "eval --device cuda --checkpoint " + (d / "none.safetensors").string(),
                                   "bench --device cuda --config " + kConfig}) {
    const Result r = run(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.output;
    EXPECT_EQ(r.output, "dptrain: error: --device cuda: this dptrain was built without CUDA (configure with the CUDA "
                        "toolkit to use GPUs)\n")
        << args;
  }
  if (!have_mnist()) GTEST_SKIP() << "MNIST not found in " << DPTRAIN_TEST_DATA_DIR;
  const Result r = run("bench --device auto --steps 1 --warmup 0 --threads 1 --config " + kConfig + " --data " +
                       DPTRAIN_TEST_DATA_DIR);
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("\"device\":\"cpu\""), std::string::npos) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;  // the JSON line alone
}
#endif

TEST(Cli, CorruptWeightsFileIsRejected) {
  const fs::path d = temp_dir("badweights");
  std::ofstream(d / "w.safetensors") << "garbage that is not safetensors";
  const Result r = run("eval --device cpu --checkpoint " + (d / "w.safetensors").string());
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("w.safetensors"), std::string::npos) << r.output;
}

// The acceptance run of the foundation: 400 CPU steps of mnist_cnn reach at least 96% test accuracy.
TEST(Cli, TrainsMnistCnnOnCpuThenEvalAndPredictReadTheWeights) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not found in " << DPTRAIN_TEST_DATA_DIR << " (launch/get_mnist.sh)";
  const fs::path d = temp_dir("train");
  const fs::path out = d / "run";
  const Result r = run("train --device cpu --config " + kConfig + " --data " + DPTRAIN_TEST_DATA_DIR +
                       " --max-steps 400 --out " + out.string());
  ASSERT_EQ(r.status, 0) << r.output;
  ASSERT_TRUE(fs::exists(out / "config.yaml"));
  ASSERT_TRUE(fs::exists(out / "final.safetensors"));
  std::ifstream metrics(out / "metrics.jsonl");
  std::string line, last;
  int lines = 0;
  while (std::getline(metrics, line)) last = line, ++lines;
  ASSERT_EQ(lines, 1) << "one (partial) epoch";
  const nlohmann::json m = nlohmann::json::parse(last);
  for (const char* key : {"epoch", "step", "train_loss", "test_loss", "test_accuracy", "images_per_second", "seconds"})
    EXPECT_TRUE(m.contains(key)) << key;
  EXPECT_EQ(m["step"].get<int>(), 400);
  EXPECT_GE(m["test_accuracy"].get<double>(), 0.96) << last;

  const Result e = run("eval --json --device cpu --checkpoint " + (out / "final.safetensors").string() + " --data " +
                       DPTRAIN_TEST_DATA_DIR);
  ASSERT_EQ(e.status, 0) << e.output;
  const nlohmann::json ej = nlohmann::json::parse(e.output);
  EXPECT_NEAR(ej["test_accuracy"].get<double>(), m["test_accuracy"].get<double>(), 1e-12);
  EXPECT_EQ(ej["samples"].get<int>(), 10000);

  // Predict the first test images from PGM files; their labels are 7, 2, 1.
  const Dataset test = load_mnist_test(DPTRAIN_TEST_DATA_DIR);
  std::string images;
  for (int i = 0; i < 3; ++i) {
    const fs::path pgm = d / ("digit" + std::to_string(i) + ".pgm");
    write_pgm(pgm.string(), test.images.data() + i * 784, 28, 28);
    images += " " + pgm.string();
  }
  const Result p = run("predict --checkpoint " + (out / "final.safetensors").string() + images);
  ASSERT_EQ(p.status, 0) << p.output;
  EXPECT_NE(p.output.find("digit0.pgm: class 7"), std::string::npos) << p.output;
  EXPECT_NE(p.output.find("digit1.pgm: class 2"), std::string::npos) << p.output;
  EXPECT_NE(p.output.find("digit2.pgm: class 1"), std::string::npos) << p.output;
  const Result bad = run("predict --checkpoint " + (out / "final.safetensors").string() + " " + (d / "nope.pgm").string());
  EXPECT_EQ(bad.status, 2) << bad.output;
  EXPECT_NE(bad.output.find("nope.pgm"), std::string::npos) << bad.output;
}

// A learning rate of 1e30 makes the first update's weights ~1e27: conv2's output overflows at
// step 2. --check-numerics stops there with one line naming step, layer and quantity, exit 1.
TEST(Cli, CheckNumericsStopsAtFirstNonFiniteLayer) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not found in " << DPTRAIN_TEST_DATA_DIR;
  const fs::path d = temp_dir("numerics");
  const Result r = run("train --device cpu --config " + kConfig + " --data " + DPTRAIN_TEST_DATA_DIR +
                       " --max-steps 5 --no-progress --set train.optimizer.lr=1e30 --check-numerics --out " +
                       (d / "run").string());
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("dptrain: error: non-finite value (NaN or Inf) at step 2 (epoch 1): forward output of "
                          "layer conv2 (model.layers[2], conv2d)\n"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("done:"), std::string::npos) << r.output;
  // The same as a config key; combined with --profile it is refused as bad input.
  const Result p = run("train --device cpu --config " + kConfig + " --data " + DPTRAIN_TEST_DATA_DIR +
                       " --max-steps 1 --set train.check_numerics=true --profile --out " + (d / "run2").string());
  EXPECT_EQ(p.status, 2) << p.output;
  EXPECT_NE(p.output.find("--check-numerics"), std::string::npos) << p.output;
}

/// The value in the table row starting with `name` at column `col` (0: first number), or -1.
double table_value(const std::string& out, const std::string& name, int col) {
  size_t at = out.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  std::istringstream line(out.substr(at + 1, out.find('\n', at + 1) - at - 1));
  std::string word;
  line >> word;
  double v = -1;
  for (int i = 0; i <= col && (line >> v); ++i) {}
  return v;
}

TEST(Cli, ProfilePrintsEveryLayerAndStage) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not found in " << DPTRAIN_TEST_DATA_DIR;
  const fs::path d = temp_dir("profile");
  const Result r = run("train --device cpu --config " + kConfig + " --data " + DPTRAIN_TEST_DATA_DIR +
                       " --max-steps 12 --no-progress --profile --out " + (d / "run").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("profile: 7 steps timed after 5 warm-up step(s), 1 rank(s), cpu"), std::string::npos)
      << r.output;
  // Every layer of configs/mnist_cnn.yaml, named or not, with a forward and a backward time.
  for (const char* layer : {"conv1", "relu1", "conv2", "relu2", "maxpool2d1", "dropout1", "flatten1", "fc1", "relu3",
                            "dropout2", "fc2"}) {
    EXPECT_GE(table_value(r.output, layer, 0), 0.0) << layer << "\n" << r.output;
    EXPECT_GE(table_value(r.output, layer, 3), 0.0) << layer << "\n" << r.output;
  }
  EXPECT_GT(table_value(r.output, "conv2", 0), 0.0) << r.output;  // the heaviest layer
  for (const char* stage : {"data", "compute", "optimizer", "step"})
    EXPECT_GT(table_value(r.output, stage, 0), 0.0) << stage << "\n" << r.output;
  EXPECT_GE(table_value(r.output, "exchange", 0), 0.0) << r.output;
  EXPECT_GT(table_value(r.output, "images/s", 0), 0.0) << r.output;
  std::ifstream json_file(d / "run" / "profile.json");
  ASSERT_TRUE(json_file.good());
  const nlohmann::json j = nlohmann::json::parse(json_file);
  EXPECT_EQ(j["layers"].size(), 11u);
  EXPECT_EQ(j["steps_timed"].get<int>(), 7);
  EXPECT_GT(j["stages"]["optimizer"]["mean"].get<double>(), 0.0);
}

}  // namespace
}  // namespace dptrain
