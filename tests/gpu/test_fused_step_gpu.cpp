// LeNet-5's fused training pass (kernels/lenet5_step.h, model/fused_train_step.h): its loss and
// every gradient against the CPU model's layered pass at batch sizes that cross every block, cluster
// and partial-sum boundary; the same bits on every run; the planner's check, timing and record; and
// training through the Trainer with it, against the CPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gpu_test_support.h"
#include "comm/communicator.h"
#include "core/buffer.h"
#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "core/device_ops.h"
#include "data/dataset.h"
#include "io/config.h"
#include "io/plan_cache.h"
#include "kernels/data_kernels.h"
#include "kernels/lenet5_step.h"
#include "model/model.h"
#include "train/runtime.h"
#include "train/trainer.h"

namespace dptrain {
namespace {

using gpu_test::after_steps;
using gpu_test::GpuTest;
using gpu_test::have_mnist;
using gpu_test::kData;
using gpu_test::params_of;
using gpu_test::randoms;
using gpu_test::rel;
using gpu_test::shipped_config;

class Lenet5FusedPass : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    if (!kernels::lenet5_step_supported()) GTEST_SKIP() << "no thread block clusters on this GPU (sm_90 needed)";
  }
};

Config lenet5(const std::vector<std::string>& sets = {}) {
  return load_config(std::string(DPTRAIN_SOURCE_DIR) + "/configs/lenet5.yaml", sets);
}

template <typename T>
std::vector<T> host(DeviceContext& ctx, const Buffer<T>& b, size_t n) {
  std::vector<T> h(n);
  download(ctx, std::span<const T>(b.data(), n), std::span<T>(h));
  return h;
}
template <typename T>
Buffer<T> on(DeviceContext& ctx, const std::vector<T>& h) {
  Buffer<T> b(ctx.device(), h.size());
  upload(ctx, b.span(), std::span<const T>(h));
  return b;
}

struct PassResult {
  std::vector<float> grads;
  std::vector<double> sums;
};

// One pass over n seeded samples from parameters drawn with seed 3: the fused pass on `ctx` (CUDA)
// or the layered one (the CPU model, the oracle).
PassResult run_pass(DeviceContext& ctx, const Config& config, int n, bool fused) {
  Model<float> model(config.model, ctx, n, config.train.label_smoothing);
  model.params().initialize(3);
  // Normalised MNIST's range; labels spread over the classes.
  const std::vector<float> x = randoms(static_cast<size_t>(n) * 784, 11 + static_cast<uint32_t>(n), -0.42f, 2.8f);
  std::vector<int32_t> labels(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) labels[static_cast<size_t>(i)] = (i * 7 + 3) % 10;
  Buffer<float> bx = on(ctx, x);
  Buffer<int32_t> by = on(ctx, labels);
  Buffer<double> sums(ctx.device(), 2);
  zero_async(ctx, sums.span());
  // Poisoned: the fused pass must write every parameter's gradient.
  if (fused) {
    std::vector<float> nan(model.params().size(), std::nanf(""));
    upload(ctx, model.params().grads().span(), std::span<const float>(nan));
  }
  const float scale = 1.0f / static_cast<float>(n);
  if (fused) {
    FusedTrainStep* step = model.fused_step();
    if (step == nullptr) throw std::logic_error("no fused step for lenet5");
    step->run(ctx, model.params().values().data(), bx.data(), by.data(), n, scale, model.params().grads().data(),
              sums.data(), nullptr);
  } else {
    model.forward(ctx, TensorView<const float>{bx.data(), n, {1, 28, 28}}, Phase::Train, {});
    model.backward(ctx, by.data(), scale, sums.data(), nullptr);
    ctx.join_side_work();
  }
  PassResult r{host(ctx, model.params().grads(), model.params().size()), host(ctx, sums, 2)};
  // Only the tensors' elements: the padding between them is no gradient.
  std::vector<float> packed;
  for (const ParamEntry& e : model.params().entries())
    packed.insert(packed.end(), r.grads.begin() + static_cast<long>(e.offset),
                  r.grads.begin() + static_cast<long>(e.offset + e.count));
  r.grads = std::move(packed);
  return r;
}

// Each tensor's relative difference, against the CPU's layered pass.
void expect_matches_cpu(const PassResult& got, const PassResult& want, const Model<float>& shape, int n,
                        const char* what) {
  size_t at = 0;
  for (const ParamEntry& e : shape.params().entries()) {
    const std::vector<float> g(got.grads.begin() + static_cast<long>(at),
                               got.grads.begin() + static_cast<long>(at + e.count));
    const std::vector<float> w(want.grads.begin() + static_cast<long>(at),
                               want.grads.begin() + static_cast<long>(at + e.count));
    EXPECT_LT(rel(g, w), 1e-4) << e.name << " at batch " << n << " (" << what << ")";
    at += e.count;
  }
  EXPECT_NEAR(got.sums[0], want.sums[0], 1e-5 * std::abs(want.sums[0])) << "loss at batch " << n << " (" << what << ")";
  EXPECT_EQ(got.sums[1], want.sums[1]) << "correct count at batch " << n << " (" << what << ")";
}

// Batches of 1 (one partly empty cluster), 15 to 17 (a cluster's edge), 21 (a last cluster of
// five), 64, 241, 257, 300 and 360 (the head's 15 clusters of up to 24 samples: 17 a cluster and
// a last of 3 at 241, 24 each at 360; past 264 conv-backward blocks take two samples), 361 (back
// to tiles of 16: 23 clusters), 1000, and 4100 (257 clusters, the last of four; the planner takes
// the fused pass up to 8192); and label smoothing.
TEST_F(Lenet5FusedPass, LossAndEveryGradientMatchCpu) {
  const Config plain = lenet5(), smoothed = lenet5({"train.label_smoothing=0.1"});
  Model<float> shape(plain.model, cpu_, 1);
  for (const int n : {1, 15, 16, 17, 21, 64, 241, 257, 300, 360, 361, 1000, 4100}) {
    expect_matches_cpu(run_pass(*gpu_, plain, n, true), run_pass(cpu_, plain, n, false), shape, n, "plain");
    if (n == 17 || n == 300)
      expect_matches_cpu(run_pass(*gpu_, smoothed, n, true), run_pass(cpu_, smoothed, n, false), shape, n,
                         "smoothing 0.1");
  }
}

// Every sum runs in an order fixed by n: two passes give the same bits.
TEST_F(Lenet5FusedPass, SameBitsEveryRun) {
  const Config config = lenet5();
  for (const int n : {64, 300}) {
    const PassResult a = run_pass(*gpu_, config, n, true), b = run_pass(*gpu_, config, n, true);
    EXPECT_EQ(a.grads, b.grads) << n;
    EXPECT_EQ(a.sums, b.sums) << n;
  }
}

// The kernels stage the linear weights in 16-byte pieces and read the scratch as float4: a step
// whose parameters or scratch are not aligned so is refused before anything is queued.
TEST_F(Lenet5FusedPass, RefusesMisalignedParametersAndScratch) {
  Buffer<float> params(Device::Cuda, 64), scratch(Device::Cuda, 64);
  kernels::Lenet5Step p{};  // every offset 0; never launched
  p.params = params.data();
  p.n = 1;
  p.scratch = scratch.data();
  const auto refused = [&](const char* what) {
    try {
      kernels::lenet5_step(p, nullptr);
      ADD_FAILURE() << what << ": not refused";
    } catch (const CudaError& e) {
      EXPECT_NE(std::string(e.what()).find("16-byte aligned"), std::string::npos) << what << ": " << e.what();
    }
  };
  p.offsets[6] = 1;
  refused("fc2's weight at an odd offset");
  p.offsets[6] = 0;
  p.params = params.data() + 1;
  refused("parameters 4 bytes past an alignment");
  p.params = params.data();
  p.scratch = scratch.data() + 2;
  refused("scratch 8 bytes past an alignment");
}

// Where the trainer hands it the step's gather (core/step_gather.h), conv forward takes the batch
// from the dataset itself: the batch and labels it leaves, every gradient and the loss sums equal,
// bit for bit, the gather kernel's batch run through the pass. Batches 1, 17 (a cluster's edge),
// 300 (the wide head tile, two samples a conv-backward block) and 1000, from epoch position 1234
// of a shuffled order over 3000 rows.
TEST_F(Lenet5FusedPass, GatheringItsOwnBatchGivesTheGatherKernelsBits) {
  const Config config = lenet5();
  DeviceContext& ctx = *gpu_;
  constexpr int kRows = 3000, kPixels = 784;
  std::mt19937 rng(5);
  std::vector<uint8_t> images(static_cast<size_t>(kRows) * kPixels);
  for (uint8_t& v : images) v = static_cast<uint8_t>(rng() % 256);
  std::vector<int32_t> labels(kRows);
  for (int i = 0; i < kRows; ++i) labels[static_cast<size_t>(i)] = static_cast<int32_t>(rng() % 10);
  std::vector<uint32_t> order(kRows);
  std::iota(order.begin(), order.end(), 0u);
  std::shuffle(order.begin(), order.end(), rng);
  const Buffer<uint8_t> d_images = on(ctx, images);
  const Buffer<int32_t> d_labels = on(ctx, labels);
  const Buffer<uint32_t> d_order = on(ctx, order);
  StepState state{};
  state.info.first_sample = 1234;
  ctx.set_step(state);
  const float mean = 0.1307f, std = 0.3081f;
  for (const int n : {1, 17, 300, 1000}) {
    Model<float> model(config.model, ctx, n);
    model.params().initialize(3);
    FusedTrainStep* step = model.fused_step();
    ASSERT_NE(step, nullptr);
    const float scale = 1.0f / static_cast<float>(n);
    const size_t grads = model.params().size();
    // The gather kernel's batch, then the pass.
    Buffer<float> xa(Device::Cuda, static_cast<size_t>(n) * kPixels);
    Buffer<int32_t> ya(Device::Cuda, static_cast<size_t>(n));
    Buffer<double> sa(Device::Cuda, 2);
    zero_async(ctx, sa.span());
    kernels::gather_normalize(d_images.data(), d_labels.data(), d_order.data(), kPixels, 0, ctx.step(), n, mean, std,
                              xa.data(), ya.data(), ctx.cuda().stream());
    step->run(ctx, model.params().values().data(), xa.data(), ya.data(), n, scale, model.params().grads().data(),
              sa.data(), nullptr);
    const std::vector<float> grads_a = host(ctx, model.params().grads(), grads);
    // The pass that gathers, into poisoned buffers.
    Buffer<float> xb = on(ctx, std::vector<float>(static_cast<size_t>(n) * kPixels, std::nanf("")));
    Buffer<int32_t> yb = on(ctx, std::vector<int32_t>(static_cast<size_t>(n), -1));
    const std::vector<float> nan(grads, std::nanf(""));
    upload(ctx, model.params().grads().span(), std::span<const float>(nan));
    Buffer<double> sb(Device::Cuda, 2);
    zero_async(ctx, sb.span());
    const StepGather gather{d_images.data(), d_labels.data(), d_order.data(), ctx.step(), kPixels, mean, std,
                            xb.data(), yb.data()};
    step->run(ctx, model.params().values().data(), xb.data(), yb.data(), n, scale, model.params().grads().data(),
              sb.data(), &gather);
    const std::vector<float> grads_b = host(ctx, model.params().grads(), grads);
    const auto bits = [](const std::vector<float>& v) {  // NaN-safe equality: the padding stays NaN
      std::vector<uint32_t> b(v.size());
      std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
      return b;
    };
    const std::vector<float> xa_h = host(ctx, xa, xa.size()), xb_h = host(ctx, xb, xb.size());
    EXPECT_EQ(bits(xa_h), bits(xb_h)) << "the batch at " << n;
    EXPECT_EQ(host(ctx, ya, ya.size()), host(ctx, yb, yb.size())) << "the labels at " << n;
    const std::vector<uint32_t> bits_a = bits(grads_a), bits_b = bits(grads_b);
    size_t different = 0;
    for (const ParamEntry& e : model.params().entries())
      for (size_t i = e.offset; i < e.offset + e.count; ++i) different += bits_a[i] != bits_b[i];
    EXPECT_EQ(different, 0u) << "gradient elements at " << n;
    EXPECT_EQ(host(ctx, sa, 2), host(ctx, sb, 2)) << "the loss sums at " << n;
  }
}

// A gather must write the batch the pass reads, and name what it reads: else lenet5_step refuses.
TEST_F(Lenet5FusedPass, RefusesAGatherThatWritesElsewhere) {
  Buffer<float> params(Device::Cuda, 64), scratch(Device::Cuda, 64), x(Device::Cuda, 784), other(Device::Cuda, 784);
  Buffer<int32_t> labels(Device::Cuda, 1);
  Buffer<uint8_t> images(Device::Cuda, 784);
  Buffer<uint32_t> order(Device::Cuda, 1);
  kernels::Lenet5Step p{};  // never launched
  p.params = params.data();
  p.n = 1;
  p.scratch = scratch.data();
  p.x = x.data();
  p.labels = labels.data();
  p.gather = StepGather{images.data(), labels.data(), order.data(), gpu_->step(), 784, 0.0f, 1.0f, other.data(),
                        labels.data()};
  const auto refused = [&](const char* what, const char* says) {
    try {
      kernels::lenet5_step(p, nullptr);
      ADD_FAILURE() << what << ": not refused";
    } catch (const CudaError& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << what << ": " << e.what();
    }
  };
  refused("a gather into another buffer", "must write the batch and labels the pass reads");
  p.gather.x = x.data();
  p.gather.pixels = 28 * 29;
  refused("a gather of 28x29 pixels", "28x28 pixels");
  p.gather.pixels = 784;
  p.gather.order = nullptr;
  refused("a gather without an order", "an order");
}

// Only LeNet-5 as configured gets a fused pass; a wider conv1 or an added dropout does not, and then
// trains layer by layer.
TEST_F(Lenet5FusedPass, OnlyTheExactPatternGetsOne) {
  EXPECT_NE(Model<float>(lenet5().model, *gpu_, 8).fused_step(), nullptr);
  EXPECT_EQ(Model<float>(lenet5({"model.layers.0.out_channels=8"}).model, *gpu_, 8).fused_step(), nullptr);
  EXPECT_EQ(Model<float>(lenet5().model, *gpu_, 8, 0.0, /*with_backward=*/false).fused_step(), nullptr);
  const Config cnn = load_config(std::string(DPTRAIN_SOURCE_DIR) + "/configs/mnist_cnn.yaml");
  EXPECT_EQ(Model<float>(cnn.model, *gpu_, 8).fused_step(), nullptr);
  EXPECT_EQ(Model<float>(lenet5().model, cpu_, 8).fused_step(), nullptr);
}

// Timed planning checks the fused pass against the layered one, times both, logs and records the
// choice; a second model planned from that book takes it without timing. Untimed, the fused pass runs.
TEST_F(Lenet5FusedPass, PlannerChecksTimesAndRecordsTheChoice) {
  const Config config = lenet5();
  PlanBook book;
  DeviceContext ctx = make_device_context(Device::Cuda, TrainConfig{});
  ctx.set_plan_book(&book);
  bool fused_at_257 = false;
  {
    Model<float> model(config.model, ctx, 257);
    model.params().initialize(1);
    model.plan(ctx, 257, true);
    fused_at_257 = model.runs_fused(257);
  }
  ctx.set_plan_book(nullptr);
  const auto& lines = ctx.cuda().choices();
  const auto line = std::find_if(lines.begin(), lines.end(),
                                 [](const std::string& l) { return l.find("train pass lenet5 batch 257:") == 0; });
  ASSERT_NE(line, lines.end()) << "no train-pass choice logged";
  std::printf("%s\n", line->c_str());
  EXPECT_NE(line->find(fused_at_257 ? "-> fused" : "-> layered"), std::string::npos) << *line;
  int records = 0;
  for (const auto& [key, record] : book.records())
    if (key.find("op=train_pass") != std::string::npos) {
      ++records;
      EXPECT_EQ(record.impl, fused_at_257 ? "fused" : "layered") << key;
    }
  EXPECT_EQ(records, 1);

  DeviceContext again = make_device_context(Device::Cuda, TrainConfig{});
  again.set_plan_book(&book);
  {
    Model<float> model(config.model, again, 257);
    model.params().initialize(1);
    model.plan(again, 257, true);
    EXPECT_EQ(model.runs_fused(257), fused_at_257);
  }
  again.set_plan_book(nullptr);
  for (const std::string& l : again.cuda().choices()) EXPECT_EQ(l.find("train pass"), std::string::npos) << l;

  TrainConfig untimed;
  untimed.cudnn_benchmark = false;
  DeviceContext heuristics = make_device_context(Device::Cuda, untimed);
  Model<float> model(config.model, heuristics, 64);
  model.params().initialize(1);
  model.plan(heuristics, 64, true);
  EXPECT_TRUE(model.runs_fused(64));
  EXPECT_FALSE(model.runs_fused(65));  // never planned
}

std::vector<float> train_lenet5(DeviceContext& ctx, const MnistData& data, int steps, bool graph) {
  return after_steps(ctx, data, shipped_config("lenet5", graph, {"train.plan_cache=off"}), steps, [&](Trainer& t) {
    if (ctx.on_cuda()) {
      EXPECT_TRUE(t.model().runs_fused(64)) << "the untimed planner took the fused pass";
    }
    return params_of(ctx, t);
  });
}

// lenet5's recipe (SGD, Nesterov momentum, weight decay) through the Trainer on the fused pass: 30
// steps stay within rounding of the CPU's layered training, and a replayed step graph equals eager
// steps bit for bit.
TEST_F(Lenet5FusedPass, TrainingMatchesCpuAndGraphReplayIsExact) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  TrainConfig untimed;
  untimed.cudnn_benchmark = false;
  DeviceContext a = make_device_context(Device::Cuda, untimed), b = make_device_context(Device::Cuda, untimed);
  const std::vector<float> graphed = train_lenet5(a, data, 30, true);
  EXPECT_EQ(graphed, train_lenet5(b, data, 30, false));
  const double r = rel(graphed, train_lenet5(cpu_, data, 30, false));
  std::printf("lenet5 fused pass vs CPU, 30 steps: relative difference %.3g\n", r);
  EXPECT_LT(r, 1e-4);
}

}  // namespace
}  // namespace dptrain
