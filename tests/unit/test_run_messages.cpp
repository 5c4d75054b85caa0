// What `dptrain train` says besides its progress, and `inspect`'s epoch numbers: the ETA counts
// this process's own steps; the banner is short and the resolved config is printed only with
// --verbose; a metrics line says when it covers part of an epoch; the resume hint names the command
// that started the run; inspect numbers epochs as the training messages do. The runs use a tiny
// synthetic dataset (256 training images: 4 steps an epoch), so each takes a second or two.
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

#include <nlohmann/json.hpp>

#include "cli/run_messages.h"
#include "io/curves.h"
#include "train/progress.h"
#include "command_runner.h"

namespace dptrain {
namespace {

namespace fs = std::filesystem;
using cli::BannerFacts;
using cli::resume_command;
using cli::run_banner;

TEST(Eta, CountsOnlyTheStepsOfThisProcess) {
  // A run resumed at step 1876 of 13132 that took 10 s for its first 100 steps: 11156 steps left at
  // 10 s per 100 steps, 18:36. (Counting from step 0 made it 10 s * 11156 / 1976 = 56 s.)
  EXPECT_DOUBLE_EQ(eta_seconds(1876, 1976, 13132, 10.0), 10.0 * 11156 / 100);
  EXPECT_DOUBLE_EQ(eta_seconds(0, 50, 100, 20.0), 20.0);
  EXPECT_DOUBLE_EQ(eta_seconds(0, 100, 100, 20.0), 0.0);
  EXPECT_TRUE(std::isnan(eta_seconds(1876, 1876, 13132, 0.5))) << "no step of this process yet";
  // The same pace gives the same ETA whether the run was resumed or not.
  EXPECT_DOUBLE_EQ(eta_seconds(5000, 5100, 6000, 4.0), eta_seconds(0, 100, 1000, 4.0));
  EXPECT_EQ(format_duration(eta_seconds(1876, 1976, 13132, 10.0)), "18:36");
}

TEST(ResumeHint, NamesTheBinaryAsInvokedWithTheRunsFlags) {
  EXPECT_EQ(resume_command({"build/dptrain", "train", "--device", "cpu", "--epochs", "2"}, "", "", "runs/mnist_cnn"),
            "build/dptrain train --device cpu --epochs 2 --resume auto --out runs/mnist_cnn");
  // A --resume PATH becomes auto (the run folder now holds newer checkpoints); --out is kept.
  EXPECT_EQ(resume_command({"./dptrain", "train", "--resume", "runs/x/ckpt-00000030.safetensors", "--out", "runs/x",
                            "--set", "train.optimizer.lr=0.5"},
                           "", "", "runs/x"),
            "./dptrain train --out runs/x --set train.optimizer.lr=0.5 --resume auto");
  EXPECT_EQ(resume_command({"/opt/bin/dptrain", "train", "--resume=auto", "--out=runs/y"}, "", "", "runs/y"),
            "/opt/bin/dptrain train --out=runs/y --resume auto");
  // Words the shell would split are quoted.
  EXPECT_EQ(resume_command({"build/dptrain", "train", "--out", "my runs/a b", "--set", "x='1'"}, "", "", "my runs/a b"),
            "build/dptrain train --out 'my runs/a b' --set 'x='\\''1'\\''' --resume auto");
  // An MPI job started by hand.
  EXPECT_EQ(resume_command({"build/dptrain", "train", "--device", "cuda"}, "", "mpirun -np 4", "runs/m"),
            "mpirun -np 4 build/dptrain train --device cuda --resume auto --out runs/m");
}

TEST(ResumeHint, NamesTheLauncherScriptWhenOneStartedTheRun) {
  // launch/train.sh ran `build/dptrain train --device cpu --resume auto --epochs 3`.
  EXPECT_EQ(resume_command({"/repo/build/dptrain", "train", "--device", "cpu", "--resume", "auto", "--epochs", "3"},
                           "launch/train.sh", "mpirun -np 2", "runs/mnist_cnn"),
            "launch/train.sh --device cpu --epochs 3 --resume auto --out runs/mnist_cnn");
  EXPECT_EQ(resume_command({"/repo/build/dptrain", "train", "--epochs", "3"}, "sbatch launch/slurm.sbatch", "", "r"),
            "sbatch launch/slurm.sbatch --epochs 3 --resume auto --out r");
}

TEST(Banner, IsShortAndNamesWhatRuns) {
  BannerFacts f;
  f.config_name = "mnist_cnn";
  f.config_source = "configs/mnist_cnn.yaml";
  f.parameters = 1199882;
  f.device = "cuda, NVIDIA H200";
  f.precision = "tf32";
  f.ranks = 4;
  f.exchange = "nccl";
  f.global_batch = 256;
  f.per_rank_batch = 64;
  f.steps_per_epoch = 235;
  f.epochs = 14;
  f.max_steps = 1000;
  f.data_dir = "data/mnist";
  f.train_images = 60000;
  f.test_images = 10000;
  f.run_dir = "runs/mnist_cnn";
  const std::string b = run_banner(f);
  EXPECT_EQ(b,
            "dptrain train: mnist_cnn (configs/mnist_cnn.yaml), 1,199,882 parameters\n"
            "  device:     cuda, NVIDIA H200, tf32\n"
            "  ranks:      4 (gradients all-reduced over nccl)\n"
            "  batch:      256 global, 64 per rank; 14 epoch(s) of 235 steps, stopping at step 1,000\n"
            "  data:       data/mnist (60,000 training, 10,000 test images)\n"
            "  run folder: runs/mnist_cnn (the resolved config is in config.yaml; --verbose prints it)\n");
  EXPECT_EQ(cli::with_thousands(999), "999");
  EXPECT_EQ(cli::with_thousands(1000), "1,000");
}

// ---------------------------------------------------------------------------------------------
// Through the binary, on a tiny dataset

using Result = test_support::CommandResult;

Result shell(const std::string& command) { return test_support::run_command(command); }

void put_be32(std::ofstream& out, uint32_t v) {
  const char b[4] = {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
  out.write(b, 4);
}

/// MNIST-layout IDX files of `train` and `test` random 28x28 images, labels cycling 0-9.
void write_tiny_mnist(const fs::path& dir, int train, int test) {
  fs::create_directories(dir);
  uint32_t state = 12345;
  for (const auto& [prefix, count] : {std::pair<std::string, int>{"train", train}, {"t10k", test}}) {
    std::ofstream images(dir / (prefix + "-images-idx3-ubyte"), std::ios::binary);
    put_be32(images, 0x803), put_be32(images, count), put_be32(images, 28), put_be32(images, 28);
    for (int i = 0; i < count * 784; ++i) images.put(static_cast<char>((state = state * 1664525u + 1013904223u) >> 24));
    std::ofstream labels(dir / (prefix + "-labels-idx1-ubyte"), std::ios::binary);
    put_be32(labels, 0x801), put_be32(labels, count);
    for (int i = 0; i < count; ++i) labels.put(static_cast<char>(i % 10));
  }
}

fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("dptrain_msgs_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::vector<nlohmann::json> metrics_lines(const fs::path& run) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(run / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

const std::string kConfig = std::string(DPTRAIN_SOURCE_DIR) + "/configs/mnist_cnn.yaml";

std::string train_command(const fs::path& data, const fs::path& run, const std::string& extra) {
  return std::string(DPTRAIN_BINARY) + " train --device cpu --threads 2 --no-progress --config " + kConfig +
         " --data " + data.string() + " --out " + run.string() + " " + extra;
}

TEST(TrainMessages, BannerNoConfigDumpPartialEpochsAndInspectEpochs) {
  const fs::path d = temp_dir("train");
  write_tiny_mnist(d / "data", 256, 100);
  const fs::path run = d / "run";
  const Result first = shell(train_command(d / "data", run, "--epochs 3 --max-steps 2"));
  ASSERT_EQ(first.status, 0) << first.output;
  // The banner, and no YAML.
  for (const std::string& s :
       {"dptrain train: mnist_cnn (" + kConfig + "), 1,199,882 parameters\n", std::string("  device:     cpu, 2 thread(s), float32\n"),
        std::string("  ranks:      1\n"), std::string("  batch:      64 global, 64 per rank; 3 epoch(s) of 4 steps, stopping at step 2\n"),
        "  data:       " + (d / "data").string() + " (256 training, 100 test images)\n", "  run folder: " + run.string()})
    EXPECT_NE(first.output.find(s), std::string::npos) << s << "\n" << first.output;
  EXPECT_EQ(first.output.find("type: conv2d"), std::string::npos) << first.output;
  EXPECT_EQ(first.output.find("optimizer"), std::string::npos) << first.output;
  EXPECT_NE(first.output.find("epoch 1  step 2 "), std::string::npos) << first.output;
  EXPECT_NE(first.output.find("(partial epoch: 128 of 256 images)\n"), std::string::npos) << first.output;
  std::ifstream yaml(run / "config.yaml");
  EXPECT_NE(std::string(std::istreambuf_iterator<char>(yaml), {}).find("type: conv2d"), std::string::npos);

  // The checkpoint of that step is in epoch 1, as the training messages said.
  const Result inspect = shell(std::string(DPTRAIN_BINARY) + " inspect " + (run / "ckpt-00000002.safetensors").string());
  ASSERT_EQ(inspect.status, 0) << inspect.output;
  EXPECT_NE(inspect.output.find("\n  epoch: 1 (counted from 1 as training messages count; stored as 0)\n"),
            std::string::npos)
      << inspect.output;

  // Resumed to step 6 with --verbose: the config is printed; epoch 1's time covers only its last
  // two steps, and its line says so.
  const Result second = shell(train_command(d / "data", run, "--epochs 3 --max-steps 6 --resume auto --verbose"));
  ASSERT_EQ(second.status, 0) << second.output;
  EXPECT_NE(second.output.find("resolved config:\n"), std::string::npos) << second.output;
  EXPECT_NE(second.output.find("type: conv2d"), std::string::npos) << second.output;
  EXPECT_NE(second.output.find("(time and img/s cover the 128 images since the resume)\n"), std::string::npos)
      << second.output;
  EXPECT_NE(second.output.find("(partial epoch: 128 of 256 images)\n"), std::string::npos) << second.output;
  const std::vector<nlohmann::json> m = metrics_lines(run);
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0]["partial_epoch"], true);
  EXPECT_EQ(m[0]["samples"], 128);
  EXPECT_EQ(m[0]["partial_timing"], false);
  EXPECT_EQ(m[1]["epoch"], 1);
  EXPECT_EQ(m[1]["partial_epoch"], false);
  EXPECT_EQ(m[1]["samples"], 256);
  EXPECT_EQ(m[1]["epoch_size"], 256);
  EXPECT_EQ(m[1]["timed_samples"], 128);
  EXPECT_EQ(m[1]["partial_timing"], true);
  EXPECT_EQ(m[2]["epoch"], 2);
  EXPECT_EQ(m[2]["partial_epoch"], true);
  EXPECT_EQ(m[2]["partial_timing"], false);

  // The checkpoint written at the end of epoch 1 stands at the start of epoch 2.
  const Result end1 = shell(std::string(DPTRAIN_BINARY) + " inspect " + (run / "ckpt-00000004.safetensors").string());
  EXPECT_NE(end1.output.find("\n  epoch: 2 (not begun: epoch 1 is complete; counted from 1"), std::string::npos)
      << end1.output;

  // curves.png is kept in the run folder, or one line says why not.
  if (const auto why = plot_unavailable_reason()) {
    EXPECT_NE(second.output.find("dptrain: plotting skipped: " + *why + "\n"), std::string::npos) << second.output;
  } else {
    std::ifstream png(run / "curves.png", std::ios::binary);
    std::string head(8, '\0');
    png.read(head.data(), 8);
    EXPECT_EQ(head, "\x89PNG\r\n\x1a\n");
    const RunCurves curves = read_run_curves(run.string());
    ASSERT_EQ(curves.points.size(), 2u) << "epoch 1's partial line is replaced by its whole one";
    EXPECT_DOUBLE_EQ(curves.points[1].x, 1.5);
  }
}

/// Starts a long training run, stops it with SIGTERM after its first epoch line and returns its output.
Result stopped_run(const fs::path& data, const fs::path& run, const std::string& env) {
  const std::string command = env + " " + train_command(data, run, "--epochs 1000") + " > " +
                              (run.string() + ".log") + " 2>&1 & pid=$!; for i in $(seq 600); do [ -s " +
                              (run / "metrics.jsonl").string() +
                              " ] && break; sleep 0.05; done; kill -TERM $pid; wait $pid; echo status=$?; cat " +
                              run.string() + ".log";
  return shell(command);
}

TEST(TrainMessages, ResumeHintNamesTheCommandThatStartedTheRun) {
  const fs::path d = temp_dir("hint");
  write_tiny_mnist(d / "data", 256, 100);
  Result r = stopped_run(d / "data", d / "direct", "env -u DPTRAIN_LAUNCHER");
  ASSERT_NE(r.output.find("status=0"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("resume with: " + std::string(DPTRAIN_BINARY) + " train --device cpu --threads 2 "),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find(" --epochs 1000 --resume auto\n"), std::string::npos) << r.output;
  r = stopped_run(d / "data", d / "launched", "DPTRAIN_LAUNCHER=launch/train.sh");
  ASSERT_NE(r.output.find("status=0"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("resume with: launch/train.sh --device cpu --threads 2 "), std::string::npos) << r.output;
}

}  // namespace
}  // namespace dptrain
