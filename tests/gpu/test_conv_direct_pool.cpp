// The first layer's pooled direct kernels (kernels/conv_kernels.h: conv_direct_pool_forward and
// conv_direct_pool_filter_grad) on small shapes, with no cuDNN in the way, so that compute-sanitizer's
// racecheck and memcheck finish in seconds: the forward against conv_direct_forward then maxpool_forward
// (argmaxes bit for bit, outputs equal as floats: the sign of a zero may differ, where a padding tap adds
// w x 0), the filter and bias gradients against a host sum in double over the windows' argmaxes.
// Geometries: tiling, overlapping and padded, ragged and stride-1 windows; convolution strides 1 and 2;
// channel counts on either side of the kernels' groups of 8; planes staged in shared memory and one past
// it (taps from global memory). Outputs are poisoned with NaN before each call, and two
// calls must agree bit for bit. The guard's edges are checked without a GPU.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/cuda_check.h"
#include "gpu_test_support.h"
#include "host_copies.h"
#include "kernels/conv_kernels.h"
#include "kernels/pool_kernels.h"

namespace dptrain {
namespace {

using kernels::ConvGeometry;
using kernels::PoolGeometry;

class DirectPool : public gpu_test::KernelTest {};

struct Case {
  int n, c, h, w, oc, k, stride, pad;  // the convolution
  int pool_k, pool_stride, pool_pad;   // the pooling of its output
  bool relu;
};

ConvGeometry conv_of(const Case& t) {
  return {t.n, t.c, t.h, t.w, t.oc, (t.h + 2 * t.pad - t.k) / t.stride + 1, (t.w + 2 * t.pad - t.k) / t.stride + 1,
          t.k, t.stride, t.pad};
}

PoolGeometry pool_of(const Case& t) {
  const ConvGeometry g = conv_of(t);
  return {g.n * g.oc, g.oh, g.ow, (g.oh + 2 * t.pool_pad - t.pool_k) / t.pool_stride + 1,
          (g.ow + 2 * t.pool_pad - t.pool_k) / t.pool_stride + 1, t.pool_k, t.pool_stride, t.pool_pad};
}

std::string describe(const Case& t) {
  return "n=" + std::to_string(t.n) + " " + std::to_string(t.c) + "x" + std::to_string(t.h) + "x" +
         std::to_string(t.w) + " -> " + std::to_string(t.oc) + " k" + std::to_string(t.k) + " s" +
         std::to_string(t.stride) + " p" + std::to_string(t.pad) + ", pool k" + std::to_string(t.pool_k) + " s" +
         std::to_string(t.pool_stride) + " p" + std::to_string(t.pool_pad) + (t.relu ? ", relu" : "");
}

const std::vector<Case> kCases = {
    {5, 1, 28, 28, 6, 5, 1, 2, 2, 2, 0, true},   // lenet5's conv1 and pool1
    {3, 1, 28, 28, 16, 3, 1, 1, 2, 2, 0, true},  // mnist_fast's conv1: two groups of 8 channels
    {4, 3, 11, 10, 9, 3, 1, 1, 3, 2, 1, true},   // overlapping, padded windows; 9 channels: a partial group
    {3, 2, 13, 13, 4, 3, 1, 0, 2, 2, 0, false},  // 11 x 11 pooled by 2: the last row and column left out
    {2, 1, 9, 9, 3, 2, 1, 0, 2, 1, 0, true},     // stride-1 windows; k = 2
    {2, 32, 6, 6, 2, 1, 1, 0, 2, 2, 0, true},    // 1 x 1 over 32 channels: the most taps
    {3, 2, 17, 15, 5, 3, 2, 1, 2, 2, 0, true},   // convolution stride 2, non-square
    {2, 1, 120, 120, 2, 3, 1, 1, 2, 2, 0, true}, // a padded plane past shared memory: taps from global memory
};

TEST_F(DirectPool, ForwardEqualsDirectForwardThenMaxPool) {
  for (const Case& t : kCases) {
    SCOPED_TRACE(describe(t));
    const ConvGeometry g = conv_of(t);
    const PoolGeometry p = pool_of(t);
    ASSERT_TRUE(kernels::direct_pool_fits(g, p));
    const size_t xs = size_t(g.n) * g.c * g.h * g.w, ys = size_t(g.n) * g.oc * g.oh * g.ow,
                 ps = size_t(p.planes) * p.oh * p.ow, wn = size_t(g.oc) * g.c * g.k * g.k;
    const uint32_t seed = static_cast<uint32_t>(t.n * 131 + t.c * 17 + t.oc * 7 + t.k);
    Buffer<float> x = to_device(gpu_test::nonzero_randoms(xs, seed)),
                  w = to_device(gpu_test::nonzero_randoms(wn, seed + 1)),
                  b = to_device(gpu_test::nonzero_randoms(size_t(g.oc), seed + 2));
    Buffer<float> y(Device::Cuda, ys), pooled(Device::Cuda, ps), fused(Device::Cuda, ps);
    Buffer<int32_t> argmax(Device::Cuda, ps), fused_argmax(Device::Cuda, ps);
    kernels::conv_direct_forward(x.data(), w.data(), b.data(), y.data(), t.relu, g, nullptr);
    kernels::maxpool_forward(y.data(), pooled.data(), argmax.data(), p, {}, nullptr);
    std::vector<float> first;
    for (int round = 0; round < 2; ++round) {
      poison(fused);
      poison(fused_argmax);
      kernels::conv_direct_pool_forward(x.data(), w.data(), b.data(), t.relu, fused.data(), fused_argmax.data(), g, p,
                                        nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<float> got = to_host(fused);
      if (round == 0) first = got;
      EXPECT_EQ(got, first) << "two calls differ";
    }
    EXPECT_EQ(first, to_host(pooled));
    EXPECT_EQ(to_host(fused_argmax), to_host(argmax));
  }
}

TEST_F(DirectPool, FilterGradientSumsThePooledGradientAtTheArgmaxes) {
  for (const Case& t : kCases) {
    SCOPED_TRACE(describe(t));
    const ConvGeometry g = conv_of(t);
    const PoolGeometry p = pool_of(t);
    const size_t xs = size_t(g.n) * g.c * g.h * g.w, ps = size_t(p.planes) * p.oh * p.ow,
                 wn = size_t(g.oc) * g.c * g.k * g.k;
    const uint32_t seed = static_cast<uint32_t>(t.n * 131 + t.c * 17 + t.oc * 7 + t.k + 1000);
    const std::vector<float> xh = gpu_test::nonzero_randoms(xs, seed), dyh = gpu_test::nonzero_randoms(ps, seed + 3);
    Buffer<float> x = to_device(xh), w = to_device(gpu_test::nonzero_randoms(wn, seed + 1)),
                  b = to_device(gpu_test::nonzero_randoms(size_t(g.oc), seed + 2)), dy = to_device(dyh);
    Buffer<float> y(Device::Cuda, ps), dw(Device::Cuda, wn), db(Device::Cuda, size_t(g.oc));
    Buffer<int32_t> argmax(Device::Cuda, ps);
    Buffer<uint8_t> scratch(Device::Cuda, std::max<size_t>(kernels::conv_direct_pool_filter_grad_scratch(g), 16));
    kernels::conv_direct_pool_forward(x.data(), w.data(), b.data(), t.relu, y.data(), argmax.data(), g, p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> yh = to_host(y);
    const std::vector<int32_t> ah = to_host(argmax);

    // The host's sums, in double: each pooled output's gradient times the input under its argmax.
    std::vector<double> want_w(wn, 0.0), want_b(size_t(g.oc), 0.0), abs_w(wn, 0.0), abs_b(size_t(g.oc), 0.0);
    for (int s = 0; s < g.n; ++s)
      for (int o = 0; o < g.oc; ++o)
        for (int q = 0; q < p.oh * p.ow; ++q) {
          const size_t at = (size_t(s) * g.oc + o) * p.oh * p.ow + q;
          const double grad = t.relu && !(yh[at] > 0.0f) ? 0.0 : dyh[at];
          const int oy = ah[at] / g.ow, ox = ah[at] % g.ow;
          want_b[size_t(o)] += grad;
          abs_b[size_t(o)] += std::abs(grad);
          for (int c = 0; c < g.c; ++c)
            for (int ky = 0; ky < g.k; ++ky)
              for (int kx = 0; kx < g.k; ++kx) {
                const int iy = oy * g.stride - g.pad + ky, ix = ox * g.stride - g.pad + kx;
                if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
                const double v = xh[((size_t(s) * g.c + c) * g.h + iy) * g.w + ix];
                const size_t k = ((size_t(o) * g.c + c) * g.k + ky) * g.k + kx;
                want_w[k] += grad * v;
                abs_w[k] += std::abs(grad * v);
              }
        }
    std::vector<float> first_w, first_b;
    for (int round = 0; round < 2; ++round) {
      poison(dw);
      poison(db);
      kernels::conv_direct_pool_filter_grad(x.data(), dy.data(), y.data(), argmax.data(), t.relu, dw.data(), db.data(),
                                            scratch.data(), g, p, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<float> gw = to_host(dw), gb = to_host(db);
      if (round == 0) first_w = gw, first_b = gb;
      EXPECT_EQ(gw, first_w) << "two calls differ";
      EXPECT_EQ(gb, first_b) << "two calls differ";
    }
    // Each sum within float32 rounding of the size of its terms.
    for (size_t k = 0; k < wn; ++k)
      ASSERT_LE(std::abs(first_w[k] - want_w[k]), 1e-5 * (abs_w[k] + 1e-30)) << "dw[" << k << "]";
    for (size_t o = 0; o < size_t(g.oc); ++o)
      ASSERT_LE(std::abs(first_b[o] - want_b[o]), 1e-5 * (abs_b[o] + 1e-30)) << "db[" << o << "]";
  }
}

// The guard, without a GPU: what the kernels serve and the edges past it.
TEST(DirectPoolGuard, AdmitsTheCasesAndRejectsWhatTheKernelsCannotServe) {
  for (const Case& t : kCases) EXPECT_TRUE(kernels::direct_pool_fits(conv_of(t), pool_of(t))) << describe(t);
  const Case lenet = kCases[0];
  Case wide = lenet;
  wide.c = 2;  // 2 x 5 x 5 = 50 taps: past the direct kernels' short reduction
  EXPECT_FALSE(kernels::direct_pool_fits(conv_of(wide), pool_of(wide)));
  PoolGeometry off = pool_of(lenet);
  off.h += 1;  // a pooling that does not describe the convolution's output
  EXPECT_FALSE(kernels::direct_pool_fits(conv_of(lenet), off));
  Case padded = lenet;
  padded.pool_k = 2, padded.pool_pad = 2;  // 2 pad > k: a window could hold no position of the plane
  EXPECT_FALSE(kernels::direct_pool_fits(conv_of(padded), pool_of(padded)));
  Case huge = lenet;
  huge.h = huge.w = 2898;  // a convolution output past the direct kernels' grid (oh ow > 65535 x 128)
  EXPECT_FALSE(kernels::direct_pool_fits(conv_of(huge), pool_of(huge)));
}

}  // namespace
}  // namespace dptrain
