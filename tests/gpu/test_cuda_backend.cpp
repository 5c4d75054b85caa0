// The CUDA backend against the CPU reference: every layer's forward and backward (input and
// parameter gradients) on random inputs, the loss, the data pipeline (epoch order, gather), and
// training itself (50 steps of mnist_cnn from one seed, with and without CUDA graphs). Skipped
// without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gpu_test_support.h"
#include "comm/communicator.h"
#include "core/device_ops.h"
#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "io/config.h"
#include "kernels/conv_kernels.h"
#include "kernels/pool_kernels.h"
#include "layers/layer_factory.h"
#include "train/batch_source.h"
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

class CudaBackend : public gpu_test::GpuTest {};

std::vector<float> to_host(DeviceContext& ctx, const Buffer<float>& b, size_t n) {
  std::vector<float> h(n);
  download(ctx, std::span<const float>(b.data(), n), std::span<float>(h));
  return h;
}

struct LayerRun {
  std::vector<float> out, din, grads;
};

/// Binds fresh parameters, runs forward then backward. `backward_out` (may be null) replaces the
/// forward's output as the `out` that backward sees.
LayerRun run_layer(DeviceContext& ctx, Layer<float>& layer, const std::vector<float>& params, const std::vector<float>& x,
                   const std::vector<float>& dy, int n, Phase phase, const std::vector<float>* backward_out = nullptr) {
  const Device dev = ctx.device();
  const std::vector<ParamSpec> specs = layer.param_specs();
  Buffer<float> pv(dev, std::max<size_t>(params.size(), 1)), pg(dev, std::max<size_t>(params.size(), 1));
  upload(ctx, std::span<float>(pv.data(), params.size()), std::span<const float>(params));
  std::vector<ParamView<float>> views;
  size_t off = 0;
  for (const ParamSpec& s : specs) {
    const size_t c = static_cast<size_t>(element_count(s.shape));
    views.push_back({{pv.data() + off, c}, {pg.data() + off, c}});
    off += c;
  }
  layer.bind(views);
  layer.reserve(ctx, n);
  const Dims in = layer.input_dims(), od = layer.output_dims();
  Buffer<float> bx(dev, x.size()), by(dev, dy.size()), bdy(dev, dy.size()), bdx(dev, x.size());
  upload(ctx, bx.span(), std::span<const float>(x));
  upload(ctx, bdy.span(), std::span<const float>(dy));
  const StepInfo step{11, 2, 640};
  ctx.set_step(StepState{step, {}});
  layer.forward(ctx, TensorView<const float>{bx.data(), n, in}, TensorView<float>{by.data(), n, od}, phase, step);
  std::vector<float> out = to_host(ctx, by, dy.size());
  if (backward_out != nullptr) upload(ctx, by.span(), std::span<const float>(*backward_out));
  layer.backward(ctx, TensorView<const float>{bx.data(), n, in}, TensorView<const float>{by.data(), n, od},
                 TensorView<const float>{bdy.data(), n, od}, TensorView<float>{bdx.data(), n, in});
  return {std::move(out), to_host(ctx, bdx, x.size()), to_host(ctx, pg, params.size())};
}

void compare_layer(DeviceContext& cpu, DeviceContext& gpu, const LayerConfig& c, Dims in, int n, double tol,
                   Phase phase = Phase::Train, bool positive_gap = false) {
  auto lc = make_layer<float>(c, 3, in, Device::Cpu);
  auto lg = make_layer<float>(c, 3, in, Device::Cuda);
  size_t np = 0;
  for (const ParamSpec& s : lc->param_specs()) np += static_cast<size_t>(element_count(s.shape));
  const std::vector<float> params = randoms(np, 1, -0.3f, 0.3f);
  std::vector<float> x = randoms(static_cast<size_t>(n) * in.count(), 2);
  if (positive_gap) {  // keep values apart so max pooling has no near-ties
    for (size_t i = 0; i < x.size(); ++i) x[i] = x[i] + 0.0001f * static_cast<float>(i % 997);
  }
  const std::vector<float> dy = randoms(static_cast<size_t>(n) * lc->output_dims().count(), 3);
  const LayerRun a = run_layer(cpu, *lc, params, x, dy, n, phase);
  const LayerRun b = run_layer(gpu, *lg, params, x, dy, n, phase);
  EXPECT_LE(rel(b.out, a.out), tol) << c.type << " forward, n=" << n;
  if (phase == Phase::Train) {  // backward follows a training forward only
    EXPECT_LE(rel(b.din, a.din), tol) << c.type << " input gradient, n=" << n;
  }
  if (np > 0) {
    EXPECT_LE(rel(b.grads, a.grads), tol) << c.type << " parameter gradients, n=" << n;
  }
}

LayerConfig layer(const std::string& type) {
  LayerConfig c;
  c.type = type;
  c.name = type;
  return c;
}

TEST_F(CudaBackend, ConvMatchesCpu) {
  for (int n : {64, 32, 5}) {
    LayerConfig c = layer("conv2d");
    c.out_channels = 64;
    c.kernel = 3;
    c.stride = 1;
    compare_layer(cpu_, *gpu_, c, Dims{32, 26, 26}, n, 1e-5);
    c.out_channels = 32;
    compare_layer(cpu_, *gpu_, c, Dims{1, 28, 28}, n, 1e-5);
    c.out_channels = 6;
    c.kernel = 5;
    c.stride = 2;
    c.padding = 2;
    compare_layer(cpu_, *gpu_, c, Dims{3, 13, 11}, n, 1e-5);
    // Short reductions (c * k * k <= 32) take the direct kernels: with padding and stride, one
    // and two input channels (9 and 18 taps); one channel has its own filter-gradient kernel.
    c.out_channels = 6;
    c.kernel = 3;
    c.stride = 2;
    c.padding = 1;
    compare_layer(cpu_, *gpu_, c, Dims{1, 13, 11}, n, 1e-5);
    compare_layer(cpu_, *gpu_, c, Dims{2, 13, 11}, n, 1e-5);
    c.kernel = 5;  // one channel, 5x5: the plane filter-gradient kernel's other size
    c.stride = 1;
    c.padding = 2;
    compare_layer(cpu_, *gpu_, c, Dims{1, 13, 11}, n, 1e-5);
  }
}

// With train.precision tf32 (TF32 tensor cores, and FFT/Winograd convolutions allowed) the layers
// with long reductions stay within 2e-3 of the CPU.
TEST_F(CudaBackend, Tf32ConvAndLinearWithin2e3OfCpu) {
  TrainConfig t;
  t.precision = "tf32";
  DeviceContext tf32 = make_device_context(Device::Cuda, t);
  for (int n : {64, 5}) {
    LayerConfig c = layer("conv2d");
    c.out_channels = 64;
    c.kernel = 3;
    c.stride = 1;
    compare_layer(cpu_, tf32, c, Dims{32, 26, 26}, n, 2e-3);
    c.out_channels = 6;
    c.kernel = 5;
    c.stride = 2;
    c.padding = 2;
    compare_layer(cpu_, tf32, c, Dims{3, 13, 11}, n, 2e-3);
    LayerConfig lin = layer("linear");
    lin.out_features = 128;
    compare_layer(cpu_, tf32, lin, Dims{64, 12, 12}, n, 2e-3);
  }
}

/// The cuDNN algorithm numbers a context's choice lines name for `direction` (dptrain's own kernels: -1).
/// A line reads "<layer> batch <n> <direction>: cuDNN <algo> ..." or "...: <family> kernels ...".
std::vector<int> chosen(const DeviceContext& ctx, const std::string& direction) {
  std::vector<int> algos;
  const std::string key = " " + direction + ": ";
  for (const std::string& line : ctx.cuda().choices()) {
    const size_t at = line.find(key);
    if (at == std::string::npos) continue;
    const std::string rest = line.substr(at + key.size());
    algos.push_back(rest.starts_with("cuDNN ") ? std::stoi(rest.substr(6)) : -1);
  }
  return algos;
}

// Under cudnn_benchmark every direction of a convolution is chosen by graph timing, once per batch
// size, and reported; with train.exact_convolutions never an FFT or Winograd algorithm. reserve()
// sizes buffers only; Layer::plan (or a first forward) chooses: an evaluation batch its forward,
// a training batch its backward directions too. The first layer never computes an input gradient,
// so its backward-data direction is never chosen.
TEST_F(CudaBackend, ConvPlanTimesEachDirectionOnceAndExactNeverTransforms) {
  TrainConfig t;
  t.exact_convolutions = true;
  gpu_ = std::make_unique<DeviceContext>(make_device_context(Device::Cuda, t));
  LayerConfig c = layer("conv2d");
  c.out_channels = 64;
  c.kernel = 3;
  c.stride = 1;
  auto conv = make_layer<float>(c, 0, Dims{32, 26, 26}, Device::Cuda);
  size_t np = 0;
  for (const ParamSpec& s : conv->param_specs()) np += static_cast<size_t>(element_count(s.shape));
  Buffer<float> values(Device::Cuda, np), grads(Device::Cuda, np);
  conv->bind({{values.span().subspan(0, np - 64), grads.span().subspan(0, np - 64)},
              {values.span().subspan(np - 64), grads.span().subspan(np - 64)}});
  const Dims in{32, 26, 26};
  Buffer<float> x(Device::Cuda, static_cast<size_t>(64) * in.count()),
      y(Device::Cuda, static_cast<size_t>(64) * conv->output_dims().count());
  CUDA_CHECK(cudaMemset(x.data(), 0, x.size() * sizeof(float)));
  CUDA_CHECK(cudaMemset(values.data(), 0, values.size() * sizeof(float)));
  const auto train_forward = [&](Layer<float>& l, int n) {
    l.forward(*gpu_, TensorView<const float>{x.data(), n, in}, TensorView<float>{y.data(), n, l.output_dims()},
              Phase::Train, StepInfo{});
  };
  conv->reserve(*gpu_, 64);
  ASSERT_EQ(gpu_->cuda().choices().size(), 0u);  // reserve() sizes buffers, chooses nothing
  conv->plan(*gpu_, 64, false);
  conv->plan(*gpu_, 64, false);  // a known batch size is not timed again
  conv->plan(*gpu_, 16, false);
  ASSERT_EQ(gpu_->cuda().choices().size(), 2u);
  EXPECT_EQ(chosen(*gpu_, "forward").size(), 2u);
  conv->forward(*gpu_, TensorView<const float>{x.data(), 64, in}, TensorView<float>{y.data(), 64, conv->output_dims()},
                Phase::Eval, StepInfo{});
  ASSERT_EQ(gpu_->cuda().choices().size(), 2u);  // an evaluation forward needs nothing more
  train_forward(*conv, 64);
  train_forward(*conv, 16);
  train_forward(*conv, 64);
  ASSERT_EQ(gpu_->cuda().choices().size(), 4u);  // + the filter gradient of each batch: the first layer's only
  EXPECT_TRUE(gpu_->cuda().warnings().empty());  // no candidate disagreed with the reference
  for (int a : chosen(*gpu_, "forward"))
    EXPECT_TRUE(a != CUDNN_CONVOLUTION_FWD_ALGO_FFT && a != CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING &&
                a != CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD && a != CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED) << a;
  for (int a : chosen(*gpu_, "backward-data"))
    EXPECT_TRUE(a != CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT && a != CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING &&
                a != CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD && a != CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED)
        << a;
  for (int a : chosen(*gpu_, "backward-filter"))
    EXPECT_TRUE(a != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT && a != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING &&
                a != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED) << a;
  EXPECT_EQ(chosen(*gpu_, "forward").size(), 2u);
  EXPECT_EQ(chosen(*gpu_, "backward-data").size(), 0u);
  EXPECT_EQ(chosen(*gpu_, "backward-filter").size(), 2u);

  // Not the first layer: an input gradient follows, so the two backward directions, which then run
  // side by side, are also timed in pairs; the pair kept is still exact.
  auto second = make_layer<float>(c, 1, Dims{32, 26, 26}, Device::Cuda);
  second->bind({{values.span().subspan(0, np - 64), grads.span().subspan(0, np - 64)},
                {values.span().subspan(np - 64), grads.span().subspan(np - 64)}});
  second->reserve(*gpu_, 64);
  train_forward(*second, 64);
  ASSERT_EQ(gpu_->cuda().choices().size(), 8u);  // forward, backward-data, backward-filter and the pair
  const std::string& pair = gpu_->cuda().choices().back();
  ASSERT_NE(pair.find("batch 64 backward side by side: data "), std::string::npos) << pair;
  const auto algo_after = [&](const std::string& what) {
    const size_t at = pair.find(what);
    return pair.compare(at + what.size(), 6, "cuDNN ") != 0 ? -1 : std::stoi(pair.substr(at + what.size() + 6));
  };
  const int data = algo_after("data "), filter = algo_after("filter ");
  EXPECT_TRUE(data != CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT && data != CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING &&
              data != CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD &&
              data != CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED) << pair;
  EXPECT_TRUE(filter != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT && filter != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING &&
              filter != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED) << pair;
}

// LinearCuda's row bands in float32 training: the skinny GEMMs up to 256 rows, cuBLAS past them (past 256
// rows the skinny kernels were slower, except for lenet5's small layers in float32: docs/
// BENCHMARKS.md, fifteenth session). The shapes: lenet5's fc1 and fc3, mnist_cnn's fc1 (to 1000
// rows: its CPU reference at 8192 takes seconds).
TEST_F(CudaBackend, LinearMatchesCpuInEveryRowBand) {
  LayerConfig lin = layer("linear");
  struct Case {
    int in, out;
    std::vector<int> rows;
  };
  for (const Case& c : {Case{400, 120, {256, 257, 1000, 8192}}, Case{84, 10, {256, 257, 8192}},
                        Case{9216, 128, {256, 257, 1000}}}) {
    lin.out_features = c.out;
    for (const int n : c.rows) compare_layer(cpu_, *gpu_, lin, Dims{c.in, 1, 1}, n, 1e-5);
  }
}

TEST_F(CudaBackend, LinearReluPoolDropoutFlattenMatchCpu) {
  for (int n : {64, 32}) {
    LayerConfig lin = layer("linear");
    lin.out_features = 128;
    compare_layer(cpu_, *gpu_, lin, Dims{64, 12, 12}, n, 1e-5);
    compare_layer(cpu_, *gpu_, layer("relu"), Dims{64, 24, 24}, n, 1e-6);
    LayerConfig pool = layer("maxpool2d");
    pool.kernel = 2;
    pool.stride = 2;
    compare_layer(cpu_, *gpu_, pool, Dims{64, 24, 24}, n, 1e-6, Phase::Train, true);
    LayerConfig drop = layer("dropout");
    drop.p = 0.25;
    compare_layer(cpu_, *gpu_, drop, Dims{64, 12, 12}, n, 0.0);  // the same masks, bit for bit
    compare_layer(cpu_, *gpu_, drop, Dims{64, 12, 12}, n, 0.0, Phase::Eval);
    compare_layer(cpu_, *gpu_, layer("flatten"), Dims{64, 12, 12}, n, 0.0);
  }
}

// A convolution or linear layer that absorbed the ReLU after it (the CUDA model does this) equals
// the CPU's layer followed by a ReLU. The GPU's backward is given the CPU's ReLU output, so the
// mask is the same even where an output rounds to the other side of zero.
TEST_F(CudaBackend, AbsorbedReluMatchesCpuLayerThenRelu) {
  LayerConfig wide = layer("conv2d"), direct = layer("conv2d"), lin = layer("linear");
  wide.out_channels = 64;
  wide.kernel = direct.kernel = 3;
  direct.out_channels = 32;
  lin.out_features = 128;
  struct Case {
    LayerConfig config;
    Dims in;
    std::vector<int> rows;
  };
  // The linear layer at 300 rows too: past the skinny GEMMs, its ReLU runs in cuBLASLt's epilogue.
  for (const Case& c : {Case{wide, Dims{32, 26, 26}, {64, 5}}, Case{direct, Dims{1, 28, 28}, {64, 5}},
                        Case{lin, Dims{64, 12, 12}, {64, 5, 300}}}) {
    for (int n : c.rows) {
      auto lc = make_layer<float>(c.config, 3, c.in, Device::Cpu);
      auto lg = make_layer<float>(c.config, 3, c.in, Device::Cuda);
      ASSERT_TRUE(lg->absorb_following_relu(*gpu_)) << c.config.name;
      size_t np = 0;
      for (const ParamSpec& s : lc->param_specs()) np += static_cast<size_t>(element_count(s.shape));
      const std::vector<float> params = randoms(np, 7, -0.3f, 0.3f);
      const std::vector<float> x = randoms(static_cast<size_t>(n) * c.in.count(), 8);
      const std::vector<float> dy = randoms(static_cast<size_t>(n) * lc->output_dims().count(), 9);
      // CPU: the layer, a ReLU on its output, then the layer's backward from the masked gradient.
      std::vector<float> relu_out = run_layer(cpu_, *lc, params, x, dy, n, Phase::Train).out, masked(dy.size());
      for (size_t i = 0; i < dy.size(); ++i) {
        relu_out[i] = relu_out[i] > 0.0f ? relu_out[i] : 0.0f;
        masked[i] = relu_out[i] > 0.0f ? dy[i] : 0.0f;
      }
      const LayerRun want = run_layer(cpu_, *lc, params, x, masked, n, Phase::Train);
      // GPU: forward with the ReLU fused; backward from dy with the CPU's ReLU output as the mask.
      const LayerRun got = run_layer(*gpu_, *lg, params, x, dy, n, Phase::Train, &relu_out);
      EXPECT_LE(rel(got.out, relu_out), 1e-5) << c.config.name << " forward, n=" << n;
      EXPECT_LE(rel(got.din, want.din), 1e-5) << c.config.name << " input gradient, n=" << n;
      EXPECT_LE(rel(got.grads, want.grads), 1e-5) << c.config.name << " parameter gradients, n=" << n;
    }
  }
}

// An evaluation batch over the skinny kernels' 256 rows runs them over blocks of 256 rows (no
// cuBLAS): each block at its own offset, the last one short, with the bias and the absorbed ReLU,
// equals the CPU's linear then ReLU. The shapes: mnist_fast's fc1 and fc2, mnist_cnn's fc1.
TEST_F(CudaBackend, LinearEvaluationBatchOverSkinnyBlocksMatchesCpu) {
  struct Case {
    int in, out;
    bool relu;
  };
  for (const Case c : {Case{800, 256, true}, Case{256, 10, false}, Case{9216, 128, true}}) {
    for (int n : {257, 600, 2000}) {
      LayerConfig lin = layer("linear");
      lin.out_features = c.out;
      const Dims in{c.in, 1, 1};
      auto lc = make_layer<float>(lin, 3, in, Device::Cpu);
      auto lg = make_layer<float>(lin, 3, in, Device::Cuda);
      if (c.relu) {
        ASSERT_TRUE(lg->absorb_following_relu(*gpu_));
      }
      size_t np = 0;
      for (const ParamSpec& s : lc->param_specs()) np += static_cast<size_t>(element_count(s.shape));
      const std::vector<float> params = randoms(np, 21, -0.1f, 0.1f);
      const std::vector<float> x = randoms(static_cast<size_t>(n) * c.in, 22);
      const std::vector<float> dy(static_cast<size_t>(n) * c.out, 0.0f);
      std::vector<float> want = run_layer(cpu_, *lc, params, x, dy, n, Phase::Eval).out;
      if (c.relu)
        for (float& v : want) v = v > 0.0f ? v : 0.0f;
      EXPECT_LE(rel(run_layer(*gpu_, *lg, params, x, dy, n, Phase::Eval).out, want), 1e-5)
          << c.in << " -> " << c.out << ", n=" << n;
    }
  }
}

// Max pooling and a linear layer (with its ReLU) that absorbed the dropout after them (the CUDA model
// does this) equal the CPU's layers run one after the other: the same masks, drawn again in the
// fused backward instead of stored. Pooling bit for bit; in Eval the dropout is the identity.
TEST_F(CudaBackend, AbsorbedDropoutMatchesCpuLayersInSequence) {
  LayerConfig pool = layer("maxpool2d"), lin = layer("linear"), drop = layer("dropout");
  pool.kernel = pool.stride = 2;
  lin.out_features = 128;
  drop.p = 0.25;
  const int drop_index = 4;  // the dropout's place in the model: part of its random key
  for (int n : {64, 5}) {
    // pool -> dropout, with an even and an odd plane size
    for (const Dims in : {Dims{64, 24, 24}, Dims{3, 10, 10}}) {
      auto pc = make_layer<float>(pool, 3, in, Device::Cpu);
      auto pg = make_layer<float>(pool, 3, in, Device::Cuda);
      auto dc = make_layer<float>(drop, drop_index, pc->output_dims(), Device::Cpu);
      ASSERT_TRUE(pg->absorb_following_dropout(*gpu_, {0.25f, 1.0f / 0.75f, drop_index}));
      std::vector<float> x = randoms(static_cast<size_t>(n) * in.count(), 11);
      for (size_t i = 0; i < x.size(); ++i) x[i] += 0.0001f * static_cast<float>(i % 997);  // no near-ties
      const std::vector<float> dy = randoms(static_cast<size_t>(n) * pc->output_dims().count(), 12);
      const std::vector<float> pooled = run_layer(cpu_, *pc, {}, x, dy, n, Phase::Train).out;
      const LayerRun dropped = run_layer(cpu_, *dc, {}, pooled, dy, n, Phase::Train);
      const LayerRun want = run_layer(cpu_, *pc, {}, x, dropped.din, n, Phase::Train);
      const LayerRun got = run_layer(*gpu_, *pg, {}, x, dy, n, Phase::Train);
      EXPECT_EQ(got.out, dropped.out) << "pool forward, n=" << n << ", " << in.c << " planes";
      EXPECT_EQ(got.din, want.din) << "pool backward, n=" << n << ", " << in.c << " planes";
      EXPECT_EQ(run_layer(*gpu_, *pg, {}, x, dy, n, Phase::Eval).out, pooled) << "pool eval, n=" << n;
    }
    {  // linear -> relu -> dropout; the GPU's backward is given the CPU's output as its mask
      const Dims in{64, 12, 12};
      auto lc = make_layer<float>(lin, 3, in, Device::Cpu);
      auto lg = make_layer<float>(lin, 3, in, Device::Cuda);
      auto dc = make_layer<float>(drop, drop_index, lc->output_dims(), Device::Cpu);
      ASSERT_TRUE(lg->absorb_following_relu(*gpu_));
      ASSERT_TRUE(lg->absorb_following_dropout(*gpu_, {0.25f, 1.0f / 0.75f, drop_index}));
      size_t np = 0;
      for (const ParamSpec& s : lc->param_specs()) np += static_cast<size_t>(element_count(s.shape));
      const std::vector<float> params = randoms(np, 13, -0.3f, 0.3f);
      const std::vector<float> x = randoms(static_cast<size_t>(n) * in.count(), 14);
      const std::vector<float> dy = randoms(static_cast<size_t>(n) * lc->output_dims().count(), 15);
      std::vector<float> relu_out = run_layer(cpu_, *lc, params, x, dy, n, Phase::Train).out;
      for (float& v : relu_out) v = v > 0.0f ? v : 0.0f;
      const LayerRun dropped = run_layer(cpu_, *dc, {}, relu_out, dy, n, Phase::Train);
      std::vector<float> masked = dropped.din;
      for (size_t i = 0; i < masked.size(); ++i) masked[i] = relu_out[i] > 0.0f ? masked[i] : 0.0f;
      const LayerRun want = run_layer(cpu_, *lc, params, x, masked, n, Phase::Train);
      const LayerRun got = run_layer(*gpu_, *lg, params, x, dy, n, Phase::Train, &dropped.out);
      EXPECT_LE(rel(got.out, dropped.out), 1e-5) << "linear forward, n=" << n;
      EXPECT_LE(rel(got.din, want.din), 1e-5) << "linear input gradient, n=" << n;
      EXPECT_LE(rel(got.grads, want.grads), 1e-5) << "linear parameter gradients, n=" << n;
      EXPECT_LE(rel(run_layer(*gpu_, *lg, params, x, dy, n, Phase::Eval).out, relu_out), 1e-5) << "linear eval";
    }
  }
}

// A convolution that absorbed the ReLU, max pooling and dropout after it (the CUDA model does this
// for mnist_cnn's conv2, and lenet5's and mnist_fast's: one pass for bias, ReLU, pooling and dropout,
// one for their backward) equals the CPU's four layers run one after the other. Planes of 8 x 8
// pooled by 2, four outputs a thread, and lenet5's conv2 (10 x 10 pooled to 5 x 5: rows of 5, one
// output a thread): few windows, so a near-tie that GPU and CPU rounding could break differently is
// unlikely.
TEST_F(CudaBackend, ConvAbsorbingReluPoolDropoutMatchesCpuLayersInSequence) {
  struct Case {
    Dims in;
    int out_channels, kernel, n;
  };
  for (const Case& shape : {Case{{32, 10, 10}, 64, 3, 3}, Case{{32, 10, 10}, 64, 3, 1}, Case{{6, 14, 14}, 16, 5, 3},
                            Case{{6, 14, 14}, 16, 5, 1}}) {
    const int n = shape.n;
    LayerConfig conv = layer("conv2d"), pool = layer("maxpool2d"), drop = layer("dropout");
    conv.out_channels = shape.out_channels;
    conv.kernel = shape.kernel;
    pool.kernel = pool.stride = 2;
    drop.p = 0.25;
    const int drop_index = 5;
    const Dims in = shape.in;
    auto cc = make_layer<float>(conv, 2, in, Device::Cpu);
    auto cg = make_layer<float>(conv, 2, in, Device::Cuda);
    auto pc = make_layer<float>(pool, 4, cc->output_dims(), Device::Cpu);
    auto dc = make_layer<float>(drop, drop_index, pc->output_dims(), Device::Cpu);
    ASSERT_TRUE(cg->absorb_following_relu(*gpu_));
    ASSERT_TRUE(cg->absorb_following_pool(*gpu_, {2, 2, 0}));
    ASSERT_TRUE(cg->absorb_following_dropout(*gpu_, {0.25f, 1.0f / 0.75f, drop_index}));
    size_t np = 0;
    for (const ParamSpec& s : cc->param_specs()) np += static_cast<size_t>(element_count(s.shape));
    const std::vector<float> params = randoms(np, 21, -0.3f, 0.3f);
    const std::vector<float> x = randoms(static_cast<size_t>(n) * in.count(), 22);
    const size_t full = static_cast<size_t>(n) * cc->output_dims().count();
    const std::vector<float> dy = randoms(static_cast<size_t>(n) * pc->output_dims().count(), 23);
    std::vector<float> relu_out = run_layer(cpu_, *cc, params, x, std::vector<float>(full, 0.0f), n, Phase::Train).out;
    for (float& v : relu_out) v = v > 0.0f ? v : 0.0f;
    const std::vector<float> pooled = run_layer(cpu_, *pc, {}, relu_out, dy, n, Phase::Train).out;
    const LayerRun dropped = run_layer(cpu_, *dc, {}, pooled, dy, n, Phase::Train);
    std::vector<float> masked = run_layer(cpu_, *pc, {}, relu_out, dropped.din, n, Phase::Train).din;
    for (size_t i = 0; i < masked.size(); ++i) masked[i] = relu_out[i] > 0.0f ? masked[i] : 0.0f;
    const LayerRun want = run_layer(cpu_, *cc, params, x, masked, n, Phase::Train);
    const LayerRun got = run_layer(*gpu_, *cg, params, x, dy, n, Phase::Train);
    EXPECT_LE(rel(got.out, dropped.out), 1e-5) << "forward, " << in.c << " channels, n=" << n;
    EXPECT_LE(rel(got.din, want.din), 1e-5) << "input gradient, " << in.c << " channels, n=" << n;
    EXPECT_LE(rel(got.grads, want.grads), 1e-5) << "parameter gradients, " << in.c << " channels, n=" << n;
    EXPECT_LE(rel(run_layer(*gpu_, *cg, params, x, dy, n, Phase::Eval).out, pooled), 1e-5)
        << "eval, " << in.c << " channels, n=" << n;
  }
}

// The model's first layer on the direct kernels absorbs the max pooling after it (and its ReLU): the
// pooled forward kernel, and the filter gradient from the pooled gradient at the argmaxes
// (conv_direct_pool_*), equal the CPU's conv, ReLU and pooling layers in sequence. Inputs and
// parameters are small integers, so every convolution output is exact on both sides and the windows'
// maxima (ties included) are the same: the forward equals the CPU's bit for bit at any batch, and
// only the gradients' order of summation differs. Windows that tile, overlap with padding, leave a
// ragged edge and move by one; a plane too large for the filter kernel's shared memory (its taps
// read from global memory); and a plane past the direct kernels' guard, where the layer runs the
// planner's convolution and the pooling apart (its fallback).
TEST_F(CudaBackend, FirstLayerAbsorbingReluAndPoolMatchesCpuLayersInSequence) {
  struct Case {
    Dims in;
    int oc, kernel, padding;
    PoolSpec pool;
    int n;
    bool relu, pooled_kernels;
  };
  const Case cases[] = {
      {{1, 28, 28}, 6, 5, 2, {2, 2, 0}, 257, true, true},   // lenet5's conv1
      {{1, 28, 28}, 6, 5, 2, {2, 2, 0}, 3, false, true},
      {{3, 11, 10}, 9, 3, 1, {3, 2, 1}, 5, true, true},     // overlapping, padded windows; 9 channels: two groups
      {{2, 13, 13}, 4, 3, 0, {2, 2, 0}, 7, true, true},     // 11 x 11 pooled by 2: the last row and column left out
      {{1, 9, 9}, 3, 2, 0, {2, 1, 0}, 2, true, true},       // stride-1 windows; k = 2
      {{32, 6, 6}, 2, 1, 0, {2, 2, 0}, 4, true, true},      // 1 x 1 over 32 channels: the most taps
      {{1, 120, 120}, 2, 3, 1, {2, 2, 0}, 2, true, true},   // a padded plane past shared memory: taps from global
      {{1, 2898, 2898}, 2, 3, 1, {2, 2, 0}, 1, true, false},  // a plane past the direct kernels' grid
  };
  const auto integers = [](size_t n, uint32_t seed) {
    std::vector<float> v = randoms(n, seed, -2.49f, 2.49f);
    for (float& e : v) e = std::round(e);
    return v;
  };
  for (const Case& c : cases) {
    LayerConfig conv = layer("conv2d"), pool = layer("maxpool2d");
    conv.out_channels = c.oc;
    conv.kernel = c.kernel;
    conv.padding = c.padding;
    pool.kernel = c.pool.kernel;
    pool.stride = c.pool.stride;
    pool.padding = c.pool.padding;
    const std::string what = to_string(c.in) + " -> " + std::to_string(c.oc) + "@" + std::to_string(c.kernel) +
                             ", pool " + std::to_string(c.pool.kernel) + "/" + std::to_string(c.pool.stride) + "/" +
                             std::to_string(c.pool.padding) + (c.relu ? " +relu" : "") + ", n=" + std::to_string(c.n);
    auto cc = make_layer<float>(conv, 0, c.in, Device::Cpu);
    auto cg = make_layer<float>(conv, 0, c.in, Device::Cuda);
    auto pc = make_layer<float>(pool, 2, cc->output_dims(), Device::Cpu);
    if (c.relu) {
      ASSERT_TRUE(cg->absorb_following_relu(*gpu_)) << what;
    }
    ASSERT_TRUE(cg->absorb_following_pool(*gpu_, c.pool)) << what;
    const Dims od = cc->output_dims();
    const kernels::ConvGeometry g{c.n, c.in.c, c.in.h, c.in.w, od.c, od.h, od.w, c.kernel, 1, c.padding};
    const kernels::PoolGeometry pg{c.n * od.c, od.h, od.w, c.pool.pooled(od.h), c.pool.pooled(od.w),
                                   c.pool.kernel, c.pool.stride, c.pool.padding};
    ASSERT_EQ(kernels::direct_pool_fits(g, pg), c.pooled_kernels) << what;
    size_t np = 0;
    for (const ParamSpec& s : cc->param_specs()) np += static_cast<size_t>(element_count(s.shape));
    const std::vector<float> params = integers(np, 31), x = integers(static_cast<size_t>(c.n) * c.in.count(), 32);
    const size_t full = static_cast<size_t>(c.n) * od.count();
    const std::vector<float> dy = randoms(static_cast<size_t>(c.n) * pc->output_dims().count(), 33);
    // CPU: conv, ReLU, pooling; backward the pooling's gradient, masked by the ReLU, into the conv.
    std::vector<float> conv_out = run_layer(cpu_, *cc, params, x, std::vector<float>(full, 0.0f), c.n, Phase::Train).out;
    if (c.relu)
      for (float& v : conv_out) v = v > 0.0f ? v : 0.0f;
    const LayerRun pooled = run_layer(cpu_, *pc, {}, conv_out, dy, c.n, Phase::Train);
    std::vector<float> masked = pooled.din;
    if (c.relu)
      for (size_t i = 0; i < masked.size(); ++i) masked[i] = conv_out[i] > 0.0f ? masked[i] : 0.0f;
    const std::vector<float> want_grads = run_layer(cpu_, *cc, params, x, masked, c.n, Phase::Train).grads;
    // GPU: the first layer, so backward is asked for no input gradient.
    Buffer<float> pv(Device::Cuda, np), pgr(Device::Cuda, np), bx(Device::Cuda, x.size()), by(Device::Cuda, dy.size()),
        bdy(Device::Cuda, dy.size());
    upload(*gpu_, pv.span(), std::span<const float>(params));
    upload(*gpu_, bx.span(), std::span<const float>(x));
    upload(*gpu_, bdy.span(), std::span<const float>(dy));
    const size_t nw = np - static_cast<size_t>(c.oc);
    cg->bind({{pv.span().subspan(0, nw), pgr.span().subspan(0, nw)}, {pv.span().subspan(nw), pgr.span().subspan(nw)}});
    cg->reserve(*gpu_, c.n);
    for (const Phase phase : {Phase::Eval, Phase::Train}) {
      cg->forward(*gpu_, {bx.data(), c.n, c.in}, {by.data(), c.n, od}, phase, StepInfo{});
      EXPECT_EQ(to_host(*gpu_, by, dy.size()), pooled.out) << what << (phase == Phase::Eval ? ", eval" : ", train");
    }
    cg->backward(*gpu_, {bx.data(), c.n, c.in}, {by.data(), c.n, od}, {bdy.data(), c.n, od}, {nullptr, c.n, c.in});
    EXPECT_LE(rel(to_host(*gpu_, pgr, np), want_grads), 1e-5) << what;
  }
}

// Max pooling is a custom kernel that keeps the CPU's first maximum and its order of summing
// gradients: equal bit for bit, with many exact ties and with overlapping, padded windows.
TEST_F(CudaBackend, MaxPoolMatchesCpuBitForBitWithTiesAndOverlap) {
  struct Window {
    int kernel, stride, padding;
  };
  const int n = 4;
  for (Window w : {Window{2, 2, 0}, Window{3, 2, 1}, Window{3, 1, 1}, Window{2, 1, 0}, Window{2, 2, -1}}) {
    // Window{2, 2, -1}: no padding on a 10x12 plane, which 2x2 windows tile exactly (one write per window).
    const Dims in = w.padding < 0 ? Dims{3, 10, 12} : Dims{3, 11, 10};
    w.padding = std::max(w.padding, 0);
    LayerConfig c = layer("maxpool2d");
    c.kernel = w.kernel;
    c.stride = w.stride;
    c.padding = w.padding;
    auto lc = make_layer<float>(c, 3, in, Device::Cpu);
    auto lg = make_layer<float>(c, 3, in, Device::Cuda);
    std::vector<float> x = randoms(static_cast<size_t>(n) * in.count(), 5);
    for (float& v : x) v = std::round(v * 2.0f);  // a handful of values: ties in most windows
    const std::vector<float> dy = randoms(static_cast<size_t>(n) * lc->output_dims().count(), 6);
    const LayerRun a = run_layer(cpu_, *lc, {}, x, dy, n, Phase::Train);
    const LayerRun b = run_layer(*gpu_, *lg, {}, x, dy, n, Phase::Train);
    EXPECT_EQ(a.out, b.out) << "kernel " << w.kernel << " stride " << w.stride << " padding " << w.padding;
    EXPECT_EQ(a.din, b.din) << "kernel " << w.kernel << " stride " << w.stride << " padding " << w.padding;
  }
}

// 64 x 10 is one block; 1000 x 10 (a thread per sample) and 300 x 100 (a warp per sample) span
// several, whose sums the last block adds; each GPU run goes twice, so the second launch finds the
// blocks' counter reset and gives the same sums bit for bit.
TEST_F(CudaBackend, LossMatchesCpu) {
  for (const auto& [n, k] : {std::pair{64, 10}, std::pair{1000, 10}, std::pair{300, 100}}) {
    const std::vector<float> logits = randoms(static_cast<size_t>(n) * k, 4, -6, 6);
    std::vector<int32_t> labels(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) labels[static_cast<size_t>(i)] = (i * 7) % k;
    auto run = [&](DeviceContext& ctx) {
      auto loss = make_softmax_cross_entropy<float>(ctx.device());
      loss->reserve(ctx, n, k);
      Buffer<float> x(ctx.device(), logits.size()), g(ctx.device(), logits.size());
      Buffer<int32_t> y(ctx.device(), labels.size());
      Buffer<double> sums(ctx.device(), 4);
      upload(ctx, x.span(), std::span<const float>(logits));
      upload(ctx, y.span(), std::span<const int32_t>(labels));
      zero_async(ctx, sums.span());
      for (int round = 0; round < 2; ++round)
        loss->forward_backward(ctx, TensorView<const float>{x.data(), n, {k, 1, 1}}, y.data(), 1.0f / n,
                               TensorView<float>{g.data(), n, {k, 1, 1}}, sums.data() + 2 * round);
      std::vector<double> s(4);
      download(ctx, std::span<const double>(sums.span()), std::span<double>(s));
      return std::pair{to_host(ctx, g, logits.size()), s};
    };
    const auto [gc, sc] = run(cpu_);
    const auto [gg, sg] = run(*gpu_);
    const std::string at = std::to_string(n) + " x " + std::to_string(k);
    EXPECT_LT(rel(gg, gc), 1e-6) << at;
    EXPECT_NEAR(sg[0], sc[0], 1e-5 * std::abs(sc[0])) << at;
    EXPECT_EQ(sg[1], sc[1]) << at;
    EXPECT_EQ(sg[2], sg[0]) << at;
    EXPECT_EQ(sg[3], sg[1]) << at;
  }
}

// Past one block the GPU's loss needs its scratch: a batch beyond the reserved one is an error, not a
// launch without it.
TEST_F(CudaBackend, LossPastItsReservedBatchThrows) {
  auto loss = make_softmax_cross_entropy<float>(gpu_->device());
  loss->reserve(*gpu_, 256, 10);
  Buffer<float> x(gpu_->device(), 257 * 10), g(gpu_->device(), 257 * 10);
  Buffer<int32_t> y(gpu_->device(), 257);
  Buffer<double> sums(gpu_->device(), 2);
  EXPECT_THROW(loss->forward_backward(*gpu_, TensorView<const float>{x.data(), 257, {10, 1, 1}}, y.data(), 1.0f,
                                      TensorView<float>{g.data(), 257, {10, 1, 1}}, sums.data()),
               std::logic_error);
}

// The model's last linear layer computes the loss and its own backward in one launch
// (Layer::backward_with_loss): the same as the CPU's layer, loss and backward in turn, and the same
// dL/dlogits as the GPU's separate loss kernel. 84 and 40 inputs leave the last slice of columns
// partial; past 64 samples the batch spans tiles, whose sums the last block of each slice adds, and a
// second launch (its counters reused) must give the same bits.
TEST_F(CudaBackend, LinearBackwardWithLossMatchesCpuLinearThenLoss) {
  struct Case {
    int n, inputs, classes;
  };
  for (const Case& k : {Case{64, 128, 10}, Case{5, 84, 10}, Case{33, 40, 16}, Case{1000, 84, 10}, Case{257, 40, 16},
                        Case{130, 33, 32}}) {
    LayerConfig lin = layer("linear");
    lin.out_features = k.classes;
    const Dims in{k.inputs, 1, 1};
    const int n = k.n;
    const std::vector<float> params = randoms(static_cast<size_t>(k.classes) * (k.inputs + 1), 31, -0.3f, 0.3f);
    const std::vector<float> x = randoms(static_cast<size_t>(n) * k.inputs, 32, -2.0f, 2.0f);
    std::vector<int32_t> labels(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) labels[static_cast<size_t>(i)] = (i * 7 + 3) % k.classes;
    struct Result {
      std::vector<float> logits, dlogits, din, grads;
      std::vector<double> sums;
    };
    auto run = [&](DeviceContext& ctx, bool fused) {
      auto l = make_layer<float>(lin, 9, in, ctx.device());
      auto loss = make_softmax_cross_entropy<float>(ctx.device());
      loss->reserve(ctx, n, k.classes);
      const Device dev = ctx.device();
      Buffer<float> pv(dev, params.size()), pg(dev, params.size()), bx(dev, x.size()), bdx(dev, x.size());
      const size_t outs = static_cast<size_t>(n) * k.classes;
      Buffer<float> by(dev, outs), bdy(dev, outs);
      Buffer<int32_t> bl(dev, labels.size());
      Buffer<double> sums(dev, 2);
      upload(ctx, pv.span(), std::span<const float>(params));
      upload(ctx, bx.span(), std::span<const float>(x));
      upload(ctx, bl.span(), std::span<const int32_t>(labels));
      zero_async(ctx, sums.span());
      const size_t nw = static_cast<size_t>(k.classes) * k.inputs;
      l->bind({{{pv.data(), nw}, {pg.data(), nw}},
               {{pv.data() + nw, static_cast<size_t>(k.classes)}, {pg.data() + nw, static_cast<size_t>(k.classes)}}});
      l->reserve(ctx, n);
      const StepInfo step{11, 2, 640};
      ctx.set_step(StepState{step, {}});
      const TensorView<const float> xin{bx.data(), n, in};
      const TensorView<float> y{by.data(), n, l->output_dims()}, dy{bdy.data(), n, l->output_dims()};
      const TensorView<float> dx{bdx.data(), n, in};
      l->forward(ctx, xin, y, Phase::Train, step);
      const float scale = 1.0f / static_cast<float>(n);
      if (fused) {
        EXPECT_TRUE(l->backward_with_loss(ctx, xin, y, bl.data(), scale, 0.0f, sums.data(), dy, dx));
        const std::vector<float> grads = to_host(ctx, pg, params.size()), din = to_host(ctx, bdx, x.size());
        std::vector<double> once(2);
        download(ctx, std::span<const double>(sums.span()), std::span<double>(once));
        EXPECT_TRUE(l->backward_with_loss(ctx, xin, y, bl.data(), scale, 0.0f, sums.data(), dy, dx));
        EXPECT_EQ(to_host(ctx, pg, params.size()), grads) << "a second launch differs, n=" << n;
        EXPECT_EQ(to_host(ctx, bdx, x.size()), din) << "a second launch differs, n=" << n;
        std::vector<double> twice(2);
        download(ctx, std::span<const double>(sums.span()), std::span<double>(twice));
        EXPECT_EQ(twice[0], 2 * once[0]) << "n=" << n;
        zero_async(ctx, sums.span());
        EXPECT_TRUE(l->backward_with_loss(ctx, xin, y, bl.data(), scale, 0.0f, sums.data(), dy, dx));
      } else {
        loss->forward_backward(ctx, y, bl.data(), scale, dy, sums.data());
        l->backward(ctx, xin, y, dy, dx);
      }
      Result r{to_host(ctx, by, outs), to_host(ctx, bdy, outs), to_host(ctx, bdx, x.size()),
               to_host(ctx, pg, params.size()), std::vector<double>(2)};
      download(ctx, std::span<const double>(sums.span()), std::span<double>(r.sums));
      return r;
    };
    const Result want = run(cpu_, false), got = run(*gpu_, true), apart = run(*gpu_, false);
    const std::string at = "n=" + std::to_string(n) + ", " + std::to_string(k.inputs) + " inputs";
    EXPECT_LE(rel(got.logits, want.logits), 1e-6) << at;
    EXPECT_LE(rel(got.dlogits, want.dlogits), 1e-5) << at;
    EXPECT_LE(rel(got.din, want.din), 1e-5) << at;
    EXPECT_LE(rel(got.grads, want.grads), 1e-5) << at;
    EXPECT_NEAR(got.sums[0], want.sums[0], 1e-5 * std::abs(want.sums[0])) << at;
    EXPECT_EQ(got.sums[1], want.sums[1]) << at;
    EXPECT_EQ(got.dlogits, apart.dlogits) << "fused and separate GPU losses differ, " << at;
  }
}

TEST_F(CudaBackend, EpochOrderAndGatherMatchCpuBitForBit) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  DataConfig dc;
  auto cpu_src = make_batch_source(data.train, dc, true, cpu_);
  auto gpu_src = make_batch_source(data.train, dc, true, *gpu_);
  for (uint32_t epoch : {0u, 5u}) {
    cpu_src->begin_epoch(3, epoch);
    gpu_src->begin_epoch(3, epoch);
    for (int64_t first : {int64_t{0}, int64_t{59968}}) {
      const int count = 32;
      std::vector<float> xc(count * 784);
      std::vector<int32_t> yc(count);
      cpu_src->gather(cpu_, first, count, xc.data(), yc.data());
      Buffer<float> xg(Device::Cuda, xc.size());
      Buffer<int32_t> yg(Device::Cuda, yc.size());
      gpu_->set_step(StepState{{3, epoch, static_cast<uint32_t>(first)}, {}});
      gpu_src->gather_step(*gpu_, count, xg.data(), yg.data());
      EXPECT_EQ(to_host(*gpu_, xg, xc.size()), xc) << "epoch " << epoch << " first " << first;
      std::vector<int32_t> yh(count);
      download(*gpu_, std::span<const int32_t>(yg.span()), std::span<int32_t>(yh));
      EXPECT_EQ(yh, yc);
    }
  }
}

/// `update_after_backward`: the optimizer runs after backward, as with a gradient exchange, instead
/// of UpdateInBackward during it.
std::vector<float> train_params(DeviceContext& ctx, const MnistData& data, int steps, bool graph,
                                std::vector<std::string> sets = {}, bool update_after_backward = false) {
  TrainOptions options;
  options.update_after_backward = update_after_backward;
  return params_after_steps(ctx, data, shipped_config("mnist_cnn", graph, std::move(sets)), steps, options);
}

// 50 steps of mnist_cnn (dropout on) on GPU and CPU from one seed. With SGD the two stay within
// 1e-4 (measured 7e-7 to 9e-6 on an H200, FFT convolutions allowed or not). With the recipe's
// Adadelta at lr 1.0 the first steps agree to 1e-7 but rounding differences then grow chaotically
// (1.6e-7 to 4.7e-5 at step 20 depending on the algorithms cuDNN picks, 6% by step 50, also with
// dropout off), so that recipe is checked at 10 steps, before the growth, with exact convolutions:
// FFT's rounding (1e-6) starts the growth earlier (6e-4 at step 10). See docs/benchmarks/notebook.md.
TEST_F(CudaBackend, FiftyTrainingStepsMatchCpu) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  const std::vector<std::string> sgd{"train.optimizer={type: sgd, lr: 0.01, momentum: 0.5}", "train.schedule={type: constant}"};
  const double r50 = rel(train_params(*gpu_, data, 50, true, sgd), train_params(cpu_, data, 50, false, sgd));
  std::printf("GPU vs CPU, SGD, 50 steps: relative difference %.3g\n", r50);
  EXPECT_LT(r50, 1e-4);
  TrainConfig exact;
  exact.exact_convolutions = true;
  DeviceContext other = make_device_context(Device::Cuda, exact);
  const double r10 = rel(train_params(other, data, 10, true), train_params(cpu_, data, 10, false));
  std::printf("GPU vs CPU, mnist_cnn recipe, 10 steps: relative difference %.3g\n", r10);
  EXPECT_LT(r10, 1e-4);
}

// How far GPU and CPU drift apart step by step, with timed plans (FFT and 3xTF32 allowed), for the
// recipe, the recipe without dropout and SGD. Two summation orders start about 1e-7 apart; a real
// difference (a wrong kernel, a different mask) shows at once, far above it. Asserted: every setup
// within 1e-5 after one step and 1e-4 up to five; SGD within 1e-4 for all 50 steps (measured: 7.2e-7
// to 2.4e-5). The recipe's Adadelta at lr 1.0 amplifies rounding chaotically after 10-20 steps
// (1e-2 at 50: docs/benchmarks/notebook.md), so its later steps are printed, not asserted.
TEST_F(CudaBackend, GpuCpuDriftStaysRoundingSized) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  struct Setup {
    const char* name;
    std::vector<std::string> sets;
    bool chaotic;  // Adadelta at lr 1.0
  };
  const Setup setups[] = {
      {"recipe", {}, true},
      {"recipe without dropout", {"model.layers.5.p=0", "model.layers.9.p=0"}, true},
      {"sgd lr 0.01", {"train.optimizer={type: sgd, lr: 0.01}", "train.schedule={type: constant}"}, false}};
  for (const Setup& setup : setups) {
    for (int steps : {1, 2, 5, 10, 20, 50}) {
      DeviceContext g = make_device_context(Device::Cuda, TrainConfig{});
      const double r =
          rel(train_params(g, data, steps, false, setup.sets), train_params(cpu_, data, steps, false, setup.sets));
      std::printf("drift %s, %d steps: %.3g\n", setup.name, steps, r);
      if (steps == 1) {
        EXPECT_LT(r, 1e-5) << setup.name;
      }
      if (steps <= 5 || !setup.chaotic) {
        EXPECT_LT(r, 1e-4) << setup.name << ", " << steps << " steps";
      }
    }
  }
}

// Algorithms chosen by heuristics (not by timing, which can differ between two contexts), so both
// runs use the same ones: then a replayed graph must equal eager execution bit for bit.
TEST_F(CudaBackend, GraphReplayEqualsEagerBitForBit) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  TrainConfig heuristics;
  heuristics.cudnn_benchmark = false;
  DeviceContext a = make_device_context(Device::Cuda, heuristics), b = make_device_context(Device::Cuda, heuristics);
  EXPECT_EQ(train_params(a, data, 30, true), train_params(b, data, 30, false));
}

// On one rank the parameters are updated layer by layer during backward (UpdateInBackward); with a
// gradient exchange (or TrainOptions::update_after_backward), once after it. The update is element-wise: the same parameters bit for bit,
// in a CUDA graph and eagerly, with Adadelta (the recipe) and with SGD and momentum.
TEST_F(CudaBackend, UpdateInBackwardEqualsUpdateAfterBackwardBitForBit) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not in " << kData;
  const MnistData data = load_mnist_dir(kData);
  TrainConfig heuristics;
  heuristics.cudnn_benchmark = false;
  const std::vector<std::string> sgd{"train.optimizer={type: sgd, lr: 0.01, momentum: 0.5}"};
  for (bool graph : {true, false})
    for (const std::vector<std::string>& sets : {std::vector<std::string>{}, sgd}) {
      DeviceContext a = make_device_context(Device::Cuda, heuristics), b = make_device_context(Device::Cuda, heuristics);
      const std::vector<float> in_backward = train_params(a, data, 20, graph, sets);
      const std::vector<float> after = train_params(b, data, 20, graph, sets, /*update_after_backward=*/true);
      EXPECT_EQ(in_backward, after) << "graph " << graph << ", " << (sets.empty() ? "adadelta" : "sgd");
      // and training moved them: the update ran at all
      DeviceContext c = make_device_context(Device::Cuda, heuristics);
      EXPECT_NE(train_params(c, data, 0, graph, sets), in_backward);
    }
}

}  // namespace
}  // namespace dptrain
