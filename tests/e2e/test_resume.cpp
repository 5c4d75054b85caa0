// Checkpoints and resume as a user meets them (CPU, one process): a run stopped mid-epoch and
// resumed, on the same or another thread count, is bit-for-bit the run that never stopped; SIGTERM stops at a step boundary with a
// checkpoint; damaged checkpoints are refused with exit 2 and `--resume auto` falls back past them;
// a checkpoint of another model is refused with the differences listed.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <string>

#include "core/cuda_support.h"  // cuda_device_count: 0 in a CPU-only build
#include "e2e_support.h"

namespace dptrain::e2e {
namespace {

// Adadelta's recipe with dropout on, as configs/mnist_cnn.yaml has it.
std::string train_args(const fs::path& out, int steps) {
  return "train --device cpu --threads 2 --no-progress --config " + source_dir() + "/configs/mnist_cnn.yaml --data " +
         mnist_dir() + " --out " + out.string() + " --max-steps " + std::to_string(steps);
}

class Resume : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_mnist()) GTEST_SKIP() << "MNIST not found in " << mnist_dir() << " (launch/get_mnist.sh)";
  }
};

TEST_F(Resume, StopAndResumeMidEpochIsBitForBitTheUninterruptedRun) {
  const fs::path d = fresh_dir("bitwise");
  const Result whole = run_dptrain(train_args(d / "whole", 60));
  ASSERT_EQ(whole.status, 0) << whole.output;
  const Result first = run_dptrain(train_args(d / "split", 30));
  ASSERT_EQ(first.status, 0) << first.output;
  const LoadedCheckpoint at30 = latest_checkpoint(d / "split");
  EXPECT_EQ(at30.state.global_step, 30);
  EXPECT_EQ(at30.state.samples_in_epoch, 30 * 64) << "step 30 is mid-epoch";
  const Result second = run_dptrain(train_args(d / "split", 60) + " --resume auto");
  ASSERT_EQ(second.status, 0) << second.output;
  EXPECT_NE(second.output.find("resume: changed train.max_steps: 30 -> 60"), std::string::npos) << second.output;

  const LoadedCheckpoint a = latest_checkpoint(d / "whole"), b = latest_checkpoint(d / "split");
  EXPECT_EQ(a.state.global_step, 60);
  EXPECT_EQ(b.state.global_step, 60);
  EXPECT_TRUE(same_tensors(a, b)) << "parameters or optimizer state differ, relative " << relative_difference(a, b);
  EXPECT_EQ(a.state.epoch_metrics_json, b.state.epoch_metrics_json) << "the epoch's loss sums continue across the resume";

  // metrics.jsonl: the resumed run keeps the first run's line (step 30) and appends its own.
  std::ifstream metrics(d / "split" / "metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) ++lines;
  EXPECT_EQ(lines, 2);

  // Resuming a finished run does nothing and says so.
  const Result again = run_dptrain(train_args(d / "split", 60) + " --resume auto");
  EXPECT_EQ(again.status, 0) << again.output;
  EXPECT_NE(again.output.find("nothing to do"), std::string::npos) << again.output;
}

TEST_F(Resume, ARunResumedOnAnotherThreadCountIsBitForBitTheSame) {
  // As when a run moves to a machine with another core count: the CPU backend's results do not
  // depend on its threads (fixed convolution groups, GEMM blocks cut by shape).
  const fs::path d = fresh_dir("threads");
  ASSERT_EQ(run_dptrain(train_args(d / "whole", 20)).status, 0);
  std::string one_thread = train_args(d / "moved", 10);
  one_thread.replace(one_thread.find("--threads 2"), 11, "--threads 1");
  const Result first = run_dptrain(one_thread);
  ASSERT_EQ(first.status, 0) << first.output;
  const Result second = run_dptrain(train_args(d / "moved", 20) + " --resume auto");
  ASSERT_EQ(second.status, 0) << second.output;
  const LoadedCheckpoint a = latest_checkpoint(d / "whole"), b = latest_checkpoint(d / "moved");
  EXPECT_EQ(b.state.global_step, 20);
  EXPECT_TRUE(same_tensors(a, b)) << "parameters or optimizer state differ, relative " << relative_difference(a, b);
}

// The same on one GPU (CUDA graphs on). cuDNN's algorithm choice by timing can differ between two
// processes, so the algorithms are chosen by heuristics here, as for any bitwise comparison.
TEST_F(Resume, StopAndResumeIsBitForBitOnOneGpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no GPU";
  const fs::path d = fresh_dir("gpu_bitwise");
  const auto args = [&](const fs::path& out, int steps) {
    return "train --device cuda --no-progress --config " + source_dir() + "/configs/mnist_cnn.yaml --data " +
           mnist_dir() + " --out " + out.string() + " --max-steps " + std::to_string(steps) +
           " --set train.cudnn_benchmark=false";
  };
  ASSERT_EQ(run_dptrain(args(d / "whole", 1000)).status, 0);
  ASSERT_EQ(run_dptrain(args(d / "split", 500)).status, 0);
  const Result second = run_dptrain(args(d / "split", 1000) + " --resume auto");
  ASSERT_EQ(second.status, 0) << second.output;
  const LoadedCheckpoint a = latest_checkpoint(d / "whole"), b = latest_checkpoint(d / "split");
  EXPECT_EQ(b.state.global_step, 1000);
  EXPECT_TRUE(same_tensors(a, b)) << "relative " << relative_difference(b, a);
}

TEST_F(Resume, SigtermStopsAtAStepBoundaryWithACheckpointAndResumeFinishesTheSameRun) {
  const fs::path d = fresh_dir("sigterm");
  const std::string every = " --set checkpoint.every_steps=10";
  const Result whole = run_dptrain(train_args(d / "whole", 100) + every);
  ASSERT_EQ(whole.status, 0) << whole.output;

  Background job(binary() + " " + train_args(d / "cut", 100) + every, d / "cut.log");
  ASSERT_TRUE(wait_for_file(d / "cut" / "latest", 120)) << "no checkpoint appeared";
  job.signal(SIGTERM);
  const Result cut = job.wait();
  ASSERT_EQ(cut.status, 0) << cut.output;
  EXPECT_NE(cut.output.find("preempted by signal 15"), std::string::npos) << cut.output;
  EXPECT_NE(cut.output.find("--resume auto"), std::string::npos) << cut.output;
  const LoadedCheckpoint stopped = latest_checkpoint(d / "cut");
  EXPECT_GT(stopped.state.global_step, 0);
  EXPECT_LT(stopped.state.global_step, 100) << "the signal came mid-run";
  EXPECT_FALSE(fs::exists(d / "cut" / "final.safetensors")) << "a stopped run has no final weights";

  const Result rest = run_dptrain(train_args(d / "cut", 100) + every + " --resume auto");
  ASSERT_EQ(rest.status, 0) << rest.output;
  EXPECT_TRUE(same_tensors(latest_checkpoint(d / "whole"), latest_checkpoint(d / "cut")));
}

TEST_F(Resume, DamagedCheckpointsAreRefusedAndAutoFallsBackToTheOneBefore) {
  const fs::path d = fresh_dir("damaged");
  const fs::path run = d / "run";
  const Result r = run_dptrain(train_args(run, 10) + " --set checkpoint.every_steps=5");
  ASSERT_EQ(r.status, 0) << r.output;
  const fs::path good = run / "ckpt-00000010.safetensors";
  std::ifstream in(good, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), 1000u);

  const fs::path bad = d / "bad.safetensors";
  const auto write_bad = [&](const std::string& content) { std::ofstream(bad, std::ios::binary | std::ios::trunc) << content; };
  int cases = 0;
  const auto expect_refused = [&](const std::string& what) {
    // Every case through `inspect` (the same loader); every 8th also through `train --resume`, whose
    // start-up (MPI) makes it the slower way to ask.
    if (cases++ % 8 == 0) {
      const Result t = run_dptrain(train_args(d / "never", 20) + " --resume " + bad.string());
      EXPECT_EQ(t.status, 2) << what << "\n" << t.output;
      EXPECT_NE(t.output.find(bad.string()), std::string::npos) << what << ": the message names the file\n" << t.output;
    }
    const Result i = run_dptrain("inspect " + bad.string());
    EXPECT_EQ(i.status, 2) << what << "\n" << i.output;
    EXPECT_NE(i.output.find("INVALID"), std::string::npos) << what;
  };
  for (int k = 0; k < 16; ++k) {  // truncated at 16 evenly spaced offsets
    write_bad(bytes.substr(0, bytes.size() * k / 16));
    expect_refused("truncated at " + std::to_string(bytes.size() * k / 16));
  }
  for (int k = 0; k < 64; ++k) {  // one byte flipped, at 64 evenly spaced offsets (header and data)
    std::string flipped = bytes;
    flipped[flipped.size() * k / 64 + 3] ^= 0x5a;
    write_bad(flipped);
    expect_refused("byte " + std::to_string(flipped.size() * k / 64 + 3) + " flipped");
  }
  {  // a header whose offsets lie: the first tensor's end moved past the data section
    std::string lying = bytes;
    const size_t at = lying.find("\"data_offsets\":[0,");
    ASSERT_NE(at, std::string::npos);
    lying.replace(at, 18, "\"data_offsets\":[9,");
    write_bad(lying);
    expect_refused("lying offsets");
  }
  EXPECT_FALSE(fs::exists(d / "never")) << "a refused resume creates no run folder";

  // The newest checkpoint damaged: --resume auto names it and continues from the one before.
  std::string damaged = bytes;
  damaged[damaged.size() / 2] ^= 0x01;
  std::ofstream(good, std::ios::binary | std::ios::trunc) << damaged;
  const Result resumed = run_dptrain(train_args(run, 12) + " --resume auto");
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("ckpt-00000010.safetensors"), std::string::npos) << resumed.output;
  EXPECT_NE(resumed.output.find("at step 5 "), std::string::npos) << resumed.output;
}

// Resumed from an older checkpoint of its own folder, a run continues from there: the later files
// of the run it abandoned move aside (kept), instead of counting against checkpoint.keep (rotation
// would delete this run's own files and keep them) and being what --resume auto picks next.
TEST_F(Resume, ResumingFromAnOlderCheckpointSetsTheLaterOnesAside) {
  const fs::path d = fresh_dir("aside");
  const fs::path run = d / "run";
  const std::string every = " --set checkpoint.every_steps=1 --set checkpoint.keep=2";
  ASSERT_EQ(run_dptrain(train_args(run, 4) + every).status, 0);  // keeps ckpt-3 and ckpt-4
  const Result r = run_dptrain(train_args(run, 5) + every + " --resume " + (run / "ckpt-00000003.safetensors").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("dptrain: warning: resumed at step 3: moved 1 checkpoint(s) of later steps "
                          "(ckpt-00000004.safetensors) into " + run.string() + "/set-aside-3/"),
            std::string::npos)
      << r.output;
  EXPECT_TRUE(fs::exists(run / "set-aside-3" / "ckpt-00000004.safetensors"));
  EXPECT_TRUE(fs::exists(run / "ckpt-00000004.safetensors")) << "this run's own step 4";
  EXPECT_TRUE(fs::exists(run / "ckpt-00000005.safetensors"));
  EXPECT_FALSE(fs::exists(run / "ckpt-00000003.safetensors")) << "rotated: keep 2";
  EXPECT_EQ(latest_checkpoint(run).state.global_step, 5);
}

TEST_F(Resume, AnotherModelIsRefusedWithTheDifferencesListed) {
  const fs::path d = fresh_dir("model");
  ASSERT_EQ(run_dptrain(train_args(d / "run", 3)).status, 0);
  const Result r = run_dptrain(train_args(d / "run", 6) + " --resume auto --set model.layers.7.out_features=64");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("model.layers.7.out_features: 128 -> 64"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ckpt-00000003.safetensors"), std::string::npos) << r.output;
}

TEST_F(Resume, AFreshRunNeverOverwritesAnotherRunsCheckpoints) {
  const fs::path d = fresh_dir("fresh");
  ASSERT_EQ(run_dptrain(train_args(d / "run", 2)).status, 0);
  const Result r = run_dptrain(train_args(d / "run", 4));
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("--resume auto"), std::string::npos) << r.output;
  EXPECT_EQ(latest_checkpoint(d / "run").state.global_step, 2);
}

// Neither a fresh run nor --resume auto overwrites a run's files that no checkpoint of the folder
// can continue: final weights alone, or checkpoints that are all damaged.
TEST_F(Resume, NoRunOverwritesWeightsOrDamagedCheckpointsItCannotContinue) {
  const fs::path d = fresh_dir("overwrite");
  ASSERT_EQ(run_dptrain(train_args(d / "run", 2)).status, 0);
  const fs::path weights_only = d / "weights_only";
  fs::create_directories(weights_only);
  fs::copy_file(d / "run" / "final.safetensors", weights_only / "final.safetensors");
  const Result fresh = run_dptrain(train_args(weights_only, 1));
  EXPECT_EQ(fresh.status, 2) << fresh.output;
  EXPECT_NE(fresh.output.find(weights_only.string() + ": already holds a run (checkpoints or weights)"), std::string::npos)
      << fresh.output;

  const fs::path damaged = d / "damaged";
  fs::create_directories(damaged);
  std::ifstream in(d / "run" / "ckpt-00000002.safetensors", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  bytes[bytes.size() / 2] ^= 0x01;
  std::ofstream(damaged / "ckpt-00000002.safetensors", std::ios::binary) << bytes;
  const Result resumed = run_dptrain(train_args(damaged, 2) + " --resume auto");
  EXPECT_EQ(resumed.status, 2) << resumed.output;
  EXPECT_NE(resumed.output.find(damaged.string() + ": --resume auto found no checkpoint that loads ("), std::string::npos)
      << resumed.output;
  std::ifstream after(damaged / "ckpt-00000002.safetensors", std::ios::binary);
  EXPECT_EQ(std::string((std::istreambuf_iterator<char>(after)), std::istreambuf_iterator<char>()), bytes)
      << "the damaged checkpoint is left as it was";
}

}  // namespace
}  // namespace dptrain::e2e
