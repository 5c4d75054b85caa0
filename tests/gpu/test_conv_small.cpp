// dptrain's small convolution kernels (kernels/conv_small.h) against the reference kernels (sums in double,
// kernels/conv_reference.h, themselves checked against the CPU backend in test_shape_sweep.cpp), within 1e-5:
// forward (with bias and ReLU, without bias), input gradient and filter/bias gradient, for lenet5's conv2 at
// batches 1 to 8192 (across the filter gradient's chunking: one sample a chunk up to 264, then ragged chunks)
// and shapes with every kernel size 1 to 7, strides 2 and 3, padding up to 3 (as wide as the kernel),
// non-square images and channel counts on either side of the 16-channel block groups. Outputs are poisoned
// with NaN before each call and two calls must agree bit for bit. The guard's edges are checked without a GPU.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "gpu_test_support.h"
#include "host_copies.h"
#include "kernels/conv_reference.h"
#include "kernels/conv_small.h"

namespace dptrain {
namespace {

using kernels::ConvGeometry;

class SmallConv : public gpu_test::KernelTest {};

using gpu_test::nonzero_randoms;

/// ||a - b|| / ||b||, infinite where a holds a non-finite value.
double rel(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

std::string describe(const ConvGeometry& g) {
  return "n=" + std::to_string(g.n) + " " + std::to_string(g.c) + "x" + std::to_string(g.h) + "x" + std::to_string(g.w) +
         " -> " + std::to_string(g.oc) + "x" + std::to_string(g.oh) + "x" + std::to_string(g.ow) + " k" +
         std::to_string(g.k) + " s" + std::to_string(g.stride) + " p" + std::to_string(g.pad);
}

/// Runs `f` into `out` twice (poisoned first): returns the first result; the second must match bit for bit.
template <typename F>
std::vector<float> run_twice(Buffer<float>& out, F&& f, const char* what) {
  poison(out);
  f();
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> first = to_host(out);
  poison(out);
  f();
  CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(to_host(out), first) << what << ": two calls differ";
  return first;
}

void check_shape(const ConvGeometry& g) {
  SCOPED_TRACE(describe(g));
  ASSERT_TRUE(kernels::small_conv_fits(g));
  ASSERT_TRUE(kernels::reference_conv_fits(g));
  const size_t xs = size_t(g.n) * g.c * g.h * g.w, ys = size_t(g.n) * g.oc * g.oh * g.ow,
               wn = size_t(g.oc) * g.c * g.k * g.k;
  const uint32_t seed = static_cast<uint32_t>(g.n * 131 + g.c * 17 + g.oc * 7 + g.k);
  Buffer<float> x = to_device(nonzero_randoms(xs, seed)), w = to_device(nonzero_randoms(wn, seed + 1)),
                b = to_device(nonzero_randoms(size_t(g.oc), seed + 2)), dy = to_device(nonzero_randoms(ys, seed + 3));
  Buffer<float> y(Device::Cuda, ys), dx(Device::Cuda, xs), dw(Device::Cuda, wn), db(Device::Cuda, size_t(g.oc));
  Buffer<float> ry(Device::Cuda, ys), rdx(Device::Cuda, xs), rdw(Device::Cuda, wn), rdb(Device::Cuda, size_t(g.oc));
  Buffer<uint8_t> scratch(Device::Cuda, std::max<size_t>(kernels::small_conv_scratch(g), 16));
  const cudaStream_t st = nullptr;

  for (int variant = 0; variant < 3; ++variant) {  // bias; bias and ReLU; no bias (an absorbed pooling)
    const bool relu = variant == 1;
    const float* bias = variant == 2 ? nullptr : b.data();
    kernels::reference_conv_forward(x.data(), w.data(), bias, ry.data(), relu, g, st);
    const std::vector<float> got =
        run_twice(y, [&] { kernels::small_conv_forward(x.data(), w.data(), bias, y.data(), relu, g, st); }, "forward");
    EXPECT_LE(rel(got, to_host(ry)), 1e-5) << "forward, variant " << variant;
  }
  kernels::reference_conv_backward_data(dy.data(), w.data(), rdx.data(), g, st);
  const std::vector<float> got_dx =
      run_twice(dx, [&] { kernels::small_conv_backward_data(dy.data(), w.data(), dx.data(), g, st); }, "input gradient");
  EXPECT_LE(rel(got_dx, to_host(rdx)), 1e-5) << "input gradient";

  kernels::reference_conv_filter_grad(x.data(), dy.data(), rdw.data(), rdb.data(), g, st);
  poison(db);
  const std::vector<float> got_dw = run_twice(
      dw, [&] { kernels::small_conv_filter_grad(x.data(), dy.data(), dw.data(), db.data(), scratch.data(), g, st); },
      "filter gradient");
  EXPECT_LE(rel(got_dw, to_host(rdw)), 1e-5) << "filter gradient";
  EXPECT_LE(rel(to_host(db), to_host(rdb)), 1e-5) << "bias gradient";
}

// lenet5's conv2 (6 -> 16 channels, 5x5, 14x14 -> 10x10) at the batches of the acceptance table: one sample a
// chunk (1, 64, 257), then 4 (1000) and 32 (8192) a chunk, and a ragged last chunk (600: 3 a chunk, 200 chunks).
TEST_F(SmallConv, Lenet5Conv2AtTrainingAndEvaluationBatches) {
  for (int n : {1, 64, 257, 600, 1000, 8192}) check_shape(ConvGeometry{n, 6, 14, 14, 16, 10, 10, 5, 1, 0});
}

TEST_F(SmallConv, EveryKernelSizeStrideAndPadding) {
  check_shape({9, 5, 5, 5, 7, 4, 4, 2, 1, 0});      // k 2
  check_shape({3, 4, 6, 6, 2, 6, 6, 1, 1, 0});      // k 1
  check_shape({600, 3, 9, 11, 5, 5, 6, 3, 2, 1});   // stride 2, non-square, ragged chunks
  check_shape({2, 1, 12, 12, 6, 5, 5, 4, 3, 2});    // k 4, stride 3, pad 2
  check_shape({4, 3, 10, 7, 5, 3, 1, 6, 2, 0});     // k 6, one output column
  check_shape({7, 2, 5, 5, 3, 2, 2, 7, 3, 3});      // k 7, stride 3, pad 3 (windows mostly padding)
  check_shape({2, 3, 5, 6, 4, 7, 8, 1, 1, 1});      // k 1 with padding (a zero border in the output)
  check_shape({5, 2, 5, 5, 3, 11, 11, 1, 1, 3});    // padding wider than the kernel
}

// Block groups of 16 channels: 20 input channels (two input-gradient groups, the second of 4), 18 output
// channels (two forward groups, the second of 2), 33 (three, the last of 1).
TEST_F(SmallConv, ChannelCountsAcrossBlockGroups) {
  check_shape({5, 20, 8, 8, 18, 8, 8, 3, 1, 1});
  check_shape({3, 17, 7, 7, 33, 5, 5, 3, 1, 0});
  check_shape({2, 1, 28, 28, 6, 28, 28, 5, 1, 2});  // one input channel: lenet5's conv1
}

// At stride 1 the strip kernels split the summed-over channels (most shapes above) or, where one range is all
// there is or the items would overfill a block, loop threads over the items: lenet5's conv1 above does so in
// the forward (one input channel, 392 items); one output channel does so in the input gradient (144 items
// over 128 threads).
TEST_F(SmallConv, StripKernelsUnsplitWithItemsPastTheBlock) { check_shape({3, 2, 24, 24, 1, 24, 24, 3, 1, 1}); }

// The filter gradient splits the output rows over the threads its work items leave idle and adds the splits in
// the block: as many splits as rows (lenet5's conv1 above: 16 items, 28 splits), as shared memory holds for the
// splits' sums (9 items of 7 x 4 sums: 48 splits of 56 rows), or one (318 items, ChannelCountsAcrossBlockGroups).
TEST_F(SmallConv, FilterGradientSplitsBoundByRowsThreadsAndSharedMemory) {
  check_shape({3, 1, 56, 56, 2, 56, 56, 7, 1, 3});
  check_shape({300, 1, 9, 9, 3, 3, 3, 7, 1, 0});  // 10 items, 3 rows: 3 splits; 2 samples a chunk
}

TEST(SmallConvFits, GuardAdmitsWhatTheKernelsServe) {
  using G = ConvGeometry;
  EXPECT_TRUE(kernels::small_conv_fits(G{257, 6, 14, 14, 16, 10, 10, 5, 1, 0}));    // lenet5's conv2
  EXPECT_TRUE(kernels::small_conv_fits(G{1 << 20, 6, 14, 14, 16, 10, 10, 5, 1, 0}));  // any batch
  EXPECT_FALSE(kernels::small_conv_fits(G{64, 32, 26, 26, 64, 24, 24, 3, 1, 0}));  // mnist_cnn's conv2: 87 KB a sample
  EXPECT_FALSE(kernels::small_conv_fits(G{8, 6, 14, 14, 16, 7, 7, 8, 1, 0}));       // k 8
  EXPECT_FALSE(kernels::small_conv_fits(G{8, 6, 14, 14, 16, 11, 10, 5, 1, 0}));     // oh inconsistent
  EXPECT_FALSE(kernels::small_conv_fits(G{0, 6, 14, 14, 16, 10, 10, 5, 1, 0}));     // empty batch
  EXPECT_FALSE(kernels::small_conv_fits(G{8, 6, 14, 14, 16, 10, 10, 5, 0, 0}));     // stride 0
  EXPECT_FALSE(kernels::small_conv_fits(G{8, 6, 14, 14, 16, 12, 12, 5, 1, -1}));    // negative padding
  EXPECT_FALSE(kernels::small_conv_fits(G{8, 1, 2, 2, 1, 0, 0, 5, 1, 1}));          // kernel past the padded image
  // The filter gradient's work items: ceil(oc / 4) c k + oc <= 512.
  EXPECT_TRUE(kernels::small_conv_fits(G{8, 20, 6, 6, 32, 4, 4, 3, 1, 0}));   // 8 x 20 x 3 + 32 = 512
  EXPECT_FALSE(kernels::small_conv_fits(G{8, 21, 6, 6, 32, 4, 4, 3, 1, 0}));  // 8 x 21 x 3 + 32 = 536
  // Shared memory: the filter gradient's padded input sample and output-gradient sample, rows and planes at
  // odd pitches, within 12288 floats.
  EXPECT_TRUE(kernels::small_conv_fits(G{8, 1, 78, 78, 1, 78, 78, 1, 1, 0}));   // 78 x 79 + 6085 = 12247
  EXPECT_FALSE(kernels::small_conv_fits(G{8, 1, 79, 79, 1, 79, 79, 1, 1, 0}));  // 79 x 79 + 6241 = 12482
  EXPECT_EQ(kernels::small_conv_scratch(G{8, 1, 79, 79, 1, 79, 79, 1, 1, 0}), 0u);
}

TEST_F(SmallConv, RefusesWhatItDoesNotServe) {
  const ConvGeometry g{64, 32, 26, 26, 64, 24, 24, 3, 1, 0};
  EXPECT_THROW(kernels::small_conv_forward(nullptr, nullptr, nullptr, nullptr, false, g, nullptr), CudaError);
  EXPECT_THROW(kernels::small_conv_backward_data(nullptr, nullptr, nullptr, g, nullptr), CudaError);
  EXPECT_THROW(kernels::small_conv_filter_grad(nullptr, nullptr, nullptr, nullptr, nullptr, g, nullptr), CudaError);
}

}  // namespace
}  // namespace dptrain
