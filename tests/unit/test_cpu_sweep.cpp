// The CPU backend's shape sweep: its float32 layers against a naive double-precision reference
// written here, over seeded random shapes from tests/sweep/shape_sweep.h (small limits, so the
// whole file runs in a few seconds on CI's two cores). Convolutions in forward, input gradient,
// weight gradient and bias gradient, with and without a max pooling after them (windows that tile
// the plane and ones that overlap, pad or leave a ragged edge); max pooling alone, on continuous
// values and on values full of ties; linear layers; softmax cross-entropy at 2 to 1000 classes;
// ReLU; dropout against its documented mask rule and the mask's statistics. Float results must be
// within 1e-5 of the reference in relative norm (||got - want|| / ||want||), as the GPU tests ask
// of the GPU against the CPU, measured against at least the size of the summed terms where a sum
// cancels by chance (error(), and the loss's floors); selections (ReLU, dropout, the pooled
// maximum) must match exactly. Outputs start as NaN, so an element a layer never writes fails.
// A failure names the shape (ConvShape::str() and friends) and its index in the seeded list.
//
// Also checks the generator itself: splitmix64's published values, determinism, prefix stability,
// legality within the limits, and that each family the issue names is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "core/philox.h"
#include "io/layer_types.h"
#include "layers/layer_factory.h"
#include "layers/softmax_cross_entropy.h"
#include "shape_sweep.h"

namespace dptrain {
namespace {

constexpr uint64_t kSeed = 0x5eed2024;
constexpr double kTolerance = 1e-5;       ///< float32 sums against the double reference (error())
constexpr double kRouteTolerance = 1e-6;  ///< sums of a few routed float gradients (pooling backward)
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

/// Uniform in [-scale, -0.05 scale] or [0.05 scale, scale]: never zero, so a skipped term shows.
std::vector<float> randoms(size_t n, uint64_t seed, double scale = 1.0) {
  sweep::Rng r(seed);
  std::vector<float> v(n);
  for (float& x : v) {
    const double m = (0.05 + 0.95 * r.unit()) * scale;
    x = static_cast<float>(r.next() & 1 ? m : -m);
  }
  return v;
}

/// ||got - want|| / max(||want||, floor) (||got - want|| when both are zero); NaN if got holds a NaN.
double rel(const std::vector<float>& got, const std::vector<double>& want, double floor = 0) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += want[i] * want[i];
  }
  den = std::max(den, floor * floor);
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

std::vector<double> widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }

/// A reference result: each element's exact sum, and the sum of its terms' squares (the size a sum
/// of random-signed terms has when nothing cancels).
struct Sums {
  std::vector<double> value, squares;
  explicit Sums(size_t n = 0) : value(n, 0.0), squares(n, 0.0) {}
  void add(size_t i, double term) {
    value[i] += term;
    squares[i] += term * term;
  }
};

/// ||got - want|| / max(||want||, sqrt(sum of squared terms)): the relative norm, except where the
/// sums cancel by chance below their terms' size (a bias gradient of one channel summing to nearly
/// zero), where float32's rounding, which scales with the terms, is measured against the terms.
/// Still a missed or doubled term shows at its own size. NaN if got holds a NaN.
double error(const std::vector<float>& got, const Sums& want) {
  double squares = 0;
  for (double q : want.squares) squares += q;
  return rel(got, want.value, std::sqrt(squares));
}

/// The worst relative error seen per quantity, printed at the end of a sweep.
struct Worst {
  double value = 0;
  void add(double e) { value = std::isnan(e) ? e : std::max(value, e); }
};

/// A float CPU layer with random parameters bound to it.
struct BoundLayer {
  std::unique_ptr<Layer<float>> layer;
  std::vector<std::vector<float>> values, grads;
};

BoundLayer build(const LayerConfig& config, int index, Dims in, int max_batch, uint64_t seed, DeviceContext& ctx) {
  BoundLayer b;
  b.layer = make_layer<float>(config, index, in, Device::Cpu);
  std::vector<ParamView<float>> views;
  uint64_t k = 0;
  for (const ParamSpec& spec : b.layer->param_specs()) {
    b.values.push_back(randoms(static_cast<size_t>(element_count(spec.shape)), seed + 100 * ++k));
    b.grads.emplace_back(b.values.back().size(), kNaN);
  }
  for (size_t i = 0; i < b.values.size(); ++i) views.push_back({b.values[i], b.grads[i]});
  b.layer->bind(std::move(views));
  b.layer->reserve(ctx, max_batch);
  return b;
}

LayerConfig layer_config(const std::string& type) {
  LayerConfig c;
  c.type = type;
  c.name = type;
  return c;
}

template <typename T>
TensorView<const T> view(const std::vector<T>& v, int n, Dims d) {
  return {v.data(), n, d};
}
template <typename T>
TensorView<T> view(std::vector<T>& v, int n, Dims d) {
  return {v.data(), n, d};
}

// ---------------------------------------------------------------------------------------------
// References
// ---------------------------------------------------------------------------------------------

struct ConvReference {
  Sums y, dx, dw, db;
};

/// Forward, input, weight and bias gradients of the convolution in one pass over its terms.
ConvReference conv_reference(const sweep::ConvShape& s, const std::vector<double>& x, const std::vector<double>& w,
                             const std::vector<double>& b, const std::vector<double>& dy) {
  const int oh = s.oh(), ow = s.ow();
  ConvReference r{Sums(static_cast<size_t>(s.output_elems())), Sums(static_cast<size_t>(s.input_elems())),
                  Sums(static_cast<size_t>(s.weight_elems())), Sums(static_cast<size_t>(s.oc))};
  for (int n = 0; n < s.n; ++n)
    for (int o = 0; o < s.oc; ++o)
      for (int oy = 0; oy < oh; ++oy)
        for (int ox = 0; ox < ow; ++ox) {
          const size_t yi = ((static_cast<size_t>(n) * s.oc + o) * oh + oy) * ow + ox;
          const double g = dy[yi];
          r.y.add(yi, b[o]);
          r.db.add(o, g);
          for (int ci = 0; ci < s.c; ++ci)
            for (int ky = 0; ky < s.k; ++ky) {
              const int iy = oy * s.stride - s.pad + ky;
              if (iy < 0 || iy >= s.h) continue;
              for (int kx = 0; kx < s.k; ++kx) {
                const int ix = ox * s.stride - s.pad + kx;
                if (ix < 0 || ix >= s.w) continue;
                const size_t xi = ((static_cast<size_t>(n) * s.c + ci) * s.h + iy) * s.w + ix;
                const size_t wi = ((static_cast<size_t>(o) * s.c + ci) * s.k + ky) * s.k + kx;
                r.y.add(yi, w[wi] * x[xi]);
                r.dx.add(xi, w[wi] * g);
                r.dw.add(wi, g * x[xi]);
              }
            }
        }
  return r;
}

struct PoolReference {
  std::vector<double> y, dx;
};

/// nn.MaxPool2d: the first maximum of each window in row-major order, padding never chosen; the
/// gradient of each output goes to that element.
PoolReference pool_reference(int planes, int h, int w, int k, int stride, int pad, const std::vector<double>& x,
                             const std::vector<double>& dy) {
  const int oh = (h + 2 * pad - k) / stride + 1, ow = (w + 2 * pad - k) / stride + 1;
  PoolReference r{std::vector<double>(static_cast<size_t>(planes) * oh * ow),
                  std::vector<double>(static_cast<size_t>(planes) * h * w, 0.0)};
  for (int p = 0; p < planes; ++p)
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox) {
        long best = -1;
        for (int yy = oy * stride - pad; yy < oy * stride - pad + k; ++yy)
          for (int xx = ox * stride - pad; xx < ox * stride - pad + k; ++xx) {
            if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
            const long at = (static_cast<long>(p) * h + yy) * w + xx;
            if (best < 0 || x[at] > x[best]) best = at;
          }
        const size_t oi = (static_cast<size_t>(p) * oh + oy) * ow + ox;
        r.y[oi] = x[best];
        r.dx[best] += dy[oi];
      }
  return r;
}

/// Where got (float) and want (double) differ as values; -1 when they agree everywhere.
long first_mismatch(const std::vector<float>& got, const std::vector<double>& want) {
  for (size_t i = 0; i < got.size(); ++i)
    if (static_cast<double>(got[i]) != want[i]) return static_cast<long>(i);
  return -1;
}

// ---------------------------------------------------------------------------------------------
// Convolutions (and the pooling after them)
// ---------------------------------------------------------------------------------------------

struct ConvWorst {
  Worst y, dx, dw, db, pool_dx;
};

void check_conv(const sweep::ConvShape& s, uint64_t seed, bool skip_input_gradient, ConvWorst& worst) {
  SCOPED_TRACE(s.str());
  ASSERT_TRUE(s.valid());
  DeviceContext ctx;
  LayerConfig cc = layer_config("conv2d");
  cc.out_channels = s.oc;
  cc.kernel = s.k;
  cc.stride = s.stride;
  cc.padding = s.pad;
  const Dims in{s.c, s.h, s.w}, cd{s.oc, s.oh(), s.ow()};
  BoundLayer conv = build(cc, 0, in, s.n, seed, ctx);
  ASSERT_EQ(conv.layer->output_dims(), cd);

  const std::vector<float> x = randoms(static_cast<size_t>(s.input_elems()), seed + 1);
  std::vector<float> y(static_cast<size_t>(s.output_elems()), kNaN), dy;
  conv.layer->forward(ctx, view(x, s.n, in), view(y, s.n, cd), Phase::Train, {});

  if (s.has_pool()) {
    // The pooling sees the convolution's float output; its reference pools those same values, so
    // the chosen maxima agree exactly and the routed gradient is what the convolution receives.
    LayerConfig pc = layer_config("maxpool2d");
    pc.kernel = s.pool_k;
    pc.stride = s.pool_stride;
    pc.padding = s.pool_pad;
    BoundLayer pool = build(pc, 1, cd, s.n, seed, ctx);
    const Dims pd{s.oc, s.pool_oh(), s.pool_ow()};
    ASSERT_EQ(pool.layer->output_dims(), pd);
    std::vector<float> z(static_cast<size_t>(s.n) * pd.count(), kNaN);
    pool.layer->forward(ctx, view(y, s.n, cd), view(z, s.n, pd), Phase::Train, {});
    const std::vector<float> dz = randoms(z.size(), seed + 2);
    dy.assign(y.size(), kNaN);
    pool.layer->backward(ctx, view(y, s.n, cd), view(z, s.n, pd), view(dz, s.n, pd), view(dy, s.n, cd));
    const PoolReference pr =
        pool_reference(s.n * s.oc, cd.h, cd.w, s.pool_k, s.pool_stride, s.pool_pad, widen(y), widen(dz));
    EXPECT_EQ(first_mismatch(z, pr.y), -1) << "pool forward picks another value";
    const double e = rel(dy, pr.dx);
    worst.pool_dx.add(e);
    EXPECT_LE(e, kRouteTolerance) << "pool input gradient";
  } else {
    dy = randoms(y.size(), seed + 2);
  }

  std::vector<float> dx(x.size(), kNaN);
  conv.layer->backward(ctx, view(x, s.n, in), view(y, s.n, cd), view(dy, s.n, cd), view(dx, s.n, in));
  const ConvReference ref = conv_reference(s, widen(x), widen(conv.values[0]), widen(conv.values[1]), widen(dy));
  const double ey = error(y, ref.y), edx = error(dx, ref.dx), edw = error(conv.grads[0], ref.dw),
               edb = error(conv.grads[1], ref.db);
  worst.y.add(ey);
  worst.dx.add(edx);
  worst.dw.add(edw);
  worst.db.add(edb);
  EXPECT_LE(ey, kTolerance) << "forward";
  EXPECT_LE(edx, kTolerance) << "input gradient";
  EXPECT_LE(edw, kTolerance) << "weight gradient";
  EXPECT_LE(edb, kTolerance) << "bias gradient";

  if (skip_input_gradient) {
    // A first layer's backward (no input gradient wanted) gives the same parameter gradients, bit
    // for bit.
    const std::vector<std::vector<float>> before = conv.grads;
    for (auto& g : conv.grads) std::fill(g.begin(), g.end(), kNaN);
    conv.layer->backward(ctx, view(x, s.n, in), view(y, s.n, cd), view(dy, s.n, cd),
                         TensorView<float>{nullptr, s.n, in});
    EXPECT_EQ(std::memcmp(before[0].data(), conv.grads[0].data(), before[0].size() * sizeof(float)), 0)
        << "weight gradient without an input gradient";
    EXPECT_EQ(std::memcmp(before[1].data(), conv.grads[1].data(), before[1].size() * sizeof(float)), 0)
        << "bias gradient without an input gradient";
  }
}

void sweep_convs(const std::vector<sweep::ConvShape>& shapes, uint64_t seed, const char* what) {
  ConvWorst worst;
  int pooled = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    SCOPED_TRACE("shape " + std::to_string(i) + " (" + sweep::to_string(sweep::conv_family(static_cast<int>(i))) + ")");
    check_conv(shapes[i], seed + 1000 * i, i % 4 == 3, worst);
    pooled += shapes[i].has_pool();
  }
  std::printf(
      "cpu sweep, %s: %zu convolutions (%d pooled); worst relative error forward %.2g, input gradient %.2g, "
      "weight gradient %.2g, bias gradient %.2g, pool input gradient %.2g\n",
      what, shapes.size(), pooled, worst.y.value, worst.dx.value, worst.dw.value, worst.db.value, worst.pool_dx.value);
}

TEST(CpuSweep, Conv2dAgainstDoubleReference) {
  sweep_convs(sweep::conv_shapes(kSeed, 21 * sweep::kConvFamilies, sweep::ConvLimits::small()), kSeed, "small");
}

TEST(CpuSweep, Conv2dWideChannelsAgainstDoubleReference) {
  // Channels up to 256 on images of 5 to 8 pixels.
  sweep_convs(sweep::conv_shapes(kSeed + 1, 2 * sweep::kConvFamilies, sweep::ConvLimits::small_wide()), kSeed + 1,
              "wide channels");
}

// ---------------------------------------------------------------------------------------------
// Max pooling alone
// ---------------------------------------------------------------------------------------------

TEST(CpuSweep, MaxPool2dAgainstReference) {
  const std::vector<sweep::PoolShape> shapes = sweep::pool_shapes(kSeed, 90, sweep::PoolLimits::small());
  Worst worst;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const sweep::PoolShape& s = shapes[i];
    SCOPED_TRACE("shape " + std::to_string(i) + ": " + s.str());
    DeviceContext ctx;
    LayerConfig pc = layer_config("maxpool2d");
    pc.kernel = s.k;
    pc.stride = s.stride;
    pc.padding = s.pad;
    const Dims in{s.c, s.h, s.w}, od{s.c, s.oh(), s.ow()};
    BoundLayer pool = build(pc, 0, in, s.n, kSeed + i, ctx);
    ASSERT_EQ(pool.layer->output_dims(), od);
    std::vector<float> x = randoms(static_cast<size_t>(s.input_elems()), kSeed + 7 * i);
    if (i % 2 == 1) {
      // Few distinct values, all negative or small: most windows hold ties (the first maximum
      // wins) and a padded window must still choose a real pixel.
      for (float& v : x) v = std::round(v * 2.0f) / 2.0f - 1.5f;
    }
    std::vector<float> y(static_cast<size_t>(s.output_elems()), kNaN), dx(x.size(), kNaN);
    const std::vector<float> dy = randoms(y.size(), kSeed + 7 * i + 1);
    pool.layer->forward(ctx, view(x, s.n, in), view(y, s.n, od), Phase::Train, {});
    pool.layer->backward(ctx, view(x, s.n, in), view(y, s.n, od), view(dy, s.n, od), view(dx, s.n, in));
    const PoolReference ref = pool_reference(s.n * s.c, s.h, s.w, s.k, s.stride, s.pad, widen(x), widen(dy));
    const long at = first_mismatch(y, ref.y);
    EXPECT_EQ(at, -1) << "forward: output " << at << " is " << (at >= 0 ? y[at] : 0.0f) << ", want "
                      << (at >= 0 ? ref.y[at] : 0.0);
    const double e = rel(dx, ref.dx);
    worst.add(e);
    EXPECT_LE(e, kRouteTolerance) << "input gradient";
  }
  std::printf("cpu sweep: %zu max poolings; worst input gradient relative error %.2g\n", shapes.size(), worst.value);
}

// ---------------------------------------------------------------------------------------------
// Average pooling alone (avgpool2d, global_avgpool)
// ---------------------------------------------------------------------------------------------

TEST(CpuSweep, AvgPoolAgainstDoubleReference) {
  const std::vector<sweep::AvgPoolShape> shapes = sweep::avgpool_shapes(kSeed + 3, 90, sweep::PoolLimits::small());
  Worst wy, wdx;
  int globals = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const sweep::AvgPoolShape& a = shapes[i];
    const sweep::PoolShape& s = a.pool;
    SCOPED_TRACE("shape " + std::to_string(i) + ": " + a.str());
    globals += a.global;
    DeviceContext ctx;
    LayerConfig pc = layer_config(a.global ? "global_avgpool" : "avgpool2d");
    if (!a.global) pc.kernel = s.k, pc.stride = s.stride, pc.padding = s.pad;
    const Dims in{s.c, s.h, s.w}, od{s.c, a.oh(), a.ow()};
    BoundLayer pool = build(pc, 0, in, s.n, kSeed + i, ctx);
    ASSERT_EQ(pool.layer->output_dims(), od);
    const std::vector<float> x = randoms(static_cast<size_t>(s.input_elems()), kSeed + 13 * i);
    std::vector<float> y(static_cast<size_t>(a.output_elems()), kNaN), dx(x.size(), kNaN);
    const std::vector<float> dy = randoms(y.size(), kSeed + 13 * i + 1);
    pool.layer->forward(ctx, view(x, s.n, in), view(y, s.n, od), Phase::Train, {});
    pool.layer->backward(ctx, view(x, s.n, in), view(y, s.n, od), view(dy, s.n, od), view(dx, s.n, in));
    // nn.AvgPool2d (count_include_pad) in double: each window's padded sum / (kh kw); backward
    // scatters dy / (kh kw) over each window's pixels inside the plane.
    const int planes = s.n * s.c, oh = a.oh(), ow = a.ow(), kh = a.kh(), kw = a.kw();
    std::vector<double> ry(y.size(), 0.0), rdx(x.size(), 0.0);
    for (int p = 0; p < planes; ++p)
      for (int oy = 0; oy < oh; ++oy)
        for (int ox = 0; ox < ow; ++ox) {
          const size_t o = (static_cast<size_t>(p) * oh + oy) * ow + ox;
          for (int ky = 0; ky < kh; ++ky)
            for (int kx = 0; kx < kw; ++kx) {
              const int iy = oy * a.stride() - a.pad() + ky, ix = ox * a.stride() - a.pad() + kx;
              if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
              const size_t at = (static_cast<size_t>(p) * s.h + iy) * s.w + ix;
              ry[o] += x[at];
              rdx[at] += static_cast<double>(dy[o]) / (kh * kw);
            }
          ry[o] /= kh * kw;
        }
    const double ey = rel(y, ry), edx = rel(dx, rdx);
    wy.add(ey);
    wdx.add(edx);
    // Sums of at most a plane of floats (64 x 64 here), then one division.
    EXPECT_LE(ey, 1e-5) << "forward";
    EXPECT_LE(edx, 1e-5) << "input gradient";
  }
  EXPECT_GE(globals, 20);
  std::printf("cpu sweep: %zu average poolings (%d global); worst relative error forward %.2g, input gradient %.2g\n",
              shapes.size(), globals, wy.value, wdx.value);
}

// ---------------------------------------------------------------------------------------------
// Linear layers
// ---------------------------------------------------------------------------------------------

TEST(CpuSweep, LinearAgainstDoubleReference) {
  const std::vector<sweep::LinearShape> shapes = sweep::linear_shapes(kSeed, 60, sweep::LinearLimits::small());
  Worst wy, wdx, wdw, wdb;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const sweep::LinearShape& s = shapes[i];
    SCOPED_TRACE("shape " + std::to_string(i) + ": " + s.str());
    DeviceContext ctx;
    LayerConfig lc = layer_config("linear");
    lc.out_features = s.out;
    const Dims in{s.in, 1, 1}, od{s.out, 1, 1};
    BoundLayer lin = build(lc, 0, in, s.rows, kSeed + i, ctx);
    ASSERT_EQ(lin.layer->output_dims(), od);
    const std::vector<float> x = randoms(static_cast<size_t>(s.rows) * s.in, kSeed + 11 * i);
    const std::vector<float> dy = randoms(static_cast<size_t>(s.rows) * s.out, kSeed + 11 * i + 1);
    std::vector<float> y(dy.size(), kNaN), dx(x.size(), kNaN);
    lin.layer->forward(ctx, view(x, s.rows, in), view(y, s.rows, od), Phase::Train, {});
    lin.layer->backward(ctx, view(x, s.rows, in), view(y, s.rows, od), view(dy, s.rows, od), view(dx, s.rows, in));

    const std::vector<float>& w = lin.values[0];
    const std::vector<float>& b = lin.values[1];
    Sums ry(y.size()), rdx(x.size()), rdw(w.size()), rdb(b.size());
    for (int r = 0; r < s.rows; ++r)
      for (int o = 0; o < s.out; ++o) {
        const size_t yi = static_cast<size_t>(r) * s.out + o;
        const double g = dy[yi];
        ry.add(yi, b[o]);
        rdb.add(o, g);
        for (int k = 0; k < s.in; ++k) {
          const size_t xi = static_cast<size_t>(r) * s.in + k, wi = static_cast<size_t>(o) * s.in + k;
          ry.add(yi, static_cast<double>(w[wi]) * x[xi]);
          rdx.add(xi, static_cast<double>(w[wi]) * g);
          rdw.add(wi, g * x[xi]);
        }
      }
    const double ey = error(y, ry), edx = error(dx, rdx), edw = error(lin.grads[0], rdw),
                 edb = error(lin.grads[1], rdb);
    wy.add(ey), wdx.add(edx), wdw.add(edw), wdb.add(edb);
    EXPECT_LE(ey, kTolerance) << "forward";
    EXPECT_LE(edx, kTolerance) << "input gradient";
    EXPECT_LE(edw, kTolerance) << "weight gradient";
    EXPECT_LE(edb, kTolerance) << "bias gradient";
  }
  std::printf(
      "cpu sweep: %zu linear layers; worst relative error forward %.2g, input gradient %.2g, weight gradient "
      "%.2g, bias gradient %.2g\n",
      shapes.size(), wy.value, wdx.value, wdw.value, wdb.value);
}

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy
// ---------------------------------------------------------------------------------------------

TEST(CpuSweep, SoftmaxCrossEntropyAgainstDoubleReference) {
  const std::vector<sweep::LossShape> shapes = sweep::loss_shapes(kSeed, 40, sweep::LossLimits::small());
  auto loss = make_softmax_cross_entropy<float>(Device::Cpu);
  Worst wloss, wgrad;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const sweep::LossShape& s = shapes[i];
    // Logits of spread 1, 8 and 30; every third shape shifted by +100, where exp overflows float
    // unless the maximum is subtracted first.
    const double spread = i % 3 == 0 ? 1.0 : i % 3 == 1 ? 8.0 : 30.0;
    const float shift = i % 3 == 2 ? 100.0f : 0.0f;
    SCOPED_TRACE("shape " + std::to_string(i) + ": " + s.str() + " spread " + std::to_string(spread) + " shift " +
                 std::to_string(shift));
    DeviceContext ctx;
    const Dims d{s.classes, 1, 1};
    std::vector<float> logits = randoms(static_cast<size_t>(s.rows) * s.classes, kSeed + 13 * i, spread);
    for (float& v : logits) v += shift;
    sweep::Rng label_rng(kSeed + 13 * i + 1);
    std::vector<int32_t> labels(s.rows);
    for (int32_t& l : labels) l = label_rng.uniform_int(0, s.classes - 1);
    const float scale = 1.0f / static_cast<float>(s.rows);
    std::vector<float> grad(logits.size(), kNaN);
    double sums[2] = {0.0, 0.0};
    loss->forward_backward(ctx, view(logits, s.rows, d), labels.data(), scale, view(grad, s.rows, d), sums);

    double want_loss = 0, loss_floor = 0;
    int want_correct = 0;
    std::vector<double> want_grad(grad.size());
    for (int r = 0; r < s.rows; ++r) {
      const float* x = logits.data() + static_cast<size_t>(r) * s.classes;
      int best = 0;
      for (int c = 1; c < s.classes; ++c)
        if (x[c] > x[best]) best = c;
      double z = 0;
      for (int c = 0; c < s.classes; ++c) z += std::exp(static_cast<double>(x[c]) - x[best]);
      const double lse = x[best] + std::log(z);
      want_loss += lse - x[labels[r]];
      loss_floor += std::max(1.0, std::abs(static_cast<double>(x[best])));
      want_correct += best == labels[r];
      for (int c = 0; c < s.classes; ++c)
        want_grad[static_cast<size_t>(r) * s.classes + c] =
            (std::exp(x[c] - lse) - (c == labels[r] ? 1.0 : 0.0)) * static_cast<double>(scale);
    }
    // Float32 resolves a row's loss, max + log(sum) - logit, to about its largest logit's rounding,
    // and a gradient entry, softmax - onehot, to about 1e-7 of 1: the errors are measured against
    // at least those sizes (a confident row's loss and gradient vanish below them).
    const double el = std::abs(sums[0] - want_loss) / std::max(std::abs(want_loss), loss_floor);
    const double eg = rel(grad, want_grad, std::sqrt(static_cast<double>(s.rows)) * scale);
    wloss.add(el), wgrad.add(eg);
    EXPECT_LE(el, kTolerance) << "loss " << sums[0] << ", want " << want_loss;
    EXPECT_EQ(sums[1], want_correct) << "correct predictions";
    EXPECT_LE(eg, kTolerance) << "gradient";

    // Without a gradient buffer (evaluation): the same sums, added to what is there.
    double again[2] = {1.0, 2.0};
    loss->forward_backward(ctx, view(logits, s.rows, d), labels.data(), scale, TensorView<float>{nullptr, s.rows, d},
                           again);
    EXPECT_EQ(again[0], 1.0 + sums[0]);
    EXPECT_EQ(again[1], 2.0 + sums[1]);
  }
  std::printf("cpu sweep: %zu losses; worst relative error loss %.2g, gradient %.2g\n", shapes.size(), wloss.value,
              wgrad.value);
}

// ---------------------------------------------------------------------------------------------
// ReLU and dropout
// ---------------------------------------------------------------------------------------------

TEST(CpuSweep, ReluMatchesExactly) {
  for (const sweep::ElementwiseShape& s : sweep::elementwise_shapes(kSeed, 24, sweep::ElementwiseLimits::small())) {
    SCOPED_TRACE(s.str());
    DeviceContext ctx;
    const Dims d{s.c, s.h, s.w};
    BoundLayer relu = build(layer_config("relu"), 0, d, s.n, kSeed, ctx);
    const std::vector<float> x = randoms(static_cast<size_t>(s.elems()), kSeed + s.elems());
    const std::vector<float> dy = randoms(x.size(), kSeed + s.elems() + 1);
    std::vector<float> y(x.size(), kNaN), dx(x.size(), kNaN);
    relu.layer->forward(ctx, view(x, s.n, d), view(y, s.n, d), Phase::Train, {});
    relu.layer->backward(ctx, view(x, s.n, d), view(y, s.n, d), view(dy, s.n, d), view(dx, s.n, d));
    size_t bad = 0;
    for (size_t i = 0; i < x.size(); ++i) bad += y[i] != (x[i] > 0 ? x[i] : 0.0f) || dx[i] != (x[i] > 0 ? dy[i] : 0.0f);
    EXPECT_EQ(bad, 0u) << "elements that differ";
  }
}

TEST(CpuSweep, DropoutFollowsItsMaskRuleAndBackwardUsesTheSameMask) {
  // Every element: kept (x * 1/(1-p)) exactly when philox::dropout_uniform(seed, epoch, layer,
  // first_sample + sample, element) >= p, else 0; backward passes dout through the same mask; Eval
  // is the identity. The dropped fraction, over every shape of a p, within five standard errors.
  const std::vector<double> ps{0.0, 0.1, 0.25, 0.5, 0.9};
  std::vector<double> dropped(ps.size(), 0), total(ps.size(), 0);
  const std::vector<sweep::ElementwiseShape> shapes =
      sweep::elementwise_shapes(kSeed + 5, 40, sweep::ElementwiseLimits::small());
  for (size_t i = 0; i < shapes.size(); ++i) {
    const sweep::ElementwiseShape& s = shapes[i];
    const size_t pi = i % ps.size();
    const int index = static_cast<int>(i % 7) + 1;
    const StepInfo step{kSeed + i, static_cast<uint32_t>(i % 3), static_cast<uint32_t>(17 * i)};
    SCOPED_TRACE(s.str() + " p=" + std::to_string(ps[pi]) + " layer " + std::to_string(index));
    DeviceContext ctx;
    LayerConfig dc = layer_config("dropout");
    dc.p = ps[pi];
    const Dims d{s.c, s.h, s.w};
    BoundLayer drop = build(dc, index, d, s.n, kSeed, ctx);
    const std::vector<float> x = randoms(static_cast<size_t>(s.elems()), kSeed + 3 * i);
    const std::vector<float> dy = randoms(x.size(), kSeed + 3 * i + 1);
    std::vector<float> y(x.size(), kNaN), dx(x.size(), kNaN), e(x.size(), kNaN);
    drop.layer->forward(ctx, view(x, s.n, d), view(y, s.n, d), Phase::Train, step);
    drop.layer->backward(ctx, view(x, s.n, d), view(y, s.n, d), view(dy, s.n, d), view(dx, s.n, d));
    const float p = static_cast<float>(ps[pi]), scale = static_cast<float>(1.0 / (1.0 - ps[pi]));
    const int64_t per = s.sample_elems();
    size_t wrong_rule = 0, wrong_backward = 0, zeros = 0;
    for (int n = 0; n < s.n; ++n)
      for (int64_t k = 0; k < per; ++k) {
        const size_t at = static_cast<size_t>(n * per + k);
        const bool keep =
            philox::dropout_uniform(step.seed, step.epoch, static_cast<uint32_t>(index),
                                    step.first_sample + static_cast<uint32_t>(n), static_cast<uint32_t>(k)) >= p;
        wrong_rule += y[at] != (keep ? x[at] * scale : 0.0f);
        // Inputs are never zero, so a zero output is a dropped element.
        wrong_backward += dx[at] != (y[at] != 0.0f ? dy[at] * scale : 0.0f);
        zeros += y[at] == 0.0f;
      }
    EXPECT_EQ(wrong_rule, 0u) << "outputs off the mask rule";
    EXPECT_EQ(wrong_backward, 0u) << "input gradients not through the forward mask";
    dropped[pi] += static_cast<double>(zeros);
    total[pi] += static_cast<double>(x.size());
    drop.layer->forward(ctx, view(x, s.n, d), view(e, s.n, d), Phase::Eval, step);
    EXPECT_EQ(e, x) << "evaluation is not the identity";
  }
  for (size_t pi = 0; pi < ps.size(); ++pi) {
    const double frac = dropped[pi] / total[pi], sd = std::sqrt(ps[pi] * (1 - ps[pi]) / total[pi]);
    EXPECT_NEAR(frac, ps[pi], 5 * sd + 1e-12) << "p=" << ps[pi] << " over " << total[pi] << " elements";
    std::printf("cpu sweep: dropout p=%.2f dropped %.4f of %.0f elements\n", ps[pi], frac, total[pi]);
  }
}

// ---------------------------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------------------------

TEST(ShapeSweep, GeneratorIsSplitMix64) {
  // The published first outputs of splitmix64 seeded with 0: the same shapes on every library.
  sweep::Rng r(0);
  EXPECT_EQ(r.next(), 0xe220a8397b1dcdafull);
  EXPECT_EQ(r.next(), 0x6e789e6aa1b965f4ull);
  EXPECT_EQ(r.next(), 0x06c45d188009454full);
  sweep::Rng u(42);
  for (int i = 0; i < 1000; ++i) {
    const int64_t v = u.uniform(-3, 5), l = u.log_uniform(1, 8192);
    ASSERT_TRUE(v >= -3 && v <= 5) << v;
    ASSERT_TRUE(l >= 1 && l <= 8192) << l;
  }
}

TEST(ShapeSweep, ListsAreDeterministicAndPrefixStable) {
  for (const sweep::ConvLimits& lim :
       {sweep::ConvLimits::small(), sweep::ConvLimits::small_wide(), sweep::ConvLimits::large()}) {
    const auto a = sweep::conv_shapes(kSeed, 150, lim);
    EXPECT_EQ(a, sweep::conv_shapes(kSeed, 150, lim));
    const auto prefix = sweep::conv_shapes(kSeed, 10, lim);
    EXPECT_TRUE(std::equal(prefix.begin(), prefix.end(), a.begin()));
    EXPECT_NE(a, sweep::conv_shapes(kSeed + 1, 150, lim));
  }
  EXPECT_EQ(sweep::linear_shapes(3, 50, sweep::LinearLimits::large()),
            sweep::linear_shapes(3, 50, sweep::LinearLimits::large()));
  EXPECT_EQ(sweep::loss_shapes(3, 50, sweep::LossLimits::large()),
            sweep::loss_shapes(3, 50, sweep::LossLimits::large()));
  EXPECT_EQ(sweep::pool_shapes(3, 50, sweep::PoolLimits::large()),
            sweep::pool_shapes(3, 50, sweep::PoolLimits::large()));
  EXPECT_EQ(sweep::elementwise_shapes(3, 50, sweep::ElementwiseLimits::large()),
            sweep::elementwise_shapes(3, 50, sweep::ElementwiseLimits::large()));
}

/// Every shape legal and inside its limits.
void expect_within(const std::vector<sweep::ConvShape>& shapes, const sweep::ConvLimits& lim) {
  for (const sweep::ConvShape& s : shapes) {
    SCOPED_TRACE(s.str());
    EXPECT_TRUE(s.valid());
    EXPECT_GE(s.oh(), 1);
    EXPECT_GE(s.ow(), 1);
    EXPECT_LE(s.n, lim.max_batch);
    EXPECT_LE(std::max(s.c, s.oc), lim.max_channels);
    EXPECT_TRUE(s.h >= lim.min_image && s.h <= lim.max_image && s.w >= lim.min_image && s.w <= lim.max_image);
    EXPECT_TRUE(s.k >= 1 && s.k <= 7 && s.stride >= 1 && s.stride <= 3 && s.pad >= 0 && s.pad <= 3);
    EXPECT_TRUE(lim.wide_padding || s.pad < s.k);
    EXPECT_LE(s.input_elems(), lim.max_input);
    EXPECT_LE(s.output_elems(), lim.max_output);
    EXPECT_LE(s.flops(), lim.max_flops);
  }
}

TEST(ShapeSweep, ConvShapesCoverTheFamilies) {
  const sweep::ConvLimits small = sweep::ConvLimits::small();
  const auto shapes = sweep::conv_shapes(kSeed, 21 * sweep::kConvFamilies, small);
  expect_within(shapes, small);
  auto any = [&](auto&& pred) { return std::any_of(shapes.begin(), shapes.end(), pred); };
  using S = const sweep::ConvShape&;
  EXPECT_TRUE(any([](S s) { return s.c % 32 != 0 && s.oc % 32 != 0; })) << "channels off multiples of 32";
  EXPECT_TRUE(any([](S s) { return s.c == 32 && s.oc == 32 && s.k == 3 && s.stride == 1; })) << "tiled 3x3 shape";
  EXPECT_TRUE(any([](S s) { return s.c % 32 != 0 && s.k == 3 && s.stride == 1 && s.c > 30; })) << "3x3, one off 32";
  EXPECT_TRUE(any([](S s) { return s.c * s.k * s.k <= 32; })) << "direct-kernel shape";
  EXPECT_TRUE(any([](S s) { return s.stride == 3; })) << "stride 3";
  EXPECT_TRUE(any([](S s) { return s.pad == 3 && s.k > 3; })) << "padding 3";
  EXPECT_TRUE(any([](S s) { return s.pad >= s.k; })) << "padding wider than the kernel";
  EXPECT_TRUE(any([](S s) { return s.k == 7; })) << "kernel 7";
  EXPECT_TRUE(any([](S s) { return s.k == 1; })) << "kernel 1";
  EXPECT_TRUE(any([](S s) { return s.h != s.w; })) << "non-square image";
  EXPECT_TRUE(any([](S s) { return s.pool_tiles(); })) << "tiling pool";
  EXPECT_TRUE(any([](S s) { return s.has_pool() && !s.pool_tiles(); })) << "non-tiling pool";
  EXPECT_TRUE(any([](S s) { return s.has_pool() && s.pool_pad > 0; })) << "padded pool";
  EXPECT_TRUE(any([](S s) { return s.n == 1; })) << "batch 1";
  EXPECT_TRUE(any([&](S s) { return s.n == small.max_batch; })) << "largest batch";

  const sweep::ConvLimits wide = sweep::ConvLimits::small_wide();
  const auto wide_shapes = sweep::conv_shapes(kSeed + 1, 2 * sweep::kConvFamilies, wide);
  expect_within(wide_shapes, wide);
  EXPECT_TRUE(std::any_of(wide_shapes.begin(), wide_shapes.end(), [](S s) { return std::max(s.c, s.oc) > 128; }));

  // The full range (what the GPU sweep asks for) reaches the corners.
  const sweep::ConvLimits large = sweep::ConvLimits::large();
  const auto big = sweep::conv_shapes(kSeed, 300, large);
  expect_within(big, large);
  auto any_big = [&](auto&& pred) { return std::any_of(big.begin(), big.end(), pred); };
  EXPECT_TRUE(any_big([](S s) { return s.n >= 4096; })) << "batch >= 4096";
  EXPECT_TRUE(any_big([](S s) { return s.n == 1; })) << "batch 1";
  EXPECT_TRUE(any_big([](S s) { return s.c == 256 || s.oc == 256; })) << "256 channels";
  EXPECT_TRUE(any_big([](S s) { return std::max(s.h, s.w) >= 56; })) << "large image";
  EXPECT_TRUE(any_big([](S s) { return s.c % 32 == 0 && s.oc % 32 == 0 && s.k == 3 && s.stride == 1 && s.c >= 64; }));
}

TEST(ShapeSweep, OtherShapesCoverTheirRanges) {
  const auto lin = sweep::linear_shapes(kSeed, 200, sweep::LinearLimits::large());
  for (const auto& s : lin) {
    EXPECT_TRUE(s.valid() && s.rows <= 8192 && s.in <= 10000 && s.out <= 1000) << s.str();
  }
  EXPECT_TRUE(std::any_of(lin.begin(), lin.end(), [](const auto& s) { return s.rows >= 4096; }));
  EXPECT_TRUE(std::any_of(lin.begin(), lin.end(), [](const auto& s) { return s.rows == 1; }));
  EXPECT_TRUE(std::any_of(lin.begin(), lin.end(), [](const auto& s) { return s.in >= 9216; }));
  EXPECT_TRUE(std::any_of(lin.begin(), lin.end(), [](const auto& s) { return s.out <= 32; }));

  const auto loss = sweep::loss_shapes(kSeed, 200, sweep::LossLimits::large());
  for (const auto& s : loss) EXPECT_TRUE(s.valid() && s.rows <= 8192 && s.classes <= 1000) << s.str();
  EXPECT_TRUE(std::any_of(loss.begin(), loss.end(), [](const auto& s) { return s.classes == 2; }));
  EXPECT_TRUE(std::any_of(loss.begin(), loss.end(), [](const auto& s) { return s.classes >= 999; }));
  EXPECT_TRUE(std::any_of(loss.begin(), loss.end(), [](const auto& s) { return s.rows >= 4096; }));

  const auto small_loss = sweep::loss_shapes(kSeed, 40, sweep::LossLimits::small());
  EXPECT_TRUE(std::any_of(small_loss.begin(), small_loss.end(), [](const auto& s) { return s.classes >= 500; }));
  EXPECT_TRUE(std::any_of(small_loss.begin(), small_loss.end(), [](const auto& s) { return s.classes <= 3; }));

  const auto pools = sweep::pool_shapes(kSeed, 90, sweep::PoolLimits::small());
  for (const auto& s : pools) EXPECT_TRUE(s.valid() && s.oh() >= 1 && s.ow() >= 1) << s.str();
  EXPECT_TRUE(std::any_of(pools.begin(), pools.end(), [](const auto& s) { return s.tiles(); }));
  EXPECT_TRUE(std::any_of(pools.begin(), pools.end(), [](const auto& s) { return !s.tiles() && s.pad > 0; }));
  EXPECT_TRUE(std::any_of(pools.begin(), pools.end(), [](const auto& s) { return s.k == 3 && s.stride == 2; }));
  EXPECT_TRUE(std::any_of(pools.begin(), pools.end(), [](const auto& s) { return s.stride > s.k; }));

  const auto elems = sweep::elementwise_shapes(kSeed, 40, sweep::ElementwiseLimits::small());
  EXPECT_TRUE(std::any_of(elems.begin(), elems.end(), [](const auto& s) { return s.sample_elems() % 4 != 0; }));
}

// What the GPU sweep builds layers from must be shapes the layers accept (io/layer_types.h): flat
// samples past kMaxSide values are laid out over two sides, not refused at the layer's constructor.
TEST(ShapeSweep, ElementwiseShapesAreOnesTheLayersAccept) {
  static_assert(sweep::kMaxLayerSide == kMaxSide);
  const auto elems = sweep::elementwise_shapes(6, 300, sweep::ElementwiseLimits::large());
  for (const auto& s : elems) EXPECT_EQ(shape_size_problem(Dims{s.c, s.h, s.w}), "") << s.str();
  EXPECT_TRUE(std::any_of(elems.begin(), elems.end(), [](const auto& s) { return s.sample_elems() > kMaxSide; }));
  sweep::ElementwiseShape s;
  ASSERT_TRUE(sweep::lay_out_flat(65535 * 256 + 3, s));
  EXPECT_EQ(s.sample_elems(), 65535 * 256 + 3);
  EXPECT_FALSE(sweep::lay_out_flat(65535 * 256 + 1, s)) << "a prime past the bound has no layout";
}

}  // namespace
}  // namespace dptrain
