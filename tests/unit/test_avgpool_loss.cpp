// Issue 23's layers and loss on the CPU: avgpool2d and global_avgpool (nn.AvgPool2d with
// count_include_pad=True, ceil_mode=False; nn.AdaptiveAvgPool2d(1)) against direct computations and
// finite differences, their shape errors naming the layer; the softmax cross-entropy with label
// smoothing (torch.nn.CrossEntropyLoss(label_smoothing=e)) and at 2..1000 classes against a direct
// double computation and finite differences; and a model with the new layers, label smoothing and
// 47 classes whose whole gradient matches finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <tuple>

#include "core/error.h"
#include "gradient_checker.h"
#include "io/config.h"
#include "layers/layer_factory.h"
#include "layers/softmax_cross_entropy.h"
#include "model/model.h"

namespace dptrain {
namespace {

using testing::central_difference;
using testing::check_layer_gradients;
using testing::check_model_gradients;
using testing::random_vector;
using testing::rel_error;

LayerConfig pool(const char* type, int k = 0, int stride = 0, int pad = 0) {
  LayerConfig c;
  c.type = type;
  c.name = "pool";
  c.kernel = k, c.stride = stride, c.padding = pad;
  return c;
}

/// nn.AvgPool2d(k, s, p) forward as PyTorch defines it: windows over the zero-padded plane,
/// divided by k*k (count_include_pad=True), floor output sizes.
std::vector<double> torch_avgpool(const std::vector<double>& x, int planes, int h, int w, int k, int s, int p) {
  const int oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1;
  std::vector<double> y(static_cast<size_t>(planes) * oh * ow);
  for (int pl = 0; pl < planes; ++pl)
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox) {
        double sum = 0;
        for (int ky = 0; ky < k; ++ky)
          for (int kx = 0; kx < k; ++kx) {
            const int iy = oy * s - p + ky, ix = ox * s - p + kx;
            const bool inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
            sum += inside ? x[(static_cast<size_t>(pl) * h + iy) * w + ix] : 0.0;
          }
        y[(static_cast<size_t>(pl) * oh + oy) * ow + ox] = sum / (k * k);
      }
  return y;
}

std::vector<double> forward(Layer<double>& layer, const std::vector<double>& x, int n) {
  DeviceContext ctx;
  layer.reserve(ctx, n);
  std::vector<double> y(static_cast<size_t>(n) * layer.output_dims().count());
  layer.forward(ctx, TensorView<const double>{x.data(), n, layer.input_dims()},
                TensorView<double>{y.data(), n, layer.output_dims()}, Phase::Train, {});
  return y;
}

TEST(AvgPool2d, HandComputedWindowWithPadding) {
  // 4x4 of 1..16, kernel 3, stride 2, padding 1: the top-left window holds 1, 2, 5, 6 and five
  // zeros of padding, and divides by 9 (count_include_pad=True).
  auto layer = make_layer<double>(pool("avgpool2d", 3, 2, 1), 0, Dims{1, 4, 4}, Device::Cpu);
  ASSERT_EQ(layer->output_dims(), (Dims{1, 2, 2}));
  std::vector<double> x(16);
  for (int i = 0; i < 16; ++i) x[static_cast<size_t>(i)] = i + 1;
  const std::vector<double> y = forward(*layer, x, 1);
  EXPECT_DOUBLE_EQ(y[0], (1 + 2 + 5 + 6) / 9.0);
  EXPECT_DOUBLE_EQ(y[1], (2 + 3 + 4 + 6 + 7 + 8) / 9.0);  // rows -1..1 (row -1 is padding), columns 1..3
  EXPECT_DOUBLE_EQ(y[3], (6 + 7 + 8 + 10 + 11 + 12 + 14 + 15 + 16) / 9.0);  // wholly inside
  // Default stride = kernel: kernel 2 on 4x4 averages each 2x2 block.
  auto k2 = make_layer<double>(pool("avgpool2d", 2), 0, Dims{1, 4, 4}, Device::Cpu);
  EXPECT_EQ(forward(*k2, x, 1), (std::vector<double>{3.5, 5.5, 11.5, 13.5}));
}

TEST(AvgPool2d, MatchesTorchDefinitionAndFiniteDifferences) {
  for (auto [k, s, p, h, w] : {std::tuple{2, 2, 0, 6, 5}, std::tuple{3, 2, 1, 7, 7}, std::tuple{3, 1, 1, 5, 4},
                               std::tuple{4, 3, 2, 9, 6}, std::tuple{1, 1, 0, 3, 3}, std::tuple{5, 5, 0, 5, 5}}) {
    auto layer = make_layer<double>(pool("avgpool2d", k, s, p), 0, Dims{3, h, w}, Device::Cpu);
    const std::vector<double> x = random_vector(static_cast<size_t>(2 * 3 * h * w), 21);
    const std::vector<double> y = forward(*layer, x, 2), want = torch_avgpool(x, 6, h, w, k, s, p);
    ASSERT_EQ(y.size(), want.size()) << k << " " << s << " " << p;
    for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], want[i], 1e-14) << k << " " << s << " " << p << " @" << i;
    check_layer_gradients(*layer, x, 2);
  }
}

TEST(GlobalAvgPool, MeanOfEachPlaneAndFiniteDifferences) {
  for (const Dims in : {Dims{4, 7, 7}, Dims{2, 1, 1}, Dims{3, 5, 2}}) {
    auto layer = make_layer<double>(pool("global_avgpool"), 0, in, Device::Cpu);
    ASSERT_EQ(layer->output_dims(), (Dims{in.c, 1, 1}));
    const std::vector<double> x = random_vector(static_cast<size_t>(2 * in.count()), 22);
    const std::vector<double> y = forward(*layer, x, 2);
    for (int plane = 0; plane < 2 * in.c; ++plane) {
      double sum = 0;
      for (int i = 0; i < in.h * in.w; ++i) sum += x[static_cast<size_t>(plane) * in.h * in.w + i];
      EXPECT_NEAR(y[static_cast<size_t>(plane)], sum / (in.h * in.w), 1e-14);
    }
    check_layer_gradients(*layer, x, 2);
  }
}

TEST(AvgPool2d, ShapeErrorsNameTheLayer) {
  const auto error = [](LayerConfig c, Dims in) {
    c.name = "avg9";
    try {
      make_layer<float>(c, 4, in, Device::Cpu);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(error(pool("avgpool2d", 5), Dims{1, 4, 4}),
            "model.layers[4] (avg9): kernel 5 does not fit the input 1x4x4 with padding 0");
  EXPECT_EQ(error(pool("avgpool2d", 3, 1, 2), Dims{1, 8, 8}),
            "model.layers[4] (avg9): padding must be between 0 and half the kernel");
  EXPECT_EQ(error(pool("avgpool2d", 0), Dims{1, 8, 8}), "model.layers[4] (avg9): kernel must be > 0");
  EXPECT_EQ(error(pool("global_avgpool"), Dims{3, 1, 9}), "no error");
}

/// torch.nn.CrossEntropyLoss(reduction='sum', label_smoothing=e) in double, and its gradient.
struct DirectLoss {
  double loss = 0;
  std::vector<double> grad;
};
DirectLoss direct_loss(const std::vector<double>& x, const std::vector<int32_t>& labels, int n, int k, double e,
                       double scale) {
  DirectLoss d;
  d.grad.resize(x.size());
  for (int i = 0; i < n; ++i) {
    const double* row = x.data() + static_cast<size_t>(i) * k;
    double m = row[0];
    for (int c = 1; c < k; ++c) m = std::max(m, row[c]);
    double z = 0;
    for (int c = 0; c < k; ++c) z += std::exp(row[c] - m);
    for (int c = 0; c < k; ++c) {
      const double log_softmax = row[c] - m - std::log(z);
      const double target = (1 - e) * (c == labels[static_cast<size_t>(i)] ? 1.0 : 0.0) + e / k;
      d.loss -= target * log_softmax;
      d.grad[static_cast<size_t>(i) * k + c] = (std::exp(log_softmax) - target) * scale;
    }
  }
  return d;
}

TEST(LabelSmoothing, LossAndGradientMatchTorchAndFiniteDifferences) {
  DeviceContext ctx;
  for (const double e : {0.0, 0.1, 0.5, 0.95}) {
    auto loss = make_softmax_cross_entropy<double>(Device::Cpu, e);
    const int n = 3, k = 5;
    std::vector<double> x = random_vector(n * k, 13, -3, 3);
    const std::vector<int32_t> labels{4, 0, 2};
    const auto value = [&] {
      double sums[2] = {0, 0};
      loss->forward_backward(ctx, TensorView<const double>{x.data(), n, {k, 1, 1}}, labels.data(), 1.0,
                             TensorView<double>{nullptr, n, {k, 1, 1}}, sums);
      return sums[0];
    };
    const DirectLoss want = direct_loss(x, labels, n, k, e, 0.5);
    EXPECT_NEAR(value(), want.loss, 1e-12) << e;
    std::vector<double> g(x.size());
    double sums[2] = {0, 0};
    loss->forward_backward(ctx, TensorView<const double>{x.data(), n, {k, 1, 1}}, labels.data(), 0.5,
                           TensorView<double>{g.data(), n, {k, 1, 1}}, sums);
    for (size_t i = 0; i < x.size(); ++i) {
      EXPECT_NEAR(g[i], want.grad[i], 1e-14) << e;
      EXPECT_LT(rel_error(g[i], 0.5 * central_difference(x[i], 1e-6, value)), 1e-6) << "e " << e << " @" << i;
    }
  }
}

TEST(LabelSmoothing, AccuracyIsUnchanged) {
  DeviceContext ctx;
  const std::vector<float> x{3, 1, 0, 0, 2, 5, 1, 1, 1};  // argmax 0, 2, 0 (first of ties)
  const std::vector<int32_t> labels{0, 1, 0};
  for (const double e : {0.0, 0.3}) {
    double sums[2] = {0, 0};
    make_softmax_cross_entropy<float>(Device::Cpu, e)
        ->forward_backward(ctx, TensorView<const float>{x.data(), 3, {3, 1, 1}}, labels.data(), 1.0f,
                           TensorView<float>{nullptr, 3, {3, 1, 1}}, sums);
    EXPECT_EQ(sums[1], 2.0) << e;
  }
  EXPECT_THROW(make_softmax_cross_entropy<float>(Device::Cpu, 1.0), InputError);
}

TEST(SoftmaxCrossEntropy, ManyClassesInFloatMatchADirectDoubleComputation) {
  DeviceContext ctx;
  for (const int k : {2, 10, 47, 49, 1000}) {
    for (const double e : {0.0, 0.1}) {
      const int n = 17;
      const std::vector<double> xd = random_vector(static_cast<size_t>(n) * k, 30 + static_cast<uint32_t>(k), -8, 8);
      const std::vector<float> x(xd.begin(), xd.end());
      std::vector<int32_t> labels(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) labels[static_cast<size_t>(i)] = (i * 7919 + 3) % k;
      labels[0] = k - 1;  // the last class
      const DirectLoss want = direct_loss(std::vector<double>(x.begin(), x.end()), labels, n, k, e, 1.0 / n);
      std::vector<float> g(x.size());
      double sums[2] = {0, 0};
      make_softmax_cross_entropy<float>(Device::Cpu, e)
          ->forward_backward(ctx, TensorView<const float>{x.data(), n, {k, 1, 1}}, labels.data(), 1.0f / n,
                             TensorView<float>{g.data(), n, {k, 1, 1}}, sums);
      EXPECT_NEAR(sums[0], want.loss, 1e-5 * want.loss) << k << " classes, e " << e;
      double worst = 0;
      for (size_t i = 0; i < g.size(); ++i) worst = std::max(worst, std::abs(g[i] - want.grad[i]));
      EXPECT_LT(worst, 1e-6 / n) << k << " classes, e " << e;
    }
  }
}

TEST(SoftmaxCrossEntropy, KeepsLogZAtHugeLogits) {
  // At 1e8 a float's spacing is 8: max + log 2 rounds to max. Computed as exp((x - max) - log z)
  // the probabilities stay 1/2 and the loss log 2.
  DeviceContext ctx;
  const std::vector<float> x{1e8f, 1e8f};
  const int32_t label = 0;
  std::vector<float> g(2);
  double sums[2] = {0, 0};
  make_softmax_cross_entropy<float>(Device::Cpu)
      ->forward_backward(ctx, TensorView<const float>{x.data(), 1, {2, 1, 1}}, &label, 1.0f,
                         TensorView<float>{g.data(), 1, {2, 1, 1}}, sums);
  EXPECT_NEAR(sums[0], std::log(2.0), 1e-6);
  EXPECT_NEAR(g[0], -0.5f, 1e-6);
  EXPECT_NEAR(g[1], 0.5f, 1e-6);
}

TEST(ModelGradient, AvgPoolsLabelSmoothingAnd47ClassesMatchFiniteDifferences) {
  const Config config = parse_config(R"(
model:
  input: [1, 12, 12]
  num_classes: 47
  layers:
    - {type: conv2d, out_channels: 3, kernel: 3, padding: 1}
    - {type: relu}
    - {type: avgpool2d, kernel: 3, stride: 2, padding: 1}
    - {type: conv2d, out_channels: 4, kernel: 3}
    - {type: global_avgpool}
    - {type: flatten}
    - {type: linear, out_features: 47}
train:
  label_smoothing: 0.1
)",
                                     "avg.yaml");
  DeviceContext ctx;
  const int n = 3;
  Model<double> model(config.model, ctx, n, config.train.label_smoothing);
  model.params().initialize(4);
  const std::vector<double> x = random_vector(static_cast<size_t>(n) * 144, 14, -1, 2);
  const std::vector<int32_t> labels{3, 46, 0};
  const int checked = check_model_gradients(ctx, model, x, {1, 12, 12}, labels, {}, 20, 7);
  EXPECT_EQ(checked, 6 * 20);
}

}  // namespace
}  // namespace dptrain
