// CPU layers: forward against hand-computed values, backward against central finite differences
// in double precision (every layer, several geometries), dropout statistics and determinism,
// shape inference and its errors, and float agreeing with double.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>

#include "core/error.h"
#include "core/philox.h"
#include "gradient_checker.h"
#include "layers/layer_factory.h"

namespace dptrain {
namespace {

using testing::check_layer_gradients;
using testing::random_vector;

LayerConfig conv(int out, int k, int stride = 1, int pad = 0) {
  LayerConfig c;
  c.type = "conv2d";
  c.name = "conv";
  c.out_channels = out;
  c.kernel = k;
  c.stride = stride;
  c.padding = pad;
  return c;
}

LayerConfig simple(const std::string& type) {
  LayerConfig c;
  c.type = type;
  c.name = type;
  return c;
}

TEST(Conv2d, ForwardMatchesHandComputed) {
  // 1 input channel 3x3, one 2x2 kernel of ones, bias 0.5: each output is a window sum + 0.5.
  auto layer = make_layer<double>(conv(1, 2), 0, Dims{1, 3, 3}, Device::Cpu);
  EXPECT_EQ(layer->output_dims(), (Dims{1, 2, 2}));
  std::vector<double> w(4, 1.0), b(1, 0.5), gw(4), gb(1);
  layer->bind({{w, gw}, {b, gb}});
  DeviceContext ctx;
  layer->reserve(ctx, 1);
  std::vector<double> x{1, 2, 3, 4, 5, 6, 7, 8, 9}, y(4);
  layer->forward(ctx, TensorView<const double>{x.data(), 1, {1, 3, 3}}, TensorView<double>{y.data(), 1, {1, 2, 2}},
                 Phase::Train, {});
  EXPECT_DOUBLE_EQ(y[0], 12.5);
  EXPECT_DOUBLE_EQ(y[1], 16.5);
  EXPECT_DOUBLE_EQ(y[2], 24.5);
  EXPECT_DOUBLE_EQ(y[3], 28.5);
}

TEST(Conv2d, ParamsFollowPyTorchLayout) {
  auto layer = make_layer<float>(conv(64, 3), 2, Dims{32, 26, 26}, Device::Cpu);
  const auto specs = layer->param_specs();
  ASSERT_EQ(specs.size(), 2u);
  EXPECT_EQ(specs[0].suffix, "weight");
  EXPECT_EQ(specs[0].shape, (ParamShape{64, 32, 3, 3}));
  EXPECT_EQ(specs[0].fan_in, 288);
  EXPECT_EQ(specs[1].shape, (ParamShape{64}));
  EXPECT_EQ(layer->output_dims(), (Dims{64, 24, 24}));
}

struct ConvCase {
  int in_c, h, w, out_c, k, stride, pad, n;
};

class Conv2dGradient : public ::testing::TestWithParam<ConvCase> {};

TEST_P(Conv2dGradient, MatchesFiniteDifferences) {
  const ConvCase c = GetParam();
  auto layer = make_layer<double>(conv(c.out_c, c.k, c.stride, c.pad), 0, Dims{c.in_c, c.h, c.w}, Device::Cpu);
  check_layer_gradients(*layer, random_vector(static_cast<size_t>(c.n * c.in_c * c.h * c.w), 1), c.n);
}

INSTANTIATE_TEST_SUITE_P(Geometries, Conv2dGradient,
                         ::testing::Values(ConvCase{1, 5, 5, 2, 3, 1, 0, 2}, ConvCase{2, 6, 5, 3, 3, 2, 1, 3},
                                           ConvCase{3, 4, 4, 2, 2, 1, 1, 1}, ConvCase{2, 7, 7, 2, 5, 1, 2, 2},
                                           ConvCase{2, 5, 5, 4, 1, 1, 0, 20},  // n=20: five filter-gradient groups
                                           ConvCase{2, 4, 6, 3, 2, 1, 2, 7}));  // padding wider than the kernel reach

TEST(Conv2d, ForwardMatchesDirectConvolution) {
  // Against the textbook loop, over geometries where padding covers part, all or none of a kernel
  // row, with a batch that is not a multiple of the filter-gradient group.
  for (const ConvCase c : {ConvCase{3, 6, 7, 4, 3, 1, 1, 5}, ConvCase{2, 5, 4, 3, 2, 1, 2, 3},
                           ConvCase{2, 7, 6, 2, 3, 2, 1, 2}, ConvCase{1, 4, 4, 2, 5, 1, 2, 1}}) {
    auto layer = make_layer<double>(conv(c.out_c, c.k, c.stride, c.pad), 0, Dims{c.in_c, c.h, c.w}, Device::Cpu);
    const Dims od = layer->output_dims();
    std::vector<double> w = random_vector(static_cast<size_t>(c.out_c * c.in_c * c.k * c.k), 2);
    std::vector<double> b = random_vector(static_cast<size_t>(c.out_c), 3), gw(w.size()), gb(b.size());
    layer->bind({{w, gw}, {b, gb}});
    DeviceContext ctx;
    layer->reserve(ctx, c.n);
    const std::vector<double> x = random_vector(static_cast<size_t>(c.n * c.in_c * c.h * c.w), 4);
    std::vector<double> y(static_cast<size_t>(c.n) * od.count());
    layer->forward(ctx, TensorView<const double>{x.data(), c.n, {c.in_c, c.h, c.w}}, TensorView<double>{y.data(), c.n, od},
                   Phase::Train, {});
    for (int n = 0; n < c.n; ++n)
      for (int o = 0; o < c.out_c; ++o)
        for (int oy = 0; oy < od.h; ++oy)
          for (int ox = 0; ox < od.w; ++ox) {
            double expect = b[o];
            for (int ci = 0; ci < c.in_c; ++ci)
              for (int ky = 0; ky < c.k; ++ky)
                for (int kx = 0; kx < c.k; ++kx) {
                  const int iy = oy * c.stride - c.pad + ky, ix = ox * c.stride - c.pad + kx;
                  if (iy < 0 || iy >= c.h || ix < 0 || ix >= c.w) continue;
                  expect += w[((o * c.in_c + ci) * c.k + ky) * c.k + kx] * x[((n * c.in_c + ci) * c.h + iy) * c.w + ix];
                }
            EXPECT_NEAR(y[((n * c.out_c + o) * od.h + oy) * od.w + ox], expect, 1e-12)
                << "case k=" << c.k << " pad=" << c.pad << " at " << n << "," << o << "," << oy << "," << ox;
          }
  }
}

/// Forward output, input gradient and parameter gradients of a float layer run with `threads`
/// OpenMP threads on fixed random data.
std::vector<float> run_with_threads(const LayerConfig& c, Dims in, int n, int threads) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  auto layer = make_layer<float>(c, 0, in, Device::Cpu);
  const Dims od = layer->output_dims();
  std::vector<std::vector<float>> values, grads;
  for (const ParamSpec& spec : layer->param_specs()) {
    const std::vector<double> v = random_vector(static_cast<size_t>(element_count(spec.shape)), 7);
    values.emplace_back(v.begin(), v.end());
    grads.emplace_back(v.size());
  }
  std::vector<ParamView<float>> views;
  for (size_t k = 0; k < values.size(); ++k) views.push_back({values[k], grads[k]});
  layer->bind(std::move(views));
  DeviceContext ctx;
  layer->reserve(ctx, n);
  const std::vector<double> xd = random_vector(static_cast<size_t>(n) * in.count(), 8);
  const std::vector<double> dyd = random_vector(static_cast<size_t>(n) * od.count(), 9);
  const std::vector<float> x(xd.begin(), xd.end()), dy(dyd.begin(), dyd.end());
  std::vector<float> y(dy.size()), dx(x.size());
  layer->forward(ctx, TensorView<const float>{x.data(), n, in}, TensorView<float>{y.data(), n, od}, Phase::Train, {});
  layer->backward(ctx, TensorView<const float>{x.data(), n, in}, TensorView<const float>{y.data(), n, od},
                  TensorView<const float>{dy.data(), n, od}, TensorView<float>{dx.data(), n, in});
  omp_set_num_threads(saved);
  std::vector<float> all = y;
  all.insert(all.end(), dx.begin(), dx.end());
  for (const auto& g : grads) all.insert(all.end(), g.begin(), g.end());
  return all;
}

TEST(CpuLayers, ResultsDoNotDependOnThreadCount) {
  // Convolutions give threads whole samples and sum filter gradients in fixed groups; linear
  // layers cut their GEMMs by shape alone. One, two or three threads give the same bits, for
  // batches smaller and larger than the thread count, GEMMs split by rows and by columns.
  LayerConfig wide = simple("linear"), narrow = simple("linear");
  wide.out_features = 40;
  narrow.out_features = 10;
  const std::vector<std::tuple<LayerConfig, Dims, int>> cases{
      {conv(16, 3), Dims{8, 14, 14}, 10}, {conv(6, 5, 2, 2), Dims{3, 11, 9}, 3}, {conv(32, 3), Dims{4, 20, 20}, 1},
      {wide, Dims{300, 1, 1}, 33},        {narrow, Dims{700, 1, 1}, 90}};
  for (const auto& [config, dims, n] : cases) {
    const std::vector<float> one = run_with_threads(config, dims, n, 1);
    EXPECT_EQ(run_with_threads(config, dims, n, 2), one) << config.type << ", batch " << n;
    EXPECT_EQ(run_with_threads(config, dims, n, 3), one) << config.type << ", batch " << n;
  }
}

TEST(Linear, GradientMatchesFiniteDifferences) {
  LayerConfig c = simple("linear");
  c.out_features = 4;
  auto layer = make_layer<double>(c, 0, Dims{2, 3, 1}, Device::Cpu);
  EXPECT_EQ(layer->output_dims(), (Dims{4, 1, 1}));
  EXPECT_EQ(layer->param_specs()[0].shape, (ParamShape{4, 6}));
  check_layer_gradients(*layer, random_vector(3 * 6, 2), 3);
}

TEST(Relu, GradientMatchesFiniteDifferencesAwayFromZero) {
  auto layer = make_layer<double>(simple("relu"), 0, Dims{2, 3, 3}, Device::Cpu);
  std::vector<double> x = random_vector(2 * 18, 3);
  for (double& v : x) v += v > 0 ? 0.1 : -0.1;  // keep clear of the kink
  check_layer_gradients(*layer, x, 2);
}

TEST(MaxPool2d, ForwardPicksWindowMaxima) {
  LayerConfig c = simple("maxpool2d");
  c.kernel = 2;
  c.stride = 2;
  auto layer = make_layer<double>(c, 0, Dims{1, 4, 4}, Device::Cpu);
  EXPECT_EQ(layer->output_dims(), (Dims{1, 2, 2}));
  DeviceContext ctx;
  layer->reserve(ctx, 1);
  std::vector<double> x{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 15}, y(4);
  layer->forward(ctx, TensorView<const double>{x.data(), 1, {1, 4, 4}}, TensorView<double>{y.data(), 1, {1, 2, 2}},
                 Phase::Train, {});
  EXPECT_EQ(y, (std::vector<double>{6, 8, 14, 16}));
}

TEST(MaxPool2d, GradientMatchesFiniteDifferences) {
  for (auto [k, s, p] : {std::tuple{2, 2, 0}, std::tuple{3, 2, 1}, std::tuple{3, 1, 0}}) {
    LayerConfig c = simple("maxpool2d");
    c.kernel = k;
    c.stride = s;
    c.padding = p;
    auto layer = make_layer<double>(c, 0, Dims{2, 6, 5}, Device::Cpu);
    // Distinct values spaced well beyond the step h: no ties, no argmax flips under perturbation.
    std::vector<double> x(2 * 2 * 30);
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::fmod(static_cast<double>(i) * 0.37, 1.0) + 0.001 * static_cast<double>(i);
    check_layer_gradients(*layer, x, 2);
  }
}

TEST(MaxPool2d, FirstMaximumWinsTies) {
  LayerConfig c = simple("maxpool2d");
  c.kernel = 2;
  auto layer = make_layer<double>(c, 0, Dims{1, 2, 2}, Device::Cpu);
  DeviceContext ctx;
  layer->reserve(ctx, 1);
  std::vector<double> x{3, 3, 3, 3}, y(1), dy{1}, dx(4);
  layer->forward(ctx, TensorView<const double>{x.data(), 1, {1, 2, 2}}, TensorView<double>{y.data(), 1, {1, 1, 1}},
                 Phase::Train, {});
  layer->backward(ctx, TensorView<const double>{x.data(), 1, {1, 2, 2}}, TensorView<const double>{y.data(), 1, {1, 1, 1}},
                  TensorView<const double>{dy.data(), 1, {1, 1, 1}}, TensorView<double>{dx.data(), 1, {1, 2, 2}});
  EXPECT_EQ(dx, (std::vector<double>{1, 0, 0, 0}));
}

TEST(MaxPool2d, WindowsInsideAndOnTheBorderPickTheirFirstMaximum) {
  // Values from a small set, so most windows hold ties; negative values, so a padded window must
  // still pick a real pixel. Each output and the pixel its gradient goes to, against a plain scan.
  for (auto [k, s, p] : {std::tuple{2, 2, 0}, std::tuple{3, 2, 1}, std::tuple{3, 1, 1}, std::tuple{2, 1, 1}}) {
    LayerConfig c = simple("maxpool2d");
    c.kernel = k;
    c.stride = s;
    c.padding = p;
    const Dims id{2, 7, 6};
    auto layer = make_layer<double>(c, 0, id, Device::Cpu);
    const Dims od = layer->output_dims();
    DeviceContext ctx;
    layer->reserve(ctx, 1);
    std::vector<double> x(static_cast<size_t>(id.count()));
    for (size_t i = 0; i < x.size(); ++i) x[i] = -static_cast<double>((i * 7919) % 3);
    std::vector<double> y(static_cast<size_t>(od.count())), dy(y.size(), 1.0), dx(x.size());
    layer->forward(ctx, TensorView<const double>{x.data(), 1, id}, TensorView<double>{y.data(), 1, od}, Phase::Train, {});
    layer->backward(ctx, TensorView<const double>{x.data(), 1, id}, TensorView<const double>{y.data(), 1, od},
                    TensorView<const double>{dy.data(), 1, od}, TensorView<double>{dx.data(), 1, id});
    std::vector<double> expect_dx(x.size(), 0.0);
    for (int ch = 0; ch < id.c; ++ch)
      for (int oy = 0; oy < od.h; ++oy)
        for (int ox = 0; ox < od.w; ++ox) {
          int first = -1;
          for (int yy = oy * s - p; yy < oy * s - p + k; ++yy)
            for (int xx = ox * s - p; xx < ox * s - p + k; ++xx) {
              if (yy < 0 || yy >= id.h || xx < 0 || xx >= id.w) continue;
              const int at = (ch * id.h + yy) * id.w + xx;
              if (first < 0 || x[at] > x[first]) first = at;
            }
          EXPECT_EQ(y[(ch * od.h + oy) * od.w + ox], x[first]) << k << s << p << " at " << ch << "," << oy << "," << ox;
          expect_dx[first] += 1.0;
        }
    EXPECT_EQ(dx, expect_dx) << "kernel " << k << " stride " << s << " padding " << p;
  }
}

TEST(Flatten, KeepsValuesAndGradients) {
  auto layer = make_layer<double>(simple("flatten"), 0, Dims{2, 3, 4}, Device::Cpu);
  EXPECT_EQ(layer->output_dims(), (Dims{24, 1, 1}));
  check_layer_gradients(*layer, random_vector(2 * 24, 4), 2);
}

TEST(Dropout, GradientMatchesFiniteDifferences) {
  LayerConfig c = simple("dropout");
  c.p = 0.4;
  auto layer = make_layer<double>(c, 3, Dims{2, 3, 3}, Device::Cpu);
  check_layer_gradients(*layer, random_vector(2 * 18, 5), 2);
}

TEST(Dropout, DropsAboutPAndScalesTheRest) {
  LayerConfig c = simple("dropout");
  c.p = 0.25;
  auto layer = make_layer<float>(c, 5, Dims{64, 12, 12}, Device::Cpu);
  DeviceContext ctx;
  layer->reserve(ctx, 8);
  const size_t n = 8 * 64 * 144;
  std::vector<float> x(n, 1.0f), y(n);
  layer->forward(ctx, TensorView<const float>{x.data(), 8, {64, 12, 12}}, TensorView<float>{y.data(), 8, {64, 12, 12}},
                 Phase::Train, StepInfo{1, 0, 128});
  size_t dropped = 0;
  for (float v : y) {
    if (v == 0.0f) ++dropped;
    else EXPECT_FLOAT_EQ(v, 1.0f / 0.75f);
  }
  EXPECT_NEAR(static_cast<double>(dropped) / static_cast<double>(n), 0.25, 0.01);
  // The mask of sample 3 is the counter-based draw for global sample 128 + 3.
  for (uint32_t e = 0; e < 100; ++e)
    EXPECT_EQ(y[3 * 64 * 144 + e] == 0.0f, philox::dropout_uniform(1, 0, 5, 131, e) < 0.25f);
  std::vector<float> z(n);
  layer->forward(ctx, TensorView<const float>{x.data(), 8, {64, 12, 12}}, TensorView<float>{z.data(), 8, {64, 12, 12}},
                 Phase::Eval, StepInfo{1, 0, 128});
  EXPECT_EQ(z, x);
}

TEST(Dropout, EveryElementOfARaggedSampleHasItsOwnDraw) {
  // 15 elements per sample: the last group of four is partial, and samples do not start on a
  // group boundary of the flat batch. Each element must still be dropout_uniform's draw for it.
  LayerConfig c = simple("dropout");
  c.p = 0.5;
  auto layer = make_layer<float>(c, 3, Dims{3, 1, 5}, Device::Cpu);
  DeviceContext ctx;
  layer->reserve(ctx, 5);
  std::vector<float> x(5 * 15, 1.0f), y(x.size(), -1.0f);
  layer->forward(ctx, TensorView<const float>{x.data(), 5, {3, 1, 5}}, TensorView<float>{y.data(), 5, {3, 1, 5}},
                 Phase::Train, StepInfo{9, 2, 40});
  for (uint32_t s = 0; s < 5; ++s)
    for (uint32_t e = 0; e < 15; ++e)
      EXPECT_EQ(y[s * 15 + e], philox::dropout_uniform(9, 2, 3, 40 + s, e) >= 0.5f ? 2.0f : 0.0f) << s << "," << e;
}

TEST(Dropout, MaskDependsOnGlobalSampleNotBatchPosition) {
  // The same global sample gets the same mask whether it is first in a batch of 1 or last of 4:
  // what makes N ranks agree with one.
  LayerConfig c = simple("dropout");
  c.p = 0.5;
  auto layer = make_layer<float>(c, 1, Dims{10, 1, 1}, Device::Cpu);
  DeviceContext ctx;
  layer->reserve(ctx, 4);
  std::vector<float> x(40, 1.0f), four(40), one(10);
  layer->forward(ctx, TensorView<const float>{x.data(), 4, {10, 1, 1}}, TensorView<float>{four.data(), 4, {10, 1, 1}},
                 Phase::Train, StepInfo{9, 2, 20});
  layer->forward(ctx, TensorView<const float>{x.data(), 1, {10, 1, 1}}, TensorView<float>{one.data(), 1, {10, 1, 1}},
                 Phase::Train, StepInfo{9, 2, 23});
  EXPECT_TRUE(std::equal(one.begin(), one.end(), four.begin() + 30));
}

TEST(Layers, ShapeErrorsNameTheLayer) {
  auto message = [](const LayerConfig& c, Dims in) {
    try {
      make_layer<float>(c, 4, in, Device::Cpu);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  LayerConfig big = conv(8, 7);
  big.name = "conv9";
  EXPECT_NE(message(big, Dims{1, 5, 5}).find("model.layers[4] (conv9): kernel 7 does not fit the input 1x5x5"),
            std::string::npos);
  LayerConfig zero = conv(0, 3);
  EXPECT_NE(message(zero, Dims{1, 5, 5}).find("out_channels must be > 0"), std::string::npos);
  LayerConfig pool = simple("maxpool2d");
  pool.kernel = 9;
  EXPECT_NE(message(pool, Dims{1, 4, 4}).find("(maxpool2d): kernel 9 does not fit"), std::string::npos);
  LayerConfig drop = simple("dropout");
  drop.p = 1.0;
  EXPECT_NE(message(drop, Dims{1, 4, 4}).find("p must be in [0, 1)"), std::string::npos);
  EXPECT_NE(message(simple("softmax"), Dims{1, 4, 4}).find("unknown layer type 'softmax'"), std::string::npos);
}

TEST(Layers, FloatAgreesWithDouble) {
  LayerConfig c = conv(4, 3, 1, 1);
  auto f = make_layer<float>(c, 0, Dims{3, 8, 8}, Device::Cpu);
  auto d = make_layer<double>(c, 0, Dims{3, 8, 8}, Device::Cpu);
  const std::vector<double> wd = random_vector(4 * 27, 7), bd = random_vector(4, 8), xd = random_vector(2 * 192, 9);
  std::vector<float> wf(wd.begin(), wd.end()), bf(bd.begin(), bd.end()), xf(xd.begin(), xd.end());
  std::vector<double> gwd(wd.size()), gbd(4), yd(2 * 256), wdc = wd, bdc = bd;
  std::vector<float> gwf(wf.size()), gbf(4), yf(2 * 256);
  d->bind({{wdc, gwd}, {bdc, gbd}});
  f->bind({{wf, gwf}, {bf, gbf}});
  DeviceContext ctx;
  d->reserve(ctx, 2);
  f->reserve(ctx, 2);
  d->forward(ctx, TensorView<const double>{xd.data(), 2, {3, 8, 8}}, TensorView<double>{yd.data(), 2, {4, 8, 8}}, Phase::Train, {});
  f->forward(ctx, TensorView<const float>{xf.data(), 2, {3, 8, 8}}, TensorView<float>{yf.data(), 2, {4, 8, 8}}, Phase::Train, {});
  for (size_t i = 0; i < yd.size(); ++i) EXPECT_NEAR(yf[i], yd[i], 1e-5 * std::max(1.0, std::abs(yd[i])));
}

}  // namespace
}  // namespace dptrain
