// Issue 23's layers, loss and schedules on CUDA against the CPU backend: avgpool2d and
// global_avgpool bit for bit (the same sums in the same order); the loss with and without label
// smoothing at 2, 10, 47, 49 and 1000 classes, through the loss kernel and through a model whose
// last linear layer fuses the loss (up to 32 classes); log z kept at huge logits; and training
// with onecycle (beta1 or momentum cycled through the device-resident step scalars), label
// smoothing and both poolings: a replayed CUDA graph equals eager execution bit for bit and the GPU
// stays within rounding of the CPU. Skipped without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "comm/communicator.h"
#include "core/cuda_context.h"
#include "core/device_ops.h"
#include "data/dataset.h"
#include "io/config.h"
#include "layers/layer_factory.h"
#include "layers/softmax_cross_entropy.h"
#include "model/model.h"
#include "train/runtime.h"
#include "train/trainer.h"

namespace dptrain {
namespace {

using gpu_test::have_mnist;
using gpu_test::kData;
using gpu_test::params_after_steps;
using gpu_test::randoms;
using gpu_test::rel;
using gpu_test::shipped_config;

class NewLayersGpu : public gpu_test::GpuTest {};

template <typename T>
std::vector<T> host(DeviceContext& ctx, const Buffer<T>& b, size_t n) {
  std::vector<T> h(n);
  download(ctx, std::span<const T>(b.data(), n), std::span<T>(h));
  return h;
}

template <typename T>
Buffer<T> on(DeviceContext& ctx, const std::vector<T>& h) {
  Buffer<T> b(ctx.device(), std::max<size_t>(h.size(), 1));
  upload(ctx, std::span<T>(b.data(), h.size()), std::span<const T>(h));
  return b;
}

struct PoolRun {
  std::vector<float> y, dx;
};

PoolRun run_pool(DeviceContext& ctx, const LayerConfig& c, Dims in, int n, const std::vector<float>& x,
                 const std::vector<float>& dy) {
  auto layer = make_layer<float>(c, 2, in, ctx.device());
  layer->reserve(ctx, n);
  const Dims od = layer->output_dims();
  Buffer<float> bx = on(ctx, x), bdy = on(ctx, dy), by(ctx.device(), dy.size()), bdx(ctx.device(), x.size());
  layer->forward(ctx, TensorView<const float>{bx.data(), n, in}, TensorView<float>{by.data(), n, od}, Phase::Train, {});
  layer->backward(ctx, TensorView<const float>{bx.data(), n, in}, TensorView<const float>{by.data(), n, od},
                  TensorView<const float>{bdy.data(), n, od}, TensorView<float>{bdx.data(), n, in});
  return {host(ctx, by, dy.size()), host(ctx, bdx, x.size())};
}

TEST_F(NewLayersGpu, AvgPoolsMatchCpuBitForBit) {
  struct Case {
    const char* type;
    int k, s, p;
    Dims in;
    int n;
  };
  for (const Case& c : {Case{"avgpool2d", 2, 2, 0, {32, 28, 28}, 64}, Case{"avgpool2d", 3, 2, 1, {64, 14, 14}, 17},
                        Case{"avgpool2d", 3, 1, 1, {3, 9, 7}, 5}, Case{"avgpool2d", 7, 3, 3, {2, 8, 8}, 3},
                        Case{"global_avgpool", 0, 0, 0, {128, 7, 7}, 64}, Case{"global_avgpool", 0, 0, 0, {5, 1, 13}, 9}}) {
    LayerConfig lc;
    lc.type = c.type, lc.name = "pool", lc.kernel = c.k, lc.stride = c.s, lc.padding = c.p;
    const Dims od = make_layer<float>(lc, 2, c.in, Device::Cpu)->output_dims();
    const std::vector<float> x = randoms(static_cast<size_t>(c.n) * c.in.count(), 5);
    const std::vector<float> dy = randoms(static_cast<size_t>(c.n) * od.count(), 6);
    const PoolRun want = run_pool(cpu_, lc, c.in, c.n, x, dy), got = run_pool(*gpu_, lc, c.in, c.n, x, dy);
    EXPECT_EQ(got.y, want.y) << c.type << " k " << c.k << " forward";
    EXPECT_EQ(got.dx, want.dx) << c.type << " k " << c.k << " input gradient";
  }
}

double max_abs(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(double(a[i]) - b[i]));
  return worst;
}

struct LossRun {
  std::vector<float> grad;
  std::vector<double> sums;
};

LossRun run_loss(DeviceContext& ctx, const std::vector<float>& logits, const std::vector<int32_t>& labels, int n, int k,
                 double e) {
  auto loss = make_softmax_cross_entropy<float>(ctx.device(), e);
  loss->reserve(ctx, n, k);
  Buffer<float> x = on(ctx, logits), g(ctx.device(), logits.size());
  Buffer<int32_t> y = on(ctx, labels);
  Buffer<double> sums(ctx.device(), 2);
  zero_async(ctx, sums.span());
  loss->forward_backward(ctx, TensorView<const float>{x.data(), n, {k, 1, 1}}, y.data(), 1.0f / n,
                         TensorView<float>{g.data(), n, {k, 1, 1}}, sums.data());
  return {host(ctx, g, logits.size()), host(ctx, sums, 2)};
}

TEST_F(NewLayersGpu, LossMatchesCpuFrom2To1000ClassesWithAndWithoutSmoothing) {
  for (const int k : {2, 10, 47, 49, 1000})
    for (const int n : {1, 64, 1000})
      for (const double e : {0.0, 0.1}) {
        const std::vector<float> logits = randoms(static_cast<size_t>(n) * k, 7 + k, -8, 8);
        std::vector<int32_t> labels(static_cast<size_t>(n));
        for (int i = 0; i < n; ++i) labels[static_cast<size_t>(i)] = (i * 7919 + k - 1) % k;
        const LossRun want = run_loss(cpu_, logits, labels, n, k, e), got = run_loss(*gpu_, logits, labels, n, k, e);
        // dL/dlogits = (p - target) / n, p <= 1: the GPU's expf (2 ulp) may round p otherwise than
        // the CPU's, so the bound is on p's error (8 ulp of 1), not relative to the gradient,
        // which a confident correct row makes tiny (2 classes, batch 1: 3.5e-3, of which one ulp
        // of p is 1.2e-5). A wrong target (e / (C - 1), say) is off by 1e-3 or more.
        EXPECT_LT(max_abs(got.grad, want.grad) * n, 1e-6) << k << " classes, batch " << n << ", e " << e;
        EXPECT_NEAR(got.sums[0], want.sums[0], 1e-5 * std::abs(want.sums[0])) << k << " classes, batch " << n;
        EXPECT_EQ(got.sums[1], want.sums[1]) << k << " classes, batch " << n;
      }
}

TEST_F(NewLayersGpu, LossKeepsLogZAtHugeLogits) {
  for (const int k : {2, 40}) {  // a thread per row, and a warp per row
    std::vector<float> logits(static_cast<size_t>(k), -1e8f);
    logits[0] = logits[1] = 1e8f;
    const LossRun got = run_loss(*gpu_, logits, {0}, 1, k, 0.0);
    EXPECT_NEAR(got.sums[0], std::log(2.0), 1e-6) << k;
    EXPECT_NEAR(got.grad[0], -0.5f, 1e-6) << k;
    EXPECT_NEAR(got.grad[1], 0.5f, 1e-6) << k;
  }
}

// A model whose last linear layer has up to 32 outputs fuses the loss into its backward on CUDA
// (kernels/classifier_kernels.h); above that the loss kernel runs apart. Either way, with label
// smoothing, its gradients match the CPU's.
TEST_F(NewLayersGpu, ModelWithPoolsAndSmoothingMatchesCpuAtManyClassCounts) {
  for (const int k : {2, 10, 32, 47, 1000}) {
    const Config config = parse_config("model:\n  input: [1, 12, 12]\n  num_classes: " + std::to_string(k) + R"(
  layers:
    - {type: conv2d, out_channels: 8, kernel: 3, padding: 1}
    - {type: relu}
    - {type: avgpool2d, kernel: 3, stride: 2, padding: 1}
    - {type: conv2d, out_channels: 16, kernel: 3}
    - {type: global_avgpool}
    - {type: flatten}
    - {type: linear, out_features: )" + std::to_string(k) + "}\ntrain:\n  label_smoothing: 0.1\n",
                                       "k.yaml");
    const int n = 32;
    const std::vector<float> x = randoms(static_cast<size_t>(n) * 144, 9);
    std::vector<int32_t> labels(n);
    for (int i = 0; i < n; ++i) labels[static_cast<size_t>(i)] = (i * 13 + 5) % k;
    const auto run = [&](DeviceContext& ctx) {
      Model<float> model(config.model, ctx, n, config.train.label_smoothing);
      model.params().initialize(2);
      Buffer<float> bx = on(ctx, x);
      Buffer<int32_t> by = on(ctx, labels);
      Buffer<double> sums(ctx.device(), 2);
      zero_async(ctx, sums.span());
      model.forward(ctx, TensorView<const float>{bx.data(), n, {1, 12, 12}}, Phase::Train, {});
      model.backward(ctx, by.data(), 1.0f / n, sums.data(), nullptr);
      ctx.join_side_work();
      return std::pair{host(ctx, model.params().grads(), model.params().size()), host(ctx, sums, 2)};
    };
    const auto [gc, sc] = run(cpu_);
    const auto [gg, sg] = run(*gpu_);
    EXPECT_LT(rel(gg, gc), 1e-4) << k << " classes";
    EXPECT_NEAR(sg[0], sc[0], 1e-5 * std::abs(sc[0])) << k << " classes";
  }
}

std::vector<float> train_params(DeviceContext& ctx, const MnistData& data, int steps, bool graph,
                                std::vector<std::string> sets) {
  return params_after_steps(ctx, data, shipped_config("mnist_onecycle", graph, std::move(sets)), steps);
}

// The cycled beta1 (Adam) and momentum (SGD) are read from the step state that the graph's first
// node writes: a replayed graph must follow the schedule exactly as eager steps do.
TEST_F(NewLayersGpu, OneCycleGraphReplayEqualsEagerBitForBit) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  TrainConfig heuristics;
  heuristics.cudnn_benchmark = false;
  const std::vector<std::string> sgd{"train.optimizer={type: sgd, lr: 0.01}"};
  for (const std::vector<std::string>& sets : {std::vector<std::string>{}, sgd}) {
    DeviceContext a = make_device_context(Device::Cuda, heuristics), b = make_device_context(Device::Cuda, heuristics);
    EXPECT_EQ(train_params(a, data, 30, true, sets), train_params(b, data, 30, false, sets))
        << (sets.empty() ? "adam" : "sgd");
  }
}

// With SGD (cycled momentum): Adam's near-sign updates would turn a rounding-sized gradient
// difference around zero into a whole step of lr, which says nothing about the new pieces.
TEST_F(NewLayersGpu, OneCycleTrainingStaysNearCpu) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  // Exact convolutions: the context's setting (a Trainer runs with the context it is given).
  TrainConfig exact;
  exact.exact_convolutions = true;
  DeviceContext gpu = make_device_context(Device::Cuda, exact);
  const std::vector<std::string> sets{"train.exact_convolutions=true", "train.optimizer={type: sgd, lr: 0.01}"};
  const double r = rel(train_params(gpu, data, 20, true, sets), train_params(cpu_, data, 20, false, sets));
  EXPECT_LT(r, 1e-4) << "relative parameter difference after 20 steps";
}

// A short run (captured steps, then the evaluation) at 32 classes (the fused classifier), 47 and
// 1000 (the loss kernel), against the same run on the CPU: the same accuracy within a few images.
TEST_F(NewLayersGpu, ShortRunsAt32_47And1000ClassesMatchCpu) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  for (const int classes : {32, 47, 1000}) {
    const std::string c = std::to_string(classes);
    const Config config = load_config(
        std::string(DPTRAIN_SOURCE_DIR) + "/configs/mnist_onecycle.yaml",
        {"model.num_classes=" + c, "model.layers=[{type: avgpool2d, kernel: 4}, {type: flatten}, {type: linear, out_features: " + c + "}]",
         "train.max_steps=30", "train.optimizer={type: sgd, lr: 0.1}", "train.schedule.max_lr=0.5"});
    const auto run = [&](DeviceContext& ctx, const std::string& tag) {
      SingleRankCommunicator comm;
      TrainOptions options;
      options.show_progress = false;
      options.out_dir = (std::filesystem::temp_directory_path() / ("dptrain_gpu_classes_" + c + tag)).string();
      std::filesystem::remove_all(options.out_dir);
      std::filesystem::create_directories(options.out_dir);
      Trainer trainer(config, options, data, ctx, comm);
      return trainer.run();
    };
    const TrainSummary g = run(*gpu_, "gpu"), h = run(cpu_, "cpu");
    EXPECT_EQ(g.steps, 30);
    EXPECT_NEAR(g.final_eval.loss, h.final_eval.loss, 1e-3 * h.final_eval.loss) << classes << " classes";
    EXPECT_LE(std::abs(g.final_eval.correct - h.final_eval.correct), 5) << classes << " classes";
    EXPECT_GT(g.final_eval.accuracy, 0.5) << classes << " classes";
  }
}

}  // namespace
}  // namespace dptrain
