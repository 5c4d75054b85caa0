// dptrain's 3x3 convolution kernels against a double-precision CPU reference: the register-tiled FMA ones
// (kernels/conv_tiled.h) and the tensor-core ones (kernels/conv_mma.h) in 3xTF32, all within 1e-5, and in TF32,
// within 2e-3. Forward (with and without ReLU), input gradient and filter/bias gradient, for mnist_cnn's conv2 at
// batches 64, 5 and 1, a 64->32 channel pad-2 shape (conv2's input gradient as a forward convolution), and odd sizes
// that leave partial tiles. Outputs are poisoned with NaN before each call; two calls must agree bit for bit.
// Skipped without a GPU.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <random>
#include <vector>

#include "core/buffer.h"
#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "kernels/conv_mma.h"
#include "kernels/conv_tiled.h"
#include "gpu_test_support.h"
#include "host_copies.h"

namespace dptrain {
namespace {

using kernels::ConvGeometry;

class TiledConv : public gpu_test::KernelTest {};

using gpu_test::nonzero_randoms;

size_t input_count(const ConvGeometry& g) { return size_t(g.n) * g.c * g.h * g.w; }
size_t output_count(const ConvGeometry& g) { return size_t(g.n) * g.oc * g.oh * g.ow; }
size_t weight_count(const ConvGeometry& g) { return size_t(g.oc) * g.c * g.k * g.k; }

/// Calls f(s, o, oy, ox, ci, ky, kx, x index) for every term of the convolution.
template <typename F>
void for_each_term(const ConvGeometry& g, F&& f) {
  for (int s = 0; s < g.n; ++s)
    for (int o = 0; o < g.oc; ++o)
      for (int oy = 0; oy < g.oh; ++oy)
        for (int ox = 0; ox < g.ow; ++ox)
          for (int ci = 0; ci < g.c; ++ci)
            for (int ky = 0; ky < g.k; ++ky) {
              const int iy = oy - g.pad + ky;
              if (iy < 0 || iy >= g.h) continue;
              for (int kx = 0; kx < g.k; ++kx) {
                const int ix = ox - g.pad + kx;
                if (ix < 0 || ix >= g.w) continue;
                f(s, o, oy, ox, ci, ky, kx, ((size_t(s) * g.c + ci) * g.h + iy) * g.w + ix);
              }
            }
}

size_t out_index(const ConvGeometry& g, int s, int o, int oy, int ox) {
  return ((size_t(s) * g.oc + o) * g.oh + oy) * g.ow + ox;
}
size_t w_index(const ConvGeometry& g, int o, int ci, int ky, int kx) {
  return ((size_t(o) * g.c + ci) * g.k + ky) * g.k + kx;
}

/// ||a - b|| / ||b||
double rel(const std::vector<float>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

/// Runs op twice on poisoned outputs; checks the two results are bit-identical and NaN-free, returns the last.
template <typename Op>
std::vector<std::vector<float>> run_twice(std::vector<Buffer<float>*> outs, Op&& op) {
  std::vector<std::vector<float>> first, second;
  for (int run = 0; run < 2; ++run) {
    for (Buffer<float>* b : outs) poison(*b);
    op();
    CUDA_CHECK(cudaDeviceSynchronize());
    auto& results = run == 0 ? first : second;
    for (Buffer<float>* b : outs) results.push_back(to_host(*b));
  }
  for (size_t i = 0; i < outs.size(); ++i) {
    EXPECT_EQ(std::memcmp(first[i].data(), second[i].data(), first[i].size() * sizeof(float)), 0)
        << "output " << i << " differs between two runs";
    size_t nans = 0;
    for (float v : second[i]) nans += std::isnan(v);
    EXPECT_EQ(nans, 0u) << "output " << i << " has NaN (unwritten) elements";
  }
  return second;
}

/// One family of kernels under test, with the relative error it must stay within.
struct Family {
  const char* name;
  double tolerance;
  bool (*fits)(const ConvGeometry&);
  size_t (*scratch)(const ConvGeometry&);
  void (*forward)(const float* x, const float* w, const float* b, float* y, bool relu, void* scratch,
                  const ConvGeometry& g);
  void (*backward_data)(const float* dy, const float* w, float* dx, void* scratch, const ConvGeometry& g);
  void (*filter_grad)(const float* x, const float* dy, float* dw, float* db, void* scratch, const ConvGeometry& g);
};

template <kernels::MmaMath kMath>
Family mma_family(const char* name, double tolerance) {
  return {name, tolerance, kernels::mma_conv_fits, kernels::mma_conv_scratch,
          [](const float* x, const float* w, const float* b, float* y, bool relu, void* scratch, const ConvGeometry& g) {
            kernels::mma_conv_forward(x, w, b, y, relu, scratch, kMath, g, nullptr);
          },
          [](const float* dy, const float* w, float* dx, void* scratch, const ConvGeometry& g) {
            kernels::mma_conv_backward_data(dy, w, dx, scratch, kMath, g, nullptr);
          },
          [](const float* x, const float* dy, float* dw, float* db, void* scratch, const ConvGeometry& g) {
            kernels::mma_conv_filter_grad(x, dy, dw, db, scratch, kMath, g, nullptr);
          }};
}

const Family kFamilies[] = {
    {"tiled FMA", 1e-5, kernels::tiled_conv_fits, kernels::tiled_conv_scratch,
     [](const float* x, const float* w, const float* b, float* y, bool relu, void*, const ConvGeometry& g) {
       kernels::tiled_conv_forward(x, w, b, y, relu, g, nullptr);
     },
     [](const float* dy, const float* w, float* dx, void* scratch, const ConvGeometry& g) {
       kernels::tiled_conv_backward_data(dy, w, dx, scratch, g, nullptr);
     },
     [](const float* x, const float* dy, float* dw, float* db, void* scratch, const ConvGeometry& g) {
       kernels::tiled_conv_filter_grad(x, dy, dw, db, scratch, g, nullptr);
     }},
    mma_family<kernels::MmaMath::SplitTf32>("mma 3xTF32", 1e-5),
    mma_family<kernels::MmaMath::Tf32>("mma TF32", 2e-3),
};

/// Checks one result and prints its error (the families' accuracy, side by side in the log).
void expect_close(const Family& f, const char* what, const std::vector<float>& out, const std::vector<double>& ref) {
  const double r = rel(out, ref);
  std::cout << "[ error    ] " << f.name << " " << what << ": " << r << "\n";
  EXPECT_LT(r, f.tolerance) << f.name << " " << what;
}

void check_family(const Family& f, const ConvGeometry& g, uint32_t seed);

void check_shape(const ConvGeometry& g, uint32_t seed) {
  for (const Family& f : kFamilies) check_family(f, g, seed);
}

void check_family(const Family& f, const ConvGeometry& g, uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << f.name << ": n=" << g.n << " c=" << g.c << " " << g.h << "x" << g.w
                                    << " oc=" << g.oc << " pad=" << g.pad);
  ASSERT_TRUE(f.fits(g));
  const std::vector<float> x = nonzero_randoms(input_count(g), seed), w = nonzero_randoms(weight_count(g), seed + 1),
                           b = nonzero_randoms(size_t(g.oc), seed + 2), dy = nonzero_randoms(output_count(g), seed + 3);
  Buffer<float> dx_buf = to_device(x), dw_buf = to_device(w), db_buf = to_device(b), ddy = to_device(dy);
  Buffer<float> y(Device::Cuda, output_count(g)), dx(Device::Cuda, input_count(g)),
      dw(Device::Cuda, weight_count(g)), db(Device::Cuda, size_t(g.oc));
  Buffer<float> scratch(Device::Cuda, f.scratch(g) / sizeof(float) + 1);

  std::vector<double> y_ref(output_count(g), 0.0), dx_ref(input_count(g), 0.0), dw_ref(weight_count(g), 0.0),
      db_ref(size_t(g.oc), 0.0);
  for_each_term(g, [&](int s, int o, int oy, int ox, int ci, int ky, int kx, size_t xi) {
    const size_t yi = out_index(g, s, o, oy, ox), wi = w_index(g, o, ci, ky, kx);
    y_ref[yi] += double(w[wi]) * x[xi];
    dx_ref[xi] += double(w[wi]) * dy[yi];
    dw_ref[wi] += double(dy[yi]) * x[xi];
  });
  for (int s = 0; s < g.n; ++s)
    for (int o = 0; o < g.oc; ++o)
      for (int p = 0; p < g.oh * g.ow; ++p) {
        y_ref[out_index(g, s, o, 0, 0) + p] += b[o];
        db_ref[o] += dy[out_index(g, s, o, 0, 0) + p];
      }

  for (bool relu : {false, true}) {
    SCOPED_TRACE(relu ? "forward with relu" : "forward");
    const auto out = run_twice({&y}, [&] {
      f.forward(dx_buf.data(), dw_buf.data(), db_buf.data(), y.data(), relu, scratch.data(), g);
    });
    std::vector<double> ref = y_ref;
    if (relu)
      for (double& v : ref) v = std::max(v, 0.0);
    expect_close(f, relu ? "forward+relu" : "forward", out[0], ref);
  }
  {
    SCOPED_TRACE("backward data");
    const auto out = run_twice({&dx}, [&] {
      f.backward_data(ddy.data(), dw_buf.data(), dx.data(), scratch.data(), g);
    });
    expect_close(f, "backward-data", out[0], dx_ref);
  }
  {
    SCOPED_TRACE("filter gradient");
    const auto out = run_twice({&dw, &db}, [&] {
      f.filter_grad(dx_buf.data(), ddy.data(), dw.data(), db.data(), scratch.data(), g);
    });
    expect_close(f, "filter", out[0], dw_ref);
    expect_close(f, "bias", out[1], db_ref);
  }
}

ConvGeometry conv3x3(int n, int c, int h, int w, int oc, int pad) {
  return ConvGeometry{n, c, h, w, oc, h + 2 * pad - 2, w + 2 * pad - 2, 3, 1, pad};
}

TEST_F(TiledConv, MnistConv2Batch64) { check_shape(conv3x3(64, 32, 26, 26, 64, 0), 1); }
TEST_F(TiledConv, MnistConv2Batch5) { check_shape(conv3x3(5, 32, 26, 26, 64, 0), 11); }
TEST_F(TiledConv, MnistConv2Batch1) { check_shape(conv3x3(1, 32, 26, 26, 64, 0), 21); }
// conv2's input gradient as a forward convolution: 64 -> 32 channels, 24x24 -> 26x26.
TEST_F(TiledConv, SixtyFourToThirtyTwoPad2) { check_shape(conv3x3(3, 64, 24, 24, 32, 2), 31); }
TEST_F(TiledConv, OddSizesPad1) { check_shape(conv3x3(2, 32, 13, 11, 32, 1), 41); }
TEST_F(TiledConv, OddSizesPad0NinetySixChannels) { check_shape(conv3x3(3, 64, 7, 9, 96, 0), 51); }
TEST_F(TiledConv, SmallestImagePad2) { check_shape(conv3x3(2, 32, 1, 1, 64, 2), 61); }

TEST_F(TiledConv, RefusesShapesItDoesNotServe) {
  for (const Family& f : kFamilies) {
    SCOPED_TRACE(f.name);
    EXPECT_FALSE(f.fits(conv3x3(64, 1, 28, 28, 32, 0)));    // conv1: one input channel
    EXPECT_FALSE(f.fits(conv3x3(64, 16, 26, 26, 64, 0)));   // channels not a multiple of 32
    EXPECT_FALSE(f.fits(conv3x3(64, 32, 26, 26, 48, 0)));
    EXPECT_FALSE(f.fits(ConvGeometry{64, 32, 26, 26, 64, 22, 22, 5, 1, 0}));  // 5x5
    EXPECT_FALSE(f.fits(ConvGeometry{64, 32, 26, 26, 64, 12, 12, 3, 2, 0}));  // stride 2
    EXPECT_FALSE(f.fits(ConvGeometry{64, 32, 26, 26, 64, 30, 30, 3, 1, 3}));  // pad 3
    EXPECT_FALSE(f.fits(conv3x3(1, 32, 4, 2048, 64, 1)));  // rows too wide to stage
    EXPECT_TRUE(f.fits(conv3x3(64, 32, 26, 26, 64, 0)));
  }
}

}  // namespace
}  // namespace dptrain
