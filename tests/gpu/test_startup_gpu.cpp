// The start-up breakdown and the background checkpoint writer on CUDA (train/startup_timer.h,
// train/checkpoint_writer.h): the CUDA phases (context, handles, planning per layer and direction,
// graph capture) are present and tile the total; eval plans forward only; async checkpoints are
// byte-identical to synchronous ones on the GPU; CudaContext reports its creation times.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "../unit/command_runner.h"
#include "core/cuda_context.h"
#include "io/atomic_file.h"

namespace dptrain {
namespace {

namespace fs = std::filesystem;
const std::string kData = DPTRAIN_TEST_DATA_DIR;

class StartupGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    if (!fs::exists(kData + "/train-images-idx3-ubyte.gz") && !fs::exists(kData + "/train-images-idx3-ubyte"))
      GTEST_SKIP() << "MNIST not in " << kData;
  }
  fs::path dir(const std::string& name) {
    const fs::path d = fs::temp_directory_path() / ("dptrain_startup_gpu_" + name);
    fs::remove_all(d);
    return d;
  }
};

TEST_F(StartupGpu, CudaContextReportsItsCreationTimes) {
  CudaContext ctx{CudaOptions{}};
  EXPECT_GE(ctx.context_seconds(), 0.0);
  EXPECT_GT(ctx.handles_seconds(), 0.0) << "streams and handles take some time to create";
}

TEST_F(StartupGpu, TheFirstMetricsLineHasTheCudaPhases) {
  const fs::path d = dir("train");
  const auto r = test_support::run_dptrain("train --device cuda --no-progress --data " + kData + " --out " +
                                           d.string() + " --max-steps 5 --set checkpoint.every_steps=2");
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream in(d / "metrics.jsonl");
  std::string line;
  std::getline(in, line);
  const nlohmann::json s = nlohmann::json::parse(line)["startup"];
  for (const char* key : {"cuda_context", "cuda_handles", "planning", "first_step", "graph_capture", "data_read_wait"})
    EXPECT_TRUE(s["phases"].contains(key)) << key << ": " << s.dump();
  // cuBLAS and cuDNN's parts were loaded beside the context (core/cublas_loader.h, cudnn_preload.h).
  for (const char* key : {"data_read", "cublas_load", "cudnn_preload"})
    EXPECT_GT(s["overlapped"].value(key, 0.0), 0.0) << key << ": " << s.dump();
  double sum = 0;
  for (const auto& [name, v] : s["phases"].items()) {
    EXPECT_GE(v.get<double>(), 0.0) << name;
    sum += v.get<double>();
  }
  EXPECT_LE(sum, s["total_s"].get<double>() + 1e-6);
  // conv1 is planned for the training batch in both directions and for the evaluation batch forward.
  bool train_forward = false, train_backward = false, eval_forward = false;
  double planned = 0;
  for (const auto& p : s["plans"]) {
    planned += p["s"].get<double>();
    if (p["layer"] != "conv1") continue;
    if (p["batch"] == 64 && p["direction"] == "forward") train_forward = true;
    if (p["batch"] == 64 && p["direction"] == "backward") train_backward = true;
    if (p["batch"] == 1000 && p["direction"] == "forward") eval_forward = true;
  }
  EXPECT_TRUE(train_forward && train_backward && eval_forward) << s["plans"].dump();
  EXPECT_LE(planned, s["phases"]["planning"].get<double>() + 1e-6);
  // The last checkpoint (the end, step 5) was written before the process exited.
  EXPECT_TRUE(fs::exists(d / "ckpt-00000005.safetensors"));
}

TEST_F(StartupGpu, AsynchronousCheckpointsAreByteIdenticalToSynchronousOnes) {
  const fs::path d = dir("bytes");
  for (const char* mode : {"async", "sync"}) {
    const auto r = test_support::run_dptrain("train --device cuda --no-progress --data " + kData + " --out " +
                                             (d / mode).string() + " --max-steps 6 --set checkpoint.every_steps=2" +
                                             (std::string(mode) == "sync" ? " --sync-checkpoints" : ""));
    ASSERT_EQ(r.status, 0) << r.output;
  }
  for (const char* name : {"ckpt-00000004.safetensors", "ckpt-00000006.safetensors", "latest"})
    EXPECT_EQ(read_file_bytes((d / "async" / name).string()), read_file_bytes((d / "sync" / name).string())) << name;
}

TEST_F(StartupGpu, EvalPlansForwardOnlyForItsBatchSizes) {
  const fs::path d = dir("eval");
  const auto t = test_support::run_dptrain("train --device cuda --no-progress --data " + kData + " --out " + d.string() +
                                           " --max-steps 2");
  ASSERT_EQ(t.status, 0) << t.output;
  const auto r = test_support::run_dptrain("eval --device cuda --json --batch-size 3000 --checkpoint " +
                                           (d / "final.safetensors").string() + " --data " + kData);
  ASSERT_EQ(r.status, 0) << r.output;
  const nlohmann::json j = nlohmann::json::parse(r.output.substr(r.output.find('{')));
  const nlohmann::json& s = j["startup"];
  EXPECT_TRUE(s["phases"].contains("planning")) << s.dump();
  EXPECT_TRUE(s["phases"].contains("cuda_context")) << s.dump();
  bool full = false, tail = false;
  for (const auto& p : s["plans"]) {
    EXPECT_EQ(p["direction"], "forward") << p.dump();
    if (p["batch"] == 3000) full = true;
    if (p["batch"] == 1000) tail = true;  // 10000 = 3 x 3000 + 1000
  }
  EXPECT_TRUE(full && tail) << s["plans"].dump();
}

}  // namespace
}  // namespace dptrain
