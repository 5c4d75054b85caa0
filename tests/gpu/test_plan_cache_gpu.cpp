// The plan cache on a GPU (io/plan_cache.h, ConvPlanner, train/plan_sharing.h): a second layer or
// model planned from a book or file that holds the first one's choices re-uses them without timing
// (each recorded choice is still checked once against the reference), and makes the same choices;
// a recorded choice that is not eligible here is dropped with a warning and planned afresh; a
// training run writes plans.json into its folder, and a run given that file (train.plan_cache=PATH)
// runs exactly those choices and leaves the file as it was. Skipped without a GPU.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "data/dataset.h"
#include "io/atomic_file.h"
#include "io/config.h"
#include "io/plan_cache.h"
#include "layers/layer_factory.h"
#include "train/plan_sharing.h"
#include "train/runtime.h"
#include "train/trainer.h"

namespace dptrain {
namespace {

namespace fs = std::filesystem;

const std::string kData = DPTRAIN_TEST_DATA_DIR;
bool have_mnist() {
  return fs::exists(kData + "/train-labels-idx1-ubyte.gz") || fs::exists(kData + "/train-labels-idx1-ubyte");
}

size_t count_containing(const std::vector<std::string>& lines, const std::string& text) {
  size_t n = 0;
  for (const std::string& l : lines) n += l.find(text) != std::string::npos;
  return n;
}

struct ConvUnderTest {
  std::unique_ptr<Layer<float>> layer;
  Buffer<float> values, grads;
};

/// A conv2d layer (32 -> 64 channels, 3x3, index 1: its input gradient is computed) bound to zeroed parameters.
ConvUnderTest make_conv(DeviceContext& ctx) {
  LayerConfig c;
  c.type = c.name = "conv2d";
  c.out_channels = 64;
  c.kernel = 3;
  c.stride = 1;
  ConvUnderTest t;
  t.layer = make_layer<float>(c, 1, Dims{32, 26, 26}, Device::Cuda);
  size_t np = 0;
  for (const ParamSpec& s : t.layer->param_specs()) np += static_cast<size_t>(element_count(s.shape));
  t.values = Buffer<float>(Device::Cuda, np);
  t.grads = Buffer<float>(Device::Cuda, np);
  CUDA_CHECK(cudaMemset(t.values.data(), 0, np * sizeof(float)));
  t.layer->bind({{t.values.span().subspan(0, np - 64), t.grads.span().subspan(0, np - 64)},
                 {t.values.span().subspan(np - 64), t.grads.span().subspan(np - 64)}});
  t.layer->reserve(ctx, 64);
  return t;
}

PlanFingerprint test_fingerprint() { return {"test GPU", 9, 0, 132, 1, 1, 1, 1, "test"}; }

/// Plans the test conv at batch 64 (with both gradients when `backward`) in a fresh context that records into
/// `book`, which it then lets go of; returns the context, whose warnings and choices tell what planning did.
DeviceContext plan_conv_into(PlanBook& book, bool backward) {
  DeviceContext ctx = make_device_context(Device::Cuda, TrainConfig{});
  ctx.set_plan_book(&book);
  {
    ConvUnderTest conv = make_conv(ctx);
    conv.layer->plan(ctx, 64, backward);
  }
  ctx.set_plan_book(nullptr);
  return ctx;
}

class PlanCacheGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    dir_ = fs::temp_directory_path() / ("dptrain-plans-gpu-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

// Timed planning records forward, backward-data and backward-filter for two batch sizes; a second
// layer of the same shape, in a fresh context, planned from the file, times nothing (no " us" in
// its choice lines, every line a recorded plan) and chooses the same implementations.
TEST_F(PlanCacheGpu, SecondLayerReusesThePlanWithoutTiming) {
  const std::string path = (dir_ / "plans.json").string();
  PlanBook first;
  {
    DeviceContext ctx = make_device_context(Device::Cuda, TrainConfig{});
    PlanBook book;
    ctx.set_plan_book(&book);
    ConvUnderTest conv = make_conv(ctx);
    conv.layer->plan(ctx, 64, true);
    conv.layer->plan(ctx, 16, true);
    ctx.set_plan_book(nullptr);
    EXPECT_EQ(book.size(), 6u);  // 2 sizes x 3 directions
    EXPECT_EQ(count_containing(ctx.cuda().choices(), "recorded plan"), 0u);
    first = book.used();
    write_plan_file(path, first, test_fingerprint());
  }
  DeviceContext ctx = make_device_context(Device::Cuda, TrainConfig{});
  PlanFileRead read = read_plan_file(path, test_fingerprint());
  ASSERT_FALSE(read.warning) << *read.warning;
  ctx.set_plan_book(&read.book);
  ConvUnderTest conv = make_conv(ctx);
  conv.layer->plan(ctx, 64, true);
  conv.layer->plan(ctx, 16, true);
  ctx.set_plan_book(nullptr);
  const std::vector<std::string>& lines = ctx.cuda().choices();
  ASSERT_EQ(lines.size(), 6u) << "no side-by-side timing of a recorded pair";
  EXPECT_EQ(count_containing(lines, "(recorded plan, checked)"), 6u);
  EXPECT_EQ(count_containing(lines, " us"), 0u) << "nothing timed";
  EXPECT_TRUE(ctx.cuda().warnings().empty());
  // The planner records what it runs (PlanBook::put after choosing): the same six choices.
  EXPECT_EQ(read.book.used(), first) << read.book.serialize() << "\n" << first.serialize();
}

// A record that cuDNN does not offer here (algorithm 63), or a family whose guard refuses the
// shape, is stale: one warning per direction, planned afresh, and the book holds the new choice.
TEST_F(PlanCacheGpu, IneligibleRecordIsReplannedWithAWarning) {
  PlanBook probe;
  plan_conv_into(probe, false);
  ASSERT_EQ(probe.size(), 1u);
  const std::string key = probe.records().begin()->first;
  PlanBook book;
  book.put(key, {"cudnn", 63, 0});
  book.forget_use();
  const DeviceContext fresh = plan_conv_into(book, false);
  ASSERT_EQ(fresh.cuda().warnings().size(), 1u);
  EXPECT_NE(fresh.cuda().warnings()[0].find("stale"), std::string::npos) << fresh.cuda().warnings()[0];
  EXPECT_NE(book.records().at(key).algo, 63);
  EXPECT_EQ(count_containing(fresh.cuda().choices(), "recorded plan"), 0u);
}

// A recorded cuDNN algorithm that the run's rules refuse (backward-filter algorithm 0, which sums
// with atomics, under train.deterministic) is stale, even though cuDNN supports it: one warning,
// planned afresh, and the book holds a deterministic choice.
TEST_F(PlanCacheGpu, RecordTheRulesRefuseIsReplanned) {
  PlanBook probe;
  plan_conv_into(probe, true);
  std::string key;
  for (const auto& [k, r] : probe.records())
    if (k.find("direction=backward-filter") != std::string::npos) key = k;
  ASSERT_FALSE(key.empty()) << probe.serialize();
  PlanBook book = probe;
  book.put(key, {"cudnn", CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, 0});
  book.forget_use();
  const DeviceContext fresh = plan_conv_into(book, true);
  ASSERT_EQ(fresh.cuda().warnings().size(), 1u);
  EXPECT_NE(fresh.cuda().warnings()[0].find("not allowed under this run's rules (stale)"), std::string::npos)
      << fresh.cuda().warnings()[0];
  const PlanRecord now = book.records().at(key);
  EXPECT_FALSE(now.impl == "cudnn" && now.algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0);
  EXPECT_EQ(count_containing(fresh.cuda().choices(), "recorded plan"), 2u);  // forward and backward-data
}

// A run writes plans.json into its folder; a second run given it as train.plan_cache plans nothing
// afresh, chooses the same, writes the same plans.json into its own folder, and never modifies the given file.
TEST_F(PlanCacheGpu, RunFolderPlanIsWrittenAndReusedReadOnly) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  const auto run = [&](const std::string& out, const std::string& cache) {
    const Config config = load_config(std::string(DPTRAIN_SOURCE_DIR) + "/configs/mnist_cnn.yaml",
                                      {"train.plan_cache=" + cache});
    DeviceContext ctx = make_device_context(Device::Cuda, config.train);
    SingleRankCommunicator comm;
    TrainOptions options;
    options.show_progress = false;
    options.out_dir = out;
    Trainer trainer(config, options, data, ctx, comm);
    trainer.step(0, 0, 0);
    return ctx.cuda().choices();
  };
  const std::string first = (dir_ / "first").string(), second = (dir_ / "second").string();
  const std::vector<std::string> cold = run(first, "off");
  const std::string recorded = first + "/plans.json";
  ASSERT_TRUE(fs::exists(recorded));
  const std::string bytes = read_whole_file(recorded);
  const auto mtime = fs::last_write_time(recorded);
  const std::vector<std::string> warm = run(second, recorded);
  EXPECT_GT(cold.size(), 0u);
  EXPECT_EQ(count_containing(warm, "(recorded plan, checked)"), warm.size()) << "every choice from the file";
  EXPECT_EQ(read_whole_file(recorded), bytes);
  EXPECT_EQ(fs::last_write_time(recorded), mtime);
  ASSERT_TRUE(fs::exists(second + "/plans.json"));
  // Same records (the fingerprints are the same GPU's): the second run ran exactly the first's plan.
  const std::string again = read_whole_file(second + "/plans.json");
  EXPECT_EQ(again, bytes);
}

}  // namespace
}  // namespace dptrain
