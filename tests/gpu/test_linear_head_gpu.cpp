// The classifier head (kernels/linear_head.h): the linear layers that end a model, computed by two
// launches on CUDA, against the CPU's layers one by one. Through the whole Model, so that what is
// checked is what training runs: the head's choice (Model::head), its forward in training and in
// evaluation, the loss and its sums, every parameter gradient (the side stream's weight and bias
// gradients included) and the gradient it hands the layer below. Seeded random heads sweep the
// widths (1 to 1024, multiples of 4 and not), the layer count, the ReLUs, the classes and the rows
// (1 to 8192: every tile size, partial last tiles); DPTRAIN_SWEEP=long runs 400 of them. Skipped
// without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "comm/communicator.h"
#include "core/device_ops.h"
#include "data/dataset.h"
#include "io/config.h"
#include "model/model.h"
#include "train/runtime.h"
#include "train/trainer.h"

namespace dptrain {
namespace {

using gpu_test::have_mnist;
using gpu_test::kData;
using gpu_test::randoms;
using gpu_test::rel;

class LinearHeadGpu : public gpu_test::GpuTest {};

template <typename T>
std::vector<T> host(DeviceContext& ctx, const T* p, size_t n) {
  std::vector<T> h(n);
  download(ctx, std::span<const T>(p, n), std::span<T>(h));
  return h;
}

template <typename T>
Buffer<T> on(DeviceContext& ctx, const std::vector<T>& h) {
  Buffer<T> b(ctx.device(), std::max<size_t>(h.size(), 1));
  upload(ctx, std::span<T>(b.data(), h.size()), std::span<const T>(h));
  return b;
}

struct PassRun {
  std::vector<size_t> head;
  std::vector<float> logits, eval_logits, grads;
  std::vector<double> sums;
};

/// One training pass (forward, loss, backward) of n samples from the parameters of seed 7, then an
/// evaluation forward of the same samples.
PassRun run_pass(DeviceContext& ctx, const Config& config, int n, const std::vector<float>& x,
                 const std::vector<int32_t>& labels) {
  Model<float> model(config.model, ctx, n, config.train.label_smoothing);
  model.params().initialize(7);
  Buffer<float> bx = on(ctx, x);
  Buffer<int32_t> by = on(ctx, labels);
  Buffer<double> sums(ctx.device(), 2);
  zero_async(ctx, sums.span());
  const StepInfo step{3, 1, 0};
  ctx.set_step(StepState{step, {}});
  const TensorView<const float> in{bx.data(), n, config.model.input};
  PassRun r;
  r.head = model.head();
  TensorView<const float> logits = model.forward(ctx, in, Phase::Train, step);
  r.logits = host(ctx, logits.data, static_cast<size_t>(logits.size()));
  model.backward(ctx, by.data(), 1.0f / static_cast<float>(n), sums.data(), nullptr);
  ctx.join_side_work();
  r.grads = host(ctx, model.params().grads().data(), model.params().size());
  r.sums = host(ctx, sums.data(), 2);
  logits = model.forward(ctx, in, Phase::Eval, step);
  r.eval_logits = host(ctx, logits.data, static_cast<size_t>(logits.size()));
  return r;
}

/// The GPU's pass against the CPU's: logits, evaluation logits and parameter gradients within tol,
/// the loss within tol of its value, the correct count exactly. Returns the GPU's head.
std::vector<size_t> expect_pass_matches_cpu(DeviceContext& gpu, DeviceContext& cpu, const Config& config, int n,
                                            double tol, const std::string& what) {
  const size_t inputs = static_cast<size_t>(config.model.input.count());
  const std::vector<float> x = randoms(static_cast<size_t>(n) * inputs, 11 + static_cast<uint32_t>(n));
  std::vector<int32_t> labels(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) labels[static_cast<size_t>(i)] = (i * 7 + 3) % config.model.num_classes;
  const PassRun want = run_pass(cpu, config, n, x, labels);
  const PassRun got = run_pass(gpu, config, n, x, labels);
  EXPECT_TRUE(want.head.empty()) << what << ": the CPU layers take no head";
  EXPECT_LE(rel(got.logits, want.logits), tol) << what << ", n=" << n << ": training logits";
  EXPECT_LE(rel(got.eval_logits, want.eval_logits), tol) << what << ", n=" << n << ": evaluation logits";
  EXPECT_LE(rel(got.grads, want.grads), tol) << what << ", n=" << n << ": parameter gradients";
  EXPECT_NEAR(got.sums[0], want.sums[0], tol * std::abs(want.sums[0])) << what << ", n=" << n << ": loss";
  EXPECT_EQ(got.sums[1], want.sums[1]) << what << ", n=" << n << ": correct count";
  return got.head;
}

Config head_config(const std::string& input, int classes, const std::string& layers, double smoothing = 0.0) {
  return parse_config("model:\n  input: " + input + "\n  num_classes: " + std::to_string(classes) +
                          "\n  layers:\n" + layers + "train:\n  label_smoothing: " + std::to_string(smoothing) + "\n",
                      "head.yaml");
}

// The rows every tile size and boundary meets: one row, partial tiles of 4, the skinny kernels'
// 256, the tile size's steps at 2048 and 8192.
const int kRows[] = {1, 3, 4, 5, 64, 255, 256, 257, 1000, 2047, 2048, 2049, 8192, 8193};

// Heads the kernel serves: three layers with ReLUs (the widths not multiples of 4: the scalar
// loads), four with one layer without a ReLU before the next, and two with label smoothing. The GPU
// model takes each as a head, and each matches the CPU at every row count.
TEST_F(LinearHeadGpu, HeadsMatchCpuAtEveryRowCount) {
  struct Case {
    const char* name;
    Config config;
    size_t layers;  // in the head
  };
  const Case cases[] = {
      {"3 layers, 105 inputs",
       head_config("[3, 5, 7]", 13, R"(    - {type: flatten}
    - {type: linear, out_features: 37}
    - {type: relu}
    - {type: linear, out_features: 22}
    - {type: relu}
    - {type: linear, out_features: 13}
)"),
       3},
      {"4 layers, one without a ReLU",
       head_config("[4, 4, 4]", 10, R"(    - {type: flatten}
    - {type: linear, out_features: 16}
    - {type: relu}
    - {type: linear, out_features: 12}
    - {type: linear, out_features: 8}
    - {type: relu}
    - {type: linear, out_features: 10}
)"),
       4},
      {"2 layers, label smoothing", head_config("[1, 1, 1000]", 32, R"(    - {type: flatten}
    - {type: linear, out_features: 1024}
    - {type: relu}
    - {type: linear, out_features: 32}
)", 0.1),
       2},
  };
  for (const Case& c : cases)
    for (int n : kRows) {
      const std::vector<size_t> head = expect_pass_matches_cpu(*gpu_, cpu_, c.config, n, 1e-5, c.name);
      EXPECT_EQ(head.size(), c.layers) << c.name;
    }
}

// lenet5 (its fc1, fc2 and fc3 are the head the kernel was written for, after its convolutions) at
// the batch table's sizes, and heads the kernel does not serve: a dropout inside (mnist_cnn's
// fc1), 40 classes, a layer wider than 1024. Those run layer by layer and match as before.
TEST_F(LinearHeadGpu, Lenet5AndHeadsNotTakenMatchCpu) {
  const Config lenet5 = load_config(std::string(DPTRAIN_SOURCE_DIR) + "/configs/lenet5.yaml");
  for (int n : {1, 64, 257, 1000}) {
    const std::vector<size_t> head = expect_pass_matches_cpu(*gpu_, cpu_, lenet5, n, 1e-4, "lenet5");
    ASSERT_EQ(head.size(), 3u);
    EXPECT_EQ(lenet5.model.layers[head[0]].name, "fc1");
  }
  const Config dropout = head_config("[2, 6, 6]", 10, R"(    - {type: flatten}
    - {type: linear, out_features: 24}
    - {type: relu}
    - {type: dropout, p: 0.25}
    - {type: linear, out_features: 10}
)");
  const Config classes40 = head_config("[2, 6, 6]", 40, R"(    - {type: flatten}
    - {type: linear, out_features: 24}
    - {type: relu}
    - {type: linear, out_features: 40}
)");
  const Config wide = head_config("[1, 1, 1025]", 10, R"(    - {type: flatten}
    - {type: linear, out_features: 24}
    - {type: relu}
    - {type: linear, out_features: 10}
)");
  for (int n : {5, 300}) {
    EXPECT_TRUE(expect_pass_matches_cpu(*gpu_, cpu_, dropout, n, 1e-5, "dropout inside").empty());
    EXPECT_TRUE(expect_pass_matches_cpu(*gpu_, cpu_, classes40, n, 1e-5, "40 classes").empty());
    EXPECT_TRUE(expect_pass_matches_cpu(*gpu_, cpu_, wide, n, 1e-5, "1025 inputs").empty());
  }
}

/// DPTRAIN_SWEEP=long: 400 heads, else 40 (DPTRAIN_SWEEP_HEAD sets the count).
int sweep_heads() {
  if (const char* v = std::getenv("DPTRAIN_SWEEP_HEAD"); v != nullptr && *v != '\0') return std::max(0, std::atoi(v));
  const char* mode = std::getenv("DPTRAIN_SWEEP");
  return mode != nullptr && std::string(mode) == "long" ? 400 : 40;
}

// Seeded random heads: 2 to 4 layers, widths 1 to 1024 (a quarter of them multiples of 4), a ReLU
// or none after each hidden layer, 2 to 32 classes, label smoothing or none, 1 to 8192 rows (at
// most 2e8 multiply-adds a pass, for the CPU's sake). Each matches the CPU at 1e-5.
TEST_F(LinearHeadGpu, SweepOfSeededHeads) {
  std::mt19937_64 gen(0x4ead5eedull);
  const auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen); };
  const auto width = [&] {
    const int w = uniform(0, 3) == 0 ? 4 * uniform(1, 256) : uniform(1, 3) == 1 ? uniform(1, 64) : uniform(1, 1024);
    return std::min(w, 1024);
  };
  const int count = sweep_heads();
  int taken = 0;
  for (int s = 0; s < count; ++s) {
    const int layers = uniform(2, 4);
    std::vector<int> widths{width()};
    for (int l = 0; l + 1 < layers; ++l) widths.push_back(width());
    widths.push_back(uniform(2, 32));
    long macs = 0;
    for (int l = 0; l < layers; ++l) macs += static_cast<long>(widths[l]) * widths[l + 1];
    const int rows_cap = static_cast<int>(std::clamp(2e8 / static_cast<double>(macs), 1.0, 8192.0));
    const int n = uniform(0, 2) == 0 ? uniform(1, std::min(rows_cap, 300)) : uniform(1, rows_cap);
    std::string text = "    - {type: flatten}\n", shape = std::to_string(widths[0]);
    for (int l = 0; l < layers; ++l) {
      text += "    - {type: linear, out_features: " + std::to_string(widths[l + 1]) + "}\n";
      if (l + 1 < layers && uniform(0, 3) != 0) text += "    - {type: relu}\n", shape += " relu";
      shape += " -> " + std::to_string(widths[l + 1]);
    }
    const double smoothing = uniform(0, 1) == 0 ? 0.0 : 0.1;
    const Config config = head_config("[1, 1, " + std::to_string(widths[0]) + "]", widths[layers], text, smoothing);
    const std::string what = "head #" + std::to_string(s) + " " + shape + (smoothing > 0 ? ", smoothing 0.1" : "");
    const std::vector<size_t> head = expect_pass_matches_cpu(*gpu_, cpu_, config, n, 1e-5, what);
    EXPECT_EQ(head.size(), static_cast<size_t>(layers)) << what;
    taken += head.size() == static_cast<size_t>(layers);
    if (HasFailure()) break;
  }
  std::printf("linear head sweep: %d heads, %d taken as heads, %s\n", count, taken, HasFailure() ? "FAILED" : "passed");
}

std::vector<float> train_params(DeviceContext& ctx, const MnistData& data, int steps, bool graph,
                                std::vector<std::string> sets) {
  sets.push_back("train.cuda_graph=" + std::string(graph ? "true" : "false"));
  const Config config = load_config(std::string(DPTRAIN_SOURCE_DIR) + "/configs/lenet5.yaml", sets);
  SingleRankCommunicator comm;
  TrainOptions options;
  options.show_progress = false;
  Trainer trainer(config, options, data, ctx, comm);
  for (int s = 0; s < steps; ++s) trainer.step(0, s, s);
  const auto& p = trainer.model().params();
  return host(ctx, p.values().data(), p.size());
}

// lenet5 trains with the head inside the step's CUDA graph: replayed, it equals eager steps bit for
// bit (algorithms by heuristics in both contexts), and 20 SGD steps stay within 1e-4 of the CPU's
// (FiftyTrainingStepsMatchCpu's bound).
TEST_F(LinearHeadGpu, Lenet5TrainsInAGraphAsEagerAndAsOnTheCpu) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  TrainConfig heuristics;
  heuristics.cudnn_benchmark = false;
  DeviceContext a = make_device_context(Device::Cuda, heuristics), b = make_device_context(Device::Cuda, heuristics);
  const std::vector<std::string> batch{"train.batch_size=257"};
  EXPECT_EQ(train_params(a, data, 20, true, batch), train_params(b, data, 20, false, batch));
  const std::vector<std::string> sgd{"train.optimizer={type: sgd, lr: 0.01}", "train.schedule={type: constant}"};
  const double r = rel(train_params(*gpu_, data, 20, true, sgd), train_params(cpu_, data, 20, false, sgd));
  std::printf("lenet5 GPU vs CPU, SGD, 20 steps: relative difference %.3g\n", r);
  EXPECT_LT(r, 1e-4);
}

}  // namespace
}  // namespace dptrain
