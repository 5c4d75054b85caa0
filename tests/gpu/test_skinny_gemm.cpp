// The linear layers' skinny GEMMs (kernels/skinny_gemm.h) against a double-precision CPU reference,
// within 1e-5: all four operand layouts, split and unsplit k, tiles cut by the edges, and the
// forward epilogue (bias, ReLU). Outputs are poisoned with NaN first; two calls agree bit for bit.
// Skipped without a GPU.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/buffer.h"
#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "kernels/skinny_gemm.h"
#include "gpu_test_support.h"
#include "host_copies.h"

namespace dptrain {
namespace {

class SkinnyGemm : public gpu_test::KernelTest {};

using gpu_test::randoms;  // uniform in [-1, 1)

struct Case {
  int m, n, k;
  bool trans_a, trans_b, epilogue;
};

void check(const Case& c) {
  const std::vector<float> a = randoms(size_t(c.m) * c.k, 1), b = randoms(size_t(c.k) * c.n, 2),
                           bias = randoms(size_t(c.n), 3);
  std::vector<double> want(size_t(c.m) * c.n);
  for (int i = 0; i < c.m; ++i)
    for (int j = 0; j < c.n; ++j) {
      double s = 0.0;
      for (int p = 0; p < c.k; ++p)
        s += double(c.trans_a ? a[size_t(p) * c.m + i] : a[size_t(i) * c.k + p]) *
             double(c.trans_b ? b[size_t(j) * c.k + p] : b[size_t(p) * c.n + j]);
      if (c.epilogue) s = std::max(s + bias[size_t(j)], 0.0);
      want[size_t(i) * c.n + j] = s;
    }
  Buffer<float> da = to_device(a), db = to_device(b), dbias = to_device(bias), out(Device::Cuda, want.size());
  Buffer<float> partials(Device::Cuda, std::max<size_t>(1, kernels::skinny_gemm_partials(c.m, c.n, c.k)));
  const kernels::SkinnyGemm g{da.data(), c.trans_a, db.data(), c.trans_b, out.data(), c.m, c.n, c.k};
  ASSERT_TRUE(kernels::skinny_gemm_fits(g));
  kernels::RowEpilogue e;
  if (c.epilogue) e.bias = dbias.data(), e.relu = true;
  std::vector<float> runs[2];
  for (std::vector<float>& r : runs) {
    CUDA_CHECK(cudaMemset(out.data(), 0xFF, out.size() * sizeof(float)));
    kernels::skinny_gemm(g, e, partials.data(), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    r = to_host(out);
  }
  double num = 0.0, den = 0.0;
  size_t nans = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    nans += std::isnan(runs[0][i]);
    num += (runs[0][i] - want[i]) * (runs[0][i] - want[i]);
    den += want[i] * want[i];
  }
  const char* what = c.trans_a ? (c.trans_b ? "TT" : "TN") : (c.trans_b ? "NT" : "NN");
  EXPECT_EQ(nans, 0u) << what << " " << c.m << "x" << c.n << "x" << c.k;
  EXPECT_LE(std::sqrt(num / den), 1e-5) << what << " " << c.m << "x" << c.n << "x" << c.k << " splits "
                                         << kernels::skinny_gemm_splits(c.m, c.n, c.k);
  EXPECT_EQ(runs[0], runs[1]) << what << ": two calls differ";
}

TEST_F(SkinnyGemm, MnistLinearShapesMatchDoubleReference) {
  check({64, 128, 9216, false, true, true});   // fc1 forward: split k, bias and ReLU
  check({128, 9216, 64, true, false, false});  // fc1 weight gradient
  check({64, 9216, 128, false, false, false}); // fc1 input gradient
  check({64, 12, 128, false, true, true});     // a small forward (fc2-like): split k
}

TEST_F(SkinnyGemm, PartialTilesAndEveryLayout) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check({20, 36, 44, ta, tb, false});    // every side short of a tile; k not a multiple of the step
      check({100, 68, 700, ta, tb, true});   // partial tiles, split k with a short last slice
    }
  for (bool ta : {false, true})
    for (bool tb : {false, true}) check({64, 10, 130, ta, tb, false});  // rows of 10 and 130 floats: 4-byte copies
  check({64, 128, 10, false, false, false});  // fc2's input gradient: dy has rows of 10
  check({10, 128, 64, true, false, false});   // fc2's weight gradient
}

}  // namespace
}  // namespace dptrain
